"""Shared test set-up: the plugins import path, and running a job with spark-submit exactly as the DAG does."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The one sys.path edit of the project: Airflow puts its plugins folder on sys.path when it loads the
# plugins, so the DAG imports ``tfos_spark`` as a top-level module; the DAG tests import it the same way.
# (``tfospipe`` itself is installed, editable, by `make install`.)
PLUGINS_DIR = os.path.join(PROJECT_DIR, "plugins")
if PLUGINS_DIR not in sys.path:
    sys.path.insert(0, PLUGINS_DIR)
from tfospipe import tfenv  # noqa: E402

tfenv.prepare_tensorflow(quiet=True)  # tf-keras, no C++ INFO lines, for any test that imports TensorFlow

#: The suite's parts, by folder: the marker each test gets (``pytest -m "not spark"``, ``make test-fast``).
#: ``spark`` is every test that starts a Spark application, the end-to-end ones included.
FOLDER_MARKERS = {"unit": ("unit",), "dag": ("dag",), "spark": ("spark",), "e2e": ("e2e", "spark")}


def pytest_collection_modifyitems(config, items):
    """Mark each test by its folder (:data:`FOLDER_MARKERS`), so ``-m`` selects whole parts of the suite,
    and put the end-to-end modules first, then the other Spark modules. scripts/test.sh runs ``pytest -n 3
    --dist loadfile --no-loadscope-reorder``: a module's tests stay on one worker, so its module-scoped set-up (a deployment,
    a converted version, a trained model) runs once, and modules are handed out in this order. The
    end-to-end modules are the longest: each starts on its own worker (their deployments take free ports),
    and the other modules fill the time they wait on Airflow."""
    tests_dir = os.path.join(PROJECT_DIR, "tests")
    for item in items:
        part = os.path.relpath(str(item.path), tests_dir).split(os.sep)[0]
        for name in FOLDER_MARKERS.get(part, ()):
            item.add_marker(name)
    # stable: the end-to-end modules, then the other Spark modules, then the rest (short tests that fill the
    # workers' last minutes), each part as collected
    items.sort(key=lambda item: (item.get_closest_marker("e2e") is None, item.get_closest_marker("spark") is None))


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
        raise AssertionError("no RESULT line in job output:\n" + self.explain(5000))

    def error(self):
        lines = [line for line in self.output.splitlines() if line.startswith("ERROR [")]
        return lines[-1] if lines else None

    def explain(self, tail=4000):
        """For a failed assertion: the first Python tracebacks in the output (an executor's, which Spark
        logs inside a Java stack trace the tail alone would show), then the output's last ``tail`` characters."""
        import re
        # the header, the indented frame lines, then the unindented line that names the exception
        found = re.findall(r"Traceback \(most recent call last\):\n(?:[ ]+.*\n)*.*\n?", self.output)
        head = "".join(f"--- traceback {i + 1} of {len(found)} ---\n{t[-1500:]}" for i, t in enumerate(found[:2]))
        return f"{head}--- last {tail} characters ---\n{self.output[-tail:]}"


def run_job(job, job_args, tmp_build, cluster_size=2, timeout=600, master=TEST_MASTER):
    """spark-submit jobs/<job>.py with the DAG's conf, env and --py-files zip (from tfospipe/launch.py)."""
    from tfospipe import launch

    cmd = launch.spark_submit_argv(job, job_args, master, cluster_size, str(tmp_build))
    env = dict(os.environ, **launch.TF_ENV)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=timeout)
    return JobRun(proc)


def fake_model(d, text):
    """A directory shaped like a SavedModel with its own bytes."""
    os.makedirs(os.path.join(d, "variables"))
    with open(os.path.join(d, "saved_model.pb"), "w") as f:
        f.write(text)
    with open(os.path.join(d, "variables", "variables.data-00000-of-00001"), "w") as f:
        f.write(text * 3)
    return str(d)


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("build")


# --- one dataset version through all four jobs, shared by the Spark-job modules --------------------------

#: The shared version: a date (the promotion policy reads it as the data date) and an Airflow-style run id.
SERVED_VERSION = "2026-11-03"
SERVED_RUN = "manual__2026-11-03T10_00_00_00_00"
#: Its training: two short epochs (~20 steps) on ~320 rows: a model far better than chance, in seconds.
SERVED_TRAIN = {"epochs": 2, "batch_size": 16}
#: Unlabeled rows in ``raw/<version>/score/old-mac.csv.bz2`` (CR line ends), the rows infer scores.
SERVED_SCORE_ROWS = 40


class Served:
    """A data root on which convert, train, validate and infer ran for :data:`SERVED_VERSION`:
    ``labeled`` (the lines of ``raw/<version>/digits.csv``, header first) and ``score`` (the lines of the
    score file). Read-only: a test that changes anything works on :meth:`copy`."""

    def __init__(self, root, labeled, score):
        self.root, self.labeled, self.score = root, labeled, score

    def copy(self, dest):
        """A copy of the whole root (raw data, TFRecords, the run, serving, predictions) at ``dest``."""
        import shutil
        shutil.copytree(self.root, dest, dirs_exist_ok=True)
        return dest


def _served_lines():
    """(labeled, score) lines of :data:`SERVED_VERSION`: 400 labeled digits (a header first) and
    :data:`SERVED_SCORE_ROWS` unlabeled rows, from scikit-learn's digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    labeled = ["label," + ",".join(f"pixel{i}" for i in range(64))]
    labeled += [f"{t}," + ",".join(map(str, px)) for t, px in zip(d.target[:400], d.data[:400].astype(int))]
    score = [",".join(map(str, px)) for px in d.data[400:400 + SERVED_SCORE_ROWS].astype(int)]
    return labeled, score


def _build_served(root, labeled, score, build_dir):
    """Write the raw version under ``root`` and run convert, train, validate and infer on it."""
    import bz2

    raw = root / "raw" / SERVED_VERSION
    (raw / "score").mkdir(parents=True)
    (raw / "digits.csv").write_text("\n".join(labeled) + "\n")
    (raw / "score" / "old-mac.csv.bz2").write_bytes(bz2.compress(("\r".join(score) + "\r").encode()))
    common = {"data_root": str(root), "version": SERVED_VERSION}
    for job, extra in (("convert", {"num_shards": 2}),
                       ("train", dict(SERVED_TRAIN, run_id=SERVED_RUN)),
                       ("validate", {"run_id": SERVED_RUN, "min_accuracy": 0.0, "max_regression": 1.0}),
                       ("infer", {})):
        run = run_job(job, dict(common, **extra), build_dir, timeout=300)
        assert run.returncode == 0, f"{job}:\n{run.explain(4000)}"
        if job == "validate":
            assert run.result()["decision"] == "promote", run.explain(4000)


@pytest.fixture(scope="session")
def served_version(tmp_path_factory, build_dir, worker_id):
    """:class:`Served`: 400 labeled digits (a header, LF) and :data:`SERVED_SCORE_ROWS` unlabeled rows in a
    CR-only ``.bz2`` file, converted into 2 shards, trained (run :data:`SERVED_RUN`), validated (promoted:
    nothing served before) and scored, once for the whole test run: under pytest-xdist each worker is a
    session of its own, so the root lives in the run's base directory (the parent of the workers'), and
    the first worker to ask builds it while holding a lock file (``fcntl.flock``); the other waits and
    reads it. A build that failed leaves no ``served.done`` and is built again by the next one to ask."""
    import fcntl
    import shutil

    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent
    root, done = shared / "served", shared / "served.done"
    labeled, score = _served_lines()
    with open(shared / "served.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            _build_served(root, labeled, score, build_dir)
            done.write_text(SERVED_VERSION)
    return Served(root, labeled, score)


def e2e_module(name):
    """tests/e2e/<name>.py, loaded by path (services.py is also a script: `python tests/e2e/services.py up DIR`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(PROJECT_DIR, "tests", "e2e", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def live_stack(base, env=None, cluster=None):
    """A started tests/e2e/services.py deployment, stopped when the generator closes. Module-scoped users
    only: each end-to-end module has its own deployment, on free ports (two may run at once)."""
    def interrupted(*_):  # a test run stopped with SIGTERM still stops the services (teardown runs)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    live = e2e_module("services").Stack(base, env=env, cluster=cluster)
    try:
        yield live.start()
    finally:
        live.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The live deployment of tests/e2e/services.py (local data root, same-path venv, the standalone
    cluster of scripts/spark_standalone.sh), for the module that uses it."""
    yield from live_stack(tmp_path_factory.mktemp("stack"))


# --- a real S3 API on loopback (moto_server), for the remote-root tests ---------------------------------

#: The bucket the ``moto`` fixture creates.
MOTO_BUCKET = "tfos-test"
#: IAM policy of the user the jobs run as, and of one that may write anything but a commit marker.
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
NO_MARKER = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
    {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{MOTO_BUCKET}/*/_SUCCESS"}]}


def free_port():
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body):
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def _start_moto(log):
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).read()
            return proc, endpoint
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not answer on {endpoint}; see {log.name}")
            time.sleep(0.2)


def _users(endpoint):
    """Create the bucket and two IAM users (their key pairs returned), then turn authentication on."""
    import boto3
    kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
              aws_secret_access_key="setup")
    iam = boto3.client("iam", **kw)
    keys = {}
    for name, policy in (("writer", ALLOW_ALL), ("no-marker", NO_MARKER)):
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        keys[name] = (key["AccessKeyId"], key["SecretAccessKey"])
    boto3.client("s3", **kw).create_bucket(Bucket=MOTO_BUCKET)
    _post(endpoint + "/moto-api/reset-auth", b"0")  # every request from now on is authenticated
    return keys


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    """A real S3 API server for the session: (endpoint URL, {user: (key id, secret)})."""
    log = open(tmp_path_factory.mktemp("moto") / "moto_server.log", "w")
    proc, endpoint = _start_moto(log)
    try:
        yield endpoint, _users(endpoint)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
