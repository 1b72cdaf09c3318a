"""The infer executor's loop (read, parse, predict) on one core with the executors' thread settings,
in variants of how tf.data and the model share the process: wall and CPU seconds of each.

    job          predict.batches as the job runs it: the streamed shard reader (schema.shard_records)
                 and tf.io.parse_example per batch, no tf.data
    tf.data      TFRecordDataset.batch.map(parse).prefetch(2) (the job's reader before)
    tf.data-no-autotune  the same with tf.data's autotuning disabled
    no-prefetch  the tf.data pipeline without prefetch
    eager-parse  tf.data reads and batches the serialized records only; schema.parse_batch is called
                 eagerly in the loop, between model calls
    arrays       the model alone on the parsed arrays (the loop's floor)

Wall well above CPU on a pinned core means the loop waits: the model and tf.data hand work to each
other through the one inter-op thread (TF_NUM_INTEROP_THREADS=1), and each hand-off waits for the
core when other processes want it. ``--all-cores`` runs the same variants with TensorFlow's default
threads on every core, as (b) and (b') of infer_bench.py do. ``--unpinned`` keeps the executors' threads
but not the pinning: two copies started at once with the same ``--variants`` show what two executors
side by side on two cores get (with tf.data's autotuning the cores were ~38% idle).
Writes its own shards (schema.encode_examples, no Spark). Run:
    .venv/bin/python bench/infer_loop.py [--rows 20000] [--model seed|noop] [--interop 1] [--all-cores]
        [--unpinned] [--variants job,tf.data]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import psutil

from tfospipe import tfenv  # noqa: E402

tfenv.prepare_tensorflow(quiet=True)  # before anything imports TensorFlow


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

    def tf_data(autotune=True):
        ds = tf.data.TFRecordDataset(files).batch(batch_size).map(lambda s: schema.parse_batch(s, shape))
        options = tf.data.Options()
        options.autotune.enabled = autotune
        for images, _, _ in ds.with_options(options).prefetch(2):
            predict(images.numpy())

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

    return {"job": job, "tf.data": tf_data, "tf.data-no-autotune": lambda: tf_data(False), "no-prefetch": no_prefetch,
            "eager-parse": eager_parse, "arrays": arrays}


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
    p.add_argument("--unpinned", action="store_true", help="the executors' threads, but not pinned to one core")
    p.add_argument("--variants", default="", help="comma-separated variants to run (default: all)")
    args = p.parse_args()
    if not args.all_cores:
        from tfospipe import launch
        os.environ.update({**launch.TF_ENV, "TF_NUM_INTEROP_THREADS": args.interop})
        if not args.unpinned:
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
    if args.variants:
        runs = {name: runs[name] for name in args.variants.split(",")}
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
        f"{'unpinned' if args.unpinned else 'one core'}, TF_ENV threads, TF_NUM_INTEROP_THREADS={args.interop}"
    print(f"{args.rows} rows, {args.model} model, batch {args.batch_size}, {where} (best of {args.repeat})")
    for name, (w, c, s) in best.items():
        print(f"  {name:<12} {w:6.2f} s wall {c:6.2f} s CPU  {args.rows / w:8.0f} rows/s  "
              f"{s / -(-args.rows // args.batch_size):7.1f} voluntary context switches per batch")


if __name__ == "__main__":
    main()
