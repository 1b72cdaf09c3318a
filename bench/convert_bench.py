"""Conversion benchmark: CSV -> TFRecord on MNIST-size rows (28x28, 0-255), side by side.

(a) naive  one process, one tf.train.Example per row built with the protobuf API and written with
           TFRecordWriter (what TFoS's mnist_data_setup.py does)
(b) job    the convert Spark job on a 2-executor cluster (bulk numpy parsing and encoding, TFRecord
           framing without TensorFlow, one task per byte range of the input)

For each size it prints the whole-job wall time and the steady-state throughput (rows/s over the
data: for the job, the time its executors spend in its two passes over the data, Spark and Python
worker start-up excluded), and the ratios.
Run:  .venv/bin/python bench/convert_bench.py [--sizes 60000 300000]
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[60_000, 300_000], help="rows per run")
    p.add_argument("--master", default="local-cluster[2,1,2048]", help="Spark master of (b)")
    p.add_argument("--naive", nargs=2, metavar=("CSV", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.naive:
        return naive(*args.naive)

    import common
    from tfospipe import paths

    common.print_facts()

    root = tempfile.mkdtemp(prefix="tfos-convert-bench-")
    layout = paths.Layout(root)
    base = 60_000
    try:
        seed_csv = common.write_mnist_csv(os.path.join(root, "seed.csv"), base)
        with open(seed_csv, "rb") as f:
            header, body = f.readline(), f.read()
        rows_out = []
        for n in args.sizes:
            version = f"rows-{n}"
            csv_path = os.path.join(layout.raw(version), "mnist.csv")
            os.makedirs(os.path.dirname(csv_path))
            with open(csv_path, "wb") as f:  # repeat the seed rows up to n (row ids differ by line)
                f.write(header)
                for _ in range(n // base):
                    f.write(body)
                if n % base:
                    f.write(b"".join(body.splitlines(keepends=True)[:n % base]))
            mb = os.path.getsize(csv_path) / 1e6

            t = time.time()
            out = subprocess.run([sys.executable, __file__, "--naive", csv_path, os.path.join(root, "naive.tfrecord")],
                                 check=True, stdout=subprocess.PIPE, text=True).stdout
            naive_wall = time.time() - t
            a = json.loads(out.strip().splitlines()[-1])

            t = time.time()
            common.run_job("convert", {"data_root": root, "version": version, "num_shards": 4}, args.master)
            job_wall = time.time() - t
            m = json.load(open(os.path.join(layout.tfrecords(version), "_manifest.json")))
            assert m["rows_written"] == n, m["rows_written"]
            data_seconds = m["data_seconds"]["scan"] + m["data_seconds"]["convert"]
            rows_out.append((n, mb, naive_wall, a["rows"] / a["seconds"], job_wall, n / data_seconds, m))
            os.remove(os.path.join(root, "naive.tfrecord"))
            shutil.rmtree(layout.tfrecords(version))

        print()
        common.print_facts()
        for n, mb, naive_wall, naive_rate, job_wall, job_rate, m in rows_out:
            print(f"{n} rows ({mb:.0f} MB CSV):")
            print(f"  (a) naive, one process     wall {naive_wall:7.1f} s   steady {naive_rate:8.0f} rows/s")
            print(f"  (b) convert job, 2 execs   wall {job_wall:7.1f} s   steady {job_rate:8.0f} rows/s   "
                  f"(executors on the data: scan {m['data_seconds']['scan']:.1f} s + convert "
                  f"{m['data_seconds']['convert']:.1f} s; passes incl. task start-up "
                  f"{m['pass_seconds']['scan']:.1f} + {m['pass_seconds']['convert']:.1f} s)")
            print(f"  ratios (b)/(a): whole job {naive_wall / job_wall:5.2f}x faster, steady state "
                  f"{job_rate / naive_rate:5.2f}x   (goals: whole job at 60,000 rows < naive; steady >= 5x at 300,000)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
