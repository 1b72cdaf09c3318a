"""Per-prediction lineage: convert, train, validate and infer a small version for real, then follow
predictions back with scripts/lineage.py to the raw CSV line each was made from."""
import bz2
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_digits

from conftest import PROJECT_DIR, run_job
from tfospipe import csvparse, paths

pytestmark = pytest.mark.spark
VERSION = "lineage-v1"
RUN = "lin"
SCORE_ROWS = 40


def lineage(root, *argv, timeout=120):
    return subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "scripts", "lineage.py"), *map(str, argv),
                           "--root", str(root)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, build_dir):
    """A version with a labeled CSV (header, LF) and unlabeled score rows in a CR-only .bz2 file, run
    through all four jobs: infer scores the score split."""
    root = tmp_path_factory.mktemp("lineage")
    d = load_digits()
    raw = root / "raw" / VERSION
    (raw / "score").mkdir(parents=True)
    labeled = ["label," + ",".join(f"pixel{i}" for i in range(64))]
    labeled += [f"{t}," + ",".join(map(str, px)) for t, px in zip(d.target[:400], d.data[:400].astype(int))]
    (raw / "digits.csv").write_text("\n".join(labeled) + "\n")
    score = [",".join(map(str, px)) for px in d.data[400:400 + SCORE_ROWS].astype(int)]
    (raw / "score" / "old-mac.csv.bz2").write_bytes(bz2.compress(("\r".join(score) + "\r").encode()))
    common = {"data_root": str(root), "version": VERSION}
    for job, extra in (("convert", {"num_shards": 2}),
                       ("train", {"run_id": RUN, "epochs": 1, "batch_size": 16}),
                       ("validate", {"run_id": RUN, "min_accuracy": 0.0}),
                       ("infer", {})):
        run = run_job(job, dict(common, **extra), build_dir, timeout=300)
        assert run.returncode == 0, f"{job}:\n{run.output[-4000:]}"
    return root, labeled, score


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


def test_raw_lines_are_read_as_convert_numbers_them(tmp_path):
    """Line numbers count from the file's first line (a header or blank line included), in the
    decompressed text; the byte-order mark and the CR of CRLF are not part of the line."""
    import gzip
    import importlib.util

    spec = importlib.util.spec_from_file_location("lineage_script", os.path.join(PROJECT_DIR, "scripts", "lineage.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = "\ufefflabel,p0\r\n1,2\r\n\r\n3,4\r\n5,6"
    gz = tmp_path / "a.csv.gz"
    gz.write_bytes(gzip.compress(text.encode("utf-8")))
    assert [script.raw_line(str(gz), "a.csv.gz", n, b"\n") for n in (1, 2, 3, 4, 5)] == \
        ["label,p0", "1,2", "", "3,4", "5,6"]
    cr = tmp_path / "b.csv"
    cr.write_bytes(b"7,8\r9,10\r")
    assert script.raw_line(str(cr), "b.csv", 2, b"\r") == "9,10"
    with pytest.raises(script.LineageError, match="has 2 lines, not 3"):
        script.raw_line(str(cr), "b.csv", 3, b"\r")
