"""tfospipe.tfos.shutdown: TFoS's own TFCluster.shutdown, with its 5-s sleeps cut to the poll interval."""
import time

import pytest

from tfospipe import tfos


class _Cluster:
    """Stands in for a TFCluster.TFCluster: its shutdown sleeps as TFoS's does (time.sleep(5) in
    tensorflowonspark.TFCluster), through the module's ``time``."""

    def __init__(self, fail=False):
        self.fail, self.calls = fail, []

    def shutdown(self, timeout):
        from tensorflowonspark import TFCluster
        started = time.monotonic()
        TFCluster.time.sleep(5)
        self.calls.append((timeout, time.monotonic() - started, TFCluster.time.time() > 0))
        if self.fail:
            raise SystemExit(1)  # what TFoS does when a node reported an error


def test_shutdown_runs_tfos_shutdown_without_its_five_second_sleeps():
    from tensorflowonspark import TFCluster
    real = TFCluster.time
    cluster = _Cluster()
    tfos.shutdown(cluster, poll=0.05)
    ((timeout, slept, clock_works),) = cluster.calls
    assert timeout == -1 and slept < 1 and clock_works  # no timeout alarm, as the jobs had it
    assert TFCluster.time is real and real is time  # restored: nothing else in the process polls faster


def test_a_failed_shutdown_still_restores_tfos_clock_and_raises():
    from tensorflowonspark import TFCluster
    with pytest.raises(SystemExit):
        tfos.shutdown(_Cluster(fail=True), poll=0.05)
    assert TFCluster.time is time


def test_a_cluster_with_parameter_servers_keeps_tfos_poll_interval(monkeypatch):
    """With parameter servers TFoS's shutdown debounces 'only ps tasks left' over 3 polls: that window
    stays TFoS's (5 s polls), while a cluster without them polls every POLL_SECONDS."""
    polls = []
    monkeypatch.setattr(tfos, "_PollingClock", lambda real, poll: polls.append(poll) or real)

    class Noop:
        def __init__(self, jobs):
            self.cluster_info = [{"job_name": j} for j in jobs]

        def shutdown(self, timeout):
            pass

    tfos.shutdown(Noop(["chief", "worker", "ps"]))
    tfos.shutdown(Noop(["chief", "worker"]))
    assert polls == [tfos.TFOS_POLL_SECONDS, tfos.POLL_SECONDS] and tfos.TFOS_POLL_SECONDS == 5
