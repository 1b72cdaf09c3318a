"""The infer executor's loop (read, parse, predict) on one core with the executors' thread settings,
in variants of how tf.data and the model share the process: wall and CPU seconds of each.

    job          predict.batches as the job runs it: TFRecordDataset.batch.map(parse).prefetch(2)
    no-prefetch  the same pipeline without prefetch
    eager-parse  tf.data reads and batches the serialized records only; schema.parse_batch is called
                 eagerly in the loop, between model calls
    arrays       the model alone on the parsed arrays (the loop's floor)

Wall well above CPU on a pinned core means the loop waits: the model and tf.data hand work to each
other through the one inter-op thread (TF_NUM_INTEROP_THREADS=1), and each hand-off waits for the
core when other processes want it. ``--all-cores`` runs the same variants with TensorFlow's default
threads on every core, as (b) and (b') of infer_bench.py do.
Writes its own shards (schema.encode_examples, no Spark). Run:
    .venv/bin/python bench/infer_loop.py [--rows 20000] [--model seed|noop] [--interop 1] [--all-cores]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import psutil

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_shards(root: str, rows: int, shards: int = 4) -> list[str]:
    """``shards`` TFRecord files of ``rows`` unlabeled MNIST-size rows in ``root`` (as convert writes them)."""
    import common
    from tfospipe import schema

    _, pixels = common.mnist_like(rows)
    records = schema.encode_examples(pixels, row_ids=list(range(rows)))
    files = []
    for i in range(shards):
        files.append(os.path.join(root, schema.shard_name(i)))
        with open(files[-1], "wb") as f:
            for r in records[i::shards]:
                f.write(schema.tfrecord_frame(r))
    return files


def variants(files: list[str], predict, batch_size: int) -> dict:
    """{variant: callable running it once over ``files``} (see the module docstring)."""
    import tensorflow as tf

    from tfospipe import predict as predict_lib
    from tfospipe import schema

    shape = (28, 28)

    def job():
        for images, _, _ in predict_lib.batches(files, shape, batch_size):
            predict(images)

    def no_prefetch():
        ds = tf.data.TFRecordDataset(files).batch(batch_size).map(lambda s: schema.parse_batch(s, shape))
        for images, _, _ in ds:
            predict(images.numpy())

    def eager_parse():
        for serialized in tf.data.TFRecordDataset(files).batch(batch_size):
            predict(schema.parse_batch(serialized, shape)[0].numpy())

    parsed = [b[0] for b in predict_lib.batches(files, shape, batch_size)]

    def arrays():
        for images in parsed:
            predict(images)

    return {"job": job, "no-prefetch": no_prefetch, "eager-parse": eager_parse, "arrays": arrays}


def main() -> None:
    """Write the shards and the model, run each variant --repeat times, print the best of each."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--model", choices=("seed", "noop"), default="seed")
    p.add_argument("--interop", default="1", help="TF_NUM_INTEROP_THREADS (the executors': 1)")
    p.add_argument("--repeat", type=int, default=2, help="rounds over the variants (best of)")
    p.add_argument("--all-cores", action="store_true",
                   help="TensorFlow's default threads on every core, as (b) and (b') of infer_bench.py")
    args = p.parse_args()
    if not args.all_cores:
        from tfospipe import launch
        os.environ.update({**launch.TF_ENV, "TF_NUM_INTEROP_THREADS": args.interop})
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as one executor has
    import common
    import infer_bench
    from tfospipe import model

    common.print_facts()
    root = tempfile.mkdtemp(prefix="tfos-infer-loop-")
    files = write_shards(root, args.rows)
    keras_model = model.build_model((28, 28), 255) if args.model == "seed" else infer_bench.noop_model((28, 28))
    model.export(keras_model, os.path.join(root, "model"), (28, 28))
    predict = model.load_serving(os.path.join(root, "model"), (28, 28))
    runs = variants(files, predict, args.batch_size)
    best, me = {}, psutil.Process()
    for _ in range(args.repeat):
        for name, fn in runs.items():
            s0 = me.num_ctx_switches().voluntary
            w, c = time.perf_counter(), time.process_time()
            fn()
            w, c = time.perf_counter() - w, time.process_time() - c
            s = me.num_ctx_switches().voluntary - s0
            if name not in best or w < best[name][0]:
                best[name] = (w, c, s)
    where = "every core, TensorFlow's default threads" if args.all_cores else \
        f"one core, TF_ENV threads, TF_NUM_INTEROP_THREADS={args.interop}"
    print(f"{args.rows} rows, {args.model} model, batch {args.batch_size}, {where} (best of {args.repeat})")
    for name, (w, c, s) in best.items():
        print(f"  {name:<12} {w:6.2f} s wall {c:6.2f} s CPU  {args.rows / w:8.0f} rows/s  "
              f"{s / -(-args.rows // args.batch_size):7.1f} voluntary context switches per batch")


if __name__ == "__main__":
    main()
