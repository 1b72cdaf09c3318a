"""MLflow and OpenLineage on real jobs.

MLflow: a real ``mlflow server`` on loopback (SQLite, local artifact root); the session's served version
(copied) is synced into it (``scripts/serving.py sync-mlflow``), then train (1 epoch) and validate run by
spark-submit exactly as the DAG runs them, with ``MLFLOW_TRACKING_URI`` and the Airflow context variables
set; the training run, its per-epoch metrics, the registered model versions and the champion alias are
read back through ``MlflowClient``; a rollback moves the alias back.

OpenLineage: the operator's and the sensor's ``get_openlineage_facets_on_complete`` on the served
version (read-only; convert, train, validate and infer ran there), emitted as events through the
OpenLineage client's file transport, parsed back: the graph raw -> tfrecords -> model -> predictions, and
the counts of every facet against the jobs' manifests.
"""
import datetime
import json
import os
import subprocess
import sys
import uuid

import pytest

from conftest import SERVED_RUN, SERVED_SCORE_ROWS, SERVED_VERSION as VERSION, run_job
from mlflow_server import serve
from openlineage_events import edges, read_events
from tfospipe import fs, jobspec, launch, paths, serving, tracking

pytestmark = pytest.mark.spark
PROJECT_DIR = os.path.dirname(launch.JOBS_DIR)
RUN = "manual__mlflow"
AIRFLOW = {"AIRFLOW_CTX_DAG_ID": "tfos_pipeline", "AIRFLOW_CTX_DAG_RUN_ID": RUN}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("mlflow"))


def serving_cli(root, *argv):
    return subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "scripts", "serving.py"), "--root", str(root),
                           *argv], capture_output=True, text=True, timeout=180, env=os.environ)


def test_train_and_validate_are_mirrored_to_mlflow_and_a_rollback_moves_the_alias_back(
        served_version, tmp_path, build_dir, server, monkeypatch):
    root = served_version.copy(tmp_path / "root")
    layout = paths.Layout(str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    served = serving.current(layout)["model_version"]
    synced = serving_cli(root, "sync-mlflow")  # the served model, promoted before MLflow was configured
    assert synced.returncode == 0, synced.stderr
    mlflow = tracking.client()
    name = tracking.REGISTERED_MODEL
    first = mlflow.get_model_version_by_alias(name, tracking.CHAMPION)
    assert first.tags["model_version"] == served

    for key, value in AIRFLOW.items():
        monkeypatch.setenv(key, value)
    common = {"data_root": str(root), "version": VERSION, "run_id": RUN}
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "train")
    run = run_job("train", dict(common, epochs=1, batch_size=16), build_dir)
    assert run.returncode == 0, run.explain(6000)
    assert "MLFLOW [train] training run" in run.output and "WARNING" not in run.output.replace(
        "WARNING: ", "")  # no mirror line lags (Spark's own "WARNING:" lines are not ours)
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "validate")
    run = run_job("validate", dict(common, min_accuracy=0.0, max_regression=1.0, promotion="auto"), build_dir)
    assert run.returncode == 0, run.explain(6000)
    promoted = run.result()["promoted"]
    assert promoted and promoted != served

    run_dir = layout.model_run(VERSION, RUN)
    found = tracking.find_run(mlflow, run_dir)
    manifest = json.loads((tmp_path / "root" / "models" / VERSION / RUN / fs.MANIFEST).read_text())
    assert found.data.tags["dataset_version"] == VERSION and found.data.tags["airflow.run_id"] == RUN
    assert found.data.tags["airflow.task_id"] == "train" and found.data.tags["airflow.dag_id"] == "tfos_pipeline"
    assert found.data.tags["git_revision"] == manifest["git_revision"]
    assert found.data.params["epochs"] == "1" and found.data.params["batch_size"] == "16"
    for key in ("loss", "accuracy", "eval_loss", "eval_accuracy"):
        history = mlflow.get_metric_history(found.info.run_id, key)
        assert [m.step for m in history] == [1], key  # one epoch, step = epoch
    assert mlflow.get_metric_history(found.info.run_id, "loss")[0].value == pytest.approx(manifest["final_loss"],
                                                                                          abs=5e-5)
    artifacts = {a.path for a in mlflow.list_artifacts(found.info.run_id)}
    assert {fs.MANIFEST, paths.PROGRESS_LOG, paths.TENSORBOARD_DIR, paths.MODEL_DIR, "data-checks"} <= artifacts
    assert "model/saved_model.pb" in {a.path for a in mlflow.list_artifacts(found.info.run_id, paths.MODEL_DIR)}

    champion = mlflow.get_model_version_by_alias(name, tracking.CHAMPION)
    report = json.loads((tmp_path / "root" / "validation" / VERSION / RUN / paths.METRICS_FILE).read_text())
    assert champion.tags["model_version"] == promoted and champion.run_id == found.info.run_id
    assert champion.tags["decision"] == "promote" and champion.tags["model_digest"] == report["model_digest"]
    assert float(champion.tags["accuracy"]) == report["candidate"]["accuracy"]
    assert champion.tags["serving_model"] == served

    rolled = serving_cli(root, "rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert serving.current(layout)["model_version"] == served
    back = mlflow.get_model_version_by_alias(name, tracking.CHAMPION)
    assert back.version == first.version and back.tags["model_version"] == served


# --- OpenLineage ------------------------------------------------------------------------------------------

def _facets_on_complete(root):
    """OperatorLineage of every task on ``root`` as the provider gets it when the task succeeded."""
    from tfos_spark import TFoSInputSensor, TFoSSparkSubmitOperator
    values = {"data_root": str(root), "version": VERSION, "run_id": SERVED_RUN}
    sensor = TFoSInputSensor(task_id="wait_for_data", data_root=str(root), version=VERSION)
    out = {"wait_for_data": (sensor.get_openlineage_facets_on_start(), sensor.get_openlineage_facets_on_complete(None))}
    for job in ("convert", "train", "validate", "infer"):
        args = {k: v for k, v in values.items() if k in {a.name for a in jobspec.get(job).args}}
        task = TFoSSparkSubmitOperator(task_id=job, job=job, job_args=args)
        out[job] = (task.get_openlineage_facets_on_start(), task.get_openlineage_facets_on_complete(None))
    return out


def test_every_task_emits_its_datasets_and_a_run_gives_the_graph_raw_tfrecords_model_predictions(
        served_version, tmp_path):
    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.transport.file import FileConfig, FileTransport

    root = served_version.root
    layout = paths.Layout(str(root))
    client = OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=str(tmp_path / "events"))))
    for task, (start, complete) in _facets_on_complete(root).items():
        run = Run(runId=str(uuid.uuid4()))
        for state, lineage in ((RunState.START, start), (RunState.COMPLETE, complete)):
            client.emit(RunEvent(eventType=state, eventTime=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                                 run=run, job=Job(namespace="tfos-test", name=f"tfos_pipeline.{task}"),
                                 inputs=lineage.inputs, outputs=lineage.outputs, producer="tests"))
    events = read_events(str(tmp_path / "events"))
    assert len(events) == 10 and {e["eventType"] for e in events} == {"START", "COMPLETE"}
    name = {p: paths.join(os.path.abspath(root), p) for p in ("raw", "tfrecords", "quarantine", "predictions")}
    raw, records = f"{name['raw']}/{VERSION}", f"{name['tfrecords']}/{VERSION}"
    model = layout.model_run(VERSION, paths.run_slug(SERVED_RUN))
    promoted = layout.serving_model(serving.current(layout)["model_version"])
    predictions = f"{name['predictions']}/{VERSION}"
    # raw -> tfrecords (convert) -> the training run (train) -> its promoted copy (validate) -> predictions (infer)
    assert {(raw, records), (records, model), (model, promoted), (promoted, predictions)} <= edges(events)
    assert {e["inputs"][0]["namespace"] for e in events} == {"file"}

    complete = {e["job"]["name"].split(".", 1)[1]: e for e in events if e["eventType"] == "COMPLETE"}
    converted = json.loads((root / "tfrecords" / VERSION / fs.MANIFEST).read_text())
    (raw_in,) = complete["convert"]["inputs"]
    assert raw_in["inputFacets"]["inputStatistics"]["rowCount"] == converted["rows_read"] == 400 + SERVED_SCORE_ROWS
    out = {d["name"]: d for d in complete["convert"]["outputs"]}
    tfr = out[records]
    assert tfr["outputFacets"]["outputStatistics"]["rowCount"] == converted["rows_written"]
    assert tfr["outputFacets"]["outputStatistics"]["fileCount"] == sum(len(s) for s in converted["shards"].values())
    assert tfr["facets"]["tfos_splits"]["splits"] == converted["splits"]
    assert sum(converted["splits"].values()) == converted["rows_written"]
    assert [f["name"] for f in tfr["facets"]["schema"]["fields"]] == ["label", "image", "row_id"]
    assert tfr["facets"]["schema"]["fields"][1]["type"] == "int64[64]"
    quality = tfr["facets"]["dataQualityMetrics"]
    assert quality["rowCount"] == converted["rows_written"] and quality["columnMetrics"]["label"]["distinctCount"] == 10
    assert quality["columnMetrics"]["image"]["max"] == converted["pixel_max_observed"]
    stats = tfr["facets"]["tfos_statistics"]["splits"]
    assert {s: v["rows"] for s, v in stats.items()} == converted["splits"]
    quarantine = out[f"{name['quarantine']}/{VERSION}"]
    assert quarantine["facets"]["tfos_quarantine"]["rowsQuarantined"] == converted["rows_quarantined"]
    assert quarantine["outputFacets"]["outputStatistics"]["rowCount"] == converted["rows_quarantined"]
    assert converted["rows_read"] == converted["rows_written"] + converted["rows_quarantined"]

    trained = complete["train"]["outputs"][0]
    assert trained["name"] == model and trained["facets"]["tfos_model"]["figures"]["steps_run"] > 0
    assert complete["train"]["inputs"][0]["facets"]["tfos_data_checks"]["decision"]
    figures = {d["name"]: d for d in complete["validate"]["outputs"]}[promoted]["facets"]["tfos_model"]["figures"]
    assert figures["decision"] == "promote" and promoted.endswith(figures["model_version"])
    (scored,) = complete["infer"]["outputs"]
    assert scored["outputFacets"]["outputStatistics"]["rowCount"] == SERVED_SCORE_ROWS
    assert [f["name"] for f in scored["facets"]["schema"]["fields"]][:2] == ["row_id", "predicted_class"]
    (wait_in,) = complete["wait_for_data"]["inputs"]
    assert wait_in["name"] == raw and wait_in["inputFacets"]["inputStatistics"]["fileCount"] == 2  # csv, score/
    starts = [e for e in events if e["eventType"] == "START"]
    assert all(not d.get("outputFacets") for e in starts for d in e["outputs"])  # named only at start
