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

Shares and step budgets (planned by the driver from the conversion manifest's per-shard record counts,
before TensorFlow starts): every node that reads shards gets a non-empty share of each split, whole
non-empty shards balanced by records (:func:`assign_shards`) or, with fewer non-empty shards than nodes,
every n-th record of all of them (:func:`plan_shares`); a split with fewer records than reading nodes
is refused. Every node repeats its share, so every node runs the same number of train steps per epoch
and evaluation steps (:func:`plan_steps`) however uneven the shards are; an uneven share never leaves
one node waiting in a collective for a node that ran out of data. Each node's done marker records the
steps it ran, and the job checks they are equal.

A node that fails leaves ``workers/<node>.error``; the job then ends with one ``ERROR [train]`` line
naming the node and its error, whether TFoS reported it by a failed Spark job or by ``sys.exit``, and
cancels the cluster's Spark jobs if the other nodes have not ended ``NODE_FAILURE_GRACE_SECONDS`` later.
A node whose executor was lost (its JVM killed, out of memory, its host gone) leaves no marker; the line
then names the node, the executor's host, Spark's reason and the last finished epoch, from which a
retry resumes (:func:`lost_node_error`); the other nodes' aborted collectives are not the cause.

Run directory ``{root}/models/{version}/{run}/``::

    backup/          BackupAndRestore state: a retried task resumes from the last finished epoch
    tensorboard/     event logs (loss, accuracy, eval) written by the chief
    progress.log     progress lines of the chief, echoed into the driver's (Airflow task's) log
    workers/         one done marker per node: worker index, train and eval steps run, share, final loss;
                     or <node>.error with the traceback of a node that failed
    model/           the exported SavedModel (signature in model.py), renamed into place complete
    _manifest.json   dataset version, params, steps, final metrics, git revision; then _SUCCESS
"""

import math
import re
import threading
import time

from . import dataset, fs, paths, schema
from .runner import ExecutorLoss, JobError, executor_loss, executors, git_revision, library_versions

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


def assign_shards(records, nodes):
    """Which shards each node reads: the non-empty shards spread so that the nodes' record counts are as
    even as whole shards allow (largest shard first, to the node with the fewest records so far).

    ``records``: records per shard (a split's manifest entries, in shard order); ``nodes`` >= 1.
    Returns ``nodes`` lists of shard indexes (ascending), or None when there are fewer non-empty shards
    than nodes, so that some node would get no records. Empty shards go to no node.
    """
    nonempty = [i for i, n in enumerate(records) if n > 0]
    if len(nonempty) < nodes:
        return None
    shares, loads = [[] for _ in range(nodes)], [0] * nodes
    for i in sorted(nonempty, key=lambda i: (-records[i], i)):
        node = min(range(nodes), key=lambda k: (loads[k], k))
        shares[node].append(i)
        loads[node] += records[i]
    return [sorted(share) for share in shares]


def plan_shares(split, shards, split_dir, nodes):
    """Each reading node's share of one split, such that no node's share is empty.

    ``shards``: the conversion manifest's entries of the split (``{"file", "records"}``), ``split_dir``
    the directory holding them, ``nodes`` the nodes reading the split. With at least ``nodes`` non-empty
    shards every node reads whole shards of its own (:func:`assign_shards`); with fewer, every node reads
    all non-empty shards and keeps every ``nodes``-th record from its offset (``tf.data``'s ``shard``).

    Returns ``nodes`` dicts ``{"files": [paths], "offset": int, "every": int, "records": int}`` (records:
    how many this node gets). Raises JobError when the split holds fewer records than nodes.
    """
    counts = [int(s["records"]) for s in shards]
    total = sum(counts)
    if total < nodes:
        raise JobError(f"the {split} shards hold {counts} records ({total} in all) for {nodes} reading nodes: "
                       f"every node needs at least one {split} record. Add data, or use fewer nodes "
                       "(cluster_size)")
    files = [paths.join(split_dir, s["file"]) for s in shards]
    assigned = assign_shards(counts, nodes)
    if assigned is not None:
        return [{"files": [files[i] for i in share], "offset": 0, "every": 1,
                 "records": sum(counts[i] for i in share)} for share in assigned]
    nonempty = [f for f, n in zip(files, counts) if n > 0]
    return [{"files": nonempty, "offset": k, "every": nodes, "records": len(range(k, total, nodes))}
            for k in range(nodes)]


def describe_shares(split, shards, shares):
    """One log line: a split's shard record counts and what each reading node gets."""
    counts = [int(s["records"]) for s in shards]
    got = [s["records"] for s in shares]
    if shares and shares[0]["every"] > 1:
        n = len(shares)
        return (f"{split} shards hold {counts} records: fewer non-empty shards than the {n} nodes reading them, so "
                f"every node reads all of them and keeps one record in {n} ({got} records per node). To give each "
                f"node shards of its own, convert with num_shards >= {n} (a .csv.gz input is one shard: split it "
                "into several files, or use plain CSV)")
    return f"{split} shards hold {counts} records; nodes read {got} records each"


def plan_steps(train_rows, eval_shares, batch_size, step_batches):
    """The step budgets every node runs: ``(steps_per_epoch, eval_steps)``.

    ``steps_per_epoch``: the train split once per epoch, ``step_batches`` batches of ``batch_size`` per
    step (the number of all-reduce workers; 1 under ParameterServerStrategy), at least 1. ``eval_steps``:
    all-reduce: enough batches for the largest eval share (``eval_shares``, from :func:`plan_shares`), so
    every eval record is evaluated once and smaller shares repeat records; parameter servers: the eval
    split once, one batch per step. Each node repeats its (non-empty) share, so every node meets both.
    """
    steps_per_epoch = max(train_rows // (batch_size * step_batches), 1)
    if step_batches == 1:
        eval_steps = math.ceil(sum(s["records"] for s in eval_shares) / batch_size)
    else:
        eval_steps = math.ceil(max(s["records"] for s in eval_shares) / batch_size)
    return steps_per_epoch, max(eval_steps, 1)


def strided_payloads(files, offset, every):
    """Executor side: the serialized Examples of ``files`` in order, every ``every``-th from ``offset``."""
    import itertools

    payloads = itertools.chain.from_iterable(
        schema.tfrecord_payloads(fs.read_bytes(f), compressed=schema.is_compressed(f)) for f in files)
    return itertools.islice(payloads, offset, None, every)


def feed_rdd(sc, shares):
    """Spark mode: the RDD of serialized train Examples fed to the nodes, in blocks of FEED_BLOCK_ROWS.

    Spark, not the plan, decides which node gets which partition; what the plan ensures is that there are
    no empty partitions and at least as many as nodes, so that each node is fed at the start. Whole
    non-empty shards (one partition each) when there are enough of them; else one partition per node of
    every n-th record (``shares`` from :func:`plan_shares`).
    """
    if shares[0]["every"] == 1:
        rdd = dataset.example_rdd(sc, sorted(f for share in shares for f in share["files"]))
    else:
        parts = [(s["files"], s["offset"], s["every"]) for s in shares]
        rdd = sc.parallelize(parts, len(parts)).flatMap(lambda p: strided_payloads(*p))
    return rdd.mapPartitions(feed_blocks)


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

    def from_share(shares, input_context, shuffle):
        """This input pipeline's planned share of a split (never empty), repeated: the node meets any
        step budget, a smaller share repeating its records within the epoch."""
        if input_context.num_input_pipelines != len(shares):
            raise RuntimeError(f"{input_context.num_input_pipelines} input pipelines, but the driver planned "
                               f"shares for {len(shares)} nodes")
        share = shares[input_context.input_pipeline_id]
        ds = tf.data.TFRecordDataset(share["files"], compression_type=node_schema.compression_type(share["files"]))
        if share["every"] > 1:
            ds = ds.shard(share["every"], share["offset"])
        ds = ds.cache()
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
        return finish(from_share(args["train_shares"], input_context, shuffle=True))

    def eval_fn(input_context):
        return finish(from_share(args["eval_shares"], input_context, shuffle=False))

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

    class StepCount(tf.keras.callbacks.Callback):
        """The train and evaluation steps this node ran (Keras reports the last step index of each
        execution of ``steps_per_execution`` steps; an input that runs out of data ends the loop early)."""

        def __init__(self):
            super().__init__()
            self.train = self.eval = self._train = self._eval = 0

        def on_epoch_begin(self, epoch, logs=None):
            self._train = 0

        def on_train_batch_end(self, batch, logs=None):
            self._train = batch + 1

        def on_epoch_end(self, epoch, logs=None):
            self.train += self._train

        def on_test_begin(self, logs=None):
            self._eval = 0

        def on_test_batch_end(self, batch, logs=None):
            self._eval = batch + 1

        def on_test_end(self, logs=None):
            self.eval += self._eval

    counted = None if ps_mode else StepCount()  # ParameterServerStrategy allows no batch-level callbacks
    callbacks = [tf.keras.callbacks.BackupAndRestore(node_paths.join(run_dir, "backup")),
                 EpochProgress() if ps_mode else Progress()] + ([counted] if counted else [])
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
        # steps this node ran (all-reduce: counted); under ParameterServerStrategy the coordinator's budget
        "steps_run": counted.train if counted else epochs_run * args["steps_per_epoch"],
        "eval_steps_run": counted.eval if counted else epochs_run * args["eval_steps"],
        # records of this node's planned share of each split (spark input mode: Spark feeds the train rows)
        "train_share_records": (args["train_shares"][worker_index]["records"]
                                if not ps_mode and feed is None else None),
        "eval_share_records": None if ps_mode else args["eval_shares"][worker_index]["records"],
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


#: Errors a node raises because another node failed first (its collectives were aborted): not the cause.
SECONDARY_ERRORS = ("Collective ops is aborted", "CancelledError", "UnavailableError", "coordination service",
                    "Socket closed", "Connection reset")
#: After a node failed, how long the others get to fail or finish before the driver cancels their tasks.
NODE_FAILURE_GRACE_SECONDS = 30


def node_errors(run_dir):
    """The error markers nodes left, the likely cause first: ``[(node, traceback text)]``.

    A node that failed on its own comes before nodes whose collectives were aborted because of it;
    otherwise the earliest marker first.
    """
    markers = paths.join(run_dir, "workers")
    found = []
    for name in fs.listdir(markers):
        if name.endswith(".error"):
            path = paths.join(markers, name)
            text = fs.read_bytes(path).decode("utf-8", "replace")
            found.append((any(p in text for p in SECONDARY_ERRORS), fs.mtime(path), name[:-len(".error")], text))
    return [(node, text) for _secondary, _t, node, text in sorted(found)]


def failure_error(run_dir, cause=None):
    """The JobError for a failed TensorFlow cluster: which node, what happened, what to do (one line).

    The failing node's traceback tail is printed first (to stderr), so the ERROR line ends the log.
    ``cause``: what the driver saw (TFoS's exception or exit), used when no node left a marker.
    """
    import sys

    errors = node_errors(run_dir)
    markers = paths.join(run_dir, "workers")
    if not errors:
        seen = " ".join(str(cause or "").split())[:400] or "no detail"
        return JobError(f"the TensorFlow cluster failed and no node left an error marker in {markers} (a node process "
                        f"died: killed, or out of memory?); the driver saw: {seen}. See the executor logs (Spark UI, "
                        "or the executors' stderr), fix the cause and rerun the task; it resumes from the last "
                        "finished epoch")
    node, text = errors[0]
    print(f"traceback of TensorFlow node {node} ({paths.join(markers, node + '.error')}):\n{text[-3000:]}",
          file=sys.stderr, flush=True)
    last = next((line.strip() for line in reversed(text.strip().splitlines()) if line.strip()), "no detail")
    others = [n for n, _ in errors[1:]]
    also = f"; then {', '.join(others)} failed too" if others else ""
    return JobError(f"TensorFlow node {node} failed: {last[:500]}{also}. Full traceback in "
                    f"{paths.join(markers, node + '.error')}; fix the cause (input data, memory, parameters) and "
                    "rerun the task; it resumes from the last finished epoch")


def last_finished_epoch(run_dir: str) -> tuple[int, int] | None:
    """``(epoch, epochs)`` of the last ``epoch N/E`` line of the run's progress.log (1-based, counted
    across resumes), or None when no epoch of this attempt finished. The chief writes the line after
    BackupAndRestore saved the epoch, so a retry resumes after it."""
    path = paths.join(run_dir, "progress.log")
    try:
        text = fs.read_bytes(path).decode("utf-8", "replace") if fs.exists(path) else ""
    except OSError:
        return None
    found = re.findall(r"^epoch (\d+)/(\d+) ", text, re.M)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def node_of_task(task: int, cluster_info: list | None, num_ps: int) -> str:
    """The node name (worker-0 chief, worker-N, ps-N) of TFoS's node task ``task`` (its executor_id: the
    partition of TFCluster's node RDD), from the cluster's reservations, else from TFoS's template
    (parameter servers first, then the chief, then the workers)."""
    for node in cluster_info or []:
        if node.get("executor_id") == task:
            if node["job_name"] == "ps":
                return f"ps-{node['task_index']}"
            return "worker-0" if node["job_name"] == "chief" else f"worker-{node['task_index'] + 1}"
    return f"ps-{task}" if task < num_ps else f"worker-{task - num_ps}"


def lost_node_error(run_dir: str, loss: ExecutorLoss, node: str | None) -> JobError:
    """The JobError of a TensorFlow node lost with its Spark executor: which node, which host, Spark's
    reason, the last finished epoch (:func:`last_finished_epoch`) and where a retry resumes (one line)."""
    who = f"TensorFlow node {node}" if node else "a TensorFlow node"
    last = last_finished_epoch(run_dir)
    backup = paths.join(run_dir, "backup")
    if last:
        epoch = (f"the last finished epoch is {last[0]} of {last[1]} ({paths.join(run_dir, 'progress.log')}); "
                 f"Airflow's retry, or a rerun under the same run id, resumes from it at epoch {last[0] + 1} "
                 f"(BackupAndRestore state in {backup})")
    elif fs.glob(paths.join(backup, "*", "checkpoint")):
        epoch = (f"no epoch of this attempt finished; Airflow's retry, or a rerun under the same run id, resumes "
                 f"from the last epoch an earlier attempt finished (BackupAndRestore state in {backup})")
    else:
        epoch = ("no epoch had finished (no BackupAndRestore state yet); Airflow's retry, or a rerun, starts "
                 "training from epoch 1")
    return JobError(f"{who} was lost with Spark executor {loss.executor or '?'} on host {loss.host or '?'}: "
                    f"{loss.reason}. {epoch[0].upper()}{epoch[1:]}. If executors keep dying, see their logs (Spark "
                    "UI, or the executors' stderr): exit code 137 is a kill, often for memory")


def cluster_loss(error, tf_status: dict, wait: float = 10.0) -> tuple[ExecutorLoss | None, bool]:
    """``(loss, of_node_job)``: the executor loss behind a failed TFoS cluster (None when there was none),
    and whether TFoS's node job reported it (the background thread's error in ``tf_status``), whose task
    index names the node. A feeding job that failed first (spark input mode) names only the executor,
    so then this waits up to ``wait`` s for the node job's error."""
    loss = executor_loss(tf_status.get("error"))
    if loss is None and executor_loss(error) is not None:
        deadline = time.time() + wait
        while loss is None and time.time() < deadline:
            time.sleep(0.5)
            loss = executor_loss(tf_status.get("error"))
        if loss is None:
            return executor_loss(error), False
    return loss, loss is not None


def await_nodes(run_dir, workers, timeout):
    """Block until every node left its done marker; raise as soon as one left an error."""
    deadline = time.time() + timeout
    while True:
        names = set(fs.listdir(paths.join(run_dir, "workers")))
        if any(n.endswith(".error") for n in names):
            raise failure_error(run_dir)
        if all(f"worker-{i}.json" in names for i in range(workers)):
            return
        if time.time() > deadline:
            raise JobError(f"nodes did not finish within {timeout}s after the feed ended (markers in "
                           f"{run_dir}/workers: {sorted(names)}); see the executor logs, and rerun the task")
        time.sleep(1)


class _Watchdog(threading.Thread):
    """Once a node has failed (an error marker, or a failed TFoS task), give the other nodes
    NODE_FAILURE_GRACE_SECONDS to end, then cancel the Spark jobs: a node left waiting in a collective for
    a peer that is gone would otherwise hold its task, and TFoS's shutdown would wait for it forever."""

    def __init__(self, sc, run_dir, tf_status):
        super().__init__(daemon=True)
        self.sc, self.run_dir, self.tf_status = sc, run_dir, tf_status
        self.stop, self.cancelled = threading.Event(), False

    def failed(self):
        if "error" in self.tf_status:
            return True
        try:
            return any(n.endswith(".error") for n in fs.listdir(paths.join(self.run_dir, "workers")))
        except Exception:
            return False

    def run(self):
        since = None
        while not self.stop.wait(1):
            if since is None:
                since = time.time() if self.failed() else None
            elif time.time() - since > NODE_FAILURE_GRACE_SECONDS:
                print(f"a TensorFlow node failed {NODE_FAILURE_GRACE_SECONDS}s ago and the cluster has not ended: "
                      "cancelling its Spark jobs", flush=True)
                self.cancelled = True
                try:
                    self.sc.cancelAllJobs()
                except Exception:  # the context may be stopping already
                    pass
                return


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
    manifest = dataset.read_manifest(layout, args.version)
    train_rows, eval_rows = manifest["splits"]["train"], manifest["splits"]["eval"]
    nodes = args.cluster_size                # Spark executors = TensorFlow nodes
    workers = nodes - args.num_ps            # nodes that train (all-reduce) or the chief + workers (PS)
    readers = workers - 1 if args.num_ps else workers   # nodes reading shards; PS: not the coordinator
    step_batches = 1 if args.num_ps else workers         # batches per step
    shares = {}
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        shards = manifest.get("shards", {}).get(split)
        if shards is None:
            raise JobError(f"the conversion manifest of dataset version {args.version} lists no per-shard record "
                           f"counts for the {split} split ({paths.join(layout.tfrecords(args.version), fs.MANIFEST)}): "
                           "it was converted by an older version of the pipeline; rerun the convert task")
        split_dir = layout.split(args.version, split)
        on_disk = set(dataset.shard_files(layout, args.version, split))
        missing = [s["file"] for s in shards if paths.join(split_dir, s["file"]) not in on_disk]
        if missing:
            raise JobError(f"{split} shards {missing} listed in the conversion manifest are missing from {split_dir}; "
                           "rerun the convert task for this version")
        if rows < args.batch_size * step_batches:
            raise JobError(f"{rows} {split} rows cannot fill one step of batch_size {args.batch_size} on "
                           f"{step_batches} workers; lower batch_size")
        shares[split] = plan_shares(split, shards, split_dir, readers)
        print(describe_shares(split, shards, shares[split]), flush=True)
    # The same step budgets on every node; each node repeats its share to meet them.
    steps_per_epoch, eval_steps = plan_steps(train_rows, shares["eval"], args.batch_size, step_batches)
    run_dir = layout.model_run(args.version, args.run_id)
    # A retry keeps backup/ (to resume) but never an older attempt's model, markers or _SUCCESS.
    for stale in (fs.SUCCESS, fs.MANIFEST, "model", ".model.staging", "workers", "progress.log"):
        fs.rmtree(paths.join(run_dir, stale))
    fs.makedirs(paths.join(run_dir, "workers"))
    node_args = {
        "run_dir": run_dir,
        "num_ps": args.num_ps,
        "input_mode": args.input_mode,
        "train_shares": shares["train"],
        "eval_shares": shares["eval"],
        "image_shape": dataset.image_shape(manifest),
        "pixel_max": max(int(manifest["pixel_max_observed"]), 1),
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "gradient_compression": args.gradient_compression,
        "epochs": args.epochs,
        "steps_per_epoch": steps_per_epoch,
        "eval_steps": eval_steps,
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
    watchdog = _Watchdog(sc, run_dir, TFCluster.tf_status)
    watchdog.start()
    cluster = None
    try:
        if args.input_mode == "spark":
            cluster = TFCluster.run(sc, node_main, node_args, workers, num_ps=0, tensorboard=False,
                                    input_mode=TFCluster.InputMode.SPARK, master_node="chief",
                                    reservation_timeout=300)
            cluster.train(feed_rdd(sc, shares["train"]), num_epochs=args.epochs, feed_timeout=FEED_TIMEOUT_SECONDS)
            # The feed is over, the nodes are not: the chief may still be exporting. Stopping the app
            # now would kill them, so wait for every node's done marker first.
            await_nodes(run_dir, workers, FEED_TIMEOUT_SECONDS)
        else:
            cluster = TFCluster.run(sc, node_main, node_args, nodes, num_ps=args.num_ps, tensorboard=False,
                                    input_mode=TFCluster.InputMode.TENSORFLOW, master_node="chief",
                                    reservation_timeout=300)
        cluster.shutdown(timeout=-1)
    except (Exception, SystemExit) as e:
        # A lost executor takes its node with it and leaves no marker; the other nodes' collectives are
        # aborted (their markers are not the cause).
        loss, of_node_job = cluster_loss(e, TFCluster.tf_status)
        if loss is not None:
            node = None
            if of_node_job and loss.task is not None:
                node = node_of_task(loss.task, getattr(cluster, "cluster_info", None),
                                    args.num_ps if args.input_mode == "tensorflow" else 0)
            raise lost_node_error(run_dir, loss, node) from None
        if isinstance(e, JobError):
            raise
        # TFoS reports a failed node by raising from its Spark job, or by stopping the SparkContext and
        # calling sys.exit(1) (TENSORFLOW input mode): either way, say which node failed and why.
        raise failure_error(run_dir, TFCluster.tf_status.get("error") or repr(e)) from None
    finally:
        watchdog.stop.set()
        tail.stop.set()
        tail.poll()

    markers = {m: fs.read_json(paths.join(run_dir, "workers", m)) for m in fs.listdir(paths.join(run_dir, "workers"))
               if m.endswith(".json")}
    missing = [i for i in range(workers) if f"worker-{i}.json" not in markers]
    if missing:
        raise JobError(f"workers {missing} of {workers} left no done marker in {run_dir}/workers: "
                       "they did not finish training; see the executor logs")
    if not args.num_ps:
        budget = (args.epochs * steps_per_epoch, args.epochs * eval_steps)
        ran = {i: (markers[f"worker-{i}.json"]["steps_run"], markers[f"worker-{i}.json"]["eval_steps_run"])
               for i in range(workers)}
        # a resumed run skips the epochs that had finished: every node skips the same ones
        if len(set(ran.values())) > 1 or any(t > budget[0] or e > budget[1] for t, e in ran.values()):
            raise JobError(f"the nodes ran different step counts (train, eval) {ran}, budget {budget}: their "
                           "collectives did not line up; rerun the task, and report this with the executor logs")
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
        "eval_steps": eval_steps,
        # records each reading node gets of each split (spark input mode: Spark feeds the train rows)
        "shares": {split: [s["records"] for s in shares[split]] for split in shares},
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
