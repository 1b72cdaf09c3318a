"""infer: Spark batch inference with a single-node TensorFlow in each executor (as TFoS's mnist_inference).

Scores the version's ``score`` split when the conversion produced one, else its ``eval`` split, with
the promoted serving model (or a named promoted version, never an unvalidated model). Each executor
loads the SavedModel once per process (see predict.py) and predicts in batches. Output:
``{root}/predictions/{version}/`` Parquet with row_id, predicted_class, probability, probabilities,
label (null when unknown), model_version, dataset_version; manifest and _SUCCESS; atomic commit.

``--mode tfos`` (the seed's second way): a TensorFlowOnSpark cluster in ``InputMode.SPARK``, one
node per executor, each loading the model once; Spark feeds it the serialized Examples
(``TFCluster.inference``) and it hands back one prediction per row with ``DataFeed.batch_results``,
as an RDD. Same output contract.

A lost executor fails the run with one ``ERROR [infer]`` line (runner.main; in tfos mode also when TFoS
ends the application itself): nothing is published, so a retry is safe.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from pyspark.accumulators import Accumulator, AccumulatorParam

from . import datagate, dataset, fs, paths, predict, serving, tfos
from .jobargs import InferParams
from .schema import PREDICTION_COLUMNS
from .runner import (SPREAD_WAIT_S, JobError, executor_loss, executor_loss_message, executor_python, executors,
                     requested_executors)

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType
    from tensorflowonspark.TFSparkNode import TFNodeContext


class _ListParam(AccumulatorParam):
    """Accumulator collecting one timing record (a dict) per partition into a list."""

    def zero(self, value):
        return []

    def addInPlace(self, a, b):
        return a + b


def prediction_schema() -> StructType:
    """The Spark schema of the predictions (one row per scored input row), from schema.PREDICTION_COLUMNS.

    ``row_id`` long, ``predicted_class`` int (0..9), ``probability`` float (of the predicted class),
    ``probabilities`` array<float> [10] (softmax, model.OUTPUT_PROBABILITIES), ``label`` int (null
    when the row has none), ``model_version`` and ``dataset_version`` strings.
    """
    from pyspark.sql import types as T

    types = {"bigint": T.LongType(), "int": T.IntegerType(), "float": T.FloatType(),
             "array<float>": T.ArrayType(T.FloatType(), False), "string": T.StringType()}
    return T.StructType([T.StructField(name, types[kind], nullable)
                         for name, kind, nullable, _meaning in PREDICTION_COLUMNS])


def arrow_schema() -> pa.Schema:
    """:func:`prediction_schema` in Arrow's terms, nullability included (what Spark's writer wrote)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(prediction_schema())


def prediction_batch(schema: pa.Schema, row_ids: np.ndarray, classes: np.ndarray, probabilities: np.ndarray,
                     labels: np.ndarray, model_version: str, dataset_version: str) -> pa.RecordBatch:
    """One Arrow record batch of predictions with ``schema`` (:func:`arrow_schema`), built from numpy arrays
    with no Python object per row. ``row_ids`` int64 [n]; ``classes`` int [n] (argmax); ``probabilities``
    float32 [n, 10] (softmax); ``labels`` int [n], -1 where the row has none (written as null)."""
    import pyarrow as pa

    n, width = probabilities.shape
    return pa.RecordBatch.from_arrays([
        pa.array(row_ids, pa.int64()),
        pa.array(classes.astype(np.int32)),
        pa.array(probabilities[np.arange(n), classes].astype(np.float32)),
        pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32)),
                                 pa.array(probabilities.astype(np.float32).ravel())),
        pa.array(labels.astype(np.int32), mask=labels < 0),
        pa.array([model_version] * n, pa.string()),
        pa.array([dataset_version] * n, pa.string()),
    ], names=schema.names).cast(schema)


def predict_partition(model_dir: str, image_shape: tuple[int, int], batch_size: int, model_version: str,
                      dataset_version: str, out_dir: str, loads: Accumulator,
                      timings: Accumulator) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Executor side (``mapInArrow``, output ``file string, rows long``): score this partition's shard
    files and write their predictions as one Parquet part in ``out_dir`` (:func:`write_parts`).

    The returned function reads the shard paths of its input batches (column ``path``), scores their
    rows ``batch_size`` at a time with the SavedModel at ``model_dir`` (images ``(H, W)`` =
    ``image_shape``), builds one Arrow batch of :func:`prediction_schema` (its Arrow form, nullability
    included) per model batch, writes them with pyarrow and yields one row: the part's name and its
    rows. ``loads`` counts the model loads (one per executor process, see predict.loaded_model);
    ``timings`` collects one record per partition: ``partition``, ``rows``, ``load_seconds``,
    ``start``/``end`` of its scoring in epoch seconds and ``python`` (the executor's interpreter).

    Columnar end to end and in one task: a batch of predictions becomes one Arrow batch built from numpy
    arrays, with no Python object per row, and goes to Parquet in the same process. Handing the batches
    to Spark's Parquet writer instead made the executor's JVM convert every row back from Arrow: 33-37%
    of the job's CPU with the seed CNN, 62-67% with a no-op model (bench/infer_profile.py).
    """
    def scored(batches):
        from pyspark import TaskContext

        files = [p for b in batches for p in b.column("path").to_pylist()]
        if not files:
            return
        schema = arrow_schema()
        t0 = time.time()
        fn = predict.loaded_model(model_dir, image_shape, on_load=lambda: loads.add(1))
        t1, rows = time.time(), 0
        for images, labels, row_ids in predict.batches(files, image_shape, batch_size):
            probabilities, classes = fn(images)
            rows += len(row_ids)
            yield prediction_batch(schema, row_ids, classes, probabilities, labels, model_version, dataset_version)
        timings.add([{"partition": TaskContext.get().partitionId(), "rows": rows,
                      "load_seconds": round(t1 - t0, 3), "start": t1, "end": time.time(),
                      "python": sys.executable}])

    write = write_parts(out_dir)

    def run(batches):
        yield from write(scored(batches))
    return run


def tfos_node(setup: dict, ctx: TFNodeContext) -> None:
    """A TFoS node (InputMode.SPARK): predict the rows Spark feeds, one result row per input row.

    ``setup``: ``model_dir``, ``image_shape`` ([H, W]), ``batch_size``, ``model_version`` and
    ``dataset_version`` (what :func:`run` passes to ``TFCluster.run``); ``ctx``: TFoS's node context.
    Each result is a tuple in the column order of :func:`prediction_schema`. On a root ``tf.io.gfile``
    cannot reach, the model is loaded from a local copy (predict.loaded_model) removed once loaded.
    """
    from tfospipe import tfenv

    tfenv.prepare_tensorflow(force=True)
    import tensorflow as tf

    from tfospipe import predict as node_predict
    from tfospipe import schema as node_schema

    from tfospipe import scratch as node_scratch

    image_shape = tuple(setup["image_shape"])
    try:
        fn = node_predict.loaded_model(setup["model_dir"], image_shape)
    finally:  # TFoS runs the node in a child process that skips atexit: drop the model's local copy now
        node_scratch.cleanup()
    feed = ctx.get_data_feed(train_mode=False)
    while not feed.should_stop():
        batch = feed.next_batch(setup["batch_size"])
        if not batch:
            continue
        images, labels, row_ids = node_schema.parse_batch(tf.constant(batch), image_shape)
        probabilities, classes = fn(images.numpy())
        feed.batch_results([
            (int(r), int(c), float(p[c]), p.tolist(), int(lab) if lab >= 0 else None, setup["model_version"],
             setup["dataset_version"])
            for r, c, p, lab in zip(row_ids.numpy(), classes, probabilities, labels.numpy())])


def write_parts(out_dir: str) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Executor side (``mapInArrow``): write this partition's prediction batches as one Parquet file
    ``<out_dir>/part-<partition 5 digits>-<12 hex>.parquet`` through ``fs`` (none for a partition without
    rows) and yield one row ``(file, rows)``: the file's name ("" when none) and its rows."""
    def run(batches):
        import uuid

        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        name = f"part-{TaskContext.get().partitionId():05d}-{uuid.uuid4().hex[:12]}.parquet"
        rows, sink, writer = 0, None, None
        try:
            for batch in batches:
                if writer is None:
                    sink = fs.open_write(paths.join(out_dir, name))
                    writer = pq.ParquetWriter(sink, batch.schema)
                writer.write_batch(batch)
                rows += batch.num_rows
        finally:
            if writer is not None:
                writer.close()
                sink.close()
        yield pa.RecordBatch.from_pydict({"file": [name if rows else ""], "rows": [rows]},
                                         schema=pa.schema([("file", pa.string()), ("rows", pa.int64())]))
    return run


def _write_predictions(predictions, stage_dir):
    """Write the predictions DataFrame (tfos mode) as Parquet into ``stage_dir``. Spark's writer where
    it reaches the root (``fs.Scheme.spark_parquet``: local paths, ``file://``, ``hdfs://``, ``gs://``;
    returns None: the caller counts the rows), else :func:`write_parts` (:func:`_keep_reported`: on
    ``s3://``, ``s3a://`` and ``abfs://`` roots the executors write through ``fs``, needing no Hadoop
    connector), and returns the rows written."""
    if fs.scheme_of(stage_dir).spark_parquet:
        predictions.write.mode("overwrite").parquet(stage_dir)
        return None
    return _keep_reported(stage_dir, predictions.mapInArrow(write_parts(stage_dir), "file string, rows long").collect())


def _keep_reported(stage_dir, written):
    """Keep in ``stage_dir`` only the parts the finished tasks reported in ``written`` (rows ``file``,
    ``rows``: a retried task's earlier part is removed); return the rows they hold."""
    keep = {r["file"] for r in written}
    for name in fs.listdir(stage_dir):
        if name.startswith("part-") and name not in keep:
            fs.rmtree(paths.join(stage_dir, name))
    return sum(r["rows"] for r in written)


def _tfos_predictions(spark, files, setup, nodes):
    """Predictions of the rows in ``files`` through a TFoS cluster fed by Spark (the cluster and its RDD)."""
    TFCluster = tfos.tfcluster()

    sc = spark.sparkContext
    cluster = TFCluster.run(sc, tfos_node, setup, nodes, num_ps=0, tensorboard=False,
                            input_mode=TFCluster.InputMode.SPARK, master_node=None, reservation_timeout=300)
    return cluster, cluster.inference(dataset.example_rdd(sc, files), feed_timeout=600)


def _shutdown(cluster):
    """Stop a TFoS inference cluster; TFoS ends the application with ``sys.exit`` when a node failed,
    which becomes a JobError saying what failed (a lost executor: which, where, why)."""
    try:
        tfos.shutdown(cluster)
    except SystemExit:
        error = tfos.tfcluster().tf_status.get("error")
        loss = executor_loss(error)
        if loss is not None:
            raise JobError(executor_loss_message("infer", loss)) from None
        raise JobError(f"the TensorFlowOnSpark inference cluster failed: {' '.join(str(error).split())[:400]}. No "
                       "predictions were published; see the executor logs, fix the cause and rerun the task") from None


def _model(layout, requested):
    """The model version to score with: ``requested`` when it was promoted, else the one serving.
    JobError for a version never promoted, or when nothing was promoted yet."""
    if requested:
        mv = paths.check_segment(requested, "model version")
        if mv not in serving.versions(layout):
            raise JobError(f"model version {mv!r} was never promoted (promoted: {serving.versions(layout)}); "
                           "only validated models can score")
        return mv
    now = serving.current(layout)
    if now is None:
        raise JobError(f"no model has been promoted yet ({layout.serving_pointer()} is missing): run train and "
                       "validate until a model passes the gate")
    return now["model_version"]


def _summary(params, mv, split, rows_in, rows_out, files, slices, nodes, loads, timings, started):
    """The predictions' manifest (and RESULT summary): counts, mode, model loads, per-partition timings,
    and the job's params (``dataclasses.asdict``)."""
    result = {"dataset_version": params.version, "model_version": mv, "split": split, "rows_in": rows_in,
              "rows_out": rows_out, "partitions": slices, "files": len(files), "mode": params.mode,
              # tfos mode: one load per TFoS node, in the node's own process (not counted here)
              "model_loads": loads.value if params.mode == "executors" else None,
              "tfos_nodes": nodes if params.mode == "tfos" else None,
              "batch_size": params.batch_size, "seconds": round(time.time() - started, 1),
              "partition_timings": sorted(timings.value, key=lambda t: t["partition"]),
              "executor_python": executor_python(t["python"] for t in timings.value),
              "params": dataclasses.asdict(params)}
    spans = timings.value
    if spans:  # steady state: from the first partition's first batch to the last partition's end
        wall = max(t["end"] for t in spans) - min(t["start"] for t in spans)
        result["predict_rows_per_second"] = round(rows_in / wall, 1) if wall > 0 else None
    return result


def run(spark: SparkSession, params: InferParams) -> dict:
    """Score dataset version ``params.version`` of ``params.data_root`` (``params``: the parsed infer
    params, ``jobargs.InferParams``).

    Scores the ``score`` split when the conversion wrote rows to it, else ``eval``, with
    ``params.model_version`` (a promoted one) or the model serving, ``params.batch_size`` rows per model
    call, in ``params.mode`` ``executors`` (:func:`predict_partition`) or ``tfos`` (:func:`tfos_node`).
    Writes ``predictions/{version}/`` (Parquet, :func:`prediction_schema`) through a staging
    directory, committed with the summary as manifest, and returns the summary with ``output``.

    Raises JobError, publishing nothing, when the version was not converted, the model was never
    promoted (or nothing serves), the score rows are skewed from the model's training data under
    ``data_checks=fail`` (datagate.check_score_rows), a TFoS node failed, or the rows written differ from the split's
    rows in the conversion manifest.
    """
    sc = spark.sparkContext
    layout = paths.Layout(params.data_root)
    manifest = dataset.read_manifest(layout, params.version)
    image_shape = tuple(manifest["image_shape"])
    split = "score" if manifest["splits"].get("score") else "eval"
    rows_in = manifest["splits"][split]
    files = dataset.shard_files(layout, params.version, split)
    mv = _model(layout, params.model_version)
    model_dir = serving.promoted_dir(layout, mv)  # the published attempt (fs.resolve)
    # the score rows against the model's training data: no prediction is published for skewed rows
    data_checks = datagate.check_score_rows(params, mv, split)

    output_schema = prediction_schema()
    loads = sc.accumulator(0)
    timings = sc.accumulator([], _ListParam())
    started = time.time()
    out = layout.predictions(params.version)
    with fs.Staging(out) as stage:
        # one partition per shard file, scheduled once the requested executors are there (else the first
        # executor to register would take them all)
        nodes = executors(sc, requested_executors(sc), timeout=SPREAD_WAIT_S)
        slices = max(len(files), 1)
        cluster = None
        if params.mode == "tfos":
            setup = {"model_dir": model_dir, "image_shape": list(image_shape), "batch_size": params.batch_size,
                         "model_version": mv, "dataset_version": params.version}
            cluster, results = _tfos_predictions(spark, files, setup, nodes)
            predictions = spark.createDataFrame(results, output_schema)
        else:
            inputs = sc.parallelize([(f,) for f in files], slices).toDF("path string")
            score = predict_partition(model_dir, image_shape, params.batch_size, mv, params.version, stage.path, loads,
                                      timings)
        if cluster is None:  # executors mode: each task scores and writes its part
            rows_out = _keep_reported(stage.path, inputs.mapInArrow(score, "file string, rows long").collect())
        else:
            rows_out = _write_predictions(predictions, stage.path)
            _shutdown(cluster)
        if rows_out is None:
            rows_out = spark.read.parquet(stage.path).count()
        if rows_out != rows_in:
            raise JobError(f"wrote {rows_out} predictions for {rows_in} input rows of split {split}")
        result = _summary(params, mv, split, rows_in, rows_out, files, slices, nodes, loads, timings, started)
        result["data_checks"] = data_checks
        stage.commit(result)
    return dict(result, output=out)
