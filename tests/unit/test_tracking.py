"""The MLflow mirror (tfospipe.tracking) against a real ``mlflow server`` on loopback (SQLite backend, local
artifact root), without Spark: a committed training run logged as an MLflow run (params, per-epoch metrics
at step = epoch, artifacts, tags) and found again; a candidate registered with its tags and the champion
alias; ``scripts/serving.py rollback`` moving the alias back and ``sync-mlflow`` catching up; a server
that is down or refuses every request: one WARNING line after retries with backoff, or a JobError when
required."""
import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import fake_model, free_port
from mlflow_server import serve
from tfospipe import fs, paths, serving, tracking
from tfospipe.runner import JobError, UserError

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSION = "2026-11-20"

PROGRESS = """started training
step 10 loss 2.1000 accuracy 0.2000 examples/s 300
epoch 1/3 step 20 loss 1.5000 accuracy 0.5000 eval_loss 1.2000 eval_accuracy 0.6000
epoch 2/3 step 40 loss 0.7000 accuracy 0.8000 eval_loss 0.6000 eval_accuracy 0.8500
epoch 3/3 step 60 loss 0.4000 accuracy 0.9000 eval_loss 0.3500 eval_accuracy 0.9200
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def mlflow_on(server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"test-{time.time_ns()}")
    return tracking.client()


def committed_run(layout, run, text):
    """A committed training run directory as rundir.finish_run leaves it: a SavedModel-shaped model/, the
    chief's progress.log and TensorBoard logs, the manifest, _SUCCESS. Returns (run_dir, manifest)."""
    run_dir = layout.model_run(VERSION, run)
    fake_model(os.path.join(run_dir, paths.MODEL_DIR), text)
    os.makedirs(os.path.join(run_dir, paths.TENSORBOARD_DIR, "train"))
    with open(os.path.join(run_dir, paths.TENSORBOARD_DIR, "train", "events.out.tfevents.1"), "wb") as f:
        f.write(b"events")
    with open(os.path.join(run_dir, paths.PROGRESS_LOG), "w") as f:
        f.write(PROGRESS)
    manifest = {"dataset_version": VERSION, "run_id": run, "git_revision": "0123abcd",
                "params": {"epochs": 3, "batch_size": 16, "learning_rate": 0.001, "image_shape": None},
                "steps_run": 60, "final_loss": 0.4, "final_accuracy": 0.9, "final_eval_loss": 0.35,
                "final_eval_accuracy": 0.92, "train_seconds": 12.5}
    fs.write_json(os.path.join(run_dir, fs.MANIFEST), manifest)
    fs.write_bytes(os.path.join(run_dir, fs.SUCCESS), b"")
    return run_dir, manifest


def promote(layout, run_dir, run):
    """Put the run's model into serving as validate does; returns its model version."""
    model_dir = os.path.join(run_dir, paths.MODEL_DIR)
    digest = serving.model_digest(model_dir)
    mv = paths.model_version(VERSION, run, digest)
    serving.promote(layout, model_dir, mv, {"accuracy": 0.9, "dataset_version": VERSION, "run_id": run},
                    digest)
    return mv, digest


def report(mv, digest, decision="promote"):
    return {"model_version": mv, "model_digest": digest, "dataset_version": VERSION, "run_id": "r",
            "passed": True, "candidate": {"accuracy": 0.92, "loss": 0.3, "examples": 360},
            "champion": {"accuracy": 0.9}, "champion_model_version": "older",
            "promotion": {"decision": decision, "rule": "promotion=auto"},
            "gate": {"mode": "threshold", "statistics": {"p_serving_better": 0.41, "p_candidate_better": 0.2}}}


def test_epoch_lines_become_one_metric_row_per_epoch():
    rows = tracking.epoch_metrics(PROGRESS + "epoch 3/3 step 60 loss 0.3900 accuracy 0.9100 eval_loss nan "
                                             "eval_accuracy nan\n")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0] == {"epoch": 1, "step": 20, "loss": 1.5, "accuracy": 0.5, "eval_loss": 1.2, "eval_accuracy": 0.6}
    assert rows[2]["loss"] == 0.39 and rows[2]["eval_loss"] != rows[2]["eval_loss"]  # the last line of an epoch
    assert tracking.epoch_metrics("") == []


def test_mlflow_is_off_without_a_tracking_uri(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    layout = paths.Layout(str(tmp_path))
    run_dir, manifest = committed_run(layout, "off", "off")
    assert tracking.log_training(layout, run_dir, manifest) is None
    assert capsys.readouterr().err == ""
    tracking.check_required(False, "train")
    with pytest.raises(UserError, match="mlflow_required is true but no MLflow tracking server"):
        tracking.check_required(True, "train")


def test_a_training_run_is_logged_with_params_epoch_metrics_artifacts_and_tags(tmp_path, mlflow_on, monkeypatch):
    for key, value in {"AIRFLOW_CTX_DAG_ID": "tfos_pipeline", "AIRFLOW_CTX_DAG_RUN_ID": "manual__1",
                       "AIRFLOW_CTX_TASK_ID": "train"}.items():
        monkeypatch.setenv(key, value)
    layout = paths.Layout(str(tmp_path))
    run_dir, manifest = committed_run(layout, "manual__1", "model one")
    run_id = tracking.log_training(layout, run_dir, manifest)
    run = mlflow_on.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3" and run.data.params["learning_rate"] == "0.001"
    assert run.data.params["image_shape"] == ""
    history = {key: [(m.step, m.value) for m in mlflow_on.get_metric_history(run_id, key)]
               for key in ("loss", "accuracy", "eval_loss", "eval_accuracy")}
    assert history["loss"] == [(1, 1.5), (2, 0.7), (3, 0.4)]
    assert history["eval_accuracy"] == [(1, 0.6), (2, 0.85), (3, 0.92)]
    assert run.data.metrics["final_eval_accuracy"] == 0.92 and run.data.metrics["steps_run"] == 60
    tags = run.data.tags
    assert (tags["dataset_version"], tags["airflow.dag_id"], tags["airflow.run_id"], tags["airflow.task_id"],
            tags["git_revision"], tags[tracking.RUN_DIR_TAG]) == (VERSION, "tfos_pipeline", "manual__1", "train",
                                                                  "0123abcd", run_dir)
    top = {a.path for a in mlflow_on.list_artifacts(run_id)}
    assert {fs.MANIFEST, paths.PROGRESS_LOG, paths.TENSORBOARD_DIR, paths.MODEL_DIR} <= top
    assert {a.path for a in mlflow_on.list_artifacts(run_id, paths.MODEL_DIR)} == {"model/saved_model.pb",
                                                                                   "model/variables"}
    logged = mlflow_on.download_artifacts(run_id, fs.MANIFEST, str(tmp_path))
    assert json.load(open(logged))["final_eval_accuracy"] == 0.92
    # mirrored again (a resync, a retried validate): the same run, not a second one
    assert tracking.log_training(layout, run_dir, manifest) == run_id
    experiment = mlflow_on.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    assert len(mlflow_on.search_runs([experiment.experiment_id])) == 1


def test_a_hand_exported_candidate_without_a_training_manifest_never_fails_validate(tmp_path, monkeypatch, capsys,
                                                                                     server):
    """A model placed by hand (a SavedModel and _SUCCESS, no training manifest), as an operator may validate:
    with MLflow off nothing is read; with it on, the mirror lags at once (one WARNING line, no retries:
    a missing file does not come back), and validate's decision stands."""
    layout = paths.Layout(str(tmp_path))
    run_dir = layout.model_run(VERSION, "by-hand")
    fake_model(os.path.join(run_dir, paths.MODEL_DIR), "by hand")
    mv = paths.model_version(VERSION, "by-hand", "0123456789ab")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.register_candidate(layout, run_dir, mv, report(mv, "0123456789ab", "rejected"),
                                       champion=False) is None
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    started = time.monotonic()
    assert tracking.register_candidate(layout, run_dir, mv, report(mv, "0123456789ab", "rejected"),
                                       champion=False, retry_seconds=30) is None
    err = capsys.readouterr().err
    assert time.monotonic() - started < 15 and err.count("WARNING [validate] MLflow mirror lags: ") == 1, err
    assert "after 1 tries" in err and "FileNotFoundError" in err and "sync-mlflow" in err


def test_a_candidate_is_registered_with_its_gate_and_the_champion_alias_follows_serving(tmp_path, mlflow_on,
                                                                                         capsys):
    layout = paths.Layout(str(tmp_path))
    runs = {}
    for run in ("first", "second"):
        run_dir, _manifest = committed_run(layout, run, f"model {run}")
        mv, digest = promote(layout, run_dir, run)
        number = tracking.register_candidate(layout, run_dir, mv, report(mv, digest), champion=True)
        runs[run] = (mv, number)
    held_dir, _ = committed_run(layout, "held", "model held")
    held_digest = serving.model_digest(os.path.join(held_dir, paths.MODEL_DIR))
    held_mv = paths.model_version(VERSION, "held", held_digest)
    held = tracking.register_candidate(layout, held_dir, held_mv, report(held_mv, held_digest, "held"), champion=False)
    name = tracking.REGISTERED_MODEL
    champion = mlflow_on.get_model_version_by_alias(name, tracking.CHAMPION)
    assert champion.version == runs["second"][1] and champion.tags["model_version"] == runs["second"][0]
    assert champion.tags["decision"] == "promote" and champion.tags["accuracy"] == "0.92"
    assert champion.tags["p_serving_better"] == "0.41" and runs["second"][0].endswith(champion.tags["model_digest"][:12])
    assert champion.source.endswith("/artifacts/model")
    assert mlflow_on.get_model_version(name, held).tags["decision"] == "held"
    assert "MLFLOW [validate]" in capsys.readouterr().out

    # a rollback is the pointer's compare-and-swap, then the alias: back to the first model
    proc = subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "scripts", "serving.py"), "--root",
                           layout.root, "rollback"], capture_output=True, text=True, env=os.environ, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert serving.current(layout)["model_version"] == runs["first"][0]
    assert mlflow_on.get_model_version_by_alias(name, tracking.CHAMPION).version == runs["first"][1]
    assert "alias champion" in proc.stdout and "WARNING" not in proc.stderr


def test_sync_registers_what_was_promoted_while_mlflow_was_down(tmp_path, mlflow_on, monkeypatch):
    layout = paths.Layout(str(tmp_path))
    uri = os.environ["MLFLOW_TRACKING_URI"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    run_dir, manifest = committed_run(layout, "offline", "model offline")
    assert tracking.log_training(layout, run_dir, manifest, retry_seconds=0) is None
    mv, digest = promote(layout, run_dir, "offline")
    os.makedirs(layout.validation(VERSION, "offline"))
    fs.write_json(paths.join(layout.validation(VERSION, "offline"), paths.METRICS_FILE), report(mv, digest))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    proc = subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "scripts", "serving.py"), "--root",
                           layout.root, "sync-mlflow"], capture_output=True, text=True, env=os.environ, timeout=120)
    assert proc.returncode == 0, proc.stderr
    champion = mlflow_on.get_model_version_by_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION)
    assert champion.tags["model_version"] == mv and f"{mv}: {tracking.REGISTERED_MODEL} version" in proc.stdout
    assert mlflow_on.get_metric_history(champion.run_id, "eval_accuracy")[-1].value == 0.92


class Refusing(http.server.BaseHTTPRequestHandler):
    """A tracking server that refuses every request (503), counting them."""

    requests = 0

    def _refuse(self):
        type(self).requests += 1
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "maintenance"}')

    do_GET = do_POST = _refuse

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing(monkeypatch):
    Refusing.requests = 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{httpd.server_address[1]}")
    yield Refusing
    httpd.shutdown()


@pytest.mark.parametrize("server_state", ["down", "refusing"])
def test_a_server_that_is_down_or_refuses_costs_one_warning_line_after_retries(tmp_path, monkeypatch, capsys,
                                                                               server_state, request):
    if server_state == "down":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    else:
        request.getfixturevalue("refusing")
    layout = paths.Layout(str(tmp_path))
    run_dir, manifest = committed_run(layout, "r", "model r")
    started = time.time()
    assert tracking.log_training(layout, run_dir, manifest, retry_seconds=3) is None
    elapsed = time.time() - started
    err = capsys.readouterr().err.splitlines()
    lags = [line for line in err if line.startswith("WARNING [train] MLflow mirror lags")]
    assert len(lags) == 1 and len([line for line in err if "WARNING" in line]) == 1, err
    tries = int(lags[0].split(" after ")[1].split(" tries")[0])
    # backoff 0.5 s, then 1 s: 3 tries, no try after 3 s (each refused at once)
    assert tries == 3 and 1.4 <= elapsed < 3 + 5, (tries, elapsed)
    assert "sync-mlflow --root " + layout.root in lags[0]
    if server_state == "refusing":
        assert Refusing.requests >= tries and ("503" in lags[0] or "TEMPORARILY_UNAVAILABLE" in lags[0])
    with pytest.raises(JobError, match="mlflow_required is true, so the task fails"):
        tracking.log_training(layout, run_dir, manifest, retry_seconds=1, required=True)


def test_a_rollback_to_a_model_mlflow_never_saw_says_the_mirror_lags(tmp_path, mlflow_on):
    layout = paths.Layout(str(tmp_path))
    first, _ = committed_run(layout, "unseen1", "unseen one")
    second, _ = committed_run(layout, "unseen2", "unseen two")
    promote(layout, first, "unseen1")
    promote(layout, second, "unseen2")
    proc = subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "scripts", "serving.py"), "--root",
                           layout.root, "rollback"], capture_output=True, text=True, env=os.environ, timeout=120)
    assert proc.returncode == 0, proc.stderr  # the pointer moved: the rollback stands
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert line.startswith("WARNING [rollback] MLflow mirror lags: alias champion") and "sync-mlflow" in line


def test_the_operator_turns_the_connection_mlflow_default_into_the_jobs_environment(monkeypatch):
    import tfos_spark
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({
        "conn_type": "http", "host": "mlflow.example.internal", "port": 5000, "login": "pipeline",
        "password": "s3cret-token", "extra": {"experiment_name": "digits", "path": "/tracking/"}}))
    assert tfos_spark.mlflow_env() == {
        "MLFLOW_TRACKING_URI": "http://mlflow.example.internal:5000/tracking", "MLFLOW_TRACKING_USERNAME": "pipeline",
        "MLFLOW_TRACKING_PASSWORD": "s3cret-token", "MLFLOW_EXPERIMENT_NAME": "digits"}
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "http",
                                                                  "host": "https://mlflow.example.internal"}))
    assert tfos_spark.mlflow_env() == {"MLFLOW_TRACKING_URI": "https://mlflow.example.internal"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")  # the environment wins: spark-submit inherits it
    assert tfos_spark.mlflow_env() == {}
