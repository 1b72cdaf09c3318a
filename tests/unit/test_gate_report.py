import dataclasses
import datetime

import numpy as np
import pytest

from tfospipe import jobargs, metrics, report, validate


def summary(accuracy_pct, bad=0):
    acc = metrics.empty()
    labels = np.arange(100) % 10
    predicted = np.where(np.arange(100) < accuracy_pct, labels, (labels + 1) % 10)
    probs = np.eye(10)[predicted]
    metrics.update(acc, labels, probs)
    s = metrics.summarize(acc)
    s["bad_outputs"] = bad
    return s


def pairs(cand_pct, serv_pct):
    """The paired counts of two summary() models on their same 100 records."""
    labels = np.arange(100) % 10
    probs = [np.eye(10)[np.where(np.arange(100) < pct, labels, (labels + 1) % 10)] for pct in (cand_pct, serv_pct)]
    return metrics.update_pairs(metrics.empty_pairs(), labels, *probs)


ARGS = validate.GateThresholds(min_accuracy=0.8, max_regression=0.02)


def test_first_model_is_judged_on_thresholds_alone():
    v = validate.gate(summary(85), None, ARGS)
    assert (v.passed, v.reasons, v.statistics) == (True, [], None)
    v = validate.gate(summary(79), None, ARGS)
    assert not v.passed and v.reasons == ["accuracy 0.7900 < min_accuracy 0.8000"]
    v = validate.gate(summary(79), None, dataclasses.replace(ARGS, gate="significance"))  # the same rule
    assert not v.passed and v.reasons == ["accuracy 0.7900 < min_accuracy 0.8000"]


def test_the_default_gate_is_threshold():
    assert ARGS.gate == "threshold" and jobargs.defaults("validate")["gate"] == "threshold"


def test_candidate_may_not_trail_the_serving_model_by_more_than_the_tolerance():
    v = validate.gate(summary(88), summary(90), ARGS, pairs(88, 90))        # within 0.02
    assert v.passed and v.decided_by == "threshold: within max_regression 0.02 of the serving model"
    v = validate.gate(summary(87), summary(90), ARGS, pairs(87, 90))
    assert not v.passed and "trails the serving model's 0.9000 by more than max_regression 0.0200" in v.reasons[0]
    # the statistics are computed in threshold mode too: 3 records only the serving model gets right
    assert (v.statistics["cand_only"], v.statistics["serving_only"]) == (0, 3) and not v.statistics["decidable"]


def test_bad_outputs_fail_the_gate():
    v = validate.gate(summary(95, bad=3), None, ARGS)
    assert not v.passed and "3 outputs are not finite probabilities" in v.reasons[0]


def test_report_shows_both_models_and_the_png_is_an_image():
    results = {"candidate": summary(87), "champion": summary(90)}
    v = validate.gate(results["candidate"], results["champion"], ARGS, pairs(87, 90))
    rep = {"model_version": "v__r", "dataset_version": "v", "run_id": "r", "champion_note": "compared",
           "passed": v.passed, "failed_rules": v.reasons, "thresholds": vars(ARGS), "champion_model_version": "v__r0",
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


def test_the_report_shows_the_paired_comparison_and_the_rule_that_decided():
    results = {"candidate": summary(87), "champion": summary(90)}
    t = dataclasses.replace(ARGS, gate="significance")
    v = validate.gate(results["candidate"], results["champion"], t, pairs(87, 90))
    assert v.passed and v.hold and v.warnings  # 3 discordant records cannot decide at 0.05: held
    rep = {"model_version": "v__r", "dataset_version": "v", "run_id": "r", "champion_note": "compared",
           "passed": v.passed, "failed_rules": v.reasons, "thresholds": dataclasses.asdict(t),
           "champion_model_version": "v__r0", "candidate": results["candidate"], "champion": results["champion"],
           "gate": {"mode": t.gate, "decided_by": v.decided_by, "warnings": v.warnings, "statistics": v.statistics},
           "promotion": {"policy": "if_not_older", "decision": "held", "rule": v.hold, "data_date": "2026-11-05",
                         "serving_model": "v__r0", "serving_data_date": None, "round": 1, "compared_with": ["v__r0"]}}
    md = report.markdown(rep)
    assert "PASSED — not promoted (too few discordant records to decide: undecided=hold)" in md
    assert "**held back by the gate (too few discordant records to decide)**" in md
    assert "Rules (gate `significance`, alpha 0.05)" in md and "Gate rule that decided: undecided: hold (b=0, c=3" in md
    assert "- too few discordant pairs to decide: candidate right alone on b=0" in md
    assert "| records only the candidate gets right (b) | 0 |" in md
    assert "| records only the serving model gets right (c) | 3 |" in md
    assert "| p, serving model better (one-sided exact McNemar) | 0.125 |" in md
    lo, hi = v.statistics["accuracy_interval"]
    assert f"| candidate accuracy, Wilson interval | [{lo:.4f}, {hi:.4f}] |" in md
    assert "| accuracy difference, Newcombe paired interval | -0.0300 [" in md
    # per class: classes 7, 8, 9 each have one record only the serving model gets right (Holm: 10 x 0.5 -> 1)
    assert "| 9 | 0.8000 | 0.8000 | 0.8000 | 10 | 0.9000 | 0 | 1 | 1 |  |" in md
