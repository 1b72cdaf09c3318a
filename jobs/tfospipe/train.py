"""train: distributed training with TensorFlowOnSpark, in either input mode.

``TFCluster.run`` starts one TensorFlow node in each Spark executor and sets ``TF_CONFIG``. Two
topologies:

* ``num_ps=0`` (default): a chief and workers train the seed's CNN under
  ``MultiWorkerMirroredStrategy`` (synchronous all-reduce), every node running the training loop.
* ``num_ps>0``: TF2's ``ParameterServerStrategy``. ``num_ps`` executors are parameter servers
  holding the variables, one is the chief, which runs ``model.fit`` as the coordinator and sends
  steps to the others, the workers: TensorFlow servers that compute the steps, reading their share of
  the TFRecords with ``tf.data`` (dataset functions the coordinator ships to them). Workers and
  parameter servers return when the chief's done marker appears, so TFoS's shutdown completes.
  Needs ``cluster_size >= num_ps + 2`` and the ``tensorflow`` input mode. Steps are asynchronous: one
  step is one batch on one worker, so an epoch is train rows / batch_size steps.

Input modes (``--input-mode``):

* ``tensorflow`` — each node reads its own share of the train shards with ``tf.data`` (explicit
  sharding by worker index, auto-sharding off), as TFoS's ``examples/mnist/tf``.
* ``spark`` — the driver reads the train shards as an RDD and feeds the serialized Examples to the
  nodes through ``TFNode.DataFeed``'s queue, as TFoS's ``examples/mnist/spark``, in blocks of
  ``FEED_BLOCK_ROWS`` rows. It cannot hang: every node
  runs the same fixed step budget (a node whose partitions ran short replays what it received),
  leaves no collective half-done (a barrier after the chief's export), stops its feed with
  ``terminate()``, and feeding is bounded by ``feed_timeout``.

Both modes evaluate on the eval split after every epoch (each node reads its share of the eval
shards) and resume from the last finished epoch when the task is retried (``BackupAndRestore``).

Run directory ``{root}/models/{version}/{run}/``::

    backup/          BackupAndRestore state: a retried task resumes from the last finished epoch
    tensorboard/     event logs (loss, accuracy, eval) written by the chief
    progress.log     progress lines of the chief, echoed into the driver's (Airflow task's) log
    workers/         one done marker per node: worker index, steps run, final loss
    model/           the exported SavedModel (signature in model.py), renamed into place complete
    _manifest.json   dataset version, params, steps, final metrics, git revision; then _SUCCESS
"""

import math
import threading
import time

from . import convert, fs, paths, schema
from .runner import JobError, executors, git_revision, library_versions

#: A progress line every N steps; all-reduce training also runs N steps per call of its train function
#: (Keras ``steps_per_execution``): fewer Python round trips and metric all-reduces per step.
PROGRESS_EVERY_STEPS = 10
FEED_TIMEOUT_SECONDS = 600
#: Spark mode feeds rows to the nodes in blocks: one queue round trip (TFoS's manager process) per
#: block instead of per row.
FEED_BLOCK_ROWS = 64
FEED_POLL_SECONDS = 0.5
REPLAY_BUFFER_ROWS = 200_000
#: ParameterServerStrategy runs remote closures and variable reads concurrently on every node: with the
#: executors' single inter-op thread (tfos_spark.TF_ENV) the chief waits forever for its first closure.
PS_THREADS = {"TF_NUM_INTEROP_THREADS": "4"}


def check_topology(cluster_size, num_ps, input_mode, gradient_compression="none"):
    """Refuse a cluster ParameterServerStrategy cannot run, with what to change."""
    if num_ps and gradient_compression != "none":
        raise JobError(f"gradient_compression={gradient_compression} applies to all-reduce training (num_ps=0); "
                       f"with num_ps={num_ps} the workers send gradients to the parameter servers as they are. "
                       "Use gradient_compression=none, or num_ps=0")
    if num_ps and cluster_size < num_ps + 2:
        raise JobError(f"cluster_size={cluster_size} with num_ps={num_ps} leaves no worker: parameter-server "
                       f"training needs the parameter servers, a chief (the coordinator) and at least one worker, "
                       f"so cluster_size >= num_ps + 2 = {num_ps + 2}; or use num_ps=0 (all-reduce)")
    if num_ps and input_mode != "tensorflow":
        raise JobError(f"num_ps={num_ps} needs input_mode=tensorflow: under ParameterServerStrategy the workers "
                       "are TensorFlow servers that read the TFRecords themselves; Spark cannot feed them rows. "
                       "Use input_mode=tensorflow, or num_ps=0 to feed rows from Spark")


def node_name(ctx):
    """The node's marker name: worker-0 (chief), worker-1.. (workers), ps-0.. (parameter servers)."""
    if ctx.job_name == "ps":
        return f"ps-{ctx.task_index}"
    return "worker-0" if ctx.job_name == "chief" else f"worker-{ctx.task_index + 1}"


def malloc_in_use():
    """The memory allocator this process runs with: tcmalloc or jemalloc if preloaded, else glibc."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "unknown"
    return next((name for name in ("tcmalloc", "jemalloc") if f"lib{name}" in maps), "glibc")


def feed_blocks(rows):
    """Group a partition's rows into lists of FEED_BLOCK_ROWS, the items Spark mode feeds."""
    block = []
    for row in rows:
        block.append(row)
        if len(block) == FEED_BLOCK_ROWS:
            yield block
            block = []
    if block:
        yield block


def node_main(args, ctx):
    """Runs in each executor: one TensorFlow node of the cluster (TFoS calls it with TF_CONFIG set).

    A failure leaves ``workers/<node>.error`` with the traceback, so the driver can report it.
    """
    try:
        if args["num_ps"] and ctx.job_name in ("ps", "worker"):
            _serve(args, ctx)
        else:
            _node_main(args, ctx)
    except BaseException:
        import traceback
        fs.write_bytes(paths.join(args["run_dir"], "workers", f"{node_name(ctx)}.error"),
                       traceback.format_exc().encode("utf-8"))
        raise


def _serve(args, ctx):
    """A parameter server or worker under ParameterServerStrategy: a TensorFlow server that the chief's
    coordinator drives. Returns once the chief has left its done (or error) marker."""
    import json
    import os

    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.update(PS_THREADS)
    import tensorflow as tf

    started = time.time()
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    tf.distribute.Server(resolver.cluster_spec(), job_name=ctx.job_name, task_index=ctx.task_index,
                         protocol=resolver.rpc_layer or "grpc", start=True)
    markers = paths.join(args["run_dir"], "workers")
    while True:
        names = set(fs.listdir(markers))
        if "worker-0.json" in names or any(n.endswith(".error") for n in names):
            break
        time.sleep(1)
    done = {"node": node_name(ctx), "job_name": ctx.job_name, "task_index": ctx.task_index,
            "seconds": round(time.time() - started, 1)}
    if ctx.job_name == "worker":
        done["worker"] = ctx.task_index + 1
    fs.write_json(paths.join(markers, f"{node_name(ctx)}.json"), done)
    print("TFOS done " + json.dumps(done), flush=True)


def _node_main(args, ctx):
    import json
    import os
    import shutil
    import tempfile

    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    if args["num_ps"]:
        os.environ.update(PS_THREADS)
    import tensorflow as tf

    from tfospipe import model as model_lib
    from tfospipe import fs as node_fs
    from tfospipe import paths as node_paths
    from tfospipe import schema as node_schema

    started = time.time()
    ps_mode = args["num_ps"] > 0  # then this node is the chief: the coordinator
    if ps_mode:
        strategy = tf.distribute.ParameterServerStrategy(tf.distribute.cluster_resolver.TFConfigClusterResolver())
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    worker_index = 0 if ctx.job_name == "chief" else ctx.task_index + 1
    is_chief = worker_index == 0
    num_workers = ctx.num_workers
    # examples per step: all-reduce steps take a batch on every node; PS steps one batch on one worker
    step_examples = args["batch_size"] * (1 if ps_mode else num_workers)
    run_dir = args["run_dir"]
    image_shape = tuple(args["image_shape"])
    batch_size = args["batch_size"]
    from queue import Empty

    from tensorflowonspark import marker

    feed = ctx.get_data_feed(train_mode=True) if args["input_mode"] == "spark" else None
    fed = {"rows": 0, "replayed": 0, "ended": False}
    steady_rate = {}

    def parse(serialized):
        return node_schema.parse_batch(serialized, image_shape)[:2]

    def from_files(files, input_context, shuffle):
        mine = files[input_context.input_pipeline_id::input_context.num_input_pipelines]
        ds = tf.data.TFRecordDataset(mine, compression_type=node_schema.compression_type(mine)).cache()
        if shuffle:
            ds = ds.shuffle(8192, seed=input_context.input_pipeline_id, reshuffle_each_iteration=True)
        return ds.repeat()

    def from_feed():
        """Blocks of serialized Examples from Spark's feed, never stalling the collective.

        A node whose queue is momentarily empty (its partitions ran short, or the next one is still being
        scheduled) replays rows it already received instead of blocking: blocking would stall the
        all-reduce of every other node, whose feeding tasks could then never finish (a deadlock).
        """
        queue = ctx.mgr.get_queue("input")
        seen, ended, replay, starving = [], False, 0, False
        while True:
            if not ended:
                try:
                    # wait for the first row; then give a late partition a moment, once per dry spell
                    wait = FEED_TIMEOUT_SECONDS if not seen else (0.001 if starving else FEED_POLL_SECONDS)
                    item = queue.get(block=True, timeout=wait)
                except Empty:
                    if not seen:
                        raise RuntimeError(f"worker {worker_index} received no training rows from Spark within "
                                           f"{FEED_TIMEOUT_SECONDS}s") from None
                    starving = True
                else:
                    starving = False
                    queue.task_done()
                    if item is None:  # end of feed
                        ended = fed["ended"] = True
                        continue
                    if isinstance(item, marker.EndPartition):
                        continue
                    fed["rows"] += len(item)
                    if len(seen) < REPLAY_BUFFER_ROWS:
                        seen.extend(item)
                    yield item
                    continue
            # replay a batch worth, then look at the queue again
            fed["replayed"] += batch_size
            yield [seen[(replay + i) % len(seen)] for i in range(batch_size)]
            replay += batch_size

    def finish(ds):
        ds = ds.batch(batch_size, drop_remainder=True).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    def train_fn(input_context):
        if feed is not None:
            blocks = tf.data.Dataset.from_generator(from_feed, output_signature=tf.TensorSpec([None], tf.string))
            return finish(blocks.unbatch())
        return finish(from_files(args["train_files"], input_context, shuffle=True))

    def eval_fn(input_context):
        return finish(from_files(args["eval_files"], input_context, shuffle=False))

    with strategy.scope():
        # ParameterServerStrategy's coordinator schedules single steps: one step per execution there
        model = model_lib.build_model(image_shape, args["pixel_max"], args["learning_rate"],
                                      steps_per_execution=1 if ps_mode else PROGRESS_EVERY_STEPS,
                                      gradient_compression=args["gradient_compression"])
    if not ps_mode:
        # Metrics are already all-reduced across workers: report one replica's value, not their sum.
        model.distribute_reduction_method = "first"

    class EpochProgress(tf.keras.callbacks.Callback):
        """Progress lines into progress.log (chief) after each epoch, with eval metrics; the steady
        rate from the epochs after the first, training time only (evaluation excluded)."""

        def __init__(self):
            super().__init__()
            self.epoch_times = []

        def _write(self, line):
            if is_chief:
                with tf.io.gfile.GFile(node_paths.join(run_dir, "progress.log"), "a") as f:
                    f.write(line + "\n")

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_times.append([time.time(), None])

        def on_test_begin(self, logs=None):
            if self.epoch_times and self.epoch_times[-1][1] is None:
                self.epoch_times[-1][1] = time.time()

        def on_train_end(self, logs=None):
            spans = [b - a for a, b in self.epoch_times[1:] if b] or [b - a for a, b in self.epoch_times if b]
            if spans and "examples_per_second" not in steady_rate:
                steady_rate["examples_per_second"] = len(spans) * args["steps_per_epoch"] * step_examples / sum(spans)

        def on_epoch_end(self, epoch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())  # continues after a resume
            self._write(f"epoch {epoch + 1}/{args['epochs']} step {step} loss {logs['loss']:.4f} "
                        f"accuracy {logs['accuracy']:.4f} eval_loss {logs.get('val_loss', float('nan')):.4f} "
                        f"eval_accuracy {logs.get('val_accuracy', float('nan')):.4f}")

    class Progress(EpochProgress):
        """Also a line every PROGRESS_EVERY_STEPS steps: Keras calls batch callbacks once per execution
        of that many steps, ``batch`` being the epoch's last step index run (ParameterServerStrategy
        allows no batch-level callbacks). The steady rate counts steps after the first execution
        (tracing, warm-up) and within epochs (evaluation excluded)."""

        def __init__(self):
            super().__init__()
            self.t0, self.step = time.time(), 0
            self.steady_steps, self.steady_seconds = 0, 0.0

        def on_epoch_begin(self, epoch, logs=None):
            super().on_epoch_begin(epoch, logs)
            self.epoch_steps, self.previous = 0, None

        def on_train_batch_end(self, batch, logs=None):
            now, steps = time.time(), batch + 1 - self.epoch_steps
            self.epoch_steps, self.step = batch + 1, self.step + steps
            if self.previous is not None and self.step > PROGRESS_EVERY_STEPS:
                self.steady_steps += steps
                self.steady_seconds += now - self.previous
            self.previous = now
            global_step = int(self.model.optimizer.iterations.numpy())  # continues after a resume
            rate = self.step * step_examples / max(now - self.t0, 1e-6)
            self._write(f"step {global_step} loss {logs['loss']:.4f} accuracy {logs['accuracy']:.4f} "
                        f"examples/s {rate:.0f}")

        def on_train_end(self, logs=None):
            if self.steady_steps:
                steady_rate["examples_per_second"] = self.steady_steps * step_examples / self.steady_seconds

    callbacks = [tf.keras.callbacks.BackupAndRestore(node_paths.join(run_dir, "backup")),
                 EpochProgress() if ps_mode else Progress()]
    if is_chief:
        callbacks.append(tf.keras.callbacks.TensorBoard(node_paths.join(run_dir, "tensorboard"),
                                                        update_freq="epoch" if ps_mode else 10))
    history = model.fit(tf.keras.utils.experimental.DatasetCreator(train_fn), epochs=args["epochs"],
                        steps_per_epoch=args["steps_per_epoch"], callbacks=callbacks, verbose=0,
                        validation_data=tf.keras.utils.experimental.DatasetCreator(eval_fn),
                        validation_steps=args["eval_steps"])
    if feed is not None and not fed["ended"]:
        feed.terminate()  # skip the rest of the feed: this node has run its step budget

    # Every node takes part in the save (variables are distributed); only the chief's copy is kept.
    # Under ParameterServerStrategy only the chief (the coordinator) runs this: it exports alone.
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
    if not ps_mode:
        # Barrier: no node leaves the collective group before the chief's export is complete.
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)

    epochs_run = len(history.history.get("loss", []))
    done = {
        "node": node_name(ctx),
        "worker": worker_index,
        "job_name": ctx.job_name,
        "task_index": ctx.task_index,
        "epochs_run": epochs_run,
        "steps_run": epochs_run * args["steps_per_epoch"],
        "final_loss": float(history.history["loss"][-1]) if epochs_run else None,
        "final_accuracy": float(history.history["accuracy"][-1]) if epochs_run else None,
        "final_eval_loss": float(history.history["val_loss"][-1]) if epochs_run else None,
        "final_eval_accuracy": float(history.history["val_accuracy"][-1]) if epochs_run else None,
        "steady_examples_per_second": round(steady_rate.get("examples_per_second", 0.0), 1),
        "rows_fed": fed["rows"] if feed is not None else None,
        "rows_replayed": fed["replayed"] if feed is not None else None,
        "malloc": malloc_in_use(),
        "seconds": round(time.time() - started, 1),
    }
    node_fs.write_json(node_paths.join(run_dir, "workers", f"worker-{worker_index}.json"), done)
    print("TFOS done " + json.dumps(done), flush=True)


def await_nodes(run_dir, workers, timeout):
    """Block until every node left its done marker; raise as soon as one left an error."""
    deadline = time.time() + timeout
    while True:
        names = set(fs.listdir(paths.join(run_dir, "workers")))
        errors = sorted(n for n in names if n.endswith(".error"))
        if errors:
            detail = fs.read_bytes(paths.join(run_dir, "workers", errors[0])).decode("utf-8", "replace")
            raise JobError(f"TensorFlow node {errors[0][:-6]} failed:\n{detail[-3000:]}")
        if all(f"worker-{i}.json" in names for i in range(workers)):
            return
        if time.time() > deadline:
            raise JobError(f"nodes did not finish within {timeout}s after the feed ended (markers in "
                           f"{run_dir}/workers: {sorted(names)})")
        time.sleep(1)


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

    check_topology(args.cluster_size, args.num_ps, args.input_mode, args.gradient_compression)
    sc = spark.sparkContext
    layout = paths.Layout(args.data_root)
    manifest = convert.read_manifest(layout, args.version)
    train_files = convert.shard_files(layout, args.version, "train")
    eval_files = convert.shard_files(layout, args.version, "eval")
    train_rows, eval_rows = manifest["splits"]["train"], manifest["splits"]["eval"]
    nodes = args.cluster_size                # Spark executors = TensorFlow nodes
    workers = nodes - args.num_ps            # nodes that train (all-reduce) or the chief + workers (PS)
    readers = workers - 1 if args.num_ps else workers   # nodes reading shards; PS: not the coordinator
    step_batches = 1 if args.num_ps else workers         # batches per step
    for split, files, rows in (("train", train_files, train_rows), ("eval", eval_files, eval_rows)):
        if len(files) < readers:
            raise JobError(f"{len(files)} {split} shards for {readers} workers: every worker reads a share of "
                           "the shards; convert with num_shards >= cluster_size")
        if rows < args.batch_size * step_batches:
            raise JobError(f"{rows} {split} rows cannot fill one step of batch_size {args.batch_size} on "
                           f"{step_batches} workers; lower batch_size")
    run_dir = layout.model_run(args.version, args.run_id)
    # A retry keeps backup/ (to resume) but never an older attempt's model, markers or _SUCCESS.
    for stale in (fs.SUCCESS, fs.MANIFEST, "model", ".model.staging", "workers", "progress.log"):
        fs.rmtree(paths.join(run_dir, stale))
    fs.makedirs(paths.join(run_dir, "workers"))

    # The same step budget on every node: what the data allows at batch_size per worker.
    steps_per_epoch = max(train_rows // (args.batch_size * step_batches), 1)
    node_args = {
        "run_dir": run_dir,
        "num_ps": args.num_ps,
        "input_mode": args.input_mode,
        "train_files": train_files,
        "eval_files": eval_files,
        "image_shape": schema.image_shape_of(manifest),
        "pixel_max": max(int(manifest["pixel_max_observed"]), 1),
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "gradient_compression": args.gradient_compression,
        "epochs": args.epochs,
        "steps_per_epoch": steps_per_epoch,
        "eval_steps": math.ceil(eval_rows / (args.batch_size * step_batches)),
    }
    if executors(sc, nodes, args.executor_wait) < nodes:
        conf = sc.getConf()
        raise JobError(
            f"training needs cluster_size={nodes} executors (one TensorFlow node each) but the Spark "
            f"application got {executors(sc)} after {args.executor_wait}s from master {sc.master}. Make the "
            f"cluster offer {nodes} executors with one task slot each (spark.executor.instances="
            f"{conf.get('spark.executor.instances', 'unset')}, spark.cores.max={conf.get('spark.cores.max', 'unset')}, "
            f"spark.executor.cores={conf.get('spark.executor.cores', 'unset')}) or lower cluster_size.")
    topology = (f"{args.num_ps} parameter servers + chief + {workers - 1} workers (ParameterServerStrategy)"
                if args.num_ps else f"{workers} nodes (MultiWorkerMirroredStrategy)")
    print(f"training in {args.input_mode} input mode on {topology}: {train_rows} rows, {steps_per_epoch} "
          f"steps/epoch x {args.epochs} epochs, batch {args.batch_size}/worker, run dir {run_dir}", flush=True)
    started = time.time()
    tail = _Tail(paths.join(run_dir, "progress.log"))
    tail.start()
    try:
        if args.input_mode == "spark":
            cluster = TFCluster.run(sc, node_main, node_args, workers, num_ps=0, tensorboard=False,
                                    input_mode=TFCluster.InputMode.SPARK, master_node="chief",
                                    reservation_timeout=300)
            # one partition per shard, so the nodes are fed as the conversion sharded the data
            feed = convert.example_rdd(sc, train_files).mapPartitions(feed_blocks)
            cluster.train(feed, num_epochs=args.epochs, feed_timeout=FEED_TIMEOUT_SECONDS)
            # The feed is over, the nodes are not: the chief may still be exporting. Stopping the app
            # now would kill them, so wait for every node's done marker first.
            await_nodes(run_dir, workers, FEED_TIMEOUT_SECONDS)
        else:
            cluster = TFCluster.run(sc, node_main, node_args, nodes, num_ps=args.num_ps, tensorboard=False,
                                    input_mode=TFCluster.InputMode.TENSORFLOW, master_node="chief",
                                    reservation_timeout=300)
        cluster.shutdown(timeout=-1)
    finally:
        tail.stop.set()
        tail.poll()

    markers = {m: fs.read_json(paths.join(run_dir, "workers", m)) for m in fs.listdir(paths.join(run_dir, "workers"))
               if m.endswith(".json")}
    missing = [i for i in range(workers) if f"worker-{i}.json" not in markers]
    if missing:
        raise JobError(f"workers {missing} of {workers} left no done marker in {run_dir}/workers: "
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
        "params": {"cluster_size": nodes, "epochs": args.epochs, "batch_size": args.batch_size,
                   "learning_rate": args.learning_rate, "input_mode": args.input_mode, "num_ps": args.num_ps,
                   "gradient_compression": args.gradient_compression},
        "steps_per_epoch": steps_per_epoch,
        "steps_run": chief["steps_run"],
        "final_loss": chief["final_loss"],
        "final_accuracy": chief["final_accuracy"],
        "final_eval_loss": chief["final_eval_loss"],
        "final_eval_accuracy": chief["final_eval_accuracy"],
        "steady_examples_per_second": chief["steady_examples_per_second"],
        "workers": sorted((m for m in markers.values() if "worker" in m), key=lambda m: m["worker"]),
        "parameter_servers": sorted((m for m in markers.values() if m.get("job_name") == "ps"),
                                    key=lambda m: m["task_index"]),
        "train_seconds": round(time.time() - started, 1),
        "versions": library_versions(),
        "git_revision": git_revision(),
    }
    fs.write_json(paths.join(run_dir, fs.MANIFEST), result)
    fs.write_bytes(paths.join(run_dir, fs.SUCCESS), b"")
    return {k: result[k] for k in ("model_dir", "steps_run", "final_loss", "final_accuracy", "final_eval_accuracy",
                                   "train_seconds")}
