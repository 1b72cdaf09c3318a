"""What the driver tells the user when the training cluster fails: which node, why, and what to do.

A node that fails leaves ``workers/<node>.error`` (``markers.py``); the job then ends with one
``ERROR [train]`` line naming the node and its error (:func:`failure_error`), whether TFoS reported it
by a failed Spark job or by ``sys.exit``. A node whose executor was lost (its JVM killed, out of
memory, its host gone) leaves no marker; the line then names the node, the executor's host, Spark's
reason and the last finished epoch, from which a retry resumes (:func:`lost_node_error`); the other
nodes' aborted collectives are not the cause. :func:`cluster_failure` chooses between them.
"""

import re
import sys
import time

from . import fs, markers, paths
from .runner import ExecutorLoss, JobError, executor_loss, executor_python_failure


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
    return failure_error(run_dir, tf_status.get("error") or error_text(error))


def error_text(error: BaseException) -> str:
    """What an exception says, for one line: a Python traceback (pyspark's PythonException carries the
    executor's, and its repr is only ``PythonException()``) gives its last line, the exception raised;
    anything else its text, or its repr when it has none."""
    text = str(error).strip()
    if "Traceback (most recent call last)" in text:
        lines = text.splitlines()
        frames = [i for i, line in enumerate(lines) if line.lstrip().startswith('File "')]
        after = lines[frames[-1] + 1:] if frames else lines
        raised = next((line.strip() for line in after if line.strip() and not line[:1].isspace()), None)
        return f"{type(error).__name__}: {raised or after[-1].strip() if after else text[-300:]}"
    return text or repr(error)


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
