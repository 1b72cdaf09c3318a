"""Remote vs local root: the convert and infer jobs on a local data root and on an ``s3://`` root, side by side.

The S3 root is a bucket of a ``moto_server`` this benchmark starts on loopback (an S3 API in one
Python process, authentication off; stopped at the end), reached by the jobs exactly as a real store
is: s3fs through fs.py, the endpoint and keys in the environment (AWS_ENDPOINT_URL_S3, ...), which
the driver forwards to its executors. Both roots get the same generated data (MNIST layout, the
rows of bench/common.py) and the same seed CNN promoted to serving (exported untrained; the infer
job's cost does not depend on the weights). The runs alternate (local, s3, local, s3, ... with
``--repeat``) in one process tree, on the same cores.

convert  ``--rows`` labeled rows (one CSV), 4 shards per split, as convert_bench.py
infer    ``--infer-rows`` unlabeled rows (``score/``), converted on each root first (not timed),
         batch ``--batch-size``, executors mode, the model serving on that root

Per job and root it prints the whole-job wall time, the steady rows/s and MB/s (convert: CSV bytes
over the executors' time on the data, scan + convert pass, from the manifest's ``data_seconds``;
infer: TFRecord bytes over the scoring time, first batch to last, from ``partition_timings``), the
ratio s3/local, and where the difference goes: the manifest's split of the time (convert: scan
pass = read + checksum, convert pass = read + encode + write, the rest = start-up, listing,
sniffing and the commit; infer: model download and load, scoring, the rest = start-up and the
Parquet write and commit) and the S3 requests the job made (counted from moto_server's log).
Loopback has no network latency or bandwidth limit: the S3 figures are the cost of the protocol and
of the client (s3fs, botocore), a floor for a real store.
Run:  .venv/bin/python bench/remote_bench.py [--rows 300000] [--infer-rows 50000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
from tfospipe import tfenv  # noqa: E402

tfenv.prepare_tensorflow(quiet=True)  # before anything imports TensorFlow

import common  # noqa: E402

BUCKET = "tfos-bench"
CONVERT, INFER = "convert-bench", "infer-bench"
#: One request line of moto_server's (werkzeug's) log: method, path and query (werkzeug colours some
#: lines, e.g. a 206 answer, with ANSI escapes inside the quotes).
REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|HEAD|DELETE) (/[^ ]*) HTTP/')


def start_moto(log_path: str) -> tuple[subprocess.Popen, str]:
    """Start the venv's ``moto_server`` on a free loopback port, logging to ``log_path``, and create the
    bucket :data:`BUCKET`: returns (process, endpoint URL). Raises RuntimeError when it does not answer
    within 60 s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    log = open(log_path, "w")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_moto(proc)
                raise RuntimeError(f"moto_server did not answer on {endpoint}; see {log_path}") from None
            time.sleep(0.2)
    import boto3
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)
    return proc, endpoint


def stop_moto(proc: subprocess.Popen) -> None:
    """Stop moto_server's process group (SIGTERM, then SIGKILL after 15 s)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def use_moto(endpoint: str, scratch: str) -> None:
    """Point this process's environment (so spark-submit's, the driver's and the executors') at the
    moto endpoint with dummy keys, no AWS config file, profile or session token."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_ENDPOINT_URL_S3": endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.path.join(scratch, "no-config"),
                       "AWS_SHARED_CREDENTIALS_FILE": os.path.join(scratch, "no-credentials")})


def requests_in(log_path: str, offset: int) -> tuple[collections.Counter, int]:
    """S3 requests logged by moto_server from byte ``offset`` of its log: (count per kind, new offset).
    Kinds: ``list`` (a GET of the bucket itself), ``GET``, ``HEAD``, ``PUT``, ``POST``, ``DELETE``."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
        end = f.tell()
    counts = collections.Counter()
    for method, path in REQUEST.findall(text):
        if path.startswith("/moto-api"):
            continue
        key = path.split("?", 1)[0].strip("/").partition("/")[2]
        counts["list" if method == "GET" and not key else method] += 1
    return counts, end


def prepare(local_root: str, rows: int, infer_rows: int) -> int:
    """Write the raw data of both versions under ``local_root``: :data:`CONVERT` (``rows`` labeled rows,
    one CSV) and :data:`INFER` (200 labeled rows and ``infer_rows`` unlabeled ones in ``score/``).
    Returns the bytes of the convert version's CSV."""
    from tfospipe import paths

    layout = paths.Layout(local_root)
    csv = common.write_mnist_csv(os.path.join(layout.raw(CONVERT), "mnist.csv"), rows)
    common.write_mnist_csv(os.path.join(layout.raw(INFER), "labeled.csv"), 200)
    common.write_mnist_csv(os.path.join(layout.raw(INFER), "score", "rows.csv"), infer_rows, labeled=False)
    return os.path.getsize(csv)


def promote_seed_model(roots: list[str], scratch: str) -> str:
    """Export the seed CNN (untrained, 28x28, pixel max 255) once and promote it to serving on every root
    (serving.promote copies it there); returns its model version."""
    from tfospipe import model, paths, serving

    model_dir = os.path.join(scratch, "seed-model")
    model.export(model.build_model((28, 28), 255), model_dir, (28, 28))
    digest = serving.model_digest(model_dir)
    mv = paths.model_version("bench", "seed", digest)
    for root in roots:
        serving.promote(paths.Layout(root), model_dir, mv, {"accuracy": 0.0}, digest)
    return mv


def timed_job(job: str, job_args: dict, master: str, moto_log: str) -> dict:
    """Run ``job`` (common.run_job): wall seconds, its manifest, and the S3 requests it made."""
    from tfospipe import fs, paths

    layout = paths.Layout(job_args["data_root"])
    offset = os.path.getsize(moto_log)
    t = time.time()
    common.run_job(job, job_args, master)
    wall = time.time() - t
    out = layout.tfrecords(job_args["version"]) if job == "convert" else layout.predictions(job_args["version"])
    manifest = fs.read_json(paths.join(out, fs.MANIFEST))
    requests, _end = requests_in(moto_log, offset)
    return {"wall": wall, "manifest": manifest, "requests": requests}


def convert_figures(run: dict, rows: int, csv_bytes: int) -> dict:
    """Steady figures of a convert run: rows/s, MB/s, and its time split (seconds)."""
    m = run["manifest"]
    data = m["data_seconds"]["scan"] + m["data_seconds"]["convert"]
    return {"wall": run["wall"], "rate": rows / data, "mbs": csv_bytes / data / 1e6,
            "split": {"scan pass (read, checksum)": m["pass_seconds"]["scan"],
                      "convert pass (read, encode, write)": m["pass_seconds"]["convert"],
                      "rest (start-up, listing, sniffing, commit)":
                          run["wall"] - m["pass_seconds"]["scan"] - m["pass_seconds"]["convert"]},
            "requests": run["requests"]}


def infer_figures(run: dict, tfrecord_bytes: int) -> dict:
    """Steady figures of an infer run: rows/s, MB/s of TFRecords, and its time split (seconds)."""
    m = run["manifest"]
    timings = m["partition_timings"]
    scoring = max(t["end"] for t in timings) - min(t["start"] for t in timings)
    loads = max(t["load_seconds"] for t in timings)
    return {"wall": run["wall"], "rate": m["predict_rows_per_second"], "mbs": tfrecord_bytes / scoring / 1e6,
            "split": {"model download + load (slowest executor)": loads,
                      "scoring (read, parse, predict)": scoring,
                      "rest (start-up, Parquet write, commit)": run["wall"] - loads - scoring},
            "requests": run["requests"]}


def print_job(title: str, figures: dict[str, list[dict]]) -> None:
    """Print one job's runs per root, medians, the s3/local ratios and where the difference goes."""
    print(title)
    med = {}
    for root, runs in figures.items():
        for i, f in enumerate(runs):
            print(f"  {root:<5} run {i + 1}: wall {f['wall']:6.1f} s   steady {f['rate']:8.0f} rows/s "
                  f"{f['mbs']:6.1f} MB/s")
        med[root] = {k: statistics.median(f[k] for f in runs) for k in ("wall", "rate", "mbs")}
        med[root]["split"] = {k: statistics.median(f["split"][k] for f in runs) for k in runs[0]["split"]}
    loc, s3 = med["local"], med["s3"]
    print(f"  s3/local (medians): wall {s3['wall'] / loc['wall']:.2f}x, steady rows/s {s3['rate'] / loc['rate']:.2f}x, "
          f"MB/s {s3['mbs'] / loc['mbs']:.2f}x")
    parts = ", ".join(f"{k} {loc['split'][k]:.1f} -> {s3['split'][k]:.1f} s" for k in loc["split"])
    reqs = figures["s3"][-1]["requests"]
    print(f"  where the difference goes (local -> s3): {parts}; S3 requests of the last s3 run: "
          f"{sum(reqs.values())} ({', '.join(f'{k} {v}' for k, v in reqs.most_common())})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=300_000, help="labeled rows the convert job converts")
    p.add_argument("--infer-rows", type=int, default=50_000, help="unlabeled rows the infer job scores")
    p.add_argument("--batch-size", type=int, default=1024, help="the infer job's batch size")
    p.add_argument("--repeat", type=int, default=1, help="runs per job and root, alternating local and s3")
    p.add_argument("--master", default="local-cluster[2,1,2048]", help="Spark master")
    args = p.parse_args()
    from tfospipe import fs, paths

    common.print_facts()
    scratch = tempfile.mkdtemp(prefix="tfos-remote-bench-")
    moto_log = os.path.join(scratch, "moto_server.log")
    proc, endpoint = start_moto(moto_log)
    try:
        use_moto(endpoint, scratch)
        roots = {"local": os.path.join(scratch, "root"), "s3": f"s3://{BUCKET}/root"}
        print(f"preparing {args.rows} + {args.infer_rows} rows, local root {roots['local']}, "
              f"s3 root {roots['s3']} on {endpoint} ...", flush=True)
        csv_bytes = prepare(roots["local"], args.rows, args.infer_rows)
        for version in (CONVERT, INFER):
            fs.copytree(paths.Layout(roots["local"]).raw(version), paths.Layout(roots["s3"]).raw(version))
        promote_seed_model(list(roots.values()), scratch)
        for root in roots.values():  # the infer version's TFRecords, on each root by the convert job
            common.run_job("convert", {"data_root": root, "version": INFER, "num_shards": 4}, args.master)
        score_dir = paths.Layout(roots["local"]).split(INFER, "score")
        tfrecord_bytes = sum(os.path.getsize(f) for f in fs.glob(paths.join(score_dir, "*.tfrecord")))

        convert, infer = {r: [] for r in roots}, {r: [] for r in roots}
        for _ in range(args.repeat):
            for name, root in roots.items():
                run = timed_job("convert", {"data_root": root, "version": CONVERT, "num_shards": 4},
                                args.master, moto_log)
                convert[name].append(convert_figures(run, args.rows, csv_bytes))
                fs.delete_output(paths.Layout(root).tfrecords(CONVERT))
                print(f"convert on {name}: {run['wall']:.1f} s", flush=True)
        for _ in range(args.repeat):
            for name, root in roots.items():
                run = timed_job("infer", {"data_root": root, "version": INFER, "batch_size": args.batch_size},
                                args.master, moto_log)
                infer[name].append(infer_figures(run, tfrecord_bytes))
                fs.delete_output(paths.Layout(root).predictions(INFER))
                print(f"infer on {name}: {run['wall']:.1f} s", flush=True)

        print()
        common.print_facts()
        print_job(f"convert, {args.rows:,} rows ({csv_bytes / 1e6:.0f} MB CSV), 2 executors x 1 core:", convert)
        print_job(f"infer, {args.infer_rows:,} rows ({tfrecord_bytes / 1e6:.0f} MB TFRecords), batch "
                  f"{args.batch_size}, 2 executors x 1 core:", infer)
    finally:
        stop_moto(proc)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
