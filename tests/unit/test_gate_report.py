import datetime

import numpy as np
import pytest

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


ARGS = validate.GateThresholds(min_accuracy=0.8, max_regression=0.02)


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


def test_promotion_rule_orders_models_by_data_date_and_says_which_rule_decided():
    rule = validate.promotion_rule
    assert rule("if_not_older", "2026-11-05", None, None)[0]                       # nothing serving
    allowed, why = rule("if_not_older", "2026-11-05", "2026-11-20__r__abc", "2026-11-20")
    assert not allowed and "data date 2026-11-05 is older than serving model 2026-11-20__r__abc's 2026-11-20" in why
    assert "promotion=auto" in why
    assert rule("if_not_older", "2026-11-20", "m", "2026-11-20")[0]                # same day: a rerun may replace it
    assert rule("if_not_older", "2026-11-21", "m", "2026-11-20")[0]
    allowed, why = rule("if_not_older", "2026-11-01", "m", None)                   # nothing to order by
    assert allowed and "no recorded data date" in why
    assert rule("auto", "2026-11-01", "m", "2026-11-20") == (True, "promotion=auto: every model that passes the gate "
                                                                  "is promoted")
    assert not rule("never", "2026-11-30", None, None)[0]
    with pytest.raises(ValueError, match="unknown promotion policy"):
        rule("sometimes", "2026-11-30", None, None)


def test_the_data_date_is_the_version_when_it_is_a_date_else_the_runs_logical_date():
    assert validate.data_date("2026-11-05", "2026-11-28") == "2026-11-05"     # a backfilled day
    assert validate.data_date("mnist-v2", "2026-11-28") == "2026-11-28"       # a named version: the run's date
    assert validate.data_date("2026-11-5", "2026-11-28") == "2026-11-28"      # not a date
    assert validate.data_date("2026-02-30", "2026-11-28") == "2026-11-28"
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert validate.data_date("mnist-v2") == today                              # run by hand, no date given


def test_a_report_says_when_the_promotion_policy_held_a_passed_model():
    results = {"candidate": summary(92), "champion": summary(90)}
    rep = {"model_version": "2026-11-05__r__a", "dataset_version": "2026-11-05", "run_id": "r",
           "champion_note": "compared", "passed": True, "failed_rules": [], "thresholds": vars(ARGS),
           "champion_model_version": "2026-11-20__r__b", "candidate": results["candidate"],
           "champion": results["champion"],
           "promotion": {"policy": "if_not_older", "decision": "held", "rule": "promotion=if_not_older: data date "
                         "2026-11-05 is older", "data_date": "2026-11-05", "serving_model": "2026-11-20__r__b",
                         "serving_data_date": "2026-11-20", "round": 2, "compared_with": [None, "2026-11-20__r__b"]}}
    md = report.markdown(rep)
    assert "PASSED — not promoted (promotion policy), serving unchanged" in md and "promoted to serving" not in md
    assert "Promotion policy `if_not_older`: **held back by the promotion policy** — promotion=if_not_older" in md
    assert "serving model `2026-11-20__r__b` (data date 2026-11-20); evaluation round 2, compared with: " \
           "nothing serving, `2026-11-20__r__b`." in md
    rep["promotion"] = dict(rep["promotion"], decision="promote")
    assert "PASSED — promoted to serving" in report.markdown(rep)
