"""node: one TensorFlow node of the training cluster, the function TFoS runs in each Spark executor.

As TFoS's ``examples/mnist`` split ``mnist_spark.py`` (the driver) from ``mnist_dist.py`` (the node), the
driver (``train.py``) plans the run and passes :func:`node_main` and a :class:`NodeSetup` to
``TFCluster.run``; TFoS calls ``node_main(setup, ctx)`` in each executor with ``TF_CONFIG`` set.
Roles (see ``train.py`` for the topologies):

* all-reduce (``num_ps=0``): every node trains under ``MultiWorkerMirroredStrategy``
  (:func:`_train`), the chief exports the SavedModel, a barrier keeps every node until it is complete;
* parameter servers (``num_ps>0``): the chief trains as ParameterServerStrategy's coordinator
  (:func:`_train`); parameter servers and workers are TensorFlow servers (:func:`_serve`) that return
  once the chief's done marker appears.

Every node leaves a done marker, or an error marker with its traceback (``markers.py``). TensorFlow is
imported inside the functions, never at import: the driver imports this module for ``NodeSetup`` and
``node_main`` (which TFoS pickles by reference).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from . import fs, markers, paths, scratch, tfenv
from .feed import Feed
from .jobargs import TrainParams

if TYPE_CHECKING:
    import tensorflow as tf

    from .trainplan import Plan

#: A progress line every N steps; all-reduce training also runs N steps per call of its train function
#: (Keras ``steps_per_execution``): fewer Python round trips and metric all-reduces per step.
PROGRESS_EVERY_STEPS = 10
#: ParameterServerStrategy runs remote closures and variable reads concurrently on every node: with the
#: executors' single inter-op thread (launch.TF_ENV) the chief waits forever for its first closure.
PS_THREADS = {"TF_NUM_INTEROP_THREADS": "4"}
#: Batches each node's tf.data pipeline prepares ahead of the training step (:func:`finish`).
PREFETCH_BATCHES = 2
#: Examples each node's tf.data pipeline shuffles over (records).
SHUFFLE_BUFFER = 8192


@dataclasses.dataclass(frozen=True)
class NodeSetup:
    """What the driver passes to every node (pickled to the executors): the run directory, the train
    params whole (``jobargs.TrainParams``) and the driver's plan (``trainplan.Plan``: shares, step
    budgets, image shape and pixel scale).

    A share (``plan.shares["train"]``/``["eval"]``, one per reading node, from ``trainplan.plan_shares``)
    is a dict ``{"files": [TFRecord paths], "offset": int, "every": int, "records": int}``: the node
    reads every ``every``-th record of ``files`` from ``offset``, ``records`` in all.
    """

    run_dir: str          # the run directory (local path or URI)
    params: TrainParams   # topology, input mode and hyperparameters, as the job parsed them
    plan: Plan            # shares, step budgets, image shape, pixel scale

    def __contains__(self, name: str) -> bool:
        """Whether a field ``name`` exists: TFoS asks ``'num_gpus' in tf_args`` of the object it passes."""
        return any(f.name == name for f in dataclasses.fields(self))


def node_main(setup: NodeSetup, ctx: Any) -> None:
    """Runs in each executor: one TensorFlow node of the cluster (``ctx``: TFoS's ``TFNodeContext``).

    A failure leaves ``workers/<node>.error`` with the traceback, so the driver can report it, and is
    raised again (TFoS then fails the node's Spark task).
    """
    try:
        if setup.params.num_ps and ctx.job_name in ("ps", "worker"):
            _serve(setup, ctx)
        else:
            _train(setup, ctx)
    except BaseException:
        markers.write_error(setup.run_dir, markers.node_name(ctx))
        raise
    finally:  # the local copies of a root tf.io.gfile cannot reach (TFoS's node process may skip atexit)
        scratch.cleanup()


def _tensorflow(ps_mode: bool, params: TrainParams, seed_index: int):
    """TensorFlow, imported with tf-keras (and, under ParameterServerStrategy, PS_THREADS) set first, then
    made reproducible before any op runs (:func:`make_reproducible`)."""
    tfenv.prepare_tensorflow(force=True)
    if ps_mode:
        os.environ.update(PS_THREADS)
    import tensorflow as tf

    make_reproducible(tf, params, seed_index)
    return tf


def node_seed(seed: int, index: int) -> int:
    """The seed of the node or input pipeline ``index`` of a run seeded ``seed`` (``jobargs.MAX_SEED``
    keeps it below 2**31)."""
    return seed + index


def make_reproducible(tf: Any, params: TrainParams, index: int) -> None:
    """Before this node's first op: seed Python's, NumPy's and TensorFlow's generators with
    :func:`node_seed` of ``params.seed`` and ``index`` (``tf.keras.utils.set_random_seed``: the weights'
    initializers, dropout), and with ``params.deterministic`` "on" turn on TensorFlow's op determinism
    (``tf.config.experimental.enable_op_determinism``: kernels that have a deterministic variant use it, the
    others raise instead of running nondeterministically; tf.data keeps its order)."""
    tf.keras.utils.set_random_seed(node_seed(params.seed, index))
    if params.deterministic == "on":
        tf.config.experimental.enable_op_determinism()


def all_reduce_strategy(tf: Any, params: TrainParams) -> Any:
    """``MultiWorkerMirroredStrategy``; with ``params.deterministic`` "on" its all-reduce is the ring
    (``CommunicationImplementation.RING``, what AUTO picks on CPU): each chunk of a gradient is summed
    around the ring in the order of the workers' task indices, the same order in every run, so the sums
    are the same bits (see the README's reproducibility section)."""
    if params.deterministic != "on":
        return tf.distribute.MultiWorkerMirroredStrategy()
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _serve(setup: NodeSetup, ctx: Any) -> None:
    """A parameter server or worker under ParameterServerStrategy: a TensorFlow server that the chief's
    coordinator drives. Returns once the chief has left its done marker, or any node an error marker."""
    tf = _tensorflow(True, setup.params, markers.worker_index(ctx.job_name, ctx.task_index)
                     if ctx.job_name == "worker" else 1000 + ctx.task_index)
    started = time.time()
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    tf.distribute.Server(resolver.cluster_spec(), job_name=ctx.job_name, task_index=ctx.task_index,
                         protocol=resolver.rpc_layer or "grpc", start=True)
    try:
        markers.wait_done(setup.run_dir, [markers.name_of("chief", 0)])
    except markers.NodeFailed:
        pass
    done = {"node": markers.node_name(ctx), "job_name": ctx.job_name, "task_index": ctx.task_index,
            "seconds": round(time.time() - started, 1)}
    if ctx.job_name == "worker":
        done["worker"] = markers.worker_index(ctx.job_name, ctx.task_index)
    markers.write_done(setup.run_dir, markers.node_name(ctx), done)


# --- input pipelines ---------------------------------------------------------------------------------

def from_share(shares: list[dict[str, Any]], input_context: Any, shuffle_seed: int | None) -> "tf.data.Dataset":
    """This input pipeline's planned share of a split (never empty), repeated: the node meets any step
    budget, a smaller share repeating its records within the epoch. A ``tf.data.Dataset`` of serialized
    Examples (scalar strings) in the shards' order; shuffled when ``shuffle_seed`` is not None, with
    :func:`node_seed` of it and the pipeline's index (reshuffled every epoch, the same sequence of orders
    in every run with that seed). On a root
    ``tf.io.gfile`` cannot reach, the share's files are read from local copies (scratch.local_copy, in
    this process's scratch directory; under ParameterServerStrategy the coordinator's, see train.py).

    ``input_context``: ``tf.distribute.InputContext``. Raises RuntimeError when the strategy runs another
    number of input pipelines than the driver planned shares for.
    """
    import tensorflow as tf

    from . import schema

    if input_context.num_input_pipelines != len(shares):
        raise RuntimeError(f"{input_context.num_input_pipelines} input pipelines, but the driver planned "
                           f"shares for {len(shares)} nodes")
    share = shares[input_context.input_pipeline_id]
    files = scratch.local_copies(share["files"])  # the files themselves on a root tf.io.gfile reaches
    ds = tf.data.TFRecordDataset(files, compression_type=schema.compression_type(files))
    if share["every"] > 1:
        ds = ds.shard(share["every"], share["offset"])
    ds = ds.cache()
    if shuffle_seed is not None:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=node_seed(shuffle_seed, input_context.input_pipeline_id),
                        reshuffle_each_iteration=True)
    return ds.repeat()


def finish(ds: "tf.data.Dataset", batch_size: int, image_shape: tuple[int, int]) -> "tf.data.Dataset":
    """Batches of ``(images float32 [batch_size, H, W, 1], labels int64 [batch_size])`` from a dataset of
    serialized Examples (remainders dropped), auto-sharding off (each node reads its own share), tf.data's
    autotuning off (PREFETCH_BATCHES batches ahead)."""
    import tensorflow as tf

    from . import schema

    def parse(serialized):
        return schema.parse_batch(serialized, image_shape)[:2]

    ds = ds.batch(batch_size, drop_remainder=True).map(parse)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # No autotuning: with it, two single-threaded TensorFlow processes on two cores (two executors) left
    # the cores ~38% idle (bench/infer_bench.py's loop: 2,435 rows/s each, 3,940 without it); the
    # node has one core, so the parse runs in sequence and two batches are prefetched.
    options.autotune.enabled = False
    return ds.with_options(options).prefetch(PREFETCH_BATCHES)


def train_fn(setup: NodeSetup, feed: Feed | None, input_context: Any) -> "tf.data.Dataset":
    """The train input of ``DatasetCreator``: Spark's feed (``feed``, spark input mode) or this node's
    train share (tensorflow input mode), batched (:func:`finish`)."""
    import tensorflow as tf

    if feed is not None:
        blocks = tf.data.Dataset.from_generator(feed.blocks, output_signature=tf.TensorSpec([None], tf.string))
        return finish(blocks.unbatch(), setup.params.batch_size, setup.plan.image_shape)
    return finish(from_share(setup.plan.shares["train"], input_context, setup.params.seed), setup.params.batch_size,
                  setup.plan.image_shape)


def eval_fn(setup: NodeSetup, input_context: Any) -> "tf.data.Dataset":
    """The evaluation input of ``DatasetCreator``: this node's eval share, in order, batched."""
    return finish(from_share(setup.plan.shares["eval"], input_context, None), setup.params.batch_size,
                  setup.plan.image_shape)


# --- all-reduce node, or the chief under ParameterServerStrategy ------------------------------------------

@dataclasses.dataclass
class _Role:
    """Where this node stands in the cluster."""

    ps_mode: bool       # ParameterServerStrategy: this node is the chief, the coordinator
    worker: int         # worker index: 0 the chief
    step_examples: int  # examples per step: all-reduce steps take a batch on every node; PS one batch

    @property
    def is_chief(self) -> bool:
        return self.worker == 0


def _train(setup: NodeSetup, ctx: Any) -> None:
    """Train, export (chief), and leave the done marker: an all-reduce node, or the PS coordinator."""
    ps_mode = setup.params.num_ps > 0
    tf = _tensorflow(ps_mode, setup.params, markers.worker_index(ctx.job_name, ctx.task_index))
    from tensorflowonspark import marker

    from . import model as model_lib

    started = time.time()
    if ps_mode:
        strategy = tf.distribute.ParameterServerStrategy(tf.distribute.cluster_resolver.TFConfigClusterResolver())
    else:
        strategy = all_reduce_strategy(tf, setup.params)
    role = _Role(ps_mode, markers.worker_index(ctx.job_name, ctx.task_index),
                 setup.params.batch_size * (1 if ps_mode else ctx.num_workers))
    feed = None
    if setup.params.input_mode == "spark":
        data_feed = ctx.get_data_feed(train_mode=True)
        feed = Feed(ctx.mgr.get_queue("input"), marker.EndPartition, setup.params.batch_size, role.worker)
    with strategy.scope():
        # ParameterServerStrategy's coordinator schedules single steps: one step per execution there
        model = model_lib.build_model(setup.plan.image_shape, setup.plan.pixel_max, setup.params.learning_rate,
                                      steps_per_execution=1 if ps_mode else PROGRESS_EVERY_STEPS,
                                      gradient_compression=setup.params.gradient_compression)
    if not ps_mode:
        # Metrics are already all-reduced across workers: report one replica's value, not their sum.
        model.distribute_reduction_method = "first"
    callbacks, shown, counted = _callbacks(tf, setup, role)
    history = model.fit(tf.keras.utils.experimental.DatasetCreator(functools.partial(train_fn, setup, feed)),
                        epochs=setup.params.epochs, steps_per_epoch=setup.plan.steps_per_epoch, callbacks=callbacks,
                        verbose=0, validation_steps=setup.plan.eval_steps,
                        validation_data=tf.keras.utils.experimental.DatasetCreator(
                            functools.partial(eval_fn, setup)))
    if feed is not None:
        feed.stop(data_feed.terminate)  # skip the rest of the feed: this node has run its step budget
    export(model, setup.run_dir, role.worker, setup.plan.image_shape)
    if not ps_mode:
        barrier(strategy)
    done = _done_record(setup, ctx, role, history.history, counted, feed, shown.examples_per_second, started)
    markers.write_done(setup.run_dir, markers.node_name(ctx), done)


def _callbacks(tf: Any, setup: NodeSetup, role: _Role) -> tuple[list, Any, Any]:
    """``(callbacks, progress callback, step counter or None)`` of ``model.fit``: BackupAndRestore in
    ``backup/``, progress lines (every PROGRESS_EVERY_STEPS steps and per epoch; per epoch only under
    ParameterServerStrategy, which allows no batch-level callbacks), the step counter (all-reduce), and
    on the chief TensorBoard logs in ``tensorboard/``. On a root ``tf.io.gfile`` cannot reach, both are
    written in the node's scratch directory and published by progress.BackupSync and progress.LogSync."""
    from . import progress

    write = progress.log_writer(setup.run_dir, role.is_chief)
    examples_per_epoch = setup.plan.steps_per_epoch * role.step_examples
    if role.ps_mode:
        shown, counted = progress.EpochProgress(write, setup.params.epochs, examples_per_epoch), None
    else:
        shown = progress.Progress(write, setup.params.epochs, examples_per_epoch, role.step_examples,
                                  PROGRESS_EVERY_STEPS)
        counted = progress.StepCount()
    backup, logs = paths.join(setup.run_dir, paths.BACKUP_DIR), paths.join(setup.run_dir, paths.TENSORBOARD_DIR)
    if fs.scheme_of(setup.run_dir).tf_gfile:
        callbacks, log_sync = [tf.keras.callbacks.BackupAndRestore(backup), shown], None
    else:  # TensorFlow writes in scratch; the syncs publish after every epoch (see progress.BackupSync)
        backup_sync, log_sync = progress.BackupSync(backup, role.is_chief), progress.LogSync(logs)
        callbacks = [tf.keras.callbacks.BackupAndRestore(backup_sync.local_backup), backup_sync, shown]
        logs = log_sync.local_logs
    callbacks += [counted] if counted else []
    if role.is_chief:
        # Batch scalars at every end of a Keras execution (steps_per_execution steps, fewer at an epoch's end):
        # TensorBoard records when the step counter is a multiple of update_freq, and with 10 steps per
        # execution and epochs of e.g. 11 steps the counter runs 10, 11, 21, 22, ..., so update_freq=10 drew
        # one point in all; 1 draws two per epoch here (a curve). Parameter servers: per epoch only.
        callbacks.append(tf.keras.callbacks.TensorBoard(logs, update_freq="epoch" if role.ps_mode else 1))
        callbacks += [log_sync] if log_sync else []
    return callbacks, shown, counted


def export(model: Any, run_dir: str, worker: int, image_shape: tuple[int, int]) -> None:
    """Export the trained model as the SavedModel of the serving signature (``model.export``).

    Every node takes part in the save (variables are distributed); only the chief's (``worker`` 0) copy
    is kept: it is written to ``<run_dir>/.model.staging`` and renamed to ``<run_dir>/model`` complete
    (the run is committed later by the driver, see ``rundir.commit_run``); the others write to a local
    temporary directory and delete it. Under ParameterServerStrategy only the chief runs this.

    On a root ``tf.io.gfile`` cannot reach the chief exports into its scratch directory, uploads the
    complete export to ``.model.staging`` and renames that to ``model`` with ``fs.rename`` (one
    directory rename on HDFS; server-side copies then a delete on object stores, where ``model/`` is
    trusted only once the driver has written the run's ``_SUCCESS``).
    """
    import tensorflow as tf

    from . import model as model_lib

    if worker != 0:
        target = tempfile.mkdtemp(prefix=f"tfos-worker{worker}-")
        model_lib.export(model, target, image_shape)
        shutil.rmtree(target, ignore_errors=True)
        return
    staging, final = paths.join(run_dir, paths.MODEL_STAGING_DIR), paths.join(run_dir, paths.MODEL_DIR)
    fs.rmtree(staging)
    with scratch.staged_dir(staging) as target:  # staging itself on a root tf.io.gfile reaches
        model_lib.export(model, target, image_shape)
    fs.rmtree(final)
    if fs.scheme_of(run_dir).tf_gfile:
        tf.io.gfile.rename(staging, final)
    else:
        fs.rename(staging, final)


def barrier(strategy: "tf.distribute.Strategy") -> None:
    """All-reduce training: no node leaves the collective group before every node got here (after the
    chief's export is complete), so no collective is left half-done."""
    import tensorflow as tf

    strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


def _done_record(setup: NodeSetup, ctx: Any, role: _Role, history: dict[str, list[float]], counted: Any,
                 feed: Feed | None, steady_rate: float | None, started: float) -> dict[str, Any]:
    """The done marker of a training node: what it ran, its share, its final metrics, its rates."""
    epochs_run = len(history.get("loss", []))

    def final(metric):
        return float(history[metric][-1]) if epochs_run else None

    return {
        "node": markers.node_name(ctx),
        "worker": role.worker,
        "job_name": ctx.job_name,
        "task_index": ctx.task_index,
        "python": sys.executable,  # the executor's interpreter (the manifest's executor_python)
        "epochs_run": epochs_run,
        # steps this node ran (all-reduce: counted); under ParameterServerStrategy the coordinator's budget
        "steps_run": counted.train if counted else epochs_run * setup.plan.steps_per_epoch,
        "eval_steps_run": counted.eval if counted else epochs_run * setup.plan.eval_steps,
        # records of this node's planned share of each split (spark input mode: Spark feeds the train rows)
        "train_share_records": (setup.plan.shares["train"][role.worker]["records"]
                                if not role.ps_mode and feed is None else None),
        "eval_share_records": None if role.ps_mode else setup.plan.shares["eval"][role.worker]["records"],
        "final_loss": final("loss"),
        "final_accuracy": final("accuracy"),
        "final_eval_loss": final("val_loss"),
        "final_eval_accuracy": final("val_accuracy"),
        "steady_examples_per_second": round(steady_rate or 0.0, 1),
        "rows_fed": feed.rows if feed is not None else None,
        "rows_replayed": feed.replayed if feed is not None else None,
        "malloc": malloc_in_use(),
        "seconds": round(time.time() - started, 1),
    }


def malloc_in_use() -> str:
    """The memory allocator this process runs with: ``tcmalloc`` or ``jemalloc`` if preloaded, else
    ``glibc`` (``unknown`` without ``/proc``)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "unknown"
    return next((name for name in ("tcmalloc", "jemalloc") if f"lib{name}" in maps), "glibc")
