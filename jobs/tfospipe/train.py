"""train: distributed training with TensorFlowOnSpark, InputMode.TENSORFLOW.

``TFCluster.run`` starts one TensorFlow node in each Spark executor (executor 0 is the chief, the
others workers) and sets ``TF_CONFIG``; every node trains the seed's CNN under
``MultiWorkerMirroredStrategy``, reading its own share of the train shards with ``tf.data``
(explicit sharding by worker index, auto-sharding off). The chief exports the SavedModel.

Run directory ``{root}/models/{version}/{run}/``::

    backup/          BackupAndRestore state: a retried task resumes from the last finished epoch
    tensorboard/     event logs (loss, accuracy) written by the chief
    progress.log     progress lines of the chief, echoed into the driver's (Airflow task's) log
    workers/         one done marker per node: worker index, steps run, final loss
    model/           the exported SavedModel (signature in model.py), renamed into place complete
    _manifest.json   dataset version, params, steps, final metrics, git revision; then _SUCCESS
"""

import math
import threading
import time

from . import convert, fs, paths, schema
from .runner import JobError, git_revision, library_versions

PROGRESS_EVERY_STEPS = 10


def node_main(args, ctx):
    """Runs in each executor: one TensorFlow node of the cluster (TFoS calls it with TF_CONFIG set)."""
    import json
    import os
    import shutil
    import tempfile

    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    from tfospipe import model as model_lib
    from tfospipe import fs as node_fs
    from tfospipe import paths as node_paths
    from tfospipe import schema as node_schema

    started = time.time()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    worker_index = 0 if ctx.job_name == "chief" else ctx.task_index + 1
    is_chief = worker_index == 0
    num_workers = ctx.num_workers
    run_dir = args["run_dir"]
    image_shape = tuple(args["image_shape"])
    batch_size = args["batch_size"]
    files = args["train_files"]

    def dataset_fn(input_context):
        mine = files[input_context.input_pipeline_id::input_context.num_input_pipelines]
        ds = tf.data.TFRecordDataset(mine).cache()
        ds = ds.shuffle(8192, seed=input_context.input_pipeline_id, reshuffle_each_iteration=True).repeat()
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = ds.map(lambda s: node_schema.parse_batch(s, image_shape)[:2], num_parallel_calls=tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    with strategy.scope():
        model = model_lib.build_model(image_shape, args["pixel_max"], args["learning_rate"])
    # Metrics are already all-reduced across workers: report one replica's value, not their sum.
    model.distribute_reduction_method = "first"

    class Progress(tf.keras.callbacks.Callback):
        """Progress lines (step, loss, accuracy, examples/s) every N steps, into progress.log (chief)."""

        def __init__(self):
            super().__init__()
            self.t0 = time.time()
            self.step = 0

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if is_chief and (self.step % PROGRESS_EVERY_STEPS == 0):
                rate = self.step * batch_size * num_workers / max(time.time() - self.t0, 1e-6)
                line = (f"step {self.step} loss {logs['loss']:.4f} accuracy {logs['accuracy']:.4f} "
                        f"examples/s {rate:.0f}\n")
                with tf.io.gfile.GFile(node_paths.join(run_dir, "progress.log"), "a") as f:
                    f.write(line)

    callbacks = [tf.keras.callbacks.BackupAndRestore(node_paths.join(run_dir, "backup")), Progress()]
    if is_chief:
        callbacks.append(tf.keras.callbacks.TensorBoard(node_paths.join(run_dir, "tensorboard"), update_freq=10))
    history = model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn), epochs=args["epochs"],
                        steps_per_epoch=args["steps_per_epoch"], callbacks=callbacks, verbose=0)

    # Every node takes part in the save (variables are distributed); only the chief's copy is kept.
    if is_chief:
        target = node_paths.join(run_dir, ".model.staging")
        node_fs.rmtree(target)
    else:
        target = tempfile.mkdtemp(prefix=f"tfos-worker{worker_index}-")
    model_lib.export(model, target, image_shape)
    if is_chief:
        final = node_paths.join(run_dir, "model")
        node_fs.rmtree(final)
        tf.io.gfile.rename(target, final)
    else:
        shutil.rmtree(target, ignore_errors=True)

    epochs_run = len(history.history.get("loss", []))
    marker = {
        "worker": worker_index,
        "job_name": ctx.job_name,
        "task_index": ctx.task_index,
        "epochs_run": epochs_run,
        "steps_run": epochs_run * args["steps_per_epoch"],
        "final_loss": float(history.history["loss"][-1]) if epochs_run else None,
        "final_accuracy": float(history.history["accuracy"][-1]) if epochs_run else None,
        "seconds": round(time.time() - started, 1),
    }
    node_fs.write_json(node_paths.join(run_dir, "workers", f"worker-{worker_index}.json"), marker)
    print("TFOS done " + json.dumps(marker), flush=True)


def wait_for_executors(sc, wanted, timeout):
    """Preflight: the app must hold ``wanted`` executors, one per TF node, before TFoS reserves them."""
    deadline = time.time() + timeout
    while True:
        have = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
        if have >= wanted or time.time() > deadline:
            break
        time.sleep(1)
    if have < wanted:
        conf = sc.getConf()
        raise JobError(
            f"training needs cluster_size={wanted} executors (one TensorFlow node each) but the Spark "
            f"application got {have} after {timeout}s from master {sc.master}. Make the cluster offer "
            f"{wanted} executors with one task slot each (spark.executor.instances="
            f"{conf.get('spark.executor.instances', 'unset')}, spark.cores.max={conf.get('spark.cores.max', 'unset')}, "
            f"spark.executor.cores={conf.get('spark.executor.cores', 'unset')}) or lower cluster_size.")
    return have


class _Tail(threading.Thread):
    """Echo new lines of the chief's progress.log into this (the Airflow task's) log."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.offset, self.stop = path, 0, threading.Event()

    def poll(self):
        try:
            if fs.exists(self.path):
                data = fs.read_bytes(self.path)
                for line in data[self.offset:].decode("utf-8", "replace").splitlines():
                    print(f"[train progress] {line}", flush=True)
                self.offset = len(data)
        except Exception:  # a progress line is never worth failing the job for
            pass

    def run(self):
        while not self.stop.wait(5):
            self.poll()


def run(spark, args):
    from tensorflowonspark import TFCluster

    sc = spark.sparkContext
    layout = paths.Layout(args.data_root)
    manifest = convert.read_manifest(layout, args.version)
    train_files = convert.shard_files(layout, args.version, "train")
    train_rows = manifest["splits"]["train"]
    if len(train_files) < args.cluster_size:
        raise JobError(f"{len(train_files)} train shards for {args.cluster_size} workers: every worker needs a "
                       "shard; convert with num_shards >= cluster_size")
    if train_rows < args.batch_size * args.cluster_size:
        raise JobError(f"{train_rows} train rows cannot fill one step of batch_size {args.batch_size} on "
                       f"{args.cluster_size} workers; lower batch_size")
    run_dir = layout.model_run(args.version, args.run_id)
    # A retry keeps backup/ (to resume) but never an older attempt's model, markers or _SUCCESS.
    for stale in (fs.SUCCESS, fs.MANIFEST, "model", ".model.staging", "workers", "progress.log"):
        fs.rmtree(paths.join(run_dir, stale))
    fs.makedirs(paths.join(run_dir, "workers"))

    steps_per_epoch = math.ceil(train_rows / (args.batch_size * args.cluster_size))
    node_args = {
        "run_dir": run_dir,
        "train_files": train_files,
        "image_shape": schema.image_shape_of(manifest),
        "pixel_max": max(int(manifest["pixel_max_observed"]), 1),
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "epochs": args.epochs,
        "steps_per_epoch": steps_per_epoch,
    }
    wait_for_executors(sc, args.cluster_size, args.executor_wait)
    print(f"training on {args.cluster_size} nodes: {train_rows} rows, {steps_per_epoch} steps/epoch x "
          f"{args.epochs} epochs, batch {args.batch_size}/worker, run dir {run_dir}", flush=True)
    started = time.time()
    tail = _Tail(paths.join(run_dir, "progress.log"))
    tail.start()
    try:
        cluster = TFCluster.run(sc, node_main, node_args, args.cluster_size, num_ps=0, tensorboard=False,
                                input_mode=TFCluster.InputMode.TENSORFLOW, master_node="chief",
                                reservation_timeout=300)
        cluster.shutdown(timeout=-1)
    finally:
        tail.stop.set()
        tail.poll()

    markers = {m: fs.read_json(paths.join(run_dir, "workers", m)) for m in fs.listdir(paths.join(run_dir, "workers"))}
    missing = [i for i in range(args.cluster_size) if f"worker-{i}.json" not in markers]
    if missing:
        raise JobError(f"workers {missing} of {args.cluster_size} left no done marker in {run_dir}/workers: "
                       "they did not finish training; see the executor logs")
    model_dir = layout.exported_model(args.version, args.run_id)
    if not fs.exists(paths.join(model_dir, "saved_model.pb")):
        raise JobError(f"the chief exported no SavedModel at {model_dir}")
    chief = markers["worker-0.json"]
    result = {
        "dataset_version": args.version,
        "run_id": args.run_id,
        "model_dir": model_dir,
        "image_shape": node_args["image_shape"],
        "pixel_max": node_args["pixel_max"],
        "params": {"cluster_size": args.cluster_size, "epochs": args.epochs, "batch_size": args.batch_size,
                   "learning_rate": args.learning_rate, "input_mode": "tensorflow"},
        "steps_per_epoch": steps_per_epoch,
        "steps_run": chief["steps_run"],
        "final_loss": chief["final_loss"],
        "final_accuracy": chief["final_accuracy"],
        "workers": sorted(markers.values(), key=lambda m: m["worker"]),
        "train_seconds": round(time.time() - started, 1),
        "versions": library_versions(),
        "git_revision": git_revision(),
    }
    fs.write_json(paths.join(run_dir, fs.MANIFEST), result)
    fs.write_bytes(paths.join(run_dir, fs.SUCCESS), b"")
    return {k: result[k] for k in ("model_dir", "steps_run", "final_loss", "final_accuracy", "train_seconds")}
