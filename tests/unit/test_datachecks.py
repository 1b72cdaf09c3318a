"""datachecks: clean re-splits of the digits raise nothing; each anomaly kind is caught; the schema file."""
import dataclasses
import json

import numpy as np
import pytest

from tfospipe import csvparse, datachecks as dc, datastats, runner

T = dc.Thresholds()


@pytest.fixture(scope="module")
def digits():
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    d = load_digits()
    return d.target.astype(np.int64), d.data.astype(np.int64)


def version(y, x, value_max, score=None, shape=(8, 8)):
    """A version's _stats.json: train/eval by the project's content hash (20% eval), optional score rows."""
    split = csvparse.splits_of_keys(csvparse.content_keys(y, x)[0], 0.2)
    splits = {"train": (y[split == "train"], x[split == "train"]), "eval": (y[split == "eval"], x[split == "eval"])}
    if score is not None:
        splits["score"] = (None, score)
    return datastats.of_arrays(splits, shape, value_max)


def two_versions(digits, seed, value_max):
    """Version A's statistics and version B's rows: a random halving of the digits (900 / 897 rows)."""
    y, x = digits
    perm = np.random.default_rng(seed).permutation(len(y))
    a, b = perm[:900], perm[900:]
    return version(y[a], x[a], value_max), (y[b], x[b]), a, b


def anomalies(findings):
    return [f for f in findings if f.anomaly]


def all_checks(stats, ref, schema):
    return (dc.schema_findings(stats, schema, T, ("train", "eval", "score")) + dc.drift_findings(stats, ref, "A", T)
            + dc.eval_skew_findings(stats, T) + dc.score_skew_findings(stats, ref, "A", T))


@pytest.mark.parametrize("value_max", [16, 255])
def test_clean_resplits_of_the_digits_raise_nothing(digits, value_max):
    for seed in range(12):
        a_stats, (yb, xb), _a, _b = two_versions(digits, seed, value_max)
        b_stats = version(yb, xb, value_max, score=xb)
        schema = dc.Schema.infer(a_stats)
        assert schema.value_range == (0, 16) and schema.min_class_fraction == 0.02
        findings = all_checks(b_stats, a_stats, schema) + dc.schema_findings(a_stats, schema, T)
        assert {f.kind for f in findings} >= {"class_below_min_fraction", "blank_images", "value_out_of_range",
                                              "image_shape", "label_drift", "feature_drift", "eval_skew",
                                              "score_skew"}
        assert anomalies(findings) == [], (seed, [f.line() for f in anomalies(findings)])
        assert dc.decide(findings, "fail", "train") == []


def test_a_constant_label_is_single_class_classes_missing_and_label_drift(digits):
    a_stats, (yb, xb), _a, _b = two_versions(digits, 0, 16)
    b_stats = version(np.full(len(yb), 3), xb, 16)
    found = anomalies(dc.schema_findings(b_stats, dc.Schema.infer(a_stats), T)
                      + dc.drift_findings(b_stats, a_stats, "dataset version A", T))
    kinds = {f.kind for f in found}
    assert kinds == {"single_class", "class_missing", "label_drift"}
    assert sum(f.kind == "class_missing" and f.split == "train" for f in found) == 9
    assert found[0].line() == ("single_class [train] class 3 holds all 728 rows: 1 ±0, min 2; override: edit "
                               "label_domain in schema.json")
    drift = next(f for f in found if f.kind == "label_drift")
    assert drift.line() == ("label_drift [train] label distribution (class 3): 0.8883 ±0.086, max 0.03 vs dataset "
                            "version A; override: set the DAG param max_label_drift")


def test_pixels_on_another_scale_are_score_skew_and_out_of_range(digits):
    a_stats, (yb, xb), _a, _b = two_versions(digits, 1, 255)
    b_stats = version(yb, xb, 255, score=np.minimum(xb * 16, 255))
    schema = dc.Schema.infer(a_stats)
    found = anomalies(dc.schema_findings(b_stats, schema, T, ("train", "eval", "score"))
                      + dc.score_skew_findings(b_stats, a_stats, "dataset version A (serving model's training "
                                               "data)", T))
    assert [f.kind for f in found] == ["value_out_of_range", "score_skew"]
    assert found[0].line() == ("value_out_of_range [score] largest pixel: 255 ±0, max 16; override: edit "
                               "value_range in schema.json")
    assert found[1].line().startswith("score_skew [score] pixel (")
    assert found[1].value > 0.5


def test_forty_percent_blank_images_and_no_class_7(digits):
    a_stats, (yb, xb), _a, _b = two_versions(digits, 2, 16)
    keep = yb != 7
    yb, xb = yb[keep], xb[keep].copy()
    xb[np.random.default_rng(0).random(len(xb)) < 0.4] = 0
    found = anomalies(dc.schema_findings(version(yb, xb, 16), dc.Schema.infer(a_stats), T))
    assert {(f.kind, f.split) for f in found} == {("class_missing", "train"), ("class_missing", "eval"),
                                                  ("blank_images", "train"), ("blank_images", "eval")}
    lines = [f.line() for f in found]
    assert ("class_missing [train] class 7 (0 of 683 rows): 0 ±0.0056, min 0.02; override: edit label_domain in "
            "schema.json") in lines
    blank = next(f for f in found if f.kind == "blank_images" and f.split == "train")
    assert 0.35 < blank.value < 0.45 and blank.threshold == 0.01


def test_ten_percent_blank_images(digits):
    a_stats, (yb, xb), _a, _b = two_versions(digits, 3, 16)
    xb = xb.copy()
    xb[np.random.default_rng(1).random(len(xb)) < 0.1] = 0
    found = anomalies(dc.schema_findings(version(yb, xb, 16), dc.Schema.infer(a_stats), T))
    assert {f.kind for f in found} == {"blank_images"}
    assert found[0].split == "train" and found[0].value - found[0].uncertainty > 0.01


def test_another_image_shape(digits):
    a_stats, (yb, xb), _a, _b = two_versions(digits, 4, 16)
    b_stats = version(yb, xb, 16, shape=(4, 16))
    found = anomalies(dc.schema_findings(b_stats, dc.Schema.infer(a_stats), T)
                      + dc.drift_findings(b_stats, a_stats, "A", T))
    assert [f.kind for f in found] == ["image_shape", "image_shape"]
    assert found[0].line() == ("image_shape [train] image shape 4x16 (schema 8x8): 64 ±0, max 64; override: edit "
                               "image_shape in schema.json")


def test_a_shifted_feature_distribution_is_feature_drift(digits):
    a_stats, (yb, xb), _a, _b = two_versions(digits, 5, 16)
    shifted = np.where(xb > 0, np.minimum(xb + 2, 16), 0)
    found = anomalies(dc.drift_findings(version(yb, shifted, 16), a_stats, "A", T))
    assert [f.kind for f in found] == ["feature_drift"]
    assert found[0].where.startswith("pixel (") and found[0].value - found[0].uncertainty > T.max_feature_drift


def test_histograms_over_other_ranges_are_not_compared(digits):
    a_stats, (yb, xb), _a, _b = two_versions(digits, 6, 16)
    found = dc.drift_findings(version(yb, xb, 255), a_stats, "A", T)
    assert found[1].anomaly and found[1].line() == (
        "feature_drift [train] all pixels: histogram range 0..255 vs 0..16 (convert both with the same pixel_max): "
        "255 ±0, max 16 vs A; override: set the DAG param max_feature_drift")


def test_an_eval_split_from_another_distribution_is_eval_skew(digits):
    y, x = digits
    rng = np.random.default_rng(7)
    ev = rng.random(len(y)) < 0.2
    other = np.where(x[ev] > 0, np.minimum(x[ev] + 4, 16), 0)
    stats = datastats.of_arrays({"train": (y[~ev], x[~ev]), "eval": (y[ev], other)}, (8, 8), 16)
    found = anomalies(dc.eval_skew_findings(stats, T))
    assert [f.kind for f in found] == ["eval_skew"] and found[0].where.startswith("pixel (")
    assert found[0].reference == "train split of the same version"


def test_serving_collapse():
    found = dc.serving_collapse_finding(0.97, 360, 0.60, 180, "model v1", T)
    assert found.anomaly and found.line() == (
        "serving_collapse [eval] accuracy 0.6000 on 180 rows (own eval 0.9700 on 360): 0.37 ±0.087, max 0.05 vs "
        "model v1; override: set the DAG param max_serving_drop")
    assert not dc.serving_collapse_finding(0.97, 360, 0.93, 180, "model v1", T).anomaly


def test_decide_and_record():
    bad = [dc.serving_collapse_finding(0.97, 360, 0.60, 180, "m", T),
           dc.Finding("blank_images", "eval", "all pixels zero", 0.4, 0.01, 0.05, "max_blank_fraction", None, True),
           dc.Finding("blank_images", "train", "all pixels zero", 0.0, 0.01, 0.0, "max_blank_fraction", None, False)]
    with pytest.raises(runner.JobError) as e:
        dc.decide(bad, "fail", "train", report="/r/data-checks/v/train.html")
    msg = str(e.value)
    assert msg == ("data check failed: " + bad[0].line() + "; 1 more anomaly (blank_images); report: "
                   "/r/data-checks/v/train.html; to go on anyway, set data_checks=warn")
    assert "override: set the DAG param max_serving_drop" in msg  # the first anomaly's own override
    assert dc.decide(bad, "warn", "train") == [f"data check: {bad[0].line()}", f"data check: {bad[1].line()}"]
    assert dc.decide(bad, "off", "train") == []
    assert dc.decide(bad[2:], "fail", "train") == []
    with pytest.raises(ValueError, match="data_checks"):
        dc.decide(bad, "loud", "train")
    rec = dc.record(bad, "warn", "train", {"serving": "m"}, T)
    assert rec["decision"] == "warn" and rec["anomalies"] == 2 and rec["thresholds"]["max_serving_drop"] == 0.05
    assert json.loads(json.dumps(rec))["findings"][1]["line"] == bad[1].line()
    assert dc.record(bad[2:], "fail", "train", {})["decision"] == "pass"


def test_schema_round_trip_edit_and_errors(digits, tmp_path):
    a_stats, (yb, xb), _a, _b = two_versions(digits, 8, 16)
    schema = dc.Schema.infer(a_stats)
    text = schema.dumps()
    assert dc.Schema.loads(text, "s.json") == schema and b'"help"' in text
    path = str(tmp_path / "schema" / "schema.json")
    assert dc.load_or_infer_schema(path, a_stats) == (schema, True)
    doc = json.loads(open(path).read())
    doc["value_range"] = [0, 8]
    open(path, "w").write(json.dumps(doc))
    edited, inferred = dc.load_or_infer_schema(path, a_stats)
    assert not inferred and edited == dataclasses.replace(schema, value_range=(0, 8))
    found = anomalies(dc.schema_findings(version(yb, xb, 16), edited, T))
    assert {f.kind for f in found} == {"value_out_of_range"}
    for change, field in [({"min_class_fraction": 1.5}, "min_class_fraction"), ({"image_shape": [8]}, "image_shape"),
                          ({"label_domain": [0, 0]}, "label_domain"), ({"value_rnage": [0, 1]}, "value_rnage")]:
        with pytest.raises(ValueError, match=f"schema s.json: .*field '{field}'"):
            dc.Schema.loads(json.dumps({**doc, **change}).encode(), "s.json")
    with pytest.raises(ValueError, match="schema s.json: field 'max_blank_fraction' is missing"):
        dc.Schema.loads(json.dumps({k: v for k, v in doc.items() if k != "max_blank_fraction"}).encode(), "s.json")
    with pytest.raises(ValueError, match="schema s.json: not valid JSON"):
        dc.Schema.loads(b"{", "s.json")


def test_thresholds_override_the_schema(digits):
    a_stats, (yb, xb), _a, _b = two_versions(digits, 9, 16)
    schema = dc.Schema.infer(a_stats)
    t = dataclasses.replace(T, min_class_fraction=0.2)
    found = anomalies(dc.schema_findings(version(yb, xb, 16), schema, t))
    assert found and {f.kind for f in found} == {"class_below_min_fraction"} and found[0].line().endswith(
        ", min 0.2; override: set the DAG param min_class_fraction")


def test_duplicates_and_overlap_are_information_only():
    x = np.array([[0, 1, 2, 3]] * 3 + [[4, 5, 6, 7]])
    stats = datastats.of_arrays({"train": (np.array([1, 1, 2, 3]), x), "eval": (np.array([5]), x[:1])}, (2, 2), 16)
    found = dc.info_findings(stats)
    assert [(f.kind, f.split, f.value, f.anomaly) for f in found] == [
        ("duplicate_rows", "train", 0.25, False), ("duplicate_rows", "eval", 0.0, False),
        ("train_eval_overlap", "eval", 1.0, False)]
    assert found[0].line() == ("duplicate_rows [train] 1 of 4 rows: 0.25 ±0.33, max 0; override: none "
                               "(information only)")
    assert dc.decide(found, "fail", "convert") == []


def test_a_schema_written_meanwhile_is_read_not_overwritten(digits, tmp_path):
    a_stats, _b, _a, _bi = two_versions(digits, 10, 16)
    path = str(tmp_path / "schema.json")
    theirs = dataclasses.replace(dc.Schema.infer(a_stats), value_range=(0, 20))
    open(path, "wb").write(theirs.dumps())
    assert not dc._write_new(path, b"{}")
    assert dc.load_or_infer_schema(path, a_stats) == (theirs, False)
