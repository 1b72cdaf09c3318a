"""Per-prediction lineage: a small version converted, trained, validated and scored for real (the session's
``served_version``, tests/conftest.py), then predictions followed back with scripts/lineage.py to the raw
CSV line each was made from."""
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import PROJECT_DIR, SERVED_RUN as RUN, SERVED_SCORE_ROWS as SCORE_ROWS, SERVED_VERSION as VERSION
from tfospipe import csvparse, paths

pytestmark = pytest.mark.spark


def lineage(root, *argv, timeout=120):
    return subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "scripts", "lineage.py"), *map(str, argv),
                           "--root", str(root)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pipeline(served_version):
    """(root, labeled lines, score lines): a version with a labeled CSV (header, LF) and unlabeled score rows
    in a CR-only .bz2 file, run through all four jobs: infer scored the score split."""
    return served_version.root, served_version.labeled, served_version.score


def test_the_lineage_index_covers_every_written_row(pipeline):
    root, labeled, score = pipeline
    layout = paths.Layout(str(root))
    manifest = json.load(open(os.path.join(layout.tfrecords(VERSION), "_manifest.json")))
    index = pq.read_table(layout.lineage(VERSION)).to_pylist()
    assert manifest["lineage"]["rows"] == len(index) == manifest["rows_written"] == 400 + SCORE_ROWS
    assert sorted(manifest["lineage"]["files"]) == sorted(os.listdir(layout.lineage(VERSION)))
    assert all(r["row_id"] == csvparse.row_id(r["file"], r["line"]) for r in index)
    by_split = {s: sorted(r["line"] for r in index if r["split"] == s) for s in ("train", "eval", "score")}
    assert sorted(by_split["train"] + by_split["eval"]) == list(range(2, 402))  # after the header
    assert by_split["score"] == list(range(1, SCORE_ROWS + 1))
    assert {r["file"] for r in index if r["split"] == "score"} == {"score/old-mac.csv.bz2"}
    assert len(by_split["eval"]) == manifest["splits"]["eval"]


def test_a_prediction_leads_back_to_its_model_run_dataset_and_csv_line(pipeline):
    root, _labeled, score = pipeline
    layout = paths.Layout(str(root))
    predictions = pq.read_table(layout.predictions(VERSION)).to_pylist()
    assert len(predictions) == SCORE_ROWS
    index = {r["row_id"]: r for r in pq.read_table(layout.lineage(VERSION)).to_pylist()}
    pred = max(predictions, key=lambda p: index[p["row_id"]]["line"])  # the last line of the CR-only file
    line = index[pred["row_id"]]["line"]
    assert line == SCORE_ROWS
    serving_info = json.load(open(os.path.join(layout.serving_model(pred["model_version"]), "_manifest.json")))
    run_manifest = json.load(open(os.path.join(layout.model_run(VERSION, RUN), "_manifest.json")))
    conversion = json.load(open(os.path.join(layout.tfrecords(VERSION), "_manifest.json")))
    source = next(i for i in conversion["inputs"] if i["file"] == "score/old-mac.csv.bz2")

    proc = lineage(root, VERSION, pred["row_id"])
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    text = proc.stdout.splitlines()
    assert [t.split("  ")[0] for t in text] == ["prediction", "model version", "training run", "dataset version",
                                                "source", "raw line"]
    assert (f"row {pred['row_id']} of dataset version {VERSION}: class {pred['predicted_class']} probability "
            f"{pred['probability']:.4f} (unlabeled), model version {pred['model_version']}") in text[0]
    assert pred["model_version"].startswith(f"{VERSION}__{RUN}__")
    assert (f"{pred['model_version']}: digest {serving_info['digest']}, promoted {serving_info['promoted_at']}, "
            f"gate accuracy {serving_info['accuracy']:.4f}") in text[1]
    assert f"{RUN}: trained on dataset version {VERSION}, git revision {run_manifest['git_revision']}" in text[2]
    assert json.dumps(run_manifest["params"], sort_keys=True) in text[2] and "its model has this digest" in text[2]
    assert f"eval_accuracy {run_manifest['final_eval_accuracy']:.4f}" in text[2]
    assert json.dumps(conversion["params"], sort_keys=True) in text[3] and source["sha256"] in text[3]
    assert f"score/old-mac.csv.bz2:{line} (split score;" in text[4] and "unchanged since conversion" in text[4]
    assert text[5] == f"raw line         {score[line - 1]}"  # the exact CSV text, CR terminator and all decoded

    chain = json.loads(lineage(root, VERSION, pred["row_id"], "--json").stdout)
    assert chain["training_run"]["run_id"] == RUN and chain["training_run"]["holds_this_model"] is True
    assert chain["model"]["digest"] == serving_info["digest"] and chain["model"]["source"] == \
        layout.exported_model(VERSION, RUN)
    assert chain["source"] == dict(chain["source"], file="score/old-mac.csv.bz2", line=line, split="score",
                                   unchanged=True, row_id_matches=True, text=score[line - 1])


def test_lineage_refuses_unknown_rows_and_versions_clearly(pipeline):
    root, _labeled, _score = pipeline
    layout = paths.Layout(str(root))
    labeled_row = csvparse.row_id("digits.csv", 2)  # converted (train or eval) but not scored
    proc = lineage(root, VERSION, labeled_row)
    assert proc.returncode == 2
    assert f"row id {labeled_row} is digits.csv:2 of dataset version {VERSION}" in proc.stderr
    assert "has no prediction: infer scored the score split" in proc.stderr
    proc = lineage(root, VERSION, 12345)
    assert proc.returncode == 2 and f"no row id 12345 in dataset version {VERSION}" in proc.stderr
    proc = lineage(root, "never-converted", 12345)
    assert proc.returncode == 2
    assert f"no predictions for dataset version never-converted ({layout.predictions('never-converted')}" in proc.stderr
    assert "run the infer task" in proc.stderr
