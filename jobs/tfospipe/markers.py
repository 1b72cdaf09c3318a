"""markers: how the nodes of a TensorFlowOnSpark cluster tell the driver that they finished or failed.

TFoS reports a failed node only as a failed Spark task or a ``sys.exit`` of the driver, without saying
which node or why, and a node lost with its executor reports nothing at all. So every node leaves a
marker file in ``<run_dir>/workers/`` (``run_dir`` local or a ``tf.io.gfile`` URI)::

    <node>.json    done marker: a JSON object the node wrote after it finished (what it ran, its metrics)
    <node>.error   error marker: the traceback (UTF-8 text) of the exception that ended the node

Node names (:func:`node_name`): ``worker-0`` the chief, ``worker-1``.. the workers, ``ps-0``.. the
parameter servers. The driver waits for the done markers (:func:`wait_done`), reads them
(:func:`read_done`) and names the failed node from the error markers, the likely cause first
(:func:`node_errors`). No TensorFlow here: the driver imports this module.
"""

import time
import traceback
from typing import Any, Protocol

from . import fs, paths

#: The directory of the markers inside a run directory.
MARKERS_DIR = paths.MARKERS_DIR
DONE_SUFFIX = ".json"
ERROR_SUFFIX = ".error"
#: Errors a node raises because another node failed first (its collectives were aborted): not the cause.
SECONDARY_ERRORS = ("Collective ops is aborted", "CancelledError", "UnavailableError", "coordination service",
                    "Socket closed", "Connection reset")


class NodeContext(Protocol):
    """What :func:`node_name` needs of TFoS's ``TFNodeContext``: the node's TensorFlow job and index."""

    job_name: str
    task_index: int


class NodeFailed(Exception):
    """An error marker appeared while :func:`wait_done` waited; ``nodes``: the nodes that left one."""

    def __init__(self, nodes: list[str]):
        super().__init__(f"nodes {nodes} left error markers")
        self.nodes = nodes


class MarkersTimeout(TimeoutError):
    """:func:`wait_done` gave up; ``names``: the marker file names present then (sorted)."""

    def __init__(self, missing: list[str], names: list[str], timeout: float):
        super().__init__(f"no done markers of {missing} after {timeout}s; markers: {names}")
        self.missing, self.names = missing, names


def name_of(job_name: str, task_index: int) -> str:
    """The node name of TensorFlow task ``job_name:task_index`` (jobs ``chief``, ``worker``, ``ps``):
    ``worker-0`` for the chief, ``worker-<task_index + 1>`` for a worker (the chief is worker 0, as in
    all-reduce training's worker index), ``ps-<task_index>`` for a parameter server."""
    if job_name == "ps":
        return f"ps-{task_index}"
    return f"worker-{worker_index(job_name, task_index)}"


def worker_index(job_name: str, task_index: int) -> int:
    """The index of a chief (0) or worker (``task_index + 1``) among the nodes that train."""
    return 0 if job_name == "chief" else task_index + 1


def worker_names(workers: int) -> list[str]:
    """The names of the ``workers`` nodes that train: the chief ``worker-0``, then ``worker-1``.."""
    return [name_of("chief", 0)] + [name_of("worker", i) for i in range(workers - 1)]


def node_name(ctx: NodeContext) -> str:
    """The marker name of the node TFoS runs with context ``ctx`` (see :func:`name_of`)."""
    return name_of(ctx.job_name, ctx.task_index)


def markers_dir(run_dir: str) -> str:
    """``<run_dir>/workers``: where the nodes leave their markers."""
    return paths.join(run_dir, MARKERS_DIR)


def done_path(run_dir: str, node: str) -> str:
    """The done marker of ``node``: ``<run_dir>/workers/<node>.json``."""
    return paths.join(markers_dir(run_dir), node + DONE_SUFFIX)


def error_path(run_dir: str, node: str) -> str:
    """The error marker of ``node``: ``<run_dir>/workers/<node>.error``."""
    return paths.join(markers_dir(run_dir), node + ERROR_SUFFIX)


def write_done(run_dir: str, node: str, record: dict[str, Any]) -> None:
    """Leave ``node``'s done marker (``record`` as JSON, keys sorted) and log it as one ``TFOS done {..}``
    line in the executor's log. The driver reads the marker once the cluster has ended."""
    import json

    fs.write_json(done_path(run_dir, node), record)
    print("TFOS done " + json.dumps(record), flush=True)


def write_error(run_dir: str, node: str, text: str | None = None) -> None:
    """Leave ``node``'s error marker: ``text``, by default the traceback of the exception being handled
    (call it in an ``except`` block)."""
    fs.write_bytes(error_path(run_dir, node), (traceback.format_exc() if text is None else text).encode("utf-8"))


def read_done(run_dir: str) -> dict[str, dict[str, Any]]:
    """The done markers present: ``{node: record}``, e.g. ``{"worker-0": {...}, "ps-0": {...}}``."""
    return {name[:-len(DONE_SUFFIX)]: fs.read_json(paths.join(markers_dir(run_dir), name))
            for name in fs.listdir(markers_dir(run_dir)) if name.endswith(DONE_SUFFIX)}


def failed_nodes(run_dir: str) -> list[str]:
    """The nodes that left an error marker, by name (an empty list when there is no marker directory)."""
    return [name[:-len(ERROR_SUFFIX)] for name in fs.listdir(markers_dir(run_dir)) if name.endswith(ERROR_SUFFIX)]


def node_errors(run_dir: str) -> list[tuple[str, str]]:
    """The error markers nodes left, the likely cause first: ``[(node, traceback text)]``.

    A node that failed on its own comes before nodes whose collectives were aborted because of it (their
    traceback holds one of :data:`SECONDARY_ERRORS`); otherwise the earliest marker (modification time)
    first, then by node name.
    """
    found = []
    for node in failed_nodes(run_dir):
        path = error_path(run_dir, node)
        text = fs.read_bytes(path).decode("utf-8", "replace")
        found.append((any(p in text for p in SECONDARY_ERRORS), fs.mtime(path), node, text))
    return [(node, text) for _secondary, _t, node, text in sorted(found)]


def wait_done(run_dir: str, nodes: list[str], timeout: float | None = None, poll_seconds: float = 1.0) -> None:
    """Block until every one of ``nodes`` left its done marker, looking every ``poll_seconds`` s.

    Raises :class:`NodeFailed` as soon as any node (of ``nodes`` or not) left an error marker, even if
    the done markers are all there; :class:`MarkersTimeout` when ``timeout`` s passed first (None: wait
    for ever).
    """
    deadline = None if timeout is None else time.time() + timeout
    while True:
        names = fs.listdir(markers_dir(run_dir))
        failed = [n[:-len(ERROR_SUFFIX)] for n in names if n.endswith(ERROR_SUFFIX)]
        if failed:
            raise NodeFailed(failed)
        missing = [node for node in nodes if node + DONE_SUFFIX not in names]
        if not missing:
            return
        if deadline is not None and time.time() > deadline:
            raise MarkersTimeout(missing, sorted(names), timeout)
        time.sleep(poll_seconds)
