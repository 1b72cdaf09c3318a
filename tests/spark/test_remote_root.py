"""The four jobs on an ``s3://`` root that TensorFlow's tf.io.gfile cannot reach: a real S3 API
(``moto_server`` on loopback, IAM authentication on, the ``moto`` fixture of conftest.py), reached by the
driver and the executors with the credentials and endpoint from the environment only. Training stages
through the executors' scratch directories (tfospipe/scratch.py); the outputs land in the bucket."""
import os
import uuid

import pyarrow.parquet as pq
import pytest

from conftest import MOTO_BUCKET, run_job
from tfospipe import fs, paths
from tfospipe.sample_data import write_version

pytestmark = pytest.mark.spark
VERSION = "2026-11-05"
RUN = "remote"
ROWS = 400


@pytest.fixture(scope="module")
def s3_root(moto, tmp_path_factory):
    """A fresh prefix of the bucket holding raw/<VERSION>/digits.csv, with the writer's credentials and the
    endpoint in os.environ (spark-submit inherits them; the driver forwards them to its executors)."""
    endpoint, keys = moto
    tmp = tmp_path_factory.mktemp("remote-root")
    env = {"AWS_ACCESS_KEY_ID": keys["writer"][0], "AWS_SECRET_ACCESS_KEY": keys["writer"][1],
           "AWS_ENDPOINT_URL_S3": endpoint, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-creds")}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        local = str(tmp / "local")
        csv, _rows = write_version(local, VERSION, limit=ROWS)
        root = f"s3://{MOTO_BUCKET}/remote-{uuid.uuid4().hex[:8]}"
        fs.write_bytes(paths.join(paths.Layout(root).raw(VERSION), "digits.csv"), open(csv, "rb").read())
        yield root


@pytest.fixture(scope="module")
def pipeline(s3_root, build_dir):
    """convert, train (tensorflow input mode, 2 nodes, 2 epochs), validate and infer on the s3:// root."""
    common = {"data_root": s3_root, "version": VERSION}
    results = {}
    for job, extra in (("convert", {"num_shards": 2}),
                       ("train", {"run_id": RUN, "epochs": 2, "batch_size": 16, "input_mode": "tensorflow"}),
                       ("validate", {"run_id": RUN, "min_accuracy": 0.0}),
                       ("infer", {})):
        run = run_job(job, dict(common, **extra), build_dir, timeout=400)
        assert run.returncode == 0, f"{job}:\n{run.output[-5000:]}"
        results[job] = run.result()
    return s3_root, results


def test_every_stage_writes_its_committed_output_into_the_bucket(pipeline):
    root, results = pipeline
    layout = paths.Layout(root)
    data = layout.tfrecords(VERSION)
    assert fs.is_committed(data) and fs.exists(paths.join(data, fs.MANIFEST))
    assert fs.glob(paths.join(layout.split(VERSION, "train"), "part-*"))

    run_dir = layout.model_run(VERSION, RUN)
    assert fs.is_committed(run_dir)
    manifest = fs.read_json(paths.join(run_dir, fs.MANIFEST))
    assert manifest["params"]["input_mode"] == "tensorflow" and manifest["params"]["cluster_size"] == 2
    assert fs.exists(paths.join(layout.exported_model(VERSION, RUN), "saved_model.pb"))
    assert fs.glob(paths.join(layout.exported_model(VERSION, RUN), "variables", "variables.index"))
    assert not fs.exists(paths.join(run_dir, ".model.staging"))
    assert sorted(fs.listdir(paths.join(run_dir, "workers"))) == ["worker-0.json", "worker-1.json"]
    assert "epoch 2/2 step" in fs.read_bytes(paths.join(run_dir, "progress.log")).decode()
    assert any(name.startswith("events.out.tfevents")
               for _d, _s, files in fs.walk(paths.join(run_dir, "tensorboard")) for name in files)
    assert not fs.glob(paths.join(run_dir, "backup", "chief", "*"))  # a finished fit drops its backup

    report = layout.validation(VERSION, RUN)
    assert fs.is_committed(report) and fs.exists(paths.join(report, "report.md"))
    current = fs.read_json(layout.serving_pointer())
    eval_rows = fs.read_json(paths.join(data, fs.MANIFEST))["splits"]["eval"]
    assert current["model_version"] == results["validate"]["promoted"]
    assert results["validate"]["examples"] == eval_rows
    assert fs.exists(paths.join(layout.serving_model(current["model_version"]), "saved_model.pb"))

    out = layout.predictions(VERSION)
    assert fs.is_committed(out) and fs.exists(paths.join(out, fs.MANIFEST))
    parts = fs.glob(paths.join(out, "part-*.parquet"))
    rows = sum(pq.read_table(fs.open_read(p)).num_rows for p in parts)
    assert rows == eval_rows == results["infer"]["rows_out"]
    assert results["infer"]["model_version"] == current["model_version"]
    assert 1 <= results["infer"]["model_loads"] <= 2  # once per executor process, not per partition


def test_nothing_is_left_in_the_local_scratch_of_the_driver(pipeline):
    import tempfile
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("tfos-scratch-")
                and os.path.isdir(os.path.join(tempfile.gettempdir(), n)) and _stale(n)]


def _stale(name):
    """A scratch directory whose process is gone."""
    try:
        os.kill(int(name.split("-")[2]), 0)
        return False
    except (ProcessLookupError, ValueError):
        return True


def test_a_killed_training_resumes_from_the_backup_in_the_bucket(pipeline, build_dir):
    import json
    import re
    import signal
    import subprocess
    import time

    from conftest import TEST_MASTER
    from tfospipe import launch

    root, _results = pipeline
    epochs = 40
    args = {"data_root": root, "version": VERSION, "run_id": "resume", "epochs": epochs, "batch_size": 16}
    log = paths.join(paths.Layout(root).model_run(VERSION, "resume"), "progress.log")

    def text():
        return fs.read_bytes(log).decode() if fs.exists(log) else ""

    argv = launch.spark_submit_argv("train", args, TEST_MASTER, 2, str(build_dir))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, **launch.TF_ENV))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and f"epoch 2/{epochs}" not in text():
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, the executors and their TF nodes
        proc.wait()
    epochs_before = max(int(m) for m in re.findall(rf"^epoch (\d+)/{epochs}", text(), re.M))
    assert 2 <= epochs_before < epochs

    run = run_job("train", args, build_dir, timeout=400)  # the retry, on fresh executors
    assert run.returncode == 0, run.output[-5000:]
    second = text()
    resumed = [int(m) for m in re.findall(rf"^epoch (\d+)/{epochs}", second, re.M)]
    first_step = int(re.search(r"^step (\d+) ", second, re.M).group(1))
    run_dir = paths.Layout(root).model_run(VERSION, "resume")
    steps_per_epoch = json.loads(fs.read_bytes(paths.join(run_dir, fs.MANIFEST)))["steps_per_epoch"]
    assert resumed[0] > epochs_before and resumed[-1] == epochs   # no finished epoch ran again
    assert first_step > epochs_before * steps_per_epoch           # the step counter continues


def test_an_unsupported_scheme_is_refused_before_spark_starts_and_writes_nothing(build_dir, tmp_path):
    run = run_job("convert", {"data_root": "ftp://files.example/tfos", "version": VERSION}, build_dir, timeout=120)
    assert run.returncode == 2, run.output[-3000:]
    assert "ftp://files.example/tfos" in run.output and "s3://" in run.output and "hdfs://" in run.output
    assert "SparkContext" not in run.output and "Running Spark version" not in run.output


def test_refused_credentials_end_with_one_line_naming_the_root_and_what_to_set(s3_root, build_dir, monkeypatch):
    before = fs.listdir(s3_root)
    wrong = "wrong-secret-" + uuid.uuid4().hex[:8]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    run = run_job("convert", {"data_root": s3_root, "version": "2026-11-06"}, build_dir, timeout=180)
    monkeypatch.undo()
    assert run.returncode == 2, run.output[-3000:]
    error = run.error()
    assert error and error.startswith("ERROR [convert]") and s3_root in error, run.output[-3000:]
    assert "AWS_ACCESS_KEY_ID" in error and "AWS_SECRET_ACCESS_KEY" in error
    assert wrong not in run.output                                       # the secret is in no line of the log
    assert "Traceback" not in run.output
    assert fs.listdir(s3_root) == before                                  # nothing was written
