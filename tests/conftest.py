"""Shared test set-up: the plugins import path, and running a job with spark-submit exactly as the DAG does."""
import os
import subprocess
import sys

import pytest

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The one sys.path edit of the project: Airflow puts its plugins folder on sys.path when it loads the
# plugins, so the DAG imports ``tfos_spark`` as a top-level module; the DAG tests import it the same way.
# (``tfospipe`` itself is installed, editable, by `make install`.)
PLUGINS_DIR = os.path.join(PROJECT_DIR, "plugins")
if PLUGINS_DIR not in sys.path:
    sys.path.insert(0, PLUGINS_DIR)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: A real multi-executor Spark cluster: 2 executor JVMs with one core each.
TEST_MASTER = os.environ.get("TFOS_TEST_MASTER", "local-cluster[2,1,1024]")


class JobRun:
    def __init__(self, proc):
        self.returncode = proc.returncode
        self.output = proc.stdout

    def result(self):
        import json
        for line in self.output.splitlines():
            if line.startswith("RESULT ["):
                return json.loads(line.split("] ", 1)[1])
        raise AssertionError("no RESULT line in job output:\n" + self.output[-5000:])

    def error(self):
        lines = [line for line in self.output.splitlines() if line.startswith("ERROR [")]
        return lines[-1] if lines else None


def run_job(job, job_args, tmp_build, cluster_size=2, timeout=600, master=TEST_MASTER):
    """spark-submit jobs/<job>.py with the DAG's conf, env and --py-files zip (from tfospipe/launch.py)."""
    from tfospipe import launch

    cmd = launch.spark_submit_argv(job, job_args, master, cluster_size, str(tmp_build))
    env = dict(os.environ, **launch.TF_ENV)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=timeout)
    return JobRun(proc)


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("build")


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The live deployment of tests/e2e/services.py, started once and stopped at the end."""
    import signal

    sys.path.insert(0, os.path.join(PROJECT_DIR, "tests", "e2e"))
    from services import Stack

    def interrupted(*_):  # a test run stopped with SIGTERM still stops the services (teardown runs)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    live = Stack(tmp_path_factory.mktemp("stack")).start()
    try:
        yield live
    finally:
        live.stop()
