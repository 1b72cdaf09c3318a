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


def test_the_drivers_of_train_and_infer_import_tfcluster_without_tensorflow():
    """tfos.tfcluster() defers tensorflowonspark.compat (which imports TensorFlow) until a node uses it: the
    train and infer drivers never import TensorFlow, and the nodes' helpers still work once used."""
    import subprocess
    import sys
    code = (
        "import sys\n"
        "from tfospipe import infer, train, tfos\n"
        "TFCluster = tfos.tfcluster()\n"
        "assert TFCluster.InputMode.SPARK == 1 and callable(TFCluster.run)\n"
        "print('driver', 'tensorflow' in sys.modules)\n"
        "from tensorflowonspark import TFNode, compat\n"
        "assert TFNode.compat is compat and compat.__name__ == 'tensorflowonspark.compat'\n"
        "helper = TFNode.compat.disable_auto_shard\n"  # the first use imports the real module
        "print('node', 'tensorflow' in sys.modules, helper.__module__, sys.modules['tensorflowonspark.compat'].tf.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:2] == ["driver False", "node True tensorflowonspark.compat tensorflow"], out.stdout
