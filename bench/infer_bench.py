"""Inference benchmark: the seed CNN on MNIST-size rows (28x28, 0-255), four ways, side by side.

(a)  naive    one process, batches of 10 through the serving signature (the seed's loop)
(b)  batched  one process, large batches of in-memory arrays, TensorFlow using every core
(b') files    one process, TensorFlow using every core: reads the same TFRecord shards as the job, with
              the job's reader (predict.batches), predicts in batches of the same size and writes the
              same Parquet (the job's output schema) with pyarrow: what a user would run instead of
              Spark; also shown reading with tf.data (TFRecordDataset, the project's parse, prefetch)
(c)  job      the infer Spark job: one single-node TensorFlow per executor, model loaded once each

Then (b), (b') and (c) again with a no-op model: the seed's serving signature around trivial compute
(a global average and a 10-way dense layer), so (c) measures the pipeline's own throughput (read,
parse, Arrow, transfer, Parquet). Goal: no-op (c) >= 5x seed (b), i.e. the pipeline costs <= 20% of
the model's time.

Rows/s are steady state: model loading, TFRecord conversion and Spark start-up are excluded and
the Spark start-up is reported separately. Run:  .venv/bin/python bench/infer_bench.py [--rows 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
from tfospipe import tfenv  # noqa: E402

tfenv.prepare_tensorflow(quiet=True)  # before anything imports TensorFlow

import numpy as np  # noqa: E402

import common  # noqa: E402

VERSION = "bench"
IMAGE_SHAPE = (28, 28)


def noop_model(image_shape: tuple[int, int]):
    """A Keras model with the seed CNN's input (``image`` float32 [None, H, W, 1]) and output
    (softmax float32 [None, 10]) around trivial compute: the mean pixel of each image into a dense
    layer of 10 units (H*W adds and 10 multiply-adds per row, against ~2.4 M multiply-adds per row of
    the seed CNN at 28x28). Exported with model.export it has the serving signature of every model."""
    import tensorflow as tf

    from tfospipe import model, schema

    h, w = image_shape
    inputs = tf.keras.Input(shape=(h, w, 1), name=model.INPUT, dtype="float32")
    x = tf.keras.layers.GlobalAveragePooling2D(name="mean")(inputs)
    x = tf.keras.layers.Dense(schema.NUM_CLASSES, name="logits")(x)
    return tf.keras.Model(inputs, tf.keras.layers.Softmax(name=model.OUTPUT_PROBABILITIES)(x), name="noop")


def prepare(root: str, rows: int, master: str) -> dict[str, str]:
    """Write ``rows`` unlabeled MNIST-size rows (and 200 labeled ones) as dataset version ``bench`` of
    ``root``, convert them (4 shards), export and promote the seed CNN (untrained) and the no-op model.
    Returns ``{"seed": model version, "noop": model version}`` (the no-op model ends up serving)."""
    from tfospipe import model, paths, serving

    layout = paths.Layout(root)
    # the rows to score are unlabeled (score/): the infer job scores the score split when there is one
    common.write_mnist_csv(os.path.join(layout.raw(VERSION), "labeled.csv"), 200)
    common.write_mnist_csv(os.path.join(layout.raw(VERSION), "score", "rows.csv"), rows, labeled=False)
    common.run_job("convert", {"data_root": root, "version": VERSION, "num_shards": 4}, master)
    versions = {}
    for name, keras_model in (("seed", model.build_model(IMAGE_SHAPE, 255)), ("noop", noop_model(IMAGE_SHAPE))):
        path = os.path.join(root, f"{name}-model")
        model.export(keras_model, path, IMAGE_SHAPE)
        digest = serving.model_digest(path)
        versions[name] = paths.model_version("bench", name, digest)
        serving.promote(layout, path, versions[name], {"accuracy": 0.0}, digest)
    return versions


def shard_files(root: str) -> list[str]:
    """The score split's TFRecord shards of version ``bench`` under ``root``, as the infer job lists them."""
    from tfospipe import dataset, paths

    return dataset.shard_files(paths.Layout(root), VERSION, "score")


def tfdata_batches(files: list[str], batch_size: int):
    """(images, labels, row_ids) numpy batches of ``files`` as one process would read them with
    tf.data: TFRecordDataset, batch, schema.parse_batch, prefetch (reading overlaps the model on the
    other cores). The infer job reads with predict.batches instead (no tf.data, see its docstring)."""
    import tensorflow as tf

    from tfospipe import schema

    ds = tf.data.TFRecordDataset(files).batch(batch_size).map(lambda s: schema.parse_batch(s, IMAGE_SHAPE))
    for image, label, row_id in ds.prefetch(2):
        yield image.numpy(), label.numpy(), row_id.numpy()


def files_to_parquet(files: list[str], predict, batch_size: int, model_version: str, out: str,
                     reader: str = "project") -> tuple[int, float]:
    """(b'): read ``files`` with the project's reader (predict.batches, as the job) or, with ``reader``
    "tf.data", with :func:`tfdata_batches`; score each batch with ``predict`` (model.load_serving's
    function, already warm), write the predictions to the Parquet file ``out`` with pyarrow.
    Returns (rows, seconds from the first read to the file's close)."""
    import pyarrow.parquet as pq

    from tfospipe import infer, predict as predict_lib

    schema, rows = infer.arrow_schema(), 0
    batches = tfdata_batches(files, batch_size) if reader == "tf.data" else \
        predict_lib.batches(files, IMAGE_SHAPE, batch_size)
    t = time.perf_counter()
    with pq.ParquetWriter(out, schema) as writer:
        for images, labels, row_ids in batches:
            probabilities, classes = predict(images)
            writer.write_batch(infer.prediction_batch(schema, row_ids, classes, probabilities, labels, model_version,
                                                      VERSION))
            rows += len(row_ids)
    return rows, time.perf_counter() - t


def in_memory(predict, images: np.ndarray, batch_size: int) -> float:
    """(a) and (b): rows/s of ``predict`` over ``images`` in batches of ``batch_size`` (warm first)."""
    predict(images[:batch_size])
    t = time.perf_counter()
    for i in range(0, len(images), batch_size):
        predict(images[i:i + batch_size])
    return len(images) / (time.perf_counter() - t)


def infer_job(root: str, model_version: str, batch_size: int, master: str) -> tuple[dict, float]:
    """(c): run the infer job with ``model_version``; (its manifest, its wall seconds from spark-submit)."""
    from tfospipe import fs, paths

    t = time.perf_counter()
    common.run_job("infer", {"data_root": root, "version": VERSION, "batch_size": batch_size,
                             "model_version": model_version}, master)
    wall = time.perf_counter() - t
    with open(os.path.join(paths.Layout(root).predictions(VERSION), fs.MANIFEST)) as f:
        return json.load(f), wall


def measure(root: str, model_version: str, args: argparse.Namespace, images: np.ndarray) -> dict:
    """(b), (b') and (c) for the promoted ``model_version`` of ``root`` (the same rows each way)."""
    from tfospipe import model, paths

    predict = model.load_serving(paths.Layout(root).serving_model(model_version), IMAGE_SHAPE)
    out = os.path.join(root, f"files-{model_version}.parquet")
    batched, files, tfdata = 0.0, 0.0, 0.0
    for _ in range(args.repeat):  # alternated, best of: other load on the machine hits both alike
        batched = max(batched, in_memory(predict, images, args.batch_size))
        rows, seconds = files_to_parquet(shard_files(root), predict, args.batch_size, model_version, out)
        files = max(files, rows / seconds)
        rows, seconds = files_to_parquet(shard_files(root), predict, args.batch_size, model_version, out, "tf.data")
        tfdata = max(tfdata, rows / seconds)
    manifest, wall = infer_job(root, model_version, args.batch_size, args.master)
    return {"predict": predict, "b": batched, "files": files, "tfdata": tfdata,
            "c": manifest["predict_rows_per_second"], "manifest": manifest, "wall": wall}


def busy_rate(manifest: dict) -> float:
    """Rows/s of the infer job over its partitions' busy time: rows x concurrency / sum of the
    partitions' (end - start) (manifest partition_timings, epoch seconds), where concurrency is the
    most partitions scoring at once (one per executor core). Unlike the manifest's
    predict_rows_per_second (rows over first start to last end) it leaves out the time one executor
    scores while another still starts (imports, model load) or has finished, and gaps between tasks."""
    spans = manifest["partition_timings"]
    events = sorted([(t["start"], 1) for t in spans] + [(t["end"], -1) for t in spans])
    running = concurrency = 0
    for _, step in events:
        running += step
        concurrency = max(concurrency, running)
    return manifest["rows_in"] * concurrency / sum(t["end"] - t["start"] for t in spans)


def report(args: argparse.Namespace, images: np.ndarray, naive: float, seed: dict, noop: dict) -> None:
    """Print the figures of :func:`main` beside the machine facts: ``naive`` is (a) in rows/s, ``seed``
    and ``noop`` what :func:`measure` returned for each model."""
    m, rows = seed["manifest"], len(images)
    loads = sum(x["load_seconds"] for x in m["partition_timings"])
    print()
    common.print_facts()
    print(f"rows: {rows}  (naive: {min(args.naive_rows, rows)})   threads: (a)(b)(b') TensorFlow default in one "
          f"process, best of {args.repeat}; (c) {m['partitions']} partitions on 2 executors x 1 intra-op thread")
    print(f"(a)  naive, batches of 10, one process        {naive:10.0f} rows/s")
    for label, r in (("seed CNN", seed), ("no-op model", noop)):
        print(f"-- {label}, batches of {args.batch_size}")
        print(f"(b)  one process, in-memory arrays           {r['b']:10.0f} rows/s   {r['b'] / naive:6.2f}x (a)")
        print(f"(b') one process, TFRecord -> pyarrow Parquet {r['files']:10.0f} rows/s   "
              f"{r['files'] / r['b']:6.2f}x (b)")
        print(f"     (b') reading with tf.data instead           {r['tfdata']:10.0f} rows/s   "
              f"{r['tfdata'] / r['b']:6.2f}x (b)")
        print(f"(c)  infer Spark job                          {r['c']:10.0f} rows/s   {r['c'] / r['b']:6.2f}x (b)   "
              f"{r['c'] / r['files']:6.2f}x (b')" + ("   goal >= 0.80x (b)" if r is seed else ""))
        busy = busy_rate(r["manifest"])
        print(f"     (c) over its partitions' busy time         {busy:10.0f} rows/s   {busy / r['b']:6.2f}x (b)   "
              f"{busy / r['files']:6.2f}x (b')")
    ratio, busy = noop["c"] / seed["b"], busy_rate(noop["manifest"]) / seed["b"]
    print(f"no-op (c) / seed (b): {ratio:.2f}x (over busy time: {busy:.2f}x)"
          "   goal >= 5x (the pipeline <= 20% of the model's time)")
    print(f"seed (c): job wall {seed['wall']:.1f} s = start-up and write {seed['wall'] - rows / seed['c']:.1f} s "
          f"+ steady scoring {rows / seed['c']:.1f} s; model loads {m['model_loads']} ({loads:.1f} s in all)")


def main() -> None:
    """Prepare the rows and both models, measure (a), then (b), (b') and (c) per model, and report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000, help="rows to score in (b), (b') and (c)")
    p.add_argument("--naive-rows", type=int, default=5_000, help="rows for (a), whose rows/s is flat in N")
    p.add_argument("--batch-size", type=int, default=1024, help="batch size of (b), (b') and (c)")
    p.add_argument("--master", default="local-cluster[2,1,2048]", help="Spark master of (c)")
    p.add_argument("--repeat", type=int, default=2, help="rounds of (b) and (b'), alternated; the best is shown")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    args = p.parse_args()
    common.print_facts()

    import tensorflow as tf

    from tfospipe import schema

    root = tempfile.mkdtemp(prefix="tfos-infer-bench-")
    try:
        print(f"preparing {args.rows} MNIST-size rows in {root} ...", flush=True)
        versions = prepare(root, args.rows, args.master)
        records = [r.numpy() for f in shard_files(root) for r in tf.data.TFRecordDataset(f)]
        images = schema.parse_batch(tf.constant(records), IMAGE_SHAPE)[0].numpy()
        print("seed CNN: (b), (b'), (c) ...", flush=True)
        seed = measure(root, versions["seed"], args, images)
        naive = in_memory(seed["predict"], images[:args.naive_rows], 10)
        print("no-op model: (b), (b'), (c) ...", flush=True)
        noop = measure(root, versions["noop"], args, images)
        report(args, images, naive, seed, noop)
    finally:
        if args.keep:
            print(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
