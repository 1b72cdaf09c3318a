"""The driver's TensorFlowOnSpark: ``TFCluster`` imported without TensorFlow, and TFoS's own shutdown
without its 5-second waits.

Importing ``TFCluster`` (TensorFlowOnSpark 2.2.5) imports TensorFlow: ``TFCluster`` imports ``TFSparkNode``,
which imports ``TFNode``, which imports ``tensorflowonspark.compat``, whose first line is ``import
tensorflow``. ``compat`` holds helpers for the nodes' code (``export_saved_model``, ``disable_auto_shard``,
``is_gpu_available``, called by ``TFNode.start_cluster_server`` on an executor); the driver calls none of
them, yet paid TensorFlow's import: 5.5-7.6 CPU s and ~700 MB of RSS on an AMD EPYC (avx2) for every train
job and every TFoS inference job. :func:`tfcluster` defers ``compat`` until one of its names is used,
which the driver never does. The executors import TFoS as usual.

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

import importlib.util
import sys
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
#: The TFoS module whose import imports TensorFlow, and which the driver never uses (see the docstring).
_NODE_HELPERS = "tensorflowonspark.compat"


def tfcluster() -> ModuleType:
    """``tensorflowonspark.TFCluster``, imported without importing TensorFlow in this process (unless
    something else already did): :data:`_NODE_HELPERS` is first registered as a stand-in module whose
    module-level ``__getattr__`` (PEP 562) imports the real one, TensorFlow with it, on the first use of
    any of its names. Raises ImportError when TensorFlowOnSpark is not installed.

    (Not ``importlib.util.LazyLoader``: on Python 3.11 the import system reads the lazy module's
    ``__spec__`` when ``TFNode`` runs ``from . import compat``, which loads it.)"""
    if _NODE_HELPERS not in sys.modules:
        package_name, _, attr = _NODE_HELPERS.rpartition(".")
        package = importlib.import_module(package_name)
        spec = importlib.util.find_spec(_NODE_HELPERS)
        if spec is None:
            raise ImportError(f"{_NODE_HELPERS} not found: is tensorflowonspark installed?")
        stand_in = ModuleType(_NODE_HELPERS, "imports the real module on first use (tfospipe.tfos.tfcluster)")

        def load(name: str) -> Any:
            if sys.modules.get(_NODE_HELPERS) is stand_in:
                del sys.modules[_NODE_HELPERS]
            real = importlib.import_module(_NODE_HELPERS)
            setattr(package, attr, real)
            stand_in.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
            return getattr(real, name)

        stand_in.__getattr__ = load  # type: ignore[attr-defined]
        sys.modules[_NODE_HELPERS] = stand_in
        setattr(package, attr, stand_in)
    from tensorflowonspark import TFCluster

    return TFCluster


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
    TFCluster = tfcluster()

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
