"""train: distributed training with TensorFlowOnSpark, in either input mode: the driver.

As TFoS's ``examples/mnist`` split ``mnist_spark.py`` from ``mnist_dist.py``, this module is the driver
and ``node.py`` the node: ``TFCluster.run`` starts ``node.node_main`` in each Spark executor with
``TF_CONFIG`` set and a ``node.NodeSetup`` (the run directory, the job's ``jobargs.TrainParams`` whole
and the plan). The driver plans the run (``trainplan.py``), prepares the run directory, runs the
cluster (here), then checks and commits the run (``rundir.py``); a failed or lost node is reported by
``nodefailure.py``. Spark mode's feed is ``feed.py``, the nodes' progress callbacks ``progress.py``,
the done/error markers ``markers.py``. The driver never imports TensorFlow. Two topologies:

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

Every node seeds its generators from the ``seed`` param and its worker index, and with ``deterministic``
on (the default) runs under TensorFlow's op determinism and the ring all-reduce: the same manifest trains
the same model bit for bit in tensorflow input mode (``node.make_reproducible``, ``scripts/reproduce.py``).

Both modes evaluate on the eval split after every epoch (each node reads its share of the eval
shards) and resume from the last finished epoch when the task is retried (``BackupAndRestore``).

Shares and step budgets are planned by the driver from the conversion manifest's per-shard record
counts, before TensorFlow starts (``trainplan.py``): every reading node gets a non-empty share of each
split and every node runs the same step budgets, repeating its share. Each node's done marker records
the steps it ran, and the job checks they are equal (``rundir.check_markers``).

A node that fails leaves ``workers/<node>.error``; the job then ends with one ``ERROR [train]`` line
naming the node and its error, or, for a node lost with its executor, the executor's host, Spark's
reason and the last finished epoch (``nodefailure.py``). The driver cancels the cluster's Spark jobs if
the other nodes have not ended ``NODE_FAILURE_GRACE_SECONDS`` after a failure (:class:`_Watchdog`).

The run directory ``{root}/models/{version}/{run}/`` and what it holds: ``rundir.py``.
"""

import functools
import threading
import time
from typing import Any

from . import dataset, fs, markers, node, paths, tfos, tracking
from .feed import FEED_BLOCK_ROWS, FEED_TIMEOUT_SECONDS, feed_blocks, strided_payloads
from .jobargs import TrainParams
from .nodefailure import cluster_failure, failure_error
from .rundir import finish_run, start_run
from .runner import JobError, UserError, executors
from .trainplan import Share, plan_run

#: After a node failed, how long the others get to fail or finish before the driver cancels their tasks.
NODE_FAILURE_GRACE_SECONDS = 30


# --- before the cluster: executors and the feed ---------------------------------------------------------

def check_executors(sc: Any, nodes: int, wait: float) -> None:
    """Wait up to ``wait`` s for ``nodes`` executors (one TensorFlow node each); raise JobError naming the
    Spark conf to change when the application has fewer."""
    if executors(sc, nodes, wait) < nodes:
        conf = sc.getConf()
        raise UserError(
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
    every n-th record (``shares`` from ``trainplan.plan_shares``).
    """
    if shares[0]["every"] == 1:
        rdd = dataset.example_rdd(sc, sorted(f for share in shares for f in share["files"]))
    else:
        parts = [(s["files"], s["offset"], s["every"]) for s in shares]
        rdd = sc.parallelize(parts, len(parts)).flatMap(lambda p: strided_payloads(*p))
    return rdd.mapPartitions(functools.partial(feed_blocks, size=FEED_BLOCK_ROWS))


# --- running the cluster -------------------------------------------------------------------------------

def start_cluster(sc: Any, setup: node.NodeSetup) -> None:
    """Run the TensorFlow cluster to its end: ``node.node_main`` on every node, fed by Spark in spark
    input mode; echo the chief's progress.log meanwhile, and cancel the cluster's Spark jobs when a
    node failed and the others have not ended (:class:`_Watchdog`).

    ``setup``: what every node gets (the run directory, the params, the plan). Raises JobError naming the
    failed or lost node (``nodefailure.cluster_failure``).
    """
    TFCluster = tfos.tfcluster()

    run_dir, params, plan = setup.run_dir, setup.params, setup.plan
    tail = _Tail(paths.join(run_dir, paths.PROGRESS_LOG))
    tail.start()
    watchdog = _Watchdog(sc, run_dir, TFCluster.tf_status)
    watchdog.start()
    cluster = None
    try:
        if params.input_mode == "spark":
            cluster = TFCluster.run(sc, node.node_main, setup, plan.workers, num_ps=0, tensorboard=False,
                                    input_mode=TFCluster.InputMode.SPARK, master_node="chief",
                                    reservation_timeout=300)
            cluster.train(feed_rdd(sc, plan.shares["train"]), num_epochs=params.epochs,
                          feed_timeout=FEED_TIMEOUT_SECONDS)
            # The feed is over, the nodes are not: the chief may still be exporting. Stopping the app
            # now would kill them, so wait for every node's done marker first.
            await_nodes(run_dir, plan.workers, FEED_TIMEOUT_SECONDS)
        else:
            cluster = TFCluster.run(sc, node.node_main, setup, plan.nodes, num_ps=params.num_ps, tensorboard=False,
                                    input_mode=TFCluster.InputMode.TENSORFLOW, master_node="chief",
                                    reservation_timeout=300)
        tfos.shutdown(cluster)
    except (Exception, SystemExit) as e:
        raise cluster_failure(e, run_dir, TFCluster.tf_status, getattr(cluster, "cluster_info", None),
                              params.num_ps if params.input_mode == "tensorflow" else 0) from None
    finally:
        watchdog.stop.set()
        tail.stop.set()
        tail.poll()


def await_nodes(run_dir: str, workers: int, timeout: float) -> None:
    """Block until the ``workers`` training nodes left their done markers (up to ``timeout`` s); raise
    JobError as soon as a node left an error marker (``nodefailure.failure_error``), or at the timeout."""
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


def describe_run(setup: node.NodeSetup) -> str:
    """One log line: input mode, topology, rows, step budget, epochs, batch size, seed, determinism and run
    directory."""
    params, plan = setup.params, setup.plan
    topology = (f"{params.num_ps} parameter servers + chief + {plan.workers - 1} workers (ParameterServerStrategy)"
                if params.num_ps else f"{plan.workers} nodes (MultiWorkerMirroredStrategy)")
    return (f"training in {params.input_mode} input mode on {topology}: {plan.train_rows} rows, "
            f"{plan.steps_per_epoch} steps/epoch x {params.epochs} epochs, batch {params.batch_size}/worker, "
            f"seed {params.seed}, deterministic {params.deterministic}, run dir {setup.run_dir}")


def prepare(params: TrainParams) -> dict[str, Any] | None:
    """Before any Spark application (runner.main): a tracking server must be configured when
    ``mlflow_required`` is true (tracking.check_required: UserError), and the data checks of the version
    (datagate.check_training_data; JobError on an anomaly under ``data_checks=fail``). Returns their record."""
    from . import datagate
    tracking.check_required(params.mlflow_required == "true", "train")
    return datagate.check_training_data(params)


def run(spark: Any, params: TrainParams, data_checks: dict[str, Any] | None = None) -> dict[str, Any]:
    """The train job (``params``: its parsed params, ``jobargs.TrainParams``; ``data_checks``: what
    :func:`prepare` recorded, kept in the run's manifest): plan
    (``trainplan.plan_run``), prepare the run directory, run the cluster, check the markers and the
    export, commit the run (``rundir``), then mirror it to MLflow when a tracking server is configured
    (``tracking.log_training``: a lag is one WARNING line, a JobError only with ``mlflow_required``). Returns the RESULT summary (model_dir, steps_run, final
    metrics, train_seconds); raises JobError with what went wrong."""
    sc = spark.sparkContext
    layout = paths.Layout(params.data_root)
    plan = plan_run(params, layout)
    setup = node.NodeSetup(start_run(layout, params), params, plan)
    check_executors(sc, plan.nodes, params.executor_wait)
    print(describe_run(setup), flush=True)
    started = time.time()
    start_cluster(sc, setup)
    result = finish_run(setup, layout, started, data_checks)
    # committed: the run directory is the record; MLflow mirrors it (a lag never fails the task unless required)
    tracking.log_training(layout, setup.run_dir, result, retry_seconds=params.mlflow_retry_seconds,
                          required=params.mlflow_required == "true", tags=tracking.openlineage_tags(sc.getConf()))
    return {k: result[k] for k in ("model_dir", "steps_run", "final_loss", "final_accuracy", "final_eval_accuracy",
                                   "train_seconds")}
