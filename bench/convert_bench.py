"""Conversion benchmark: CSV -> TFRecord on MNIST-size rows (28x28, 0-255), side by side.

(a) naive   one process, one tf.train.Example per row built with the protobuf API and written with
            TFRecordWriter (what TFoS's mnist_data_setup.py does)
(b) job     the convert Spark job on a 2-executor cluster (bulk numpy parsing and encoding, TFRecord
            framing without TensorFlow, one task per byte range of the input)
(p) parser  pyarrow.csv.read_csv of the whole file in one process (Arrow's multi-threaded C++ CSV
            parser, all cores, column types inferred): the CSV parser's own speed on the same file,
            which the conversion is compared with
Then, on one core and the first 60,000 rows, the parse alone: pyarrow.csv.read_csv (one thread, uint16
columns) against csvparse.parse_clean (the job's parser of clean blocks), as the issue asked to try
pyarrow.csv for clean blocks.

For each size it prints rows/s and MB/s of CSV, and MB/s per core (divided by the cores each one
used: 1 for (a), the executors for (b), the CPUs for (p)). Steady state of (b): the rows over the
time its executors spend in its two passes over the data (first task start to last task end of the
scan pass, then of the convert pass, from the manifest's ``data_seconds``). Start-up is reported
apart: the whole job's wall time minus its two passes (Spark application and executors, sniffing the
inputs, commit), and each pass's task scheduling and Python worker start (pass minus data seconds).
Goal: (b) steady >= 8x (a) at 300,000 rows.

``--statistics both`` runs (b) with the splits' statistics off and on (``--statistics off|on``, the
job's flag; the DAG runs it on), alternately, ``--repeat`` times each at every size, and prints both
steady throughputs and their ratio (goal: on >= 0.9x off, the statistics costing at most 10%);
``--job-only`` leaves out (a), (p) and the one-core parse.
Run:  .venv/bin/python bench/convert_bench.py [--sizes 300000] [--statistics both [--repeat 2] [--job-only]]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
#: Rows of the seed file every size repeats, and of the one-core parse comparison.
SEED_ROWS = 60_000


def naive(csv_path, out_path):
    """(a), in a child process: prints rows and seconds of the data loop as JSON."""
    import tensorflow as tf
    t = time.time()
    rows = 0
    with open(csv_path) as f, tf.io.TFRecordWriter(out_path) as writer:
        next(f)  # header
        for line in f:
            values = [int(v) for v in line.split(",")]
            example = tf.train.Example(features=tf.train.Features(feature={
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=values[:1])),
                "image": tf.train.Feature(int64_list=tf.train.Int64List(value=values[1:])),
            }))
            writer.write(example.SerializeToString())
            rows += 1
    print(json.dumps({"rows": rows, "seconds": time.time() - t}))


def arrow_parse(csv_path):
    """(p), in a child process: pyarrow.csv.read_csv of the whole file, all cores; prints JSON."""
    import pyarrow.csv as pc
    t = time.time()
    table = pc.read_csv(csv_path)
    print(json.dumps({"rows": table.num_rows, "seconds": time.time() - t, "threads": os.cpu_count()}))


def parse_one_core(csv_path):
    """In a child process with the executors' allocator: seconds of pyarrow.csv (one thread, uint16
    columns) and of csvparse.parse_clean over the blocks the job parses (csvparse.chunks), same bytes,
    one core, both checked to give the same values; prints JSON."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pc

    from tfospipe import csvparse

    with open(csv_path, "rb") as f:
        header, body = f.readline(), f.read()
    columns = header.decode().strip().split(",")
    t = time.perf_counter()
    table = pc.read_csv(csv_path, read_options=pc.ReadOptions(use_threads=False),
                        convert_options=pc.ConvertOptions(column_types={c: pa.uint16() for c in columns}))
    arrow_seconds = time.perf_counter() - t
    t = time.perf_counter()
    parts = [csvparse.parse_clean(block, len(columns)) for _offset, block in csvparse.chunks(body)]
    ours_seconds = time.perf_counter() - t
    ours = np.concatenate(parts)
    assert (ours[:1000] == np.column_stack([table.column(i).to_numpy()[:1000] for i in range(len(columns))])).all()
    print(json.dumps([table.num_rows, len(body) / 1e6, arrow_seconds, ours_seconds]))


def run_convert(root, version, n, master, statistics):
    """(b) once: the convert job with ``--statistics``; returns (whole-job wall seconds, manifest). The
    output is removed after."""
    import common
    from tfospipe import fs, paths

    layout = paths.Layout(root)
    t = time.time()
    common.run_job("convert", {"data_root": root, "version": version, "num_shards": 4, "statistics": statistics},
                   master)
    job_wall = time.time() - t
    m = json.load(open(os.path.join(layout.tfrecords(version), fs.MANIFEST)))
    assert m["rows_written"] == n, m["rows_written"]
    assert os.path.exists(layout.stats(version)) == (statistics == "on")
    fs.delete_output(layout.tfrecords(version))
    return job_wall, m


def steady(n, m):
    """(b)'s steady rows/s: rows over its executors' seconds on the data (scan + convert passes)."""
    return n / (m["data_seconds"]["scan"] + m["data_seconds"]["convert"])


def print_statistics_cost(n, runs):
    """The side-by-side of ``--statistics both``: each run's steady rows/s, off and on, the ratio of their medians
    and the median of the ratios of each alternating pair (off, then on: the same machine state), and the
    convert tasks' CPU microseconds per row (the manifest's ``task_cpu_seconds``: what the rows cost on the
    executors' cores, whatever else ran meanwhile)."""
    import statistics as st
    rates = {mode: [steady(n, m) for _wall, m in runs[mode]] for mode in ("off", "on")}
    cpu = {mode: [sum(m["task_cpu_seconds"]["convert"]) / n * 1e6 for _wall, m in runs[mode]] for mode in ("off", "on")}
    for mode in ("off", "on"):
        print(f"  (b) statistics {mode:3}, steady  {st.median(rates[mode]):8.0f} rows/s (median of "
              f"{len(rates[mode])}: {', '.join(f'{r:.0f}' for r in rates[mode])}; convert pass data seconds "
              f"{', '.join(str(m['data_seconds']['convert']) for _w, m in runs[mode])}); convert tasks' CPU "
              f"{st.median(cpu[mode]):.2f} us/row (median of {', '.join(f'{c:.2f}' for c in cpu[mode])})")
    ratio = st.median(rates["on"]) / st.median(rates["off"])
    paired = st.median(on / off for on, off in zip(rates["on"], rates["off"]))
    cpu_cost = st.median(cpu["on"]) / st.median(cpu["off"]) - 1
    print(f"  statistics on / off: {ratio:.3f}x steady throughput ({(1 - ratio) * 100:+.1f}% cost; goal <= 10%); "
          f"median of the {len(rates['on'])} pairs' ratios {paired:.3f}x; convert tasks' CPU per row "
          f"{cpu_cost * 100:+.1f}%")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[300_000], help="rows per run")
    p.add_argument("--master", default="local-cluster[2,1,2048]", help="Spark master of (b)")
    p.add_argument("--executors", type=int, default=2, help="executors of --master (the cores (b) uses)")
    p.add_argument("--statistics", choices=("on", "off", "both"), default="on",
                   help="(b) with the job's --statistics on (as the DAG), off, or both side by side")
    p.add_argument("--repeat", type=int, default=1, help="with --statistics both: runs of each, alternating")
    p.add_argument("--job-only", action="store_true", help="only (b): leave out (a), (p) and the one-core parse")
    p.add_argument("--naive", nargs=2, metavar=("CSV", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--arrow", metavar="CSV", help=argparse.SUPPRESS)
    p.add_argument("--parse", metavar="CSV", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.naive:
        return naive(*args.naive)
    if args.arrow:
        return arrow_parse(args.arrow)
    if args.parse:
        return parse_one_core(args.parse)

    import common
    from tfospipe import launch, paths

    common.print_facts()
    root = tempfile.mkdtemp(prefix="tfos-convert-bench-")
    layout = paths.Layout(root)
    try:
        seed_csv = common.write_mnist_csv(os.path.join(root, "seed.csv"), SEED_ROWS)
        parse = None
        if not args.job_only:
            malloc = {"LD_PRELOAD": launch.executor_malloc()} if launch.executor_malloc() else {}
            out = subprocess.run([sys.executable, __file__, "--parse", seed_csv], env={**os.environ, **malloc},
                                 check=True, stdout=subprocess.PIPE, text=True).stdout
            parse = json.loads(out.strip().splitlines()[-1])
        results = []
        for n in args.sizes:
            version = f"rows-{n}"
            csv_path = write_rows(seed_csv, os.path.join(layout.raw(version), "mnist.csv"), n)
            mb = os.path.getsize(csv_path) / 1e6
            baselines = None if args.job_only else run_baselines(root, csv_path, n)
            modes = ["off", "on"] * args.repeat if args.statistics == "both" else [args.statistics]
            runs = {"off": [], "on": []}
            for mode in modes:  # alternating, so a change in the machine's load hits both alike
                runs[mode].append(run_convert(root, version, n, args.master, mode))
            results.append((n, mb, baselines, runs))
        print()
        common.print_facts()
        for n, mb, baselines, runs in results:
            print_size(n, mb, baselines, runs, args)
        if parse:
            rows, mb, arrow_s, ours_s = parse
            print(f"parse only, one core, {rows} rows ({mb:.0f} MB): pyarrow.csv.read_csv (1 thread, uint16 columns) "
                  f"{mb / arrow_s:6.1f} MB/s ({arrow_s / rows * 1e6:.1f} us/row); csvparse.parse_clean "
                  f"{mb / ours_s:6.1f} MB/s ({ours_s / rows * 1e6:.1f} us/row): {arrow_s / ours_s:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def write_rows(seed_csv, csv_path, n):
    """The input of one size: the seed file's header, then its rows repeated up to ``n`` (row ids differ by line)."""
    with open(seed_csv, "rb") as f:
        header, body = f.readline(), f.read()
    os.makedirs(os.path.dirname(csv_path))
    with open(csv_path, "wb") as f:
        f.write(header)
        for _ in range(n // SEED_ROWS):
            f.write(body)
        if n % SEED_ROWS:
            f.write(b"".join(body.splitlines(keepends=True)[:n % SEED_ROWS]))
    return csv_path


def run_baselines(root, csv_path, n):
    """(a) and (p) on one input, each in a child process: ``(naive wall seconds, (a)'s JSON, (p)'s JSON)``."""
    t = time.time()
    out = subprocess.run([sys.executable, __file__, "--naive", csv_path, os.path.join(root, "naive.tfrecord")],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    naive_wall = time.time() - t
    a = json.loads(out.strip().splitlines()[-1])
    os.remove(os.path.join(root, "naive.tfrecord"))
    out = subprocess.run([sys.executable, __file__, "--arrow", csv_path],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    arrow = json.loads(out.strip().splitlines()[-1])
    assert arrow["rows"] == n, arrow
    return naive_wall, a, arrow


def print_size(n, mb, baselines, runs, args):
    """The figures of one size: (a), (b) (its first run with statistics on, else off), (p), the ratios, and
    with ``--statistics both`` the cost of the statistics."""
    job_wall, m = (runs["on"] or runs["off"])[0]
    data = m["data_seconds"]["scan"] + m["data_seconds"]["convert"]
    passes = m["pass_seconds"]["scan"] + m["pass_seconds"]["convert"]
    job_rate = n / data
    print(f"{n} rows ({mb:.0f} MB CSV):")
    if baselines:
        naive_wall, a, _arrow = baselines
        print(f"  (a) naive, one process       {a['rows'] / a['seconds']:8.0f} rows/s  {mb / a['seconds']:6.1f} MB/s  "
              f"{mb / a['seconds']:6.1f} MB/s per core   (wall {naive_wall:.1f} s)")
    print(f"  (b) convert job, steady      {job_rate:8.0f} rows/s  {mb / data:6.1f} MB/s  "
          f"{mb / data / args.executors:6.1f} MB/s per core   (statistics {m['params']['statistics']}; executors "
          f"on the data: scan {m['data_seconds']['scan']:.2f} s + convert {m['data_seconds']['convert']:.2f} s; "
          f"task seconds {m['task_seconds']})")
    print(f"      start-up, reported apart: whole job {job_wall:.1f} s = passes {passes:.1f} s + "
          f"{job_wall - passes:.1f} s outside them (Spark application and executors, sniffing, commit); "
          f"in the passes {passes - data:.1f} s of task scheduling and Python worker start")
    if baselines:
        naive_wall, a, arrow = baselines
        naive_rate, arrow_rate = a["rows"] / a["seconds"], arrow["rows"] / arrow["seconds"]
        print(f"  (p) pyarrow.csv.read_csv     {arrow_rate:8.0f} rows/s  "
              f"{mb / arrow['seconds']:6.1f} MB/s  {mb / arrow['seconds'] / arrow['threads']:6.1f} MB/s per core"
              f"   (one process, {arrow['threads']} threads, types inferred, parse only)")
        print(f"  ratios: (b)/(a) steady {job_rate / naive_rate:5.2f}x (goal >= 8x at 300,000 rows); "
              f"(b)/(p) {job_rate / arrow_rate:5.2f}x; whole job vs (a): {naive_wall / job_wall:5.2f}x faster")
    if runs["on"] and runs["off"]:
        print_statistics_cost(n, runs)

if __name__ == "__main__":
    main()
