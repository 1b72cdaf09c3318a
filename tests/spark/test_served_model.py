"""The serving model of the session's ``served_version`` (convert, train, validate, infer ran on it), judged
and used again: infer's second mode predicts the same rows, and a degraded candidate is rejected against it.

Both tests were in tests/e2e/test_pipeline.py, where they ran beside the Airflow deployment on its data root;
they need a root with a serving model and its predictions, not Airflow, so they run here on a copy of the
served root (local-cluster Spark, as every Spark-job module)."""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import SERVED_VERSION as VERSION, run_job
from tfospipe import model, paths

pytestmark = pytest.mark.spark


def load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def layout(served_version, tmp_path_factory):
    """A copy of the served root: these tests write predictions and a validation report."""
    return paths.Layout(str(served_version.copy(tmp_path_factory.mktemp("served-model") / "root")))


def test_tfos_inference_mode_predicts_the_same_rows(layout, build_dir):
    """The seed's second way: a TFoS cluster in InputMode.SPARK fed by Spark, same output contract."""
    def table():
        return pq.read_table(layout.predictions(VERSION)).to_pandas().set_index("row_id").sort_index()

    before = table()
    run = run_job("infer", {"data_root": layout.root, "version": VERSION, "mode": "tfos",
                            "model_version": before["model_version"].iloc[0]}, build_dir)
    assert run.returncode == 0, run.explain(4000)
    manifest = load(os.path.join(layout.predictions(VERSION), "_manifest.json"))
    assert manifest["mode"] == "tfos" and manifest["tfos_nodes"] == 2
    assert manifest["rows_out"] == manifest["rows_in"] == len(before)
    after = table()
    assert list(after.index) == list(before.index)
    assert (after["predicted_class"] == before["predicted_class"]).all()
    assert np.allclose(np.stack(after["probabilities"]), np.stack(before["probabilities"]), atol=1e-5)
    assert (after["label"].isna() == before["label"].isna()).all()
    assert (after["label"].dropna() == before["label"].dropna()).all() and set(after["dataset_version"]) == {VERSION}


def test_a_degraded_model_is_rejected_against_the_serving_model(layout, build_dir):
    """An untrained model passes a zero threshold but trails the serving model: the champion rule rejects it."""
    before = load(layout.serving_pointer())
    run_dir = layout.model_run(VERSION, "degraded")
    model.export(model.build_model((8, 8), 16), os.path.join(run_dir, "model"), (8, 8))
    open(os.path.join(run_dir, "_SUCCESS"), "w").close()
    run = run_job("validate", {"data_root": layout.root, "version": VERSION, "run_id": "degraded",
                               "min_accuracy": 0.0}, build_dir)
    assert run.returncode == 2, run.explain(4000)
    assert "trails the serving model's" in run.error() and "serving unchanged" in run.error()
    assert load(layout.serving_pointer()) == before
    report = load(os.path.join(layout.validation(VERSION, "degraded"), "metrics.json"))
    assert report["champion"]["accuracy"] > report["candidate"]["accuracy"] + 0.02
    assert report["champion"]["examples"] == report["candidate"]["examples"]  # the same eval data
    with open(os.path.join(layout.validation(VERSION, "degraded"), "report.md")) as f:
        md = f.read()
    assert "REJECTED" in md and before["model_version"] in md
