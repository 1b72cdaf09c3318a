"""The pipeline on a cluster that shares nothing with the Airflow host: the proof that changing the Spark
connection, the data root and the executors' Python setting is all a real cluster needs.

* Storage: a real S3 API on loopback (``moto_server``, IAM authentication on: the ``moto`` fixture);
  the data root is ``s3://<bucket>/<prefix>``, reached with credentials from the environment only.
* Spark: a standalone master on ``spark://127.0.0.1:<free port>`` and two workers run from a copy of Spark
  outside the project, each in its own mount namespace where the checkout, its ``.venv``, the test
  data and Airflow home, and ``/tmp`` are empty (tests/e2e/cluster.py).
* Python on the executors: ``TFOS_EXECUTOR_PYTHON_ENV=archive``, the environment `make executor-env`
  packs, shipped with ``spark.archives``.
* Airflow 3 (scheduler, API server, dag-processor) runs the DAG as a user triggers it.

One DAG run does everything: its train task is killed mid-way (the driver, SIGKILL), Airflow puts it up for
retry, and the retry (started at once by clearing the task) resumes from the checkpoint in the bucket. Then two bad inputs on the same store and cluster.
"""
import datetime
import glob
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import uuid

import psutil
import pyarrow.parquet as pq
import pytest

from conftest import MOTO_BUCKET, PROJECT_DIR, e2e_module, live_stack, run_job
from tfospipe import fs, launch, markers, paths, serving
from tfospipe.sample_data import write_version

pytestmark = pytest.mark.e2e

VERSION = "2026-11-20"
ROWS = 1000
#: Enough epochs that the train task can be killed after the second one and still be mid-way: the kill
#: comes within ~5 s of the second epoch's log line (3-s polls of the bucket), and the 10 epochs left
#: (~13 steps and an evaluation each) take about twice that on a fast CPU.
EPOCHS = 12
CONF = {"dataset_version": VERSION, "epochs": EPOCHS, "batch_size": 32, "num_shards": 2, "min_accuracy": 0.5}
JOBS = ("convert", "train", "validate", "infer")
#: The DAG's tasks: the data's arrival check (no Spark application), then the four jobs.
TASKS = ("wait_for_data",) + JOBS
#: When this module was collected: scratch directories older than this belong to an earlier test run.
COLLECTED = time.time()


@pytest.fixture(scope="module")
def archive():
    """build/executor-env.tar.gz, built (or found up to date) by `make executor-env`."""
    import subprocess
    proc = subprocess.run(["make", "-s", "executor-env"], cwd=PROJECT_DIR, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert proc.returncode == 0 and os.path.isfile(launch.EXECUTOR_ARCHIVE), proc.stdout[-5000:]
    return launch.EXECUTOR_ARCHIVE


@pytest.fixture(scope="module")
def store(moto, tmp_path_factory):
    """(root, environment): a fresh prefix of the bucket holding raw/<VERSION>/digits.csv, and the
    writer's credentials and the endpoint, as a deployment's Airflow workers would have them."""
    endpoint, keys = moto
    tmp = tmp_path_factory.mktemp("cluster-store")
    env = {"AWS_ACCESS_KEY_ID": keys["writer"][0], "AWS_SECRET_ACCESS_KEY": keys["writer"][1],
           "AWS_ENDPOINT_URL_S3": endpoint, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-creds")}
    root = f"s3://{MOTO_BUCKET}/cluster-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        csv, _rows = write_version(str(tmp / "local"), VERSION, limit=ROWS)
        with open(csv, "rb") as f:
            fs.write_bytes(paths.join(paths.Layout(root).raw(VERSION), "digits.csv"), f.read())
        yield root, env


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, archive, store):
    """Airflow on this host, the isolated cluster, the data root in the bucket, the archive on the executors."""
    root, aws = store
    nodes = tempfile.mkdtemp(prefix="tfos-nodes-", dir="/var/tmp")  # outside /tmp, which the workers do not see
    env = dict(aws, AIRFLOW_VAR_TFOS_DATA_ROOT=root, TFOS_EXECUTOR_PYTHON_ENV="archive")
    hidden = [PROJECT_DIR, sys.prefix, str(tmp_path_factory.getbasetemp())]
    free_port = e2e_module("services").free_port
    cluster = e2e_module("cluster").IsolatedCluster(nodes, hidden, port=free_port(), webui_port=free_port())
    try:
        stacks = live_stack(tmp_path_factory.mktemp("cluster-stack"), env=env, cluster=cluster)
        yield next(stacks), cluster
        stacks.close()
    finally:
        shutil.rmtree(nodes, ignore_errors=True)


def _api(stack, method, path, body):
    """A change through the REST API, tried up to 3 times: the deployment's SQLite has one writer, and a
    request that waited 60 s for the lock fails with HTTP 500 before it changed anything."""
    for attempt in range(3):
        try:
            return stack.request(method, path, body)
        except urllib.error.HTTPError as e:
            if e.code != 500 or attempt == 2:
                raise
            time.sleep(5)


def _train_driver(root, version):
    """The train task's spark-submit JVM (the application's driver) on data root ``root``, or None. The root
    tells it apart from the Spark tests' train jobs that another test worker may run meanwhile."""
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if any(part.endswith("jobs/train.py") for part in cmd) and version in cmd and root in cmd and \
                "org.apache.spark.deploy.SparkSubmit" in cmd:
            return p
    return None


@pytest.fixture(scope="module")
def dag_run(deployment, store):
    """A manual DAG run whose train task is killed after its second epoch and retried by Airflow.

    Returns (run, the last epoch logged before the kill)."""
    stack, _cluster = deployment
    root, env = store
    # Unpausing makes the scheduler create the latest day's run (catchup is off) unless a run of that logical date
    # exists: the manual run takes it, so this deployment runs only the run under test.
    latest_day = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)).strftime("%Y-%m-%d")
    run_id = _api(stack, "POST", "/api/v2/dags/tfos_pipeline/dagRuns",
                  {"logical_date": f"{latest_day}T00:00:00Z", "conf": CONF})["dag_run_id"]
    _api(stack, "PATCH", "/api/v2/dags/tfos_pipeline", {"is_paused": False})
    log = paths.join(paths.Layout(root).model_run(VERSION, paths.run_slug(run_id)), "progress.log")

    def second_epoch_logged():
        if stack.task_instances(run_id)["train"]["state"] != "running":
            return None
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            text = fs.read_bytes(log).decode() if fs.exists(log) else ""
        epochs = [int(m) for m in re.findall(rf"^epoch (\d+)/{EPOCHS}", text, re.M)]
        return max(epochs) if epochs and max(epochs) >= 2 else None

    killed_after = stack.wait(second_epoch_logged, 900, "the train task to log its second epoch in the bucket")
    driver = _train_driver(root, VERSION)
    assert driver is not None, "the train task's driver is not running"
    driver.send_signal(signal.SIGKILL)
    stack.wait(lambda: stack.task_instances(run_id)["train"]["state"] == "up_for_retry", 180,
               "Airflow to put the killed train task up for retry")
    # The DAG's policy (retries=1, a 1-minute delay with exponential backoff) would start the retry within about
    # two minutes; clearing the task starts it now, as an operator would (the same task instance, its next try).
    _api(stack, "POST", "/api/v2/dags/tfos_pipeline/clearTaskInstances",
                  {"dry_run": False, "dag_run_id": run_id, "task_ids": ["train"], "only_failed": False,
                   "note": "retry now rather than after the backoff"})
    (run,) = stack.wait_runs(lambda r: r["dag_run_id"] == run_id, 1, 1500)
    return run, killed_after


def _files(root):
    return sorted(paths.join(d, n) for d, _subdirs, names in fs.walk(root) for n in names)


def _manifest(path):
    return fs.read_json(paths.join(fs.resolve(path), fs.MANIFEST))  # through the output's commit pointer


@pytest.fixture
def aws(store, monkeypatch):
    """The test process reads the bucket with the deployment's credentials."""
    for k, v in store[1].items():
        monkeypatch.setenv(k, v)
    return store[0]


def test_the_workers_see_neither_the_checkout_nor_the_venv_nor_the_test_data(deployment, tmp_path_factory):
    _stack, cluster = deployment
    for i in (1, 2):
        for path in (PROJECT_DIR, sys.prefix, str(tmp_path_factory.getbasetemp()), "/tmp"):
            seen = cluster.in_worker(i, ["ls", "-A", path])  # empty, or gone under a hidden parent
            assert (seen.returncode == 0 and seen.stdout.split() in ([], ["hsperfdata_root"])) or (
                seen.returncode == 2 and "No such file" in seen.stderr), (i, path, seen)
        python = cluster.in_worker(i, [sys.executable, "-c", "print(1)"])
        assert python.returncode != 0  # the Airflow host's venv interpreter is not there


def test_the_dag_run_succeeds_with_the_train_task_retried(deployment, dag_run):
    stack, cluster = deployment
    run, _killed_after = dag_run
    tis = stack.task_instances(run["dag_run_id"])
    assert run["state"] == "success", tis
    assert {t: ti["state"] for t, ti in tis.items()} == {t: "success" for t in TASKS}
    assert tis["train"]["try_number"] == 2 and all(tis[t]["try_number"] == 1 for t in ("convert", "validate", "infer"))
    completed = [a["name"] for a in cluster.status()["completedapps"] if a["name"].endswith(VERSION)]
    assert sorted(completed) == sorted([f"tfos-{job}-{VERSION}" for job in JOBS] + [f"tfos-train-{VERSION}"])


def test_every_output_is_committed_in_the_bucket_and_ran_on_the_shipped_python(dag_run, deployment, aws):
    _stack, cluster = deployment
    run, _ = dag_run
    layout, slug = paths.Layout(aws), paths.run_slug(run["dag_run_id"])
    data = layout.tfrecords(VERSION)
    run_dir = layout.model_run(VERSION, slug)
    report = layout.validation(VERSION, slug)
    out = layout.predictions(VERSION)
    for output in (data, run_dir, report, out):
        assert fs.is_committed(output) and fs.exists(paths.join(fs.resolve(output), fs.MANIFEST)), output
    for output in (data, report, out):  # published by a conditional write of their pointer, not in place
        assert fs.exists(paths.join(output, fs.COMMIT)) and fs.resolve(output) != output, output
    converted = _manifest(data)
    assert converted["rows_written"] == ROWS and converted["rows_quarantined"] == 0
    assert fs.exists(paths.join(layout.exported_model(VERSION, slug), "saved_model.pb"))
    assert _manifest(run_dir)["params"]["epochs"] == EPOCHS
    # the training run's own checks on the S3 root: TensorBoard logs, every node's done marker, the
    # export renamed into place (no .model.staging left)
    assert any("tfevents" in p for p in _files(paths.join(run_dir, paths.TENSORBOARD_DIR)))
    done = markers.read_done(run_dir)
    assert sorted(done) == markers.worker_names(2), done
    assert not fs.exists(paths.join(run_dir, paths.MODEL_STAGING_DIR))
    metrics = fs.read_json(paths.join(fs.resolve(report), "metrics.json"))
    pointer = fs.read_json(layout.serving_pointer())
    assert metrics["passed"] and pointer["model_version"] == metrics["model_version"]
    assert fs.exists(paths.join(serving.promoted_dir(layout, pointer["model_version"]), "saved_model.pb"))
    predicted = _manifest(out)
    rows = sum(pq.read_table(fs.open_read(p)).num_rows
               for p in fs.glob(paths.join(fs.resolve(out), "part-*.parquet")))
    assert rows == predicted["rows_out"] == converted["splits"]["eval"]
    assert predicted["model_loads"] >= 1  # the executors loaded the promoted model from the bucket
    assert predicted["model_version"] == pointer["model_version"]

    # every job's executors ran the archive's interpreter, unpacked in their own working directories
    for job, manifest in (("convert", converted), ("train", _manifest(run_dir)), ("validate", _manifest(report)),
                          ("infer", predicted)):
        pythons = manifest["executor_python"]
        assert len(pythons) == 2, (job, pythons)
        for python in pythons:
            assert python.startswith(cluster.dir + "/worker-") and "/work/app-" in python, (job, python)
            assert python.endswith("/environment/bin/python"), (job, python)


def test_the_retry_resumed_from_the_checkpoint_in_the_bucket(dag_run, aws):
    run, killed_after = dag_run
    run_dir = paths.Layout(aws).model_run(VERSION, paths.run_slug(run["dag_run_id"]))
    text = fs.read_bytes(paths.join(run_dir, "progress.log")).decode()  # the retry's log
    resumed = [int(m) for m in re.findall(rf"^epoch (\d+)/{EPOCHS}", text, re.M)]
    first_step = int(re.search(r"^step (\d+) ", text, re.M).group(1))
    steps_per_epoch = _manifest(run_dir)["steps_per_epoch"]
    assert resumed[0] > killed_after >= 2 and resumed[-1] == EPOCHS  # no finished epoch ran again
    assert first_step > killed_after * steps_per_epoch                # the step counter continues
    assert not fs.glob(paths.join(run_dir, "backup", "chief", "*"))  # a finished fit drops its backup


def test_no_scratch_is_left_on_the_workers_or_the_airflow_host(deployment, dag_run):
    """Training and scoring stage through executor-local scratch (tfospipe/scratch.py): gone once the
    applications ended, the killed attempt's included (Spark removes its applications' local directories)."""
    _stack, cluster = deployment
    for i in (1, 2):
        left = cluster.in_worker(i, ["find", "/tmp", "-maxdepth", "4", "-name", "tfos-scratch-*"])
        assert left.returncode == 0 and not left.stdout.split(), (i, left.stdout)
    for name in os.listdir(tempfile.gettempdir()):
        path = os.path.join(tempfile.gettempdir(), name)
        if name.startswith("tfos-scratch-") and os.stat(path).st_mtime >= COLLECTED:  # not an earlier, killed run's
            assert psutil.pid_exists(int(name.split("-")[2])), name  # only live processes' own


def test_no_secret_reaches_a_task_log(deployment, dag_run, store):
    stack, _cluster = deployment
    run, _ = dag_run
    secret = store[1]["AWS_SECRET_ACCESS_KEY"]
    logs = glob.glob(os.path.join(stack.home, "logs", "dag_id=tfos_pipeline", f"run_id={run['dag_run_id']}",
                                  "task_id=*", "attempt=*.log"))
    assert len(logs) == len(TASKS) + 1  # train's two attempts
    for path in logs:
        with open(path) as f:
            assert secret not in f.read(), path


# -- bad input on the same store and cluster ----------------------------------------------------------

def _job(deployment, job, args, build_dir, env):
    """spark-submit ``job`` to the isolated cluster with the deployment's executor setting."""
    _stack, cluster = deployment
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TFOS_EXECUTOR_PYTHON_ENV", "archive")
        for k, v in env.items():
            mp.setenv(k, v)
        return run_job(job, args, build_dir, timeout=300, master=cluster.master)


def test_an_unsupported_scheme_is_refused_before_spark_starts(deployment, dag_run, store, build_dir):
    run = _job(deployment, "convert", {"data_root": "ftp://files.example/tfos", "version": VERSION}, build_dir,
               store[1])
    assert run.returncode == 2, run.explain(3000)
    (line,) = [x for x in run.output.splitlines() if "ftp://files.example/tfos" in x]  # the flag's error
    assert "unsupported scheme" in line and "s3://" in line and "hdfs://" in line
    assert "Running Spark version" not in run.output and "Traceback" not in run.output


def test_refused_credentials_end_with_one_line_and_write_nothing(deployment, dag_run, aws, build_dir):
    before = _files(aws)
    wrong = "wrong-secret-" + uuid.uuid4().hex[:8]
    env = dict(os.environ, AWS_SECRET_ACCESS_KEY=wrong)
    env = {k: v for k, v in env.items() if k.startswith("AWS_")}
    run = _job(deployment, "convert", {"data_root": aws, "version": "2026-11-21"}, build_dir, env)
    assert run.returncode == 2, run.explain(3000)
    error = run.error()
    assert error and error.startswith("ERROR [convert]") and aws in error, run.explain(3000)
    assert "AWS_ACCESS_KEY_ID" in error and "AWS_SECRET_ACCESS_KEY" in error
    assert wrong not in run.output and "Traceback" not in run.output
    assert _files(aws) == before  # nothing was written
