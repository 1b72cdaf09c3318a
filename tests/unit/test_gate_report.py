import types

import numpy as np

from tfospipe import metrics, report, validate


def summary(accuracy_pct, bad=0):
    acc = metrics.empty()
    labels = np.arange(100) % 10
    predicted = np.where(np.arange(100) < accuracy_pct, labels, (labels + 1) % 10)
    probs = np.eye(10)[predicted]
    metrics.update(acc, labels, probs)
    s = metrics.summarize(acc)
    s["bad_outputs"] = bad
    return s


ARGS = types.SimpleNamespace(min_accuracy=0.8, max_regression=0.02)


def test_first_model_is_judged_on_thresholds_alone():
    assert validate.gate(summary(85), None, ARGS) == (True, [])
    passed, reasons = validate.gate(summary(79), None, ARGS)
    assert not passed and reasons == ["accuracy 0.7900 < min_accuracy 0.8000"]


def test_candidate_may_not_trail_the_serving_model_by_more_than_the_tolerance():
    assert validate.gate(summary(88), summary(90), ARGS)[0]        # within 0.02
    passed, reasons = validate.gate(summary(87), summary(90), ARGS)
    assert not passed and "trails the serving model's 0.9000 by more than max_regression 0.0200" in reasons[0]


def test_bad_outputs_fail_the_gate():
    passed, reasons = validate.gate(summary(95, bad=3), None, ARGS)
    assert not passed and "3 outputs are not finite probabilities" in reasons[0]


def test_report_shows_both_models_and_the_png_is_an_image():
    results = {"candidate": summary(87), "champion": summary(90)}
    passed, reasons = validate.gate(results["candidate"], results["champion"], ARGS)
    rep = {"model_version": "v__r", "dataset_version": "v", "run_id": "r", "champion_note": "compared",
           "passed": passed, "failed_rules": reasons, "thresholds": vars(ARGS), "champion_model_version": "v__r0",
           "candidate": results["candidate"], "champion": results["champion"]}
    md = report.markdown(rep)
    assert "REJECTED" in md and "| accuracy | 0.8700 | 0.9000 |" in md and "serving model `v__r0`" in md
    assert "trails the serving model" in md
    png = report.confusion_png(results)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
