"""The statistics of the validation gate: two models scored on the same records (a paired design).

Pure functions on counts: numpy and scipy (imported inside the functions, as datachecks does: the
executors import validate, never these), no Spark, no TensorFlow. The counts come from one evaluation
pass (``metrics.update_pairs``): of ``n`` records, ``b`` the first model (the candidate) gets right and
the second (the serving model) gets wrong, ``c`` the reverse; the records both get right or both get
wrong say nothing about which model is better.

* :func:`mcnemar_exact`: McNemar's exact test, the binomial test of ``b`` out of ``b + c`` at 1/2
  (``scipy.stats.binomtest``); its two-sided p-value equals statsmodels'
  ``mcnemar([[a, b], [c, d]], exact=True)`` (tests/unit/test_significance.py checks it).
* :func:`decidable`: whether ``b + c`` discordant pairs can reach ``p < alpha`` at all.
* :func:`wilson`: the Wilson score interval of a proportion (an accuracy, a class fraction).
* :func:`paired_difference_interval`: Newcombe's method 10 for the difference of two paired proportions.
* :func:`holm`: Holm's step-down adjustment of a family of p-values (the per-class tests).
* :func:`records_to_resolve`: how many paired records a test needs to resolve a given difference
  (Connor 1987).
* :func:`compare`: all of the above for a candidate and a serving model, as the JSON the gate, its
  report and the serving history keep.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

#: z of the Wilson intervals (95%, two-sided).
WILSON_Z = 1.96


@dataclasses.dataclass(frozen=True)
class McNemar:
    """Exact McNemar p-values of ``b`` against ``c`` discordant pairs (all 1.0 when ``b + c`` is 0)."""

    b: int
    c: int
    two_sided: float  # H1: the two models' accuracies differ
    b_greater: float  # one-sided, H1: the model right on the b records is the better one
    c_greater: float  # one-sided, H1: the model right on the c records is the better one


def mcnemar_exact(b: int, c: int) -> McNemar:
    """McNemar's exact test on the discordant pairs: ``b`` records only the first model gets right,
    ``c`` records only the second gets right (non-negative ints).

    Under H0 (equal accuracies) ``b`` is Binomial(``b + c``, 1/2); the p-values are
    ``scipy.stats.binomtest(b, b + c, 0.5, alternative=...)``: ``two-sided`` (for p = 1/2 the same as
    ``min(1, 2 * P(X <= min(b, c)))``, statsmodels' exact McNemar), ``greater`` for ``b_greater`` and
    ``less`` for ``c_greater``. Source: McNemar (1947), Psychometrika 12:153-157; the exact
    (conditional binomial) form, e.g. Fagerland, Lydersen and Laake (2013), BMC Med Res Methodol 13:91.
    Raises ValueError for a negative count.
    """
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, not b={b}, c={c}")
    n = b + c
    if n == 0:
        return McNemar(b, c, 1.0, 1.0, 1.0)
    from scipy.stats import binomtest
    return McNemar(b, c, float(binomtest(b, n, 0.5, alternative="two-sided").pvalue),
                   float(binomtest(b, n, 0.5, alternative="greater").pvalue),
                   float(binomtest(b, n, 0.5, alternative="less").pvalue))


def smallest_p(n: int) -> float:
    """The smallest one-sided exact McNemar p-value ``n`` discordant pairs can give (all on one side):
    ``binomtest(n, n, 0.5, 'greater').pvalue`` = ``0.5 ** n``; 1.0 for ``n`` = 0."""
    if n <= 0:
        return 1.0
    from scipy.stats import binomtest
    return float(binomtest(n, n, 0.5, alternative="greater").pvalue)


def decidable(n: int, alpha: float) -> bool:
    """Whether ``n`` discordant pairs can decide a one-sided test at ``alpha`` at all: even the most
    extreme split (all ``n`` on one side) gives ``p >= alpha`` when not (at alpha 0.05: ``n <= 4``)."""
    return smallest_p(n) < alpha


def wilson(k: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of the proportion ``k/n`` at normal quantile ``z`` (1.96:
    95%), clipped to [0, 1]; ``(0, 1)`` when ``n`` is 0. Source: Wilson (1927), JASA 22:209-212; the
    same as ``scipy.stats.binomtest(k, n).proportion_ci(level, method="wilson")`` at
    ``z = norm.ppf((1 + level) / 2)`` (tests/unit/test_significance.py)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference_interval(a: int, b: int, c: int, d: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Interval ``(low, high)`` of the difference of two paired proportions ``p1 - p2 = (b - c) / n``.

    The 2x2 table of ``n = a + b + c + d`` records: ``a`` both models right, ``b`` only the first,
    ``c`` only the second, ``d`` neither; ``p1 = (a + b) / n``, ``p2 = (a + c) / n``. Newcombe's method 10
    (Newcombe 1998, "Improved confidence intervals for the difference between binomial proportions based
    on paired data", Stat Med 17:2635-2650): with the :func:`wilson` intervals ``(l1, u1)``, ``(l2, u2)``
    of ``p1``, ``p2`` and Newcombe's corrected phi correlation of the table, ``A = ad - bc`` replaced by
    ``A - n/2`` when ``A > n/2``, by 0 when ``0 <= A <= n/2`` (phi 0 also when a margin is 0),
    ``phi = A / sqrt((a+b)(c+d)(a+c)(b+d))``:
    ``low = D - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)``,
    ``high = D + sqrt((p2 - l2)^2 - 2 phi (p2 - l2)(u1 - p1) + (u1 - p1)^2)``, clipped to [-1, 1]. The
    same as Fagerland, Lydersen and Laake's ``Newcombe_square_and_add_CI_paired_2x2`` (R package
    contingencytables; tests/unit/test_significance.py checks their published example).
    ``(-1, 1)`` when ``n`` is 0; raises ValueError for a negative count.
    """
    if min(a, b, c, d) < 0:
        raise ValueError(f"table counts must be >= 0, not {(a, b, c, d)}")
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    margins = float(a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    cross = cross - n / 2 if cross > n / 2 else 0.0 if cross >= 0 else cross
    phi = cross / math.sqrt(margins) if margins > 0 else 0.0
    diff = p1 - p2
    low = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = diff + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, low), min(1.0, high)


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: sort ascending, the i-th smallest
    (1-based) becomes ``max over j <= i of min(1, (m - j + 1) p_(j))`` for ``m`` p-values. Rejecting
    where the adjusted value is below ``alpha`` keeps the family-wise error at ``alpha``. Source: Holm
    (1979), Scand J Statist 6:65-70. ``pvalues``: sequence of floats in [0, 1] (empty: empty)."""
    p = np.asarray(pvalues, np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return [float(x) for x in adjusted]


def records_to_resolve(diff: float, discordant_rate: float, alpha: float, power: float = 0.8) -> int:
    """Paired records a one-sided exact-McNemar-like test at ``alpha`` needs to detect an accuracy
    difference ``diff`` (fraction, the difference of the two discordant proportions ``p10 - p01``) with
    probability ``power``, when a fraction ``discordant_rate`` (``p10 + p01``) of records is discordant.

    Connor (1987), "Sample size for testing differences in proportions for the paired-sample design",
    Biometrics 43:207-211: ``n = (z_a sqrt(psi) + z_b sqrt(psi - delta^2))^2 / delta^2`` with
    ``psi = discordant_rate``, ``delta = |diff|``, ``z_a = Phi^-1(1 - alpha)`` (one-sided, as the gate
    tests), ``z_b = Phi^-1(power)``; rounded up. Raises ValueError unless ``0 < |diff| <= discordant_rate
    <= 1`` (the discordant records must be able to hold the difference), ``0 < alpha < 1`` and
    ``0 < power < 1``.
    """
    delta = abs(diff)
    if not 0 < delta <= discordant_rate <= 1:
        raise ValueError(f"need 0 < |diff| <= discordant_rate <= 1, not diff={diff}, discordant_rate={discordant_rate}")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"need 0 < alpha < 1 and 0 < power < 1, not alpha={alpha}, power={power}")
    from scipy.stats import norm
    z_a, z_b = norm.ppf(1 - alpha), norm.ppf(power)
    n = (z_a * math.sqrt(discordant_rate) + z_b * math.sqrt(discordant_rate - delta ** 2)) ** 2 / delta ** 2
    return int(math.ceil(n - 1e-9))


def compare(correct1, correct2, records, only1, only2, alpha: float, z: float = WILSON_Z) -> dict:
    """The paired statistics of model 1 (the candidate) against model 2 (the serving model), JSON-able.

    Per class (true label; int arrays [C], the same records for both models): ``correct1``,
    ``correct2`` records each model gets right, ``records`` the class's records, ``only1``/``only2``
    the discordant pairs (only model 1 right / only model 2 right). Returns ``examples``, ``cand_only``
    (b), ``serving_only`` (c), ``p_two_sided``, ``p_serving_better`` (one-sided: model 2 better),
    ``p_candidate_better``, ``decidable`` (:func:`decidable` of ``b + c`` at ``alpha``),
    ``smallest_p``, ``accuracy_interval`` and ``serving_accuracy_interval`` (:func:`wilson` at ``z``),
    ``difference`` (accuracy 1 - accuracy 2) and ``difference_interval``
    (:func:`paired_difference_interval`), and ``per_class``: ``{"0": {records, cand_only, serving_only,
    recall, serving_recall, p_serving_better, p_holm, lost}}``, where ``p_holm`` is the one-sided
    "serving better" p-value Holm-adjusted over all C classes and ``lost`` means the class has records,
    model 1 gets none of them right and model 2 some. Raises ValueError when a count is inconsistent
    (more discordant or correct records than the class has).
    """
    correct1, correct2, records, only1, only2 = (np.asarray(x, np.int64) for x in (correct1, correct2, records,
                                                                                   only1, only2))
    if ((only1 > correct1) | (only2 > correct2) | (correct1 > records) | (correct2 > records)
            | (correct1 - only1 != correct2 - only2) | (only1 < 0) | (only2 < 0)).any():
        raise ValueError("inconsistent paired counts: a class's discordant or correct records do not fit its records")
    n, k1, k2 = int(records.sum()), int(correct1.sum()), int(correct2.sum())
    b, c = int(only1.sum()), int(only2.sum())
    both = k1 - b
    overall = mcnemar_exact(b, c)
    per = [mcnemar_exact(int(x), int(y)) for x, y in zip(only1, only2)]
    adjusted = holm([t.c_greater for t in per])
    per_class = {}
    for cls, (t, p_adj) in enumerate(zip(per, adjusted)):
        m = int(records[cls])
        per_class[str(cls)] = {
            "records": m, "cand_only": t.b, "serving_only": t.c,
            "recall": round(int(correct1[cls]) / m, 4) if m else 0.0,
            "serving_recall": round(int(correct2[cls]) / m, 4) if m else 0.0,
            "p_serving_better": t.c_greater, "p_holm": p_adj,
            "lost": bool(m and correct1[cls] == 0 and correct2[cls] > 0)}
    return {
        "examples": n, "cand_only": b, "serving_only": c,
        "p_two_sided": overall.two_sided, "p_serving_better": overall.c_greater,
        "p_candidate_better": overall.b_greater,
        "decidable": decidable(b + c, alpha), "smallest_p": smallest_p(b + c),
        "accuracy_interval": list(wilson(k1, n, z)), "serving_accuracy_interval": list(wilson(k2, n, z)),
        "difference": (b - c) / n if n else 0.0,
        "difference_interval": list(paired_difference_interval(both, b, c, n - both - b - c, z)),
        "per_class": per_class,
    }
