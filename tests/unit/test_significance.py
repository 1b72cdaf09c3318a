"""The gate's statistics (tfospipe.significance) and the significance gate's rules (validate.gate).

Constructed prediction pairs with known exact p-values, statsmodels' exact McNemar as a cross-check,
Wilson against scipy, Holm by hand, Connor's sample size, and the boundary of each rule.
"""
import math

import numpy as np
import pytest

from tfospipe import datachecks, jobargs, metrics, significance as sg, validate

N = 360  # the demo's eval records: 36 per class


def onehot(pred):
    return np.eye(10)[np.asarray(pred)]


def evaluate(labels, cand_pred, serv_pred):
    """(candidate summary, serving summary, paired counts) as validate's evaluation pass makes them."""
    a, s, p = metrics.empty(), metrics.empty(), metrics.empty_pairs()
    metrics.update(a, labels, onehot(cand_pred))
    metrics.update(s, labels, onehot(serv_pred))
    metrics.update_pairs(p, labels, onehot(cand_pred), onehot(serv_pred))
    return metrics.summarize(a), metrics.summarize(s), p


def wrong(labels):
    return (labels + 1) % 10


def construct(b, c, both_wrong=20, n=N):
    """Labels 0..9 cycling over ``n`` records; the serving model right except on ``both_wrong`` records and
    the ``b`` records only the candidate gets right; the candidate right except on ``both_wrong`` and the
    ``c`` records only the serving model gets right. Discordant records spread over the classes."""
    labels = np.arange(n) % 10
    cand, serv = labels.copy(), labels.copy()
    idx = np.arange(n)
    cand[idx < both_wrong] = wrong(labels)[idx < both_wrong]
    serv[idx < both_wrong] = wrong(labels)[idx < both_wrong]
    only_c = (idx >= both_wrong) & (idx < both_wrong + b)
    only_s = (idx >= both_wrong + b) & (idx < both_wrong + b + c)
    serv[only_c] = wrong(labels)[only_c]
    cand[only_s] = wrong(labels)[only_s]
    return evaluate(labels, cand, serv)


def sig(**kw):
    return validate.GateThresholds(**dict(dict(min_accuracy=0.8, max_regression=0.02, gate="significance"), **kw))


# --- McNemar ---------------------------------------------------------------------------------------

def test_known_exact_p_values():
    t = sg.mcnemar_exact(0, 6)
    assert t.two_sided == pytest.approx(2 * 0.5 ** 6) == pytest.approx(0.03125)
    assert t.c_greater == pytest.approx(0.5 ** 6) == pytest.approx(0.015625)
    assert t.b_greater == 1.0
    t = sg.mcnemar_exact(1, 9)  # P(X <= 1) for Binomial(10, 1/2) = 11/1024
    assert t.c_greater == pytest.approx(11 / 1024) and t.two_sided == pytest.approx(22 / 1024)
    assert t.b_greater == pytest.approx(1 - 1 / 1024)
    assert sg.mcnemar_exact(5, 5).two_sided == 1.0
    assert sg.mcnemar_exact(0, 0) == sg.McNemar(0, 0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="discordant counts"):
        sg.mcnemar_exact(-1, 3)


def test_two_sided_p_equals_statsmodels_exact_mcnemar_on_random_tables():
    from statsmodels.stats.contingency_tables import mcnemar
    rng = np.random.default_rng(28)
    for _ in range(300):
        a, b, c, d = (int(x) for x in rng.integers(0, [400, 40, 40, 60]))
        if b + c == 0:
            continue
        assert sg.mcnemar_exact(b, c).two_sided == pytest.approx(mcnemar([[a, b], [c, d]], exact=True).pvalue,
                                                                 rel=1e-9, abs=1e-15), (a, b, c, d)


def test_the_smallest_p_and_when_pairs_can_decide():
    assert sg.smallest_p(0) == 1.0 and sg.smallest_p(4) == 0.0625 and sg.smallest_p(5) == 0.03125
    assert not sg.decidable(4, 0.05) and sg.decidable(5, 0.05)
    assert not sg.decidable(0, 0.5) and sg.decidable(1, 0.5 + 1e-9) and not sg.decidable(6, 0.015625)


# --- intervals, Holm, sample size -----------------------------------------------------------------

@pytest.mark.parametrize("k, n", [(0, 10), (1, 10), (5, 10), (10, 10), (335, 360), (36, 36), (3, 1000)])
def test_wilson_matches_scipy(k, n):
    from scipy.stats import binomtest, norm
    z = norm.ppf(0.975)
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert sg.wilson(k, n, z) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert datachecks.wilson is sg.wilson  # one Wilson interval in the project


def test_wilson_known_value_and_no_records():
    low, high = sg.wilson(335, 360)  # accuracy 0.9306 on the demo's eval split: about -3.1/+2.2 points
    assert (round(low, 4), round(high, 4)) == (0.8995, 0.9525)
    low, high = sg.wilson(81, 263)   # Newcombe (1998), Stat Med 17:857-872, Table I: 0.2553 to 0.3662
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert sg.wilson(0, 0) == (0.0, 1.0)


def test_newcombe_paired_interval():
    # Cavo et al. (2012) as in Fagerland, Lydersen and Laake's R package contingencytables (chapter 8 tests):
    # [[59, 6], [16, 80]], estimate -0.0621, Newcombe square-and-add 95% CI -0.1186 to -0.0046
    low, high = sg.paired_difference_interval(59, 6, 16, 80)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    # identical predictions: a narrow interval around 0; a symmetric table: symmetric interval
    low, high = sg.paired_difference_interval(335, 0, 0, 25)
    assert low < 0 < high and low == pytest.approx(-high)
    low, high = sg.paired_difference_interval(300, 10, 10, 40)
    assert low == pytest.approx(-high) and 0.02 < high < 0.05
    assert sg.paired_difference_interval(0, 0, 0, 0) == (-1.0, 1.0)
    with pytest.raises(ValueError):
        sg.paired_difference_interval(1, -1, 0, 0)


def test_holm_by_hand():
    # p sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> max 0.06)
    assert sg.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert sg.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert sg.holm([0.3, 0.4]) == pytest.approx([0.6, 0.6])   # monotone: 0.4 x 1 < 0.3 x 2
    assert sg.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])   # capped at 1
    assert sg.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert sg.holm([]) == []
    # ten classes, one at 0.004: 10 x 0.004 = 0.04 < 0.05, at 0.006: 0.06
    assert sg.holm([0.004] + [1.0] * 9)[0] == pytest.approx(0.04)
    assert sg.holm([0.006] + [1.0] * 9)[0] == pytest.approx(0.06)


def test_records_to_resolve_connor():
    # Connor (1987): n = (z_a sqrt(psi) + z_b sqrt(psi - delta^2))^2 / delta^2, one-sided 5%, power 80%
    z_a, z_b = 1.6448536269514722, 0.8416212335729143
    want = math.ceil((z_a * math.sqrt(0.05) + z_b * math.sqrt(0.05 - 0.02 ** 2)) ** 2 / 0.02 ** 2)
    assert sg.records_to_resolve(0.02, 0.05, 0.05) == want == 771
    assert sg.records_to_resolve(-0.02, 0.05, 0.05) == 771
    assert sg.records_to_resolve(0.05, 0.05, 0.05) == 122
    assert sg.records_to_resolve(0.02, 0.05, 0.01) > 771 and sg.records_to_resolve(0.02, 0.05, 0.05, 0.9) > 771
    for bad in [(0, 0.05, 0.05), (0.06, 0.05, 0.05), (0.02, 1.5, 0.05), (0.02, 0.05, 0), (0.02, 0.05, 0.05, 1)]:
        with pytest.raises(ValueError):
            sg.records_to_resolve(*bad)


def test_compare_counts_and_intervals():
    cand, serv, pairs = construct(b=3, c=9)
    stats = validate.paired_statistics(cand, serv, pairs, 0.05)
    assert (stats["cand_only"], stats["serving_only"], stats["examples"]) == (3, 9, N)
    assert stats["p_serving_better"] == pytest.approx(sg.mcnemar_exact(3, 9).c_greater)
    assert stats["difference"] == pytest.approx(cand["accuracy"] - serv["accuracy"]) == pytest.approx(-6 / N)
    low, high = stats["difference_interval"]
    assert low < stats["difference"] < high
    assert stats["accuracy_interval"] == pytest.approx(list(sg.wilson(N - 20 - 9, N)))
    assert sum(m["cand_only"] for m in stats["per_class"].values()) == 3
    assert sum(m["records"] for m in stats["per_class"].values()) == N
    with pytest.raises(ValueError, match="paired counts"):
        validate.paired_statistics(cand, serv, dict(pairs, records=pairs["records"] + 1), 0.05)


# --- the significance gate -------------------------------------------------------------------------

def test_significantly_worse_is_refused_and_the_reason_names_the_figures():
    cand, serv, pairs = construct(b=0, c=6)  # one-sided p = 0.015625 < 0.05
    v = validate.gate(cand, serv, sig(), pairs)
    assert not v.passed and len(v.reasons) == 1
    assert "trails the serving model's" in v.reasons[0] and "p=0.0156 < alpha 0.05" in v.reasons[0]
    assert "gate=threshold" in v.reasons[0] and v.decided_by == "significance: significantly worse (p=0.0156)"
    # the same pair under threshold: 6/360 = 1.7 points behind, within max_regression 0.02
    v = validate.gate(cand, serv, sig(gate="threshold"), pairs)
    assert v.passed and v.decided_by.startswith("threshold") and v.statistics["serving_only"] == 6


def test_the_boundary_of_alpha():
    cand, serv, pairs = construct(b=0, c=6)  # p = 0.015625 exactly
    assert validate.gate(cand, serv, sig(alpha=0.015625), pairs).passed            # p < alpha is needed
    assert not validate.gate(cand, serv, sig(alpha=0.0156251), pairs).passed
    cand, serv, pairs = construct(b=1, c=9)  # p = 11/1024 = 0.01074
    assert validate.gate(cand, serv, sig(alpha=11 / 1024), pairs).passed
    assert not validate.gate(cand, serv, sig(alpha=11 / 1024 + 1e-9), pairs).passed


def test_a_two_point_drop_within_chance_passes_significance_and_fails_threshold():
    cand, serv, pairs = construct(b=10, c=18)  # 8/360 = 2.2 points behind; p = 0.093
    v = validate.gate(cand, serv, sig(), pairs)
    assert v.passed and v.decided_by.startswith("significance: not significantly worse (p=0.0")
    assert not validate.gate(cand, serv, sig(gate="threshold"), pairs).passed


def test_a_clearly_better_candidate_passes_both_and_require_improvement():
    cand, serv, pairs = construct(b=15, c=2)
    for t in (sig(), sig(gate="threshold"), sig(require_improvement=True)):
        assert validate.gate(cand, serv, t, pairs).passed, t
    v = validate.gate(cand, serv, sig(require_improvement=True), pairs)
    assert v.decided_by.startswith("significance: significantly better (p=")


def test_require_improvement_refuses_a_candidate_that_is_not_significantly_better():
    cand, serv, pairs = construct(b=9, c=2)  # p(candidate better) = P(X >= 9 | 11, 1/2) = 67/2048 = 0.0327
    assert validate.gate(cand, serv, sig(require_improvement=True), pairs).passed
    assert validate.gate(cand, serv, sig(require_improvement=True, alpha=67 / 2048 + 1e-9), pairs).passed
    v = validate.gate(cand, serv, sig(require_improvement=True, alpha=67 / 2048), pairs)
    assert not v.passed and "not significantly better" in v.reasons[0]
    assert "p=0.0327 >= alpha 0.0327" in v.reasons[0] and "require_improvement=false" in v.reasons[0]
    assert v.decided_by == "significance: not significantly better (p=0.0327, require_improvement)"
    assert validate.gate(cand, serv, sig(alpha=0.02), pairs).passed  # without it: not worse is enough


def test_a_lost_class_is_refused_even_when_overall_accuracy_rises():
    labels = np.arange(N) % 10
    serv = np.where(np.arange(N) < 60, wrong(labels), labels)      # 300/360 right, class 3 mostly right
    cand = labels.copy()
    cand[labels == 3] = 5                                           # class 3 never predicted
    cand_s, serv_s, pairs = evaluate(labels, cand, serv)
    assert cand_s["accuracy"] > serv_s["accuracy"]
    v = validate.gate(cand_s, serv_s, sig(), pairs)
    assert not v.passed and any(r.startswith("class 3 lost: candidate recall 0.0000 on its 36 eval records")
                                for r in v.reasons)
    assert "significance: class 3 lost" in v.decided_by
    assert v.statistics["per_class"]["3"]["lost"]
    assert validate.gate(cand_s, serv_s, sig(gate="threshold"), pairs).passed  # threshold decides as before


def test_a_class_lost_by_both_is_no_lost_class():
    labels = np.arange(N) % 10
    serv = np.where(labels == 3, 5, labels)
    cand_s, serv_s, pairs = evaluate(labels, serv.copy(), serv)
    assert not validate.paired_statistics(cand_s, serv_s, pairs, 0.05)["per_class"]["3"]["lost"]


def test_a_class_whose_recall_drops_significantly_is_refused_after_holm():
    labels = np.arange(N) % 10
    serv = labels.copy()
    cand = labels.copy()
    idx7 = np.flatnonzero(labels == 7)
    cand[idx7[:9]] = 1            # class 7: 9 records only the serving model gets right: p = 0.5^9
    better = np.flatnonzero(labels != 7)[:40]
    serv[better] = wrong(labels)[better]  # overall the candidate is better (40 vs 9)
    cand_s, serv_s, pairs = evaluate(labels, cand, serv)
    v = validate.gate(cand_s, serv_s, sig(), pairs)
    m = v.statistics["per_class"]["7"]
    assert m["p_serving_better"] == pytest.approx(0.5 ** 9) and m["p_holm"] == pytest.approx(10 * 0.5 ** 9)
    assert not v.passed and "class 7 recall 0.7500 is significantly below the serving model's 1.0000" in v.reasons[0]
    assert "Holm-adjusted over 10 classes p=0.0195 < alpha 0.05" in v.reasons[0]
    # Holm's boundary: 10 x 0.5^9 = 0.0195 passes at alpha 0.0195, a raw p of 0.002 alone would not
    assert validate.gate(cand_s, serv_s, sig(alpha=10 * 0.5 ** 9), pairs).passed


@pytest.mark.parametrize("b, c", [(0, 0), (2, 2), (0, 4), (4, 0)])
def test_too_few_discordant_pairs_hold_by_default(b, c, capsys):
    cand, serv, pairs = construct(b=b, c=c)
    v = validate.gate(cand, serv, sig(), pairs)
    assert v.passed and v.hold and v.hold.startswith(f"undecided: hold (b={b}, c={c} discordant pairs")
    assert v.decided_by == v.hold and not v.statistics["decidable"]
    (line,) = v.warnings
    assert line.startswith(f"too few discordant pairs to decide: candidate right alone on b={b}, the serving "
                           f"model on c={c} of 360 eval records")
    assert "alpha 0.05" in line and "about 308 eval records" in line and "applying undecided=hold" in line


def test_too_few_discordant_pairs_promote_when_configured():
    cand, serv, pairs = construct(b=0, c=4)
    v = validate.gate(cand, serv, sig(undecided="promote"), pairs)
    assert v.passed and v.hold is None and v.decided_by.startswith("undecided: promote (b=0, c=4")
    assert "applying undecided=promote" in v.warnings[0]
    # the other rules still apply: below min_accuracy is refused, undecided or not
    v = validate.gate(cand, serv, sig(undecided="promote", min_accuracy=0.99), pairs)
    assert not v.passed and v.hold is None and v.decided_by == "min_accuracy 0.99"
    # five pairs can decide at 0.05: no longer undecided
    cand, serv, pairs = construct(b=0, c=5)
    v = validate.gate(cand, serv, sig(), pairs)
    assert not v.passed and not v.warnings and v.hold is None


def test_threshold_mode_never_holds_or_warns():
    cand, serv, pairs = construct(b=0, c=0)
    v = validate.gate(cand, serv, sig(gate="threshold"), pairs)
    assert v.passed and v.hold is None and v.warnings == [] and v.statistics["decidable"] is False


def test_no_serving_model_means_min_accuracy_alone():
    cand, _serv, _pairs = construct(b=0, c=0)
    v = validate.gate(cand, None, sig())
    assert v.passed and v.statistics is None and "min_accuracy 0.8 alone" in v.decided_by
    with pytest.raises(ValueError, match="paired counts"):
        validate.gate(cand, cand, sig())
    with pytest.raises(ValueError, match="unknown gate"):
        validate.gate(cand, None, sig(gate="vote"))


def test_thresholds_from_params():
    base = ["--data-root", "/tmp/x", "--version", "v", "--run-id", "r"]
    t = validate.GateThresholds.of(jobargs.parse("validate", base))
    assert (t.gate, t.alpha, t.require_improvement, t.undecided) == ("threshold", 0.05, False, "hold")
    t = validate.GateThresholds.of(jobargs.parse("validate", base + [
        "--gate", "significance", "--alpha", "0.01", "--require-improvement", "true", "--undecided", "promote"]))
    assert (t.gate, t.alpha, t.require_improvement, t.undecided) == ("significance", 0.01, True, "promote")


@pytest.mark.parametrize("flag, value", [("--alpha", "0"), ("--alpha", "0.6"), ("--gate", "Significance"),
                                         ("--require-improvement", "yes"), ("--undecided", "fail")])
def test_refused_gate_flags(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        jobargs.parse("validate", ["--data-root", "/tmp/x", "--version", "v", "--run-id", "r", flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err


# --- the evaluation pass, without Spark --------------------------------------------------------------

class _RDD:
    """parallelize(files, n).mapPartitions(f).reduce(g) as Spark runs it, one file per partition."""

    def __init__(self, parts):
        self.parts = parts

    def mapPartitions(self, f):
        return _RDD([list(f(iter(p))) for p in self.parts])

    def reduce(self, g):
        items = [x for p in self.parts for x in p]
        out = items[0]
        for x in items[1:]:
            out = g(out, x)
        return out


class _SC:
    def parallelize(self, files, n):
        return _RDD([[f] for f in files] + [[] for _ in range(n - len(files))])


def test_the_evaluation_pass_counts_the_discordant_pairs_of_both_models(monkeypatch):
    """validate._evaluate over two shards and an empty partition: the merged paired counts match the
    predictions, and the gate reads them (the Spark tests run the same code on executors)."""
    from tfospipe import predict
    labels = np.arange(N) % 10
    cand = labels.copy()
    cand[:7] = wrong(labels[:7])                       # 7 records only the serving model gets right
    serv = labels.copy()
    serv[100:103] = wrong(labels[100:103])             # 3 only the candidate gets right
    preds = {"cand": cand, "serving": serv}

    def loaded_model(path, shape):
        return lambda rows: (onehot(preds[path][rows]), None)

    def batches(files, shape, size):
        for f in files:
            rows = np.arange(N)[:N // 2] if f == "a" else np.arange(N)[N // 2:]
            yield rows, labels[rows], None

    class Layout:
        def serving_model(self, mv):
            return "serving"

    monkeypatch.setattr(predict, "loaded_model", loaded_model)
    monkeypatch.setattr(predict, "batches", batches)
    results, pairs, note, _pythons = validate._evaluate(_SC(), Layout(), "cand", (8, 8), ["a", "b"],
                                                        {"model_version": "m0"})
    assert "compared with serving model m0" in note and results["champion"]["examples"] == N
    assert sum(pairs["cand_only"]) == 3 and sum(pairs["serving_only"]) == 7 and sum(pairs["records"]) == N
    v = validate.gate(results["candidate"], results["champion"], sig(), pairs)
    assert v.passed and v.statistics["p_serving_better"] == pytest.approx(sg.mcnemar_exact(3, 7).c_greater)
    results, pairs, note, _pythons = validate._evaluate(_SC(), Layout(), "cand", (8, 8), ["a", "b"], None)
    assert pairs is None and "champion" not in results and validate.gate(results["candidate"], None, sig()).passed
