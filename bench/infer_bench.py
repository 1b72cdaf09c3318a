"""Inference benchmark: the seed CNN on MNIST-size rows (28x28, 0-255), three ways, side by side.

(a) naive    one process, batches of 10 through the serving signature (the seed's loop)
(b) batched  one process, large batches, TensorFlow using every core (the practical limit)
(c) job      the infer Spark job: one single-node TensorFlow per executor, model loaded once each

Rows/s are steady state: model loading, TFRecord conversion and Spark start-up are excluded and
the Spark start-up is reported separately. Run:  .venv/bin/python bench/infer_bench.py [--rows 50000]
"""

import argparse
import json
import os
import shutil
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

VERSION = "bench"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000, help="rows to score in (b) and (c)")
    p.add_argument("--naive-rows", type=int, default=5_000, help="rows for (a), whose rows/s is flat in N")
    p.add_argument("--batch-size", type=int, default=1024, help="batch size of (b) and (c)")
    p.add_argument("--master", default="local-cluster[2,1,2048]", help="Spark master of (c)")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    args = p.parse_args()
    common.print_facts()

    import tensorflow as tf

    from tfospipe import model, paths, schema, serving

    root = tempfile.mkdtemp(prefix="tfos-infer-bench-")
    layout = paths.Layout(root)
    try:
        print(f"preparing {args.rows} MNIST-size rows in {root} ...", flush=True)
        # the rows to score are unlabeled (score/): the infer job scores the score split when there is one
        common.write_mnist_csv(os.path.join(layout.raw(VERSION), "labeled.csv"), 200)
        common.write_mnist_csv(os.path.join(layout.raw(VERSION), "score", "rows.csv"), args.rows, labeled=False)
        common.run_job("convert", {"data_root": root, "version": VERSION, "num_shards": 4}, args.master)
        cnn = model.build_model((28, 28), 255)
        model.export(cnn, os.path.join(root, "seed-model"), (28, 28))
        seed_model = os.path.join(root, "seed-model")
        digest = serving.model_digest(seed_model)
        serving.promote(layout, seed_model, paths.model_version("bench", "seed", digest), {"accuracy": 0.0}, digest)

        files = sorted(tf.io.gfile.glob(os.path.join(layout.split(VERSION, "score"), "*.tfrecord")))
        records = [r.numpy() for f in files for r in tf.data.TFRecordDataset(f)]
        images = schema.parse_batch(tf.constant(records), (28, 28))[0].numpy()
        predict = model.load_serving(os.path.join(root, "seed-model"), (28, 28))
        predict(images[:10])
        predict(images[:args.batch_size])  # warm both batch shapes

        n = min(args.naive_rows, len(images))
        t = time.perf_counter()
        for i in range(0, n, 10):
            predict(images[i:i + 10])
        naive = n / (time.perf_counter() - t)

        t = time.perf_counter()
        for i in range(0, len(images), args.batch_size):
            predict(images[i:i + args.batch_size])
        batched = len(images) / (time.perf_counter() - t)

        t = time.perf_counter()
        common.run_job("infer", {"data_root": root, "version": VERSION, "batch_size": args.batch_size}, args.master)
        job_wall = time.perf_counter() - t
        manifest = json.load(open(os.path.join(layout.predictions(VERSION), "_manifest.json")))
        job = manifest["predict_rows_per_second"]
        loads = sum(x["load_seconds"] for x in manifest["partition_timings"])

        print()
        common.print_facts()
        print(f"rows: {len(images)}  (naive: {n})   threads: (a)(b) TensorFlow default in one process, "
              f"(c) {manifest['partitions']} partitions on 2 executors x 1 intra-op thread")
        print(f"(a) naive, batches of 10, one process   {naive:10.0f} rows/s")
        print(f"(b) one process, batches of {args.batch_size:<5}      {batched:10.0f} rows/s   {batched / naive:5.2f}x (a)")
        print(f"(c) infer Spark job, batches of {args.batch_size:<5}  {job:10.0f} rows/s   {job / naive:5.2f}x (a)   "
              f"{job / batched:5.2f}x (b)   goal >= 0.80x (b)")
        print(f"    job wall {job_wall:.1f} s = start-up and write {job_wall - len(images) / job:.1f} s "
              f"+ steady scoring {len(images) / job:.1f} s; model loads {manifest['model_loads']} "
              f"({loads:.1f} s in all)")
    finally:
        if args.keep:
            print(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
