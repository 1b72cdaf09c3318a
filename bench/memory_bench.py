"""Memory benchmark: the convert job on one big CSV file, and the peak RSS of the executors' Python workers.

Writes one CSV file of at least ``--gb`` GB in the MNIST layout (header, label, 784 pixels 0-255; the
rows of bench/common.py repeated, row ids differing by line), optionally also the same bytes gzipped
(``--gzip``: a gzip stream of the same file, compression level 1, written as one gzip member per
repeated block, which every gzip reader, Python's included, reads as one stream), then runs the
convert job on each (local-cluster[2,1,2048], as the DAG does) while a sampler thread reads, every
``--interval`` seconds (psutil), the resident set size of every process of this benchmark's
spark-submit tree whose command line runs ``pyspark.daemon`` or ``pyspark.worker``: the executors'
Python daemon and the workers it forks (one per task). It prints the peak RSS of each (MiB), the
largest worker's against the goal (<= 512 MiB per worker), the executor JVMs' peaks, the file size,
rows, wall time and throughput, and the machine facts.

Several ``--gb`` values (e.g. ``--gb 0.5 1 2``) show whether the peak grows with the file.
Run:  .venv/bin/python bench/memory_bench.py [--gb 2] [--gzip] [--env KEY=VALUE]   (about 1 min per GB on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
import zlib

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

#: The goal: peak RSS of each executor's Python worker while it converts, in MiB.
GOAL_MIB = 512
MIB = 1 << 20
#: Rows generated once and repeated (about 47 MB of CSV).
SEED_ROWS = 20_000


def write_big_csv(path: str, target_bytes: int, gzip_path: str | None = None) -> int:
    """Write a CSV of at least ``target_bytes`` bytes at ``path`` (the :data:`SEED_ROWS` rows of
    common.write_mnist_csv repeated, whole blocks, one big write each); with ``gzip_path`` also the same
    bytes as a gzip stream (level 1: the header and each block one gzip member, the block compressed once).
    Returns the rows written (header excluded). Raises OSError when a file cannot be written."""
    seed = common.write_mnist_csv(os.path.join(os.path.dirname(path), "seed.csv.tmp"), SEED_ROWS)
    with open(seed, "rb") as f:
        header, body = f.readline(), f.read()
    os.remove(seed)
    blocks = -(-(target_bytes - len(header)) // len(body))
    with open(path, "wb") as f:
        f.write(header)
        for _ in range(blocks):
            f.write(body)
    if gzip_path:
        with open(gzip_path, "wb") as f:
            f.write(_gzip_member(header))
            member = _gzip_member(body)
            for _ in range(blocks):
                f.write(member)
    return blocks * SEED_ROWS


def _gzip_member(data: bytes) -> bytes:
    """``data`` as one complete gzip member (RFC 1952), compression level 1."""
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


class RssSampler(threading.Thread):
    """Polls the process tree under this process every ``interval`` seconds and keeps, per process, the
    peak RSS (bytes) of the executors' Python processes and JVMs.

    ``peaks``: ``{(pid, create_time): {"role", "pid", "peak", "samples"}}``; role ``daemon`` (the
    ``pyspark.daemon`` an executor JVM starts), ``worker`` (a process it forked, which runs the tasks;
    also ``pyspark.worker`` when the daemon is not used) or ``executor JVM``."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval = interval
        self.peaks: dict[tuple[int, float], dict] = {}
        self._roles: dict[tuple[int, float], str] = {}
        self._stop_event = threading.Event()

    def _role(self, proc: psutil.Process, key) -> str | None:
        """The process's role, None for another one; a None is not kept, since a process forked by a JVM
        shows its parent's command line until it execs (its pid and create time stay)."""
        if key not in self._roles:
            cmd = " ".join(proc.cmdline())
            if "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
                parent = proc.parent()
                self._roles[key] = "daemon" if parent is not None and parent.name() == "java" else "worker"
            elif "org.apache.spark.executor" in cmd:
                self._roles[key] = "executor JVM"
        return self._roles.get(key)

    def sample(self) -> None:
        """One pass over the tree; processes that end meanwhile are skipped."""
        for proc in psutil.Process().children(recursive=True):
            try:
                key = (proc.pid, proc.create_time())
                role = self._role(proc, key)
                if role is None:
                    continue
                rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            entry = self.peaks.setdefault(key, {"role": role, "pid": proc.pid, "peak": 0, "samples": 0})
            entry["peak"] = max(entry["peak"], rss)
            entry["samples"] += 1

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        """Stop polling and wait for the thread to end."""
        self._stop_event.set()
        self.join()


def convert_with_sampler(root: str, version: str, master: str, interval: float,
                         env: dict[str, str] | None = None) -> tuple[float, dict, list[dict]]:
    """Run the convert job on ``root``/raw/``version`` (``env``: entries of the executors' environment, as
    common.run_job takes them) while an :class:`RssSampler` polls: returns (wall seconds, the conversion
    manifest, the sampler's peaks sorted by role and pid)."""
    from tfospipe import fs, paths

    sampler = RssSampler(interval)
    sampler.start()
    t = time.time()
    try:
        common.run_job("convert", {"data_root": root, "version": version, "num_shards": 4}, master, env=env)
    finally:
        sampler.stop()
    wall = time.time() - t
    manifest = json.load(open(os.path.join(paths.Layout(root).tfrecords(version), fs.MANIFEST)))
    return wall, manifest, sorted(sampler.peaks.values(), key=lambda e: (e["role"], e["pid"]))


def report(label: str, size: int, csv_bytes: int, rows: int, wall: float, manifest: dict, peaks: list[dict]) -> bool:
    """Print one case's figures (``size``: the input file's bytes, ``csv_bytes``: the CSV's, which MB/s
    counts); returns whether every worker stayed within :data:`GOAL_MIB`."""
    workers = [e for e in peaks if e["role"] == "worker"]
    worst = max((e["peak"] for e in workers), default=0) / MIB
    data = manifest["data_seconds"]["scan"] + manifest["data_seconds"]["convert"]
    ok = bool(workers) and worst <= GOAL_MIB
    print(f"{label}: file {size / 1e9:.2f} GB, {rows:,} rows (written {manifest['rows_written']:,}), wall {wall:.1f} s, "
          f"steady {rows / data:,.0f} rows/s ({csv_bytes / data / 1e6:.0f} MB/s of CSV; executors: scan "
          f"{manifest['data_seconds']['scan']:.1f} s + convert {manifest['data_seconds']['convert']:.1f} s)")
    for e in peaks:
        print(f"    {e['role']:<13} pid {e['pid']:<8} peak RSS {e['peak'] / MIB:8.1f} MiB   ({e['samples']} samples)")
    print(f"    peak RSS of a Python worker: {worst:.1f} MiB   goal <= {GOAL_MIB} MiB   {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, nargs="+", default=[2.0], help="CSV sizes to convert, in GB (1e9 bytes)")
    p.add_argument("--gzip", action="store_true", help="also convert the same bytes gzipped (one task reads it)")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between RSS samples")
    p.add_argument("--master", default="local-cluster[2,1,2048]", help="Spark master")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="executors' environment, e.g. LD_PRELOAD= (glibc's malloc) or TCMALLOC_AGGRESSIVE_DECOMMIT=true")
    p.add_argument("--dir", default=None, help="where to write the data (default: a temporary directory)")
    args = p.parse_args()
    from tfospipe import fs, paths

    env = dict(kv.split("=", 1) for kv in args.env)
    common.print_facts()
    root = tempfile.mkdtemp(prefix="tfos-memory-bench-", dir=args.dir)
    layout = paths.Layout(root)
    results = []
    try:
        for gb in args.gb:
            kinds = [("csv", "big.csv")] + ([("gzip", "big.csv.gz")] if args.gzip else [])
            dirs = {kind: layout.raw(f"{gb:g}gb-{kind}") for kind, _name in kinds}
            for d in dirs.values():
                os.makedirs(d)
            t = time.time()
            rows = write_big_csv(os.path.join(dirs["csv"], "big.csv"), int(gb * 1e9),
                                 os.path.join(dirs["gzip"], "big.csv.gz") if args.gzip else None)
            print(f"wrote {gb:g} GB ({rows:,} rows{', and its gzip' if args.gzip else ''}) in "
                  f"{time.time() - t:.1f} s", flush=True)
            csv_bytes = os.path.getsize(os.path.join(dirs["csv"], "big.csv"))
            for kind, name in kinds:
                version = f"{gb:g}gb-{kind}"
                path = os.path.join(dirs[kind], name)
                wall, manifest, peaks = convert_with_sampler(root, version, args.master, args.interval, env)
                results.append((f"{name} ({csv_bytes / 1e9:.2f} GB of CSV)", os.path.getsize(path), csv_bytes, rows,
                                wall, manifest, peaks))
                fs.delete_output(layout.tfrecords(version))
                os.remove(path)
        print()
        common.print_facts()
        if env:
            print(f"executors' environment set: {' '.join(args.env)}")
        ok = [report(*r) for r in results]
        print(f"all cases within {GOAL_MIB} MiB per worker: {'PASS' if all(ok) else 'FAIL'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
