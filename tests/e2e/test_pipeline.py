"""The whole DAG through Airflow (``airflow dags test``, SQLite metadata DB) on a 2-executor Spark cluster."""
import glob
import json
import os
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from conftest import PROJECT_DIR, TEST_MASTER, run_job
from tfospipe import model, paths, schema

pytestmark = pytest.mark.e2e
VERSION = "2026-11-28"
ACCURACY_FLOOR = 0.85  # the seed CNN on 1,437 training digits reaches ~0.92-0.96 in 5 epochs


def airflow(env, *args, timeout=1200):
    cmd = f'source "{PROJECT_DIR}/scripts/env.sh" && ' + " ".join(args)
    proc = subprocess.run(["bash", "-c", cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout


def dag_state(log):
    finished = [line for line in log.splitlines() if "DagRun Finished" in line]
    assert finished, log[-5000:]
    return finished[-1].split(" state=")[1].split(",")[0]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    root = tmp_path_factory.mktemp("data")
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW_VAR_TFOS_DATA_ROOT=str(root),
               AIRFLOW_CONN_SPARK_DEFAULT=json.dumps({"conn_type": "spark", "host": TEST_MASTER}),
               TFOS_BUILD_DIR=str(home / "build"))
    rc, out = airflow(env, f'bash "{PROJECT_DIR}/scripts/airflow_setup.sh"')
    assert rc == 0, out
    rc, out = airflow(env, f'python "{PROJECT_DIR}/scripts/make_sample_data.py" --root "{root}" {VERSION}')
    assert rc == 0, out
    rc, log = airflow(env, f"airflow dags test tfos_pipeline {VERSION}")
    with open(home / "first-run.log", "w") as f:
        f.write(log)
    assert dag_state(log) == "success", log[-8000:]
    return {"env": env, "root": str(root), "layout": paths.Layout(str(root)), "log": log}


def count_records(files):
    return sum(1 for f in files for _ in tf.data.TFRecordDataset(f))


def test_tfrecords_hold_every_csv_row(pipeline):
    layout = pipeline["layout"]
    with open(os.path.join(layout.raw(VERSION), "digits.csv")) as f:
        csv_rows = sum(1 for _ in f) - 1  # minus the header
    out = layout.tfrecords(VERSION)
    train = count_records(glob.glob(os.path.join(out, "train", "*.tfrecord")))
    evaluation = count_records(glob.glob(os.path.join(out, "eval", "*.tfrecord")))
    assert csv_rows == 1797 and train + evaluation == csv_rows and evaluation > 0
    manifest = json.load(open(os.path.join(out, "_manifest.json")))
    assert manifest["splits"] == {"train": train, "eval": evaluation}


def test_every_worker_trained_and_the_chief_exported(pipeline):
    layout = pipeline["layout"]
    (run,) = os.listdir(os.path.join(pipeline["root"], "models", VERSION))
    run_dir = layout.model_run(VERSION, run)
    manifest = json.load(open(os.path.join(run_dir, "_manifest.json")))
    assert [w["worker"] for w in manifest["workers"]] == [0, 1]
    assert manifest["workers"][0]["job_name"] == "chief" and manifest["workers"][1]["job_name"] == "worker"
    assert all(w["steps_run"] == manifest["steps_run"] > 0 for w in manifest["workers"])
    assert manifest["steps_run"] == manifest["steps_per_epoch"] * manifest["params"]["epochs"]
    assert "[train progress] step 10 loss" in pipeline["log"]
    assert glob.glob(os.path.join(run_dir, "tensorboard", "train", "events.out.tfevents.*"))


def test_exported_model_loads_and_predicts_above_the_floor(pipeline):
    layout = pipeline["layout"]
    (run,) = os.listdir(os.path.join(pipeline["root"], "models", VERSION))
    predict = model.load_serving(layout.exported_model(VERSION, run), (8, 8))
    records = [r.numpy() for f in sorted(glob.glob(os.path.join(layout.split(VERSION, "eval"), "*.tfrecord")))
               for r in tf.data.TFRecordDataset(f)]
    images, labels, _ids = schema.parse_batch(tf.constant(records), (8, 8))
    probs, classes = predict(images.numpy())
    accuracy = float((classes == labels.numpy()).mean())
    assert accuracy >= ACCURACY_FLOOR
    metrics = json.load(open(os.path.join(layout.validation(VERSION, run), "metrics.json")))
    assert metrics["passed"] is True and metrics["champion"] is None
    assert abs(metrics["candidate"]["accuracy"] - accuracy) < 1e-6  # Spark-side evaluation agrees
    assert metrics["candidate"]["examples"] == len(records)
    report_dir = layout.validation(VERSION, run)
    with open(os.path.join(report_dir, "confusion_matrix.png"), "rb") as f:
        png = f.read()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    md = open(os.path.join(report_dir, "report.md")).read()
    assert "PASSED" in md and f"| accuracy | {metrics['candidate']['accuracy']:.4f} |" in md


def test_predictions_cover_every_input_row_with_the_promoted_model(pipeline):
    layout = pipeline["layout"]
    serving_now = json.load(open(layout.serving_pointer()))
    table = pq.read_table(layout.predictions(VERSION)).to_pandas()
    manifest = json.load(open(os.path.join(layout.predictions(VERSION), "_manifest.json")))
    records = [r.numpy() for f in glob.glob(os.path.join(layout.split(VERSION, "eval"), "*.tfrecord"))
               for r in tf.data.TFRecordDataset(f)]
    _images, labels, ids = schema.parse_batch(tf.constant(records), (8, 8))
    assert len(table) == len(records) == manifest["rows_out"] == manifest["rows_in"]
    assert sorted(table["row_id"]) == sorted(ids.numpy().tolist())
    assert set(table["model_version"]) == {serving_now["model_version"]}
    assert set(table["dataset_version"]) == {VERSION}
    assert np.allclose([sum(p) for p in table["probabilities"]], 1.0, atol=1e-4)
    assert (table["label"].to_numpy() >= 0).all()
    assert ((table["predicted_class"] == table["label"]).mean()) >= ACCURACY_FLOOR
    assert 1 <= manifest["model_loads"] <= 2  # at most one per executor


def test_the_model_is_loaded_once_per_executor_not_per_batch(pipeline, build_dir):
    layout = pipeline["layout"]
    run = run_job("infer", {"data_root": pipeline["root"], "version": VERSION, "batch_size": 8}, build_dir)
    assert run.returncode == 0, run.output[-4000:]
    manifest = json.load(open(os.path.join(layout.predictions(VERSION), "_manifest.json")))
    batches = sum(-(-t["rows"] // 8) for t in manifest["partition_timings"])
    assert batches >= 40 and manifest["model_loads"] <= 2 and manifest["rows_out"] == manifest["rows_in"]


def test_a_rejected_model_changes_nothing_serving(pipeline):
    """A manual run naming the version and an impossible threshold: the gate fails, serving is unchanged."""
    layout = pipeline["layout"]
    before = json.load(open(layout.serving_pointer()))
    predictions_before = json.load(open(os.path.join(layout.predictions(VERSION), "_manifest.json")))
    conf = json.dumps({"dataset_version": VERSION, "min_accuracy": 0.9999, "epochs": 2})
    rc, log = airflow(pipeline["env"], f"airflow dags test tfos_pipeline 2026-11-29 -c '{conf}'")
    assert dag_state(log) == "failed", log[-8000:]
    assert "ERROR [validate]" in log and "rejected, serving unchanged" in log
    assert json.load(open(layout.serving_pointer())) == before
    assert json.load(open(os.path.join(layout.predictions(VERSION), "_manifest.json"))) == predictions_before
    runs = sorted(os.listdir(os.path.join(pipeline["root"], "models", VERSION)))
    assert len(runs) == 2
    second = [r for r in runs if r != before["run_id"]][0]
    report = json.load(open(os.path.join(layout.validation(VERSION, second), "metrics.json")))
    assert report["passed"] is False
    assert any("min_accuracy 0.9999" in r for r in report["failed_rules"])
    # the serving model was scored on the same records in the same job
    assert report["champion_model_version"] == before["model_version"]
    assert report["champion"]["examples"] == report["candidate"]["examples"]


def test_a_degraded_model_is_rejected_against_the_serving_model(pipeline, build_dir):
    """An untrained model passes a zero threshold but trails the serving model: the champion rule rejects it."""
    layout = pipeline["layout"]
    before = json.load(open(layout.serving_pointer()))
    run_dir = layout.model_run(VERSION, "degraded")
    model.export(model.build_model((8, 8), 16), os.path.join(run_dir, "model"), (8, 8))
    open(os.path.join(run_dir, "_SUCCESS"), "w").close()
    run = run_job("validate", {"data_root": pipeline["root"], "version": VERSION, "run_id": "degraded",
                               "min_accuracy": 0.0}, build_dir)
    assert run.returncode == 2, run.output[-4000:]
    assert "trails the serving model's" in run.error() and "serving unchanged" in run.error()
    assert json.load(open(layout.serving_pointer())) == before
    report = json.load(open(os.path.join(layout.validation(VERSION, "degraded"), "metrics.json")))
    assert report["champion"]["accuracy"] > report["candidate"]["accuracy"] + 0.02
    assert report["champion"]["examples"] == report["candidate"]["examples"]
    md = open(os.path.join(layout.validation(VERSION, "degraded"), "report.md")).read()
    assert "REJECTED" in md and before["model_version"] in md
