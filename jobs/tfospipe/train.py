"""train: distributed training with TensorFlowOnSpark, in either input mode: the driver.

As TFoS's ``examples/mnist`` split ``mnist_spark.py`` from ``mnist_dist.py``, this module is the driver
(plan, run the cluster, check and commit the run) and ``node.py`` the node: ``TFCluster.run`` starts
``node.node_main`` in each Spark executor with ``TF_CONFIG`` set and a ``node.NodeArgs``. Spark mode's
feed is ``feed.py``, the nodes' progress callbacks ``progress.py``, the done/error markers ``markers.py``.
The driver never imports TensorFlow. Two topologies:

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

Run directory ``{root}/models/{version}/{run}/`` (committed by :func:`commit_run`)::

    backup/          BackupAndRestore state: a retried task resumes from the last finished epoch
    tensorboard/     event logs (loss, accuracy, eval) written by the chief
    progress.log     progress lines of the chief, echoed into the driver's (Airflow task's) log
    workers/         one done marker per node: worker index, train and eval steps run, share, final loss;
                     or <node>.error with the traceback of a node that failed
    model/           the exported SavedModel (signature in model.py), renamed into place complete
    _manifest.json   dataset version, params, steps, final metrics, git revision; then _SUCCESS
"""

import argparse
import dataclasses
import functools
import math
import re
import sys
import threading
import time
from typing import Any

from . import dataset, fs, markers, node, paths, tfos
from .feed import FEED_BLOCK_ROWS, FEED_TIMEOUT_SECONDS, feed_blocks, strided_payloads
from .runner import (ExecutorLoss, JobError, executor_loss, executor_python, executor_python_failure, executors,
                     git_revision, library_versions)

#: After a node failed, how long the others get to fail or finish before the driver cancels their tasks.
NODE_FAILURE_GRACE_SECONDS = 30
#: What a new attempt removes from the run directory before it starts: everything but backup/.
STALE_ENTRIES = (fs.SUCCESS, fs.MANIFEST, paths.MODEL_DIR, paths.MODEL_STAGING_DIR, paths.MARKERS_DIR,
                 paths.PROGRESS_LOG)
#: A node's share of a split: ``{"files": [paths], "offset": int, "every": int, "records": int}``.
Share = dict[str, Any]


# --- planning: before Spark starts TensorFlow ---------------------------------------------------------

def check_topology(cluster_size: int, num_ps: int, input_mode: str, gradient_compression: str = "none") -> None:
    """Refuse a cluster ParameterServerStrategy cannot run, with what to change (raises JobError)."""
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


def assign_shards(records: list[int], nodes: int) -> list[list[int]] | None:
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


def plan_shares(split: str, shards: list[dict[str, Any]], split_dir: str, nodes: int) -> list[Share]:
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


def describe_shares(split: str, shards: list[dict[str, Any]], shares: list[Share]) -> str:
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


def plan_steps(train_rows: int, eval_shares: list[Share], batch_size: int, step_batches: int) -> tuple[int, int]:
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


@dataclasses.dataclass(frozen=True)
class Plan:
    """The cluster and step budgets of a run, from the flags and the conversion manifest."""

    nodes: int            # Spark executors = TensorFlow nodes (cluster_size)
    workers: int          # nodes that train (all-reduce) or the chief + workers (parameter servers)
    readers: int          # nodes reading shards; parameter servers: not the coordinator
    step_batches: int     # batches per step: all-reduce workers; 1 under ParameterServerStrategy
    train_rows: int
    shares: dict[str, list[Share]]  # per split ("train", "eval"): one share per reading node
    steps_per_epoch: int  # train steps every node runs per epoch
    eval_steps: int       # evaluation steps every node runs per evaluation


def plan_run(flags: argparse.Namespace, layout: paths.Layout, manifest: dict[str, Any]) -> Plan:
    """The run's :class:`Plan`; logs each split's shares (:func:`describe_shares`).

    Raises JobError when the manifest lists no per-shard record counts (an older conversion), a listed
    shard is missing, a split cannot fill one step, or a split holds fewer records than reading nodes.
    """
    workers = flags.cluster_size - flags.num_ps
    readers = workers - 1 if flags.num_ps else workers
    step_batches = 1 if flags.num_ps else workers
    shares = {split: _split_shares(flags, layout, manifest, split, readers, step_batches)
              for split in ("train", "eval")}
    # The same step budgets on every node; each node repeats its share to meet them.
    steps_per_epoch, eval_steps = plan_steps(manifest["splits"]["train"], shares["eval"], flags.batch_size,
                                             step_batches)
    return Plan(flags.cluster_size, workers, readers, step_batches, manifest["splits"]["train"], shares,
                steps_per_epoch, eval_steps)


def _split_shares(flags: argparse.Namespace, layout: paths.Layout, manifest: dict[str, Any], split: str,
                  readers: int, step_batches: int) -> list[Share]:
    """One split's shares (:func:`plan_shares`), after checking its shards are there and fill a step."""
    rows = manifest["splits"][split]
    shards = manifest.get("shards", {}).get(split)
    if shards is None:
        raise JobError(f"the conversion manifest of dataset version {flags.version} lists no per-shard record "
                       f"counts for the {split} split ({paths.join(layout.tfrecords(flags.version), fs.MANIFEST)}): "
                       "it was converted by an older version of the pipeline; rerun the convert task")
    split_dir = layout.split(flags.version, split)
    on_disk = set(dataset.shard_files(layout, flags.version, split))
    missing = [s["file"] for s in shards if paths.join(split_dir, s["file"]) not in on_disk]
    if missing:
        raise JobError(f"{split} shards {missing} listed in the conversion manifest are missing from {split_dir}; "
                       "rerun the convert task for this version")
    if rows < flags.batch_size * step_batches:
        raise JobError(f"{rows} {split} rows cannot fill one step of batch_size {flags.batch_size} on "
                       f"{step_batches} workers; lower batch_size")
    shares = plan_shares(split, shards, split_dir, readers)
    print(describe_shares(split, shards, shares), flush=True)
    return shares


def node_args_of(flags: argparse.Namespace, plan: Plan, manifest: dict[str, Any], run_dir: str) -> node.NodeArgs:
    """What every node gets: the run directory, the plan and the training parameters."""
    return node.NodeArgs(
        run_dir=run_dir,
        num_ps=flags.num_ps,
        input_mode=flags.input_mode,
        train_shares=plan.shares["train"],
        eval_shares=plan.shares["eval"],
        image_shape=dataset.image_shape(manifest),
        pixel_max=max(int(manifest["pixel_max_observed"]), 1),
        batch_size=flags.batch_size,
        learning_rate=flags.learning_rate,
        gradient_compression=flags.gradient_compression,
        epochs=flags.epochs,
        steps_per_epoch=plan.steps_per_epoch,
        eval_steps=plan.eval_steps,
    )


def check_executors(sc: Any, nodes: int, wait: float) -> None:
    """Wait up to ``wait`` s for ``nodes`` executors (one TensorFlow node each); raise JobError naming the
    Spark conf to change when the application has fewer."""
    if executors(sc, nodes, wait) < nodes:
        conf = sc.getConf()
        raise JobError(
            f"training needs cluster_size={nodes} executors (one TensorFlow node each) but the Spark "
            f"application got {executors(sc)} after {wait}s from master {sc.master}. Make the "
            f"cluster offer {nodes} executors with one task slot each (spark.executor.instances="
            f"{conf.get('spark.executor.instances', 'unset')}, spark.cores.max={conf.get('spark.cores.max', 'unset')}, "
            f"spark.executor.cores={conf.get('spark.executor.cores', 'unset')}) or lower cluster_size.")


def feed_rdd(sc: Any, shares: list[Share]) -> Any:
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
    return rdd.mapPartitions(functools.partial(feed_blocks, size=FEED_BLOCK_ROWS))


# --- the run directory and its commit ------------------------------------------------------------------

def check_root(data_root: str, num_ps: int) -> None:
    """Refuse parameter servers on a root ``tf.io.gfile`` cannot reach (``s3://``, ``hdfs://``,
    ``abfs://``): there the nodes read local copies of their shares (scratch.py), but under
    ParameterServerStrategy the chief's coordinator builds the workers' input pipelines, whose file
    paths would name the chief's copies, absent on other hosts. Raises JobError."""
    if num_ps and not fs.scheme_of(data_root).tf_gfile:
        raise JobError(f"num_ps={num_ps} needs a data root TensorFlow reaches itself (a local or shared path, "
                       f"gs://); {data_root} is reached through local copies, which parameter-server workers "
                       "cannot share: use num_ps=0 (all-reduce) on this root")


def prepare_run_dir(run_dir: str) -> None:
    """Start an attempt: remove what an earlier attempt left (:data:`STALE_ENTRIES`: its model, markers,
    progress log, manifest and ``_SUCCESS``) but keep ``backup/``, from which training resumes; create
    ``workers/`` for the markers. See :func:`commit_run`."""
    for stale in STALE_ENTRIES:
        fs.rmtree(paths.join(run_dir, stale))
    fs.makedirs(markers.markers_dir(run_dir))


def commit_run(run_dir: str, manifest: dict[str, Any]) -> None:
    """Commit the run: write ``_manifest.json``, then ``_SUCCESS``, the commit marker readers trust.

    Training commits its run directory in place, not with ``fs.Staging`` (a staging directory renamed
    over the output) as the other jobs do: a retried task must resume from ``backup/`` (BackupAndRestore
    state) inside the run directory, which a fresh staging directory would not hold, and TensorFlow's
    nodes write into the run directory while they train. So an attempt starts by removing everything
    but ``backup/`` (:func:`prepare_run_dir`), the chief renames its complete export
    ``.model.staging`` to ``model/`` (``node.export``), and the driver, having checked every node's done
    marker and the SavedModel, writes the manifest and ``_SUCCESS`` last: a run directory without
    ``_SUCCESS`` is an unfinished (or failed) attempt, whatever else it holds.
    """
    fs.write_json(paths.join(run_dir, fs.MANIFEST), manifest)
    fs.write_bytes(paths.join(run_dir, fs.SUCCESS), b"")


# --- running the cluster -------------------------------------------------------------------------------

def start_cluster(sc: Any, flags: argparse.Namespace, plan: Plan, node_args: node.NodeArgs) -> None:
    """Run the TensorFlow cluster to its end: ``node.node_main`` on every node, fed by Spark in spark
    input mode; echo the chief's progress.log meanwhile, and cancel the cluster's Spark jobs when a
    node failed and the others have not ended (:class:`_Watchdog`).

    Raises JobError naming the failed or lost node (:func:`cluster_failure`).
    """
    from tensorflowonspark import TFCluster

    run_dir = node_args.run_dir
    tail = _Tail(paths.join(run_dir, paths.PROGRESS_LOG))
    tail.start()
    watchdog = _Watchdog(sc, run_dir, TFCluster.tf_status)
    watchdog.start()
    cluster = None
    try:
        if flags.input_mode == "spark":
            cluster = TFCluster.run(sc, node.node_main, node_args, plan.workers, num_ps=0, tensorboard=False,
                                    input_mode=TFCluster.InputMode.SPARK, master_node="chief",
                                    reservation_timeout=300)
            cluster.train(feed_rdd(sc, plan.shares["train"]), num_epochs=flags.epochs,
                          feed_timeout=FEED_TIMEOUT_SECONDS)
            # The feed is over, the nodes are not: the chief may still be exporting. Stopping the app
            # now would kill them, so wait for every node's done marker first.
            await_nodes(run_dir, plan.workers, FEED_TIMEOUT_SECONDS)
        else:
            cluster = TFCluster.run(sc, node.node_main, node_args, plan.nodes, num_ps=flags.num_ps, tensorboard=False,
                                    input_mode=TFCluster.InputMode.TENSORFLOW, master_node="chief",
                                    reservation_timeout=300)
        tfos.shutdown(cluster)
    except (Exception, SystemExit) as e:
        raise cluster_failure(e, run_dir, TFCluster.tf_status, getattr(cluster, "cluster_info", None),
                              flags.num_ps if flags.input_mode == "tensorflow" else 0) from None
    finally:
        watchdog.stop.set()
        tail.stop.set()
        tail.poll()


def cluster_failure(error: BaseException, run_dir: str, tf_status: dict, cluster_info: list | None,
                    num_ps: int) -> Exception:
    """The JobError of a failed cluster run: ``error`` is what ``TFCluster`` raised (or ``sys.exit``),
    ``tf_status`` TFoS's status dict, ``cluster_info`` the cluster's reservations (None before it ran),
    ``num_ps`` the parameter servers in TFoS's node template.

    Executors that could not run their Python (runner.executor_python_failure) started no node: the
    failure's text is returned as a RuntimeError, which runner.main reports naming both Pythons. A lost
    executor takes its node with it and leaves no marker; the other nodes' collectives are aborted
    (their markers are not the cause): :func:`lost_node_error`. A JobError of the driver's own is kept.
    Else TFoS reported a failed node by raising from its Spark job, or by stopping the SparkContext and
    calling ``sys.exit(1)`` (TENSORFLOW input mode): either way, say which node failed and why.
    """
    for seen in (tf_status.get("error"), error):
        if executor_python_failure(seen) is not None:
            return RuntimeError(str(seen))
    loss, of_node_job = cluster_loss(error, tf_status)
    if loss is not None:
        node_name = None
        if of_node_job and loss.task is not None:
            node_name = node_of_task(loss.task, cluster_info, num_ps)
        return lost_node_error(run_dir, loss, node_name)
    if isinstance(error, JobError):
        return error
    return failure_error(run_dir, tf_status.get("error") or repr(error))


def await_nodes(run_dir: str, workers: int, timeout: float) -> None:
    """Block until the ``workers`` training nodes left their done markers (up to ``timeout`` s); raise
    JobError as soon as a node left an error marker (:func:`failure_error`), or at the timeout."""
    try:
        markers.wait_done(run_dir, markers.worker_names(workers), timeout)
    except markers.NodeFailed:
        raise failure_error(run_dir) from None
    except markers.MarkersTimeout as e:
        raise JobError(f"nodes did not finish within {timeout}s after the feed ended (markers in "
                       f"{run_dir}/workers: {e.names}); see the executor logs, and rerun the task") from None


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
            return bool(markers.failed_nodes(self.run_dir))
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


# --- failure reporting ---------------------------------------------------------------------------------

def failure_error(run_dir: str, cause: object = None) -> JobError:
    """The JobError for a failed TensorFlow cluster: which node, what happened, what to do (one line).

    The failing node's traceback tail is printed first (to stderr), so the ERROR line ends the log.
    ``cause``: what the driver saw (TFoS's exception or exit), used when no node left a marker.
    """
    errors = markers.node_errors(run_dir)
    where = markers.markers_dir(run_dir)
    if not errors:
        seen = " ".join(str(cause or "").split())[:400] or "no detail"
        return JobError(f"the TensorFlow cluster failed and no node left an error marker in {where} (a node process "
                        f"died: killed, or out of memory?); the driver saw: {seen}. See the executor logs (Spark UI, "
                        "or the executors' stderr), fix the cause and rerun the task; it resumes from the last "
                        "finished epoch")
    failed, text = errors[0]
    print(f"traceback of TensorFlow node {failed} ({markers.error_path(run_dir, failed)}):\n{text[-3000:]}",
          file=sys.stderr, flush=True)
    last = next((line.strip() for line in reversed(text.strip().splitlines()) if line.strip()), "no detail")
    others = [n for n, _ in errors[1:]]
    also = f"; then {', '.join(others)} failed too" if others else ""
    return JobError(f"TensorFlow node {failed} failed: {last[:500]}{also}. Full traceback in "
                    f"{markers.error_path(run_dir, failed)}; fix the cause (input data, memory, parameters) and "
                    "rerun the task; it resumes from the last finished epoch")


def last_finished_epoch(run_dir: str) -> tuple[int, int] | None:
    """``(epoch, epochs)`` of the last ``epoch N/E`` line of the run's progress.log (1-based, counted
    across resumes), or None when no epoch of this attempt finished. The chief writes the line after
    BackupAndRestore saved the epoch, so a retry resumes after it."""
    path = paths.join(run_dir, paths.PROGRESS_LOG)
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
    for reserved in cluster_info or []:
        if reserved.get("executor_id") == task:
            return markers.name_of(reserved["job_name"], reserved["task_index"])
    if task < num_ps:
        return markers.name_of("ps", task)
    return markers.name_of("chief", 0) if task == num_ps else markers.name_of("worker", task - num_ps - 1)


def lost_node_error(run_dir: str, loss: ExecutorLoss, node: str | None) -> JobError:
    """The JobError of a TensorFlow node lost with its Spark executor: which node, which host, Spark's
    reason, the last finished epoch (:func:`last_finished_epoch`) and where a retry resumes (one line)."""
    who = f"TensorFlow node {node}" if node else "a TensorFlow node"
    last = last_finished_epoch(run_dir)
    backup = paths.join(run_dir, paths.BACKUP_DIR)
    if last:
        epoch = (f"the last finished epoch is {last[0]} of {last[1]} ({paths.join(run_dir, paths.PROGRESS_LOG)}); "
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


def cluster_loss(error: BaseException, tf_status: dict, wait: float = 10.0) -> tuple[ExecutorLoss | None, bool]:
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


# --- after the cluster: check, describe and commit the run --------------------------------------------

def check_markers(run_dir: str, flags: argparse.Namespace, plan: Plan) -> dict[str, dict[str, Any]]:
    """Every node's done marker, ``{node: record}``, once the cluster ended.

    Raises JobError when a training node left none, or (all-reduce) when the nodes ran different step
    counts or more than the budget: their collectives did not line up. A resumed run skips the epochs
    that had finished, every node the same ones, so fewer steps than the budget are fine.
    """
    done = markers.read_done(run_dir)
    missing = [i for i, name in enumerate(markers.worker_names(plan.workers)) if name not in done]
    if missing:
        raise JobError(f"workers {missing} of {plan.workers} left no done marker in {run_dir}/workers: "
                       "they did not finish training; see the executor logs")
    if not flags.num_ps:
        budget = (flags.epochs * plan.steps_per_epoch, flags.epochs * plan.eval_steps)
        ran = {i: (done[name]["steps_run"], done[name]["eval_steps_run"])
               for i, name in enumerate(markers.worker_names(plan.workers))}
        if len(set(ran.values())) > 1 or any(t > budget[0] or e > budget[1] for t, e in ran.values()):
            raise JobError(f"the nodes ran different step counts (train, eval) {ran}, budget {budget}: their "
                           "collectives did not line up; rerun the task, and report this with the executor logs")
    return done


def run_manifest(flags: argparse.Namespace, plan: Plan, node_args: node.NodeArgs, done: dict[str, dict[str, Any]],
                 model_dir: str, started: float) -> dict[str, Any]:
    """The run's ``_manifest.json``: dataset version, params, plan, the chief's final metrics, every
    node's done marker, seconds since ``started`` (epoch seconds), library versions, git revision."""
    chief = done[markers.name_of("chief", 0)]
    return {
        "dataset_version": flags.version,
        "run_id": flags.run_id,
        "model_dir": model_dir,
        "image_shape": node_args.image_shape,
        "pixel_max": node_args.pixel_max,
        "params": {"cluster_size": plan.nodes, "epochs": flags.epochs, "batch_size": flags.batch_size,
                   "learning_rate": flags.learning_rate, "input_mode": flags.input_mode, "num_ps": flags.num_ps,
                   "gradient_compression": flags.gradient_compression},
        "steps_per_epoch": plan.steps_per_epoch,
        "eval_steps": plan.eval_steps,
        # records each reading node gets of each split (spark input mode: Spark feeds the train rows)
        "shares": {split: [s["records"] for s in plan.shares[split]] for split in plan.shares},
        "steps_run": chief["steps_run"],
        "final_loss": chief["final_loss"],
        "final_accuracy": chief["final_accuracy"],
        "final_eval_loss": chief["final_eval_loss"],
        "final_eval_accuracy": chief["final_eval_accuracy"],
        "steady_examples_per_second": chief["steady_examples_per_second"],
        "workers": sorted((m for m in done.values() if "worker" in m), key=lambda m: m["worker"]),
        "parameter_servers": sorted((m for m in done.values() if m.get("job_name") == "ps"),
                                    key=lambda m: m["task_index"]),
        "train_seconds": round(time.time() - started, 1),
        "versions": library_versions(),
        "executor_python": executor_python(m["python"] for m in done.values() if "python" in m),
        "git_revision": git_revision(),
    }


def run(spark: Any, flags: argparse.Namespace) -> dict[str, Any]:
    """The train job (``flags``: the parsed job flags, ``jobargs``): plan, prepare the run directory,
    run the cluster, check the markers and the export, commit the run. Returns the RESULT summary
    (model_dir, steps_run, final metrics, train_seconds); raises JobError with what went wrong."""
    check_topology(flags.cluster_size, flags.num_ps, flags.input_mode, flags.gradient_compression)
    check_root(flags.data_root, flags.num_ps)
    sc = spark.sparkContext
    layout = paths.Layout(flags.data_root)
    manifest = dataset.read_manifest(layout, flags.version)
    plan = plan_run(flags, layout, manifest)
    run_dir = layout.model_run(flags.version, flags.run_id)
    prepare_run_dir(run_dir)
    node_args = node_args_of(flags, plan, manifest, run_dir)
    check_executors(sc, plan.nodes, flags.executor_wait)
    topology = (f"{flags.num_ps} parameter servers + chief + {plan.workers - 1} workers (ParameterServerStrategy)"
                if flags.num_ps else f"{plan.workers} nodes (MultiWorkerMirroredStrategy)")
    print(f"training in {flags.input_mode} input mode on {topology}: {plan.train_rows} rows, {plan.steps_per_epoch} "
          f"steps/epoch x {flags.epochs} epochs, batch {flags.batch_size}/worker, run dir {run_dir}", flush=True)
    started = time.time()
    start_cluster(sc, flags, plan, node_args)
    done = check_markers(run_dir, flags, plan)
    model_dir = layout.exported_model(flags.version, flags.run_id)
    if not fs.exists(paths.join(model_dir, "saved_model.pb")):
        raise JobError(f"the chief exported no SavedModel at {model_dir}")
    result = run_manifest(flags, plan, node_args, done, model_dir, started)
    commit_run(run_dir, result)
    return {k: result[k] for k in ("model_dir", "steps_run", "final_loss", "final_accuracy", "final_eval_accuracy",
                                   "train_seconds")}
