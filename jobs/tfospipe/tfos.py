"""How the driver stops a TensorFlowOnSpark cluster: TFoS's own shutdown, without its 5-second waits.

``TFCluster.shutdown`` (TensorFlowOnSpark 2.2.5, ``tensorflowonspark/TFCluster.py``) asks Spark's status
tracker whether the cluster's jobs are over, and sleeps ``time.sleep(5)`` between two questions: in
TENSORFLOW input mode once while the nodes train, and in every input mode once more, unconditionally,
before it returns. Every train job and every TFoS inference job therefore idled 5 to 10 s after its
nodes had finished (measured: "Shutting down cluster" to the end of a train job on the sample digits,
6 s). :func:`shutdown` runs the same method, with the same steps and checks, while the
``time`` module that ``TFCluster`` sees sleeps at most :data:`POLL_SECONDS` at a time.

Only those two loops sleep in ``TFCluster``, and neither counts its sleeps as time: the first counts
how often only parameter-server tasks were seen active (3 times, TFoS's check that the workers are
done) and the second waits for no active job. No other module's clock is changed (the reservation
server's loop counts its 1-s sleeps as its timeout, so it keeps them).
"""

from __future__ import annotations

import threading
import time
from types import ModuleType
from typing import Any

#: Seconds between two questions to Spark's status tracker while TFoS shuts a cluster down (TFoS: 5).
POLL_SECONDS = 0.25
#: TFoS's own interval, which :func:`shutdown` keeps for a cluster with parameter servers: there TFoS
#: starts its shutdown job once it has seen only the parameter-server tasks active on 3 polls in a row,
#: a window of 0.75 s at :data:`POLL_SECONDS`. A test run with one parameter server failed that
#: shutdown job once in that setting (a Python error of task 0, whose text the run did not keep); at
#: TFoS's 5 s, the ps tests had passed in every run before.
TFOS_POLL_SECONDS = 5.0

_patch_lock = threading.Lock()


class _PollingClock:
    """The ``time`` module, but ``sleep(s)`` sleeps at most ``poll`` seconds."""

    def __init__(self, real: ModuleType, poll: float):
        self._real, self._poll = real, poll

    def sleep(self, seconds: float) -> None:
        self._real.sleep(min(seconds, self._poll))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def shutdown(cluster: Any, poll: float | None = None) -> None:
    """``cluster.shutdown(timeout=-1)`` (a ``TFCluster.TFCluster``: wait for the nodes, stop the feed
    queues and the parameter servers, stop the reservation server), polling Spark every ``poll`` s
    (default: :data:`POLL_SECONDS`, or :data:`TFOS_POLL_SECONDS` when the cluster has parameter servers).

    Raises what ``TFCluster.shutdown`` raises: ``SystemExit`` (status 1, after stopping the
    SparkContext) when a node reported an error in TFoS's status dict, or Spark's error of the
    shutdown job."""
    from tensorflowonspark import TFCluster

    if poll is None:
        has_ps = any(node.get("job_name") == "ps" for node in getattr(cluster, "cluster_info", None) or [])
        poll = TFOS_POLL_SECONDS if has_ps else POLL_SECONDS
    with _patch_lock:
        real = TFCluster.time
        TFCluster.time = _PollingClock(real, poll)
        try:
            cluster.shutdown(timeout=-1)
        finally:
            TFCluster.time = real
