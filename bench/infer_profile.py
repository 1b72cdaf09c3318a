"""Where an infer executor's time goes: the seed CNN and the no-op model of infer_bench.py.

Part 1, replay: one process pinned to one core with the executors' thread settings (launch.TF_ENV:
one intra-op and one inter-op thread) runs each phase of infer.predict_partition alone over the same
shards and batch size, timing wall and CPU seconds (all threads of the process):

    read+parse   predict.batches: the streamed shard reader and schema.parse_batch
    model        the serving signature on the parsed batches
    arrow        numpy -> Arrow record batch (infer.prediction_batch, the job's own)
    ipc          the batches as an Arrow IPC stream (what the Python worker sends the JVM)
    parquet      the batches as Parquet with pyarrow (what a Python-side writer would cost)

and then the job's own interleaved loop (read, model, arrow), whose excess over the sum of its
phases is what tf.data and the model lose sharing one core and one inter-op thread.

Part 2, the job: the infer job runs on ``local-cluster[2,1,2048]`` while a thread samples the CPU
seconds of every process under this one (psutil); over the steady window (the manifest's
partition_timings: first start to last end) it prints the CPU of the executors' Python workers, the
executor JVMs (Arrow from the worker, rows, Spark's Parquet writer), the driver and the rest of the
machine, against the 2 cores x window available.

Run:  .venv/bin/python bench/infer_profile.py [--rows 20000] [--skip-job]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from typing import Callable

from tfospipe import launch  # noqa: E402  (no TensorFlow import: the thread settings apply before it)

for _key, _value in launch.TF_ENV.items():
    os.environ.setdefault(_key, _value)

import common  # noqa: E402
import infer_bench  # noqa: E402
import psutil  # noqa: E402


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(fn(), wall seconds, CPU seconds of this process's threads) of one call."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def replay(files: list[str], model_dir: str, model_version: str, batch_size: int, scratch: str) -> dict:
    """Part 1 for the SavedModel at ``model_dir``: {phase: (wall seconds, CPU seconds)} and ``rows``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tfospipe import infer, model, predict

    shape, schema = infer_bench.IMAGE_SHAPE, infer.arrow_schema()
    fn = model.load_serving(model_dir, shape)
    fn(next(predict.batches(files, shape, batch_size))[0])  # trace and warm
    out = {}
    parsed, *out["read+parse"] = timed(lambda: list(predict.batches(files, shape, batch_size)))
    scored, *out["model"] = timed(lambda: [fn(images) for images, _, _ in parsed])
    batches, *out["arrow"] = timed(lambda: [
        infer.prediction_batch(schema, r, c, p, lab, model_version, infer_bench.VERSION)
        for (_, lab, r), (p, c) in zip(parsed, scored)])

    def ipc():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as writer:
            for b in batches:
                writer.write_batch(b)
        return sink.getvalue().size

    def parquet():
        with pq.ParquetWriter(os.path.join(scratch, "replay.parquet"), schema) as writer:
            for b in batches:
                writer.write_batch(b)

    _, *out["ipc"] = timed(ipc)
    _, *out["parquet"] = timed(parquet)

    def loop():
        for images, labels, row_ids in predict.batches(files, shape, batch_size):
            p, c = fn(images)
            infer_bench.prediction_batch(schema, row_ids, c, p, labels, model_version)

    _, *out["job loop"] = timed(loop)
    # what each partition pays before its first batch: a new tf.data pipeline, its parse function traced
    _, *out["setup"] = timed(lambda: [next(predict.batches([f], shape, 1)) for f in files])
    out["setup"] = [x / len(files) for x in out["setup"]]
    out["rows"] = sum(len(r) for _, _, r in parsed)
    return out


def print_replay(name: str, r: dict) -> None:
    """Part 1's table for one model: seconds, CPU seconds, share of the phases' sum, us per row."""
    phases = ["read+parse", "model", "arrow", "ipc", "parquet"]
    total = sum(r[p][0] for p in phases)
    print(f"-- replay, {name}: {r['rows']} rows, one core, TF_ENV threads")
    for p in phases + ["job loop"]:
        wall, cpu = r[p]
        share = f"{100 * wall / total:5.1f}%" if p in phases else "      "
        print(f"   {p:<11} {wall:7.2f} s wall {cpu:7.2f} s CPU  {share}  {1e6 * wall / r['rows']:7.1f} us/row")
    print(f"   per partition, before its first batch (new tf.data pipeline, parse traced): "
          f"{r['setup'][0]:.3f} s wall {r['setup'][1]:.3f} s CPU")
    parts = sum(r[p][0] for p in ("read+parse", "model", "arrow"))
    print(f"   job loop vs read+parse+model+arrow alone: {r['job loop'][0]:.2f} s vs {parts:.2f} s "
          f"({100 * (r['job loop'][0] / parts - 1):+.0f}%); one core's limit of the loop "
          f"{r['rows'] / r['job loop'][0]:.0f} rows/s")


def kind(proc: psutil.Process) -> str:
    """The role of a process under the benchmark: executor JVM, python worker, driver JVM, driver python."""
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    if "CoarseGrainedExecutorBackend" in cmd:
        return "executor JVM"
    if "pyspark.daemon" in cmd or "pyspark.worker" in cmd or "pyspark/daemon" in cmd:
        return "python worker"
    if "java" in cmd:
        return "driver JVM"
    return "driver python" if "infer.py" in cmd else "other under spark-submit"


class Sampler(threading.Thread):
    """Samples (epoch seconds, user+system CPU seconds) of every process under this one, by pid."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval, self.samples, self.kinds, self.stop = interval, {}, {}, threading.Event()
        self.system = []  # (epoch seconds, busy CPU seconds of the whole machine)

    def run(self) -> None:
        """Sample until :attr:`stop` is set."""
        me = psutil.Process()
        while not self.stop.is_set():
            now = time.time()
            t = psutil.cpu_times()
            self.system.append((now, t.user + t.nice + t.system + t.irq + t.softirq))
            for proc in me.children(recursive=True):
                try:
                    cpu = proc.cpu_times()
                    if proc.pid not in self.kinds or self.kinds[proc.pid] == "gone":
                        self.kinds[proc.pid] = kind(proc)
                    self.samples.setdefault(proc.pid, []).append((now, cpu.user + cpu.system))
                except psutil.Error:
                    pass
            self.stop.wait(self.interval)


def _at(series: list[tuple[float, float]], t: float) -> float:
    """Linear interpolation of a cumulative (time, CPU seconds) series at ``t`` (clamped at its ends)."""
    if t <= series[0][0]:
        return 0.0 if len(series) == 1 or series[0][0] > t + 1 else series[0][1]
    for (t0, c0), (t1, c1) in zip(series, series[1:]):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
    return series[-1][1]


def window_cpu(sampler: Sampler, start: float, end: float) -> dict[str, float]:
    """CPU seconds per process kind, and of the whole machine (``machine``), between ``start`` and ``end``."""
    out = {}
    for pid, series in sampler.samples.items():
        k = sampler.kinds.get(pid, "gone")
        out[k] = out.get(k, 0.0) + _at(series, end) - _at(series, start)
    out["machine"] = _at(sampler.system, end) - _at(sampler.system, start)
    return out


def profile_job(root: str, model_version: str, batch_size: int, master: str) -> None:
    """Part 2 for ``model_version``: run the infer job under a :class:`Sampler` and print its CPU split."""
    sampler = Sampler()
    sampler.start()
    try:
        manifest, wall = infer_bench.infer_job(root, model_version, batch_size, master)
    finally:
        sampler.stop.set()
        sampler.join()
    spans = manifest["partition_timings"]
    start, end = min(t["start"] for t in spans), max(t["end"] for t in spans)
    cpu = window_cpu(sampler, start, end)
    capacity = 2 * (end - start)
    ours = sum(v for k, v in cpu.items() if k != "machine")
    print(f"   job: {manifest['predict_rows_per_second']:.0f} rows/s steady, window {end - start:.1f} s, "
          f"job wall {wall:.1f} s; CPU seconds in the window (2 cores x window = {capacity:.1f} s):")
    for k in sorted(cpu, key=lambda k: -cpu[k]):
        if k != "machine" and cpu[k] > 0.005 * capacity:
            print(f"   {k:<24} {cpu[k]:7.2f} s  {100 * cpu[k] / ours:5.1f}% of the job's CPU  "
                  f"{1e6 * cpu[k] / manifest['rows_in']:7.1f} us/row")
    print(f"   other processes on the machine {max(cpu['machine'] - ours, 0):7.2f} s, idle "
          f"{max(capacity - cpu['machine'], 0):7.2f} s")
    busy = sum(t["end"] - t["start"] for t in spans)
    print(f"   the job's CPU per row {1e6 * ours / manifest['rows_in']:.1f} us: {2 * manifest['rows_in'] / ours:.0f} "
          f"rows/s were the 2 cores its own and never idle; partitions busy {100 * busy / capacity:.0f}% of "
          f"2 x window")
    middle = (start + end) / 2  # a fixed cost (JIT, class loading, tracing) falls in the first half
    halves = [window_cpu(sampler, start, middle), window_cpu(sampler, middle, end)]
    print("   CPU seconds, first half / second half of the window: " + ", ".join(
        f"{k} {halves[0].get(k, 0):.2f} / {halves[1].get(k, 0):.2f}" for k in sorted(cpu) if cpu[k] > 0.05))


def main() -> None:
    """Part 1 (unless --skip-replay) and part 2 (unless --skip-job) for each model of --models."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000, help="rows to score")
    p.add_argument("--batch-size", type=int, default=1024, help="rows per model batch, as the job's batch_size")
    p.add_argument("--master", default="local-cluster[2,1,2048]", help="Spark master of the job")
    p.add_argument("--skip-job", action="store_true", help="part 1 only")
    p.add_argument("--skip-replay", action="store_true", help="part 2 only")
    p.add_argument("--models", default="seed,noop", help="comma-separated: seed, noop")
    args = p.parse_args()
    common.print_facts()
    root = tempfile.mkdtemp(prefix="tfos-infer-profile-")
    try:
        print(f"preparing {args.rows} MNIST-size rows in {root} ...", flush=True)
        from tfospipe import paths
        versions = infer_bench.prepare(root, args.rows, args.master)
        versions = {name: versions[name] for name in args.models.split(",")}
        layout, files, cores = paths.Layout(root), infer_bench.shard_files(root), os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(cores)})  # one core, as one executor has
        replays = {name: replay(files, layout.serving_model(mv), mv, args.batch_size, root)
                   for name, mv in versions.items() if not args.skip_replay}
        os.sched_setaffinity(0, cores)
        print()
        common.print_facts()
        print(f"tfospipe from {os.path.dirname(paths.__file__)}")
        for name, mv in versions.items():
            if name in replays:
                print_replay(name, replays[name])
            else:
                print(f"-- {name}")
            if not args.skip_job:
                profile_job(root, mv, args.batch_size, args.master)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
