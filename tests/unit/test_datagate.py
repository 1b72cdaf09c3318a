"""datagate: the data checks each task runs on a data root, against which reference, and what it leaves
(the record and the report under data-checks/{version}/, the ERROR or WARNING lines, the schema file).
Versions are sklearn digits written as a converted version's _stats.json and commit marker."""
import json
import os

import numpy as np
import pytest

from tfospipe import datagate, datastats, jobargs, paths, runner

digits = pytest.importorskip("sklearn.datasets").load_digits()


def converted(root, version, labels, pixels, score=None):
    """A committed version (``_SUCCESS``) whose _stats.json holds these rows: train/eval by content hash."""
    from tfospipe import csvparse
    split = csvparse.splits_of(labels, pixels, 0.2)
    splits = {s: (labels[split == s], pixels[split == s]) for s in ("train", "eval")}
    if score is not None:
        splits["score"] = (None, score)
    layout = paths.Layout(str(root))
    os.makedirs(layout.tfrecords(version), exist_ok=True)
    with open(layout.stats(version), "w") as f:
        json.dump(datastats.of_arrays(splits, (8, 8), 255), f)
    open(os.path.join(layout.tfrecords(version), "_SUCCESS"), "w").close()
    return layout


def serve(layout, version, model_version="m1"):
    """A serving pointer to a model trained on ``version`` (what validate's promotion records)."""
    os.makedirs(layout.serving_model(model_version), exist_ok=True)
    with open(os.path.join(layout.serving_model(model_version), "_manifest.json"), "w") as f:
        json.dump({"dataset_version": version, "accuracy": 0.95, "examples": 360}, f)
    with open(layout.serving_pointer(), "w") as f:
        json.dump({"model_version": model_version}, f)


def params(job, root, version, **extra):
    argv = ["--data-root", str(root), "--version", version] + (["--run-id", "r1"] if job != "infer" else [])
    for k, v in extra.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    return jobargs.parse(job, argv)


def halves():
    rng = np.random.default_rng(7)
    order = rng.permutation(len(digits.target))
    a, b = order[:900], order[900:]
    x = digits.data.astype(np.int64)
    return (digits.target[a], x[a]), (digits.target[b], x[b])


def test_a_clean_first_version_passes_infers_the_schema_and_leaves_record_and_report(tmp_path):
    (ya, xa), _ = halves()
    layout = converted(tmp_path, "2026-11-01", ya, xa)
    record = datagate.check_training_data(params("train", tmp_path, "2026-11-01"))
    assert record["decision"] == "pass" and record["references"]["schema_inferred_now"] is True
    assert "serving" not in record["references"] and "previous" not in record["references"]
    schema = json.load(open(layout.schema()))
    assert schema["value_range"] == [0, 16] and schema["image_shape"] == [8, 8]
    saved = json.load(open(layout.data_checks("2026-11-01", "train")))
    assert saved["decision"] == "pass" and saved["report"] == layout.data_report("2026-11-01", "train")
    assert "<html" in open(layout.data_report("2026-11-01", "train")).read().lower()


def test_a_constant_label_version_is_refused_before_training_naming_the_anomaly(tmp_path, capsys):
    (ya, xa), (yb, xb) = halves()
    layout = converted(tmp_path, "2026-11-01", ya, xa)
    serve(layout, "2026-11-01")
    # a partitioned export read with the wrong hint: pixel 0 (always 0 in the digits) became the label
    converted(tmp_path, "2026-11-02", np.zeros(len(yb), np.int64), xb)
    with pytest.raises(runner.DataRefused) as e:
        datagate.check_training_data(params("train", tmp_path, "2026-11-02"))
    message = str(e.value)
    assert message.startswith("data check failed: ")
    assert "class_missing [train] class 1" in message or "single_class [train]" in message, message
    assert "report: " + layout.data_report("2026-11-02", "train") in message and "data_checks=warn" in message
    record = json.load(open(layout.data_checks("2026-11-02", "train")))
    kinds = {f["kind"] for f in record["findings"] if f["anomaly"]}
    assert {"single_class", "class_missing", "label_drift"} <= kinds, kinds
    assert record["references"]["serving"] == {"model_version": "m1", "dataset_version": "2026-11-01"}
    assert record["decision"] == "fail"
    # warn: the same anomalies as WARNING lines, and training goes on; off: nothing is checked or written
    capsys.readouterr()
    record = datagate.check_training_data(params("train", tmp_path, "2026-11-02", data_checks="warn"))
    err = capsys.readouterr().err
    assert record["decision"] == "warn" and err.count("WARNING [train] data check: ") == len(
        [f for f in record["findings"] if f["anomaly"]])
    os.remove(layout.data_checks("2026-11-02", "train"))
    assert datagate.check_training_data(params("train", tmp_path, "2026-11-02", data_checks="off")) is None
    assert not os.path.exists(layout.data_checks("2026-11-02", "train"))


def test_the_previous_version_by_data_date_is_the_drift_reference_of_a_backfill(tmp_path):
    (ya, xa), (yb, xb) = halves()
    for version in ("2026-11-01", "2026-11-03", "mnist-v2"):
        layout = converted(tmp_path, version, ya, xa)
    converted(tmp_path, "2026-11-02", yb, xb)
    assert datagate.previous_version(layout, "2026-11-02") == "2026-11-01"
    assert datagate.previous_version(layout, "2026-11-04") == "2026-11-03"
    assert datagate.previous_version(layout, "2026-10-31") is None and datagate.previous_version(layout, "x") is None
    record = datagate.check_training_data(params("train", tmp_path, "2026-11-02"))
    assert record["decision"] == "pass" and record["references"]["previous"] == {"dataset_version": "2026-11-01"}


def test_score_rows_on_another_scale_are_refused_before_scoring(tmp_path):
    (ya, xa), (yb, xb) = halves()
    layout = converted(tmp_path, "2026-11-01", ya, xa)
    serve(layout, "2026-11-01")
    converted(tmp_path, "2026-11-02", yb, xb, score=np.minimum(xb[:200] * 16, 255))
    with pytest.raises(runner.DataRefused, match=r"score_skew \[score\] pixel \("):
        datagate.check_score_rows(params("infer", tmp_path, "2026-11-02"), "m1", "score")
    assert json.load(open(layout.data_checks("2026-11-02", "infer")))["references"]["dataset_version"] == "2026-11-01"
    # rows from the same digits are not skewed; without score rows (infer scores eval) nothing is checked
    converted(tmp_path, "2026-11-03", yb, xb, score=xb[:200])
    assert datagate.check_score_rows(params("infer", tmp_path, "2026-11-03"), "m1", "score")["decision"] == "pass"
    assert datagate.check_score_rows(params("infer", tmp_path, "2026-11-03"), "m1", "eval") is None


def test_a_version_without_statistics_is_refused_with_what_to_do(tmp_path):
    layout = paths.Layout(str(tmp_path))
    os.makedirs(layout.tfrecords("2026-11-01"))
    open(os.path.join(layout.tfrecords("2026-11-01"), "_SUCCESS"), "w").close()
    with pytest.raises(runner.JobError, match="has no statistics .*Rerun the convert task .*data_checks=off"):
        datagate.check_training_data(params("train", tmp_path, "2026-11-01"))


def test_validate_refuses_a_single_class_training_split_and_measures_the_serving_collapse(tmp_path):
    (ya, xa), (yb, xb) = halves()
    layout = converted(tmp_path, "2026-11-01", ya, xa)
    serve(layout, "2026-11-01")
    converted(tmp_path, "2026-11-02", np.full(len(yb), 3), xb)
    with pytest.raises(runner.DataRefused, match="single_class|class_missing"):
        datagate.check_candidate(params("validate", tmp_path, "2026-11-02"))
    converted(tmp_path, "2026-11-03", yb, xb)
    assert datagate.check_candidate(params("validate", tmp_path, "2026-11-03"))["decision"] == "pass"
    p = params("validate", tmp_path, "2026-11-03")
    collapsed = datagate.check_serving_collapse(p, "m1", 0.40, 360)
    assert collapsed.kind == "serving_collapse" and collapsed.anomaly and collapsed.value == pytest.approx(0.55)
    assert not datagate.check_serving_collapse(p, "m1", 0.94, 360).anomaly
