"""Data checks: a version's statistics (``_stats.json``, :mod:`datastats`) against the data's schema,
against an earlier version, against its own train split, and a serving model's accuracy on new data.

Pure: numpy and scipy on the JSON statistics, no Spark, no TensorFlow; the only I/O is the schema's
load and save through the storage layer (:func:`load_or_infer_schema`). Each check returns
:class:`Finding` objects (anomalies and passes alike); :func:`decide` turns them into a task's outcome
by ``data_checks`` mode (``fail``, ``warn``, ``off``) and :func:`record` into the JSON a task writes.

Every finding carries the measured value, the threshold and an uncertainty, so a figure never looks
surer than the sample allows (the project's rule for gates and drift checks):

* class fractions (``class_below_min_fraction``) and blank images (``blank_images``): the Wilson 95%
  score interval's half-width; a class is too rare only when the interval's upper bound is below the
  floor, blanks are too many only when its lower bound is above the ceiling.
* label distributions (``label_drift``, ``eval_skew`` on labels): L-infinity distance, TFDV's choice
  for categorical features; per class the two-sample noise ``z * sqrt(p (1-p) (1/n1 + 1/n2))`` (pooled
  ``p``), ``z`` two-sided at a 1% family-wise false alarm over the classes (Bonferroni); the class
  whose ``|diff| - noise`` is largest is reported, an anomaly when that excess is above the threshold.
* feature histograms (``feature_drift``, ``eval_skew`` and ``score_skew`` on pixels): Jensen-Shannon
  divergence in bits, TFDV's choice for numeric features, between the 10-bin histograms of a pixel.
  Under no drift ``8 N_h JS_nats`` is about chi-square with ``B_eff - 1`` degrees of freedom
  (``N_h = n1 n2 / (n1 + n2)``, ``B_eff`` the bins with pooled mass: JS is ``1/8`` of the Pearson
  chi-square of the 2 x B table to second order); the noise bound is the ``1 - 0.01/F`` quantile (F
  pixels, Bonferroni) divided by ``8 N_h ln 2``. The pixel with the largest ``JS - noise`` is reported
  as ``pixel (row, col)``; an anomaly when that excess is above the threshold. Histograms over other
  ranges (``value_max`` differs: other bin edges) cannot be compared bin by bin: that is one anomaly of
  the check's kind at ``all pixels``, value and threshold the two ``value_max``, fixed by converting
  both with the same ``pixel_max``. Other image shapes are an ``image_shape`` anomaly instead.
* ``class_missing``: a class of the schema's domain with no row in a labeled split of at least
  :data:`MIN_ROWS_FOR_MISSING` rows (fewer: reported, not an anomaly); value 0 (its fraction), the
  class floor as threshold, uncertainty the Wilson upper bound of the fraction (an absent class is an
  anomaly even where that bound is above the floor). ``single_class``: one class holds every row;
  value the number of classes present (1), threshold 2 (a floor), uncertainty 0. ``image_shape``
  (value and threshold: pixels per image; ``where`` names both shapes) and ``value_out_of_range`` (the
  split's largest or smallest pixel against the schema's ``value_range``) are exact: uncertainty 0.
* ``serving_collapse``: accuracy on the model's own eval split minus accuracy on the new eval split,
  with the one-sided 99% normal bound of the difference of two proportions as uncertainty; an anomaly
  when ``drop - uncertainty`` is above ``max_serving_drop``.

``duplicate_rows`` and ``train_eval_overlap`` (:func:`info_findings`) are information for the record
and the report, never anomalies.

Per-feature mean shifts are not gated: JS sees any change of shape that moves mass between bins; a
shift inside one bin (digits' 0-16 converted with ``pixel_max=255`` all fall in bin 0, 0-25) is
invisible to it, and the ``mean``/``std`` of ``_stats.json`` are left for the report.

Calibration (tests/unit/test_datachecks.py): 12 random re-splits of scikit-learn's digits (1,797 8x8
images, 0-16) into two versions of ~900 rows, each split train/eval by content hash (20%), with
``value_max`` 16 and 255. The defaults, the largest value seen over the clean re-splits (the excess
over noise that is compared), and the smallest injected change caught:

* ``max_label_drift`` 0.03: clean max -0.005; caught: one class cut by 90% (fraction 0.10 -> 0.01,
  L-inf ~0.09) in 5 of 5 draws, cut by 80% in 3 of 5.
* ``max_feature_drift`` 0.02 bits: clean max -0.0028 (value_max 16), 0 (255: every digit value in
  bin 0); caught: every non-zero pixel +2 (value_max 16); +1 is not; at 255 only changes that leave
  bin 0 (x2 and more).
* ``max_eval_skew`` 0.03: clean max -0.016 (labels), -0.0023 (pixels); caught: 60% of the eval rows'
  pixels +4 (50%: 4 of 5, 40%: 1 of 5).
* ``max_score_skew`` 0.02 bits: clean max -0.0022 (16), 0 (255); caught: pixels x0.9, x0.95, x1.05,
  x1.2 (value_max 16; x1.1 rounds and clips back into the same bins), x2 and x16 (255 and 16:
  0..255 against 0..16).
* ``max_serving_drop`` 0.05: not calibrated on the digits (a model's accuracies); 0.97 -> 0.60 on 360
  and 180 rows is caught, 0.97 -> 0.93 is not (drop 0.04 ±0.087).
* schema ``min_class_fraction`` 0.02 (a fifth of a uniform share): clean, the smallest class's Wilson
  upper bound is 0.096 (eval, ~170 rows); caught: a class absent, or its upper bound under 0.02.
* schema ``max_blank_fraction`` 0.01: clean, 0 blank rows; caught: 3% blank images (2%: 2 of 5); the
  Wilson lower bound passes 0.01 at 13 of 720 rows (1.8%) and 5 of 180 (2.8%).
* schema ``value_range`` [0, 16] (the first version's): clean max 16; caught: any pixel above 16. No
  tolerance: pixel values are integers and clean versions reach the same maximum (16 for the digits,
  255 for MNIST); a new scale on purpose is an edit of the schema.

(Clean max: the largest ``value - uncertainty`` over 12 re-splits x 2 versions, value_max 16 and 255;
"caught": 5 of 5 random draws of ~720 train / ~180 eval rows.) Re-run the figures with the calibration
test's helpers (``version``, ``two_versions``) when a default changes; the test asserts that the clean
re-splits raise nothing at both value_max.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
from . import fs, jobargs, runner, schema as tfschema
from .significance import WILSON_Z, wilson  # noqa: F401 (the one Wilson interval, 95% by default)

MODES = ("fail", "warn", "off")
#: The anomaly kinds users see (the first word of a finding's line).
KINDS = ("class_missing", "class_below_min_fraction", "single_class", "image_shape", "value_out_of_range",
         "blank_images", "label_drift", "feature_drift", "eval_skew", "score_skew", "serving_collapse")
#: Informational kinds (:func:`info_findings`): reported in the record and the report, never anomalies.
INFO_KINDS = ("duplicate_rows", "train_eval_overlap")
#: Kinds whose threshold is a floor (the value must reach it); every other kind's is a ceiling.
FLOOR_KINDS = ("class_below_min_fraction", "class_missing", "single_class")
#: Family-wise false-alarm rate of the drift and skew tests (Bonferroni over classes or pixels).
FALSE_ALARM = 0.01
#: A labeled split with fewer rows does not report a class absent as an anomaly (too few to expect all).
MIN_ROWS_FOR_MISSING = 50
#: Defaults of an inferred schema: a class floor of a fifth of a uniform share, a blank ceiling of 1%;
#: lower when the first version itself is below them (half its smallest class, twice its blanks).
DEFAULT_MIN_CLASS_FRACTION = 0.2 / tfschema.NUM_CLASSES
DEFAULT_MAX_BLANK_FRACTION = 0.01
SCHEMA_FORMAT = 1


def _default(name: str) -> float | None:
    """The default of the DAG param ``name`` (jobargs.DataCheckParams: the one place of the defaults)."""
    return next(f.default for f in dataclasses.fields(jobargs.DataCheckParams) if f.name == name)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The checks' thresholds; each one is a DAG param of the same name, whose default it has
    (jobargs.DataCheckParams). Fractions and JS in bits are compared with the measured value minus its
    noise bound (see the module docstring)."""
    min_class_fraction: float | None = _default("min_class_fraction")  # None: the schema's value
    max_blank_fraction: float | None = _default("max_blank_fraction")  # None: the schema's value
    max_label_drift: float = _default("max_label_drift")    # L-infinity of label fractions, beyond noise
    max_feature_drift: float = _default("max_feature_drift")  # JS divergence (bits) of a pixel's histogram
    max_eval_skew: float = _default("max_eval_skew")      # eval vs train: labels (L-inf) and pixels (JS bits)
    max_score_skew: float = _default("max_score_skew")     # score rows vs the model's training split (JS bits)
    max_serving_drop: float = _default("max_serving_drop")   # accuracy drop (fraction), beyond its uncertainty

    @classmethod
    def of(cls, params: jobargs.DataCheckParams) -> Thresholds:
        """The thresholds a job's params set (``jobargs.DataCheckParams``)."""
        return cls(**{f.name: getattr(params, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Finding:
    """One measured check. ``value``, ``threshold``, ``uncertainty`` in the kind's unit (fraction, bits
    or pixel value); ``param``: the DAG param, or ``schema.<field>``, that sets the threshold;
    ``anomaly``: whether it crosses the threshold (after the uncertainty, see the module docstring)."""
    kind: str
    split: str
    where: str
    value: float
    threshold: float
    uncertainty: float
    param: str
    reference: str | None
    anomaly: bool

    def __post_init__(self):  # numpy scalars in, plain JSON-able values out
        for name in ("value", "threshold", "uncertainty"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "anomaly", bool(self.anomaly))

    def override(self) -> str:
        """What changes the threshold: the schema field to edit or the DAG param to set."""
        if self.kind in INFO_KINDS:
            return "none (information only)"
        if self.param.startswith("schema."):
            return f"edit {self.param[len('schema.'):]} in schema.json"
        return f"set the DAG param {self.param}"

    def line(self) -> str:
        """``kind [split] where: value ±uncertainty, max|min threshold (vs reference); override: ...``"""
        bound = "min" if self.kind in FLOOR_KINDS else "max"
        ref = f" vs {self.reference}" if self.reference else ""
        return (f"{self.kind} [{self.split}] {self.where}: {self.value:.4g} ±{self.uncertainty:.2g}, "
                f"{bound} {self.threshold:.4g}{ref}; override: {self.override()}")

    def as_dict(self) -> dict:
        """The fields as plain JSON values, plus ``line``."""
        d = dataclasses.asdict(self)
        d["line"] = self.line()
        return d


_SCHEMA_HELP = {
    "label_domain": "the classes every labeled split (train, eval) must hold; a class missing is class_missing",
    "image_shape": "[height, width] of every image; another shape is image_shape",
    "value_range": "[smallest, largest] pixel value allowed anywhere (inferred from the first version); "
                   "a value outside is value_out_of_range: widen it when a new scale is intended",
    "min_class_fraction": "the smallest fraction of a labeled split a class may hold (anomaly when the Wilson "
                          "95% upper bound is below it); the DAG param min_class_fraction overrides it per run",
    "max_blank_fraction": "the largest fraction of all-zero images (anomaly when the Wilson 95% lower bound is "
                          "above it); the DAG param max_blank_fraction overrides it per run",
    "how to edit": "change a value and save: the next task reads it. Delete the file to infer it again from "
                   "the next converted version. Keys other than these fields, 'format' and 'help' are refused.",
}


@dataclasses.dataclass(frozen=True)
class Schema:
    """The data's contract, ``{root}/schema/schema.json``: inferred from the first version's
    statistics, then the user's to edit (:meth:`dumps` writes a ``help`` entry per field)."""
    label_domain: tuple[int, ...]
    image_shape: tuple[int, int]
    value_range: tuple[int, int]
    min_class_fraction: float
    max_blank_fraction: float

    @classmethod
    def infer(cls, stats: dict) -> "Schema":
        """From a version's ``_stats.json`` (its train and eval splits): classes ``0..NUM_CLASSES-1``, the
        image shape, the global smallest and largest pixel value, the default floors (lowered to half the
        smallest class fraction or raised to twice the blank fraction seen). ValueError on no labeled rows."""
        splits = [s for name, s in stats["splits"].items() if name in ("train", "eval") and s["rows"]]
        if not splits:
            raise ValueError("cannot infer a schema: the version has no labeled rows")
        rows = sum(s["rows"] for s in splits)
        counts = np.zeros(tfschema.NUM_CLASSES)
        for s in splits:
            for k, v in s["label_counts"].items():
                counts[int(k)] += v
        present = counts[counts > 0] / rows
        lo = min(min(v for v in s["features"]["min"] if v is not None) for s in splits)
        hi = max(max(v for v in s["features"]["max"] if v is not None) for s in splits)
        blank = sum(s["blank_rows"] for s in splits) / rows
        return cls(label_domain=tuple(range(tfschema.NUM_CLASSES)),
                   image_shape=(int(stats["image_shape"][0]), int(stats["image_shape"][1])),
                   value_range=(int(lo), int(hi)),
                   min_class_fraction=round(min(DEFAULT_MIN_CLASS_FRACTION, float(present.min()) / 2), 6),
                   max_blank_fraction=round(max(DEFAULT_MAX_BLANK_FRACTION, 2 * blank), 6))

    def dumps(self) -> bytes:
        """Indented UTF-8 JSON: ``format``, the fields, and ``help`` (what each field means, how to edit)."""
        body = {"format": SCHEMA_FORMAT, **{k: (list(v) if isinstance(v, tuple) else v)
                                            for k, v in dataclasses.asdict(self).items()}, "help": _SCHEMA_HELP}
        return (json.dumps(body, indent=2) + "\n").encode("utf-8")

    @classmethod
    def loads(cls, data: bytes, where: str) -> "Schema":
        """Parse :meth:`dumps`' JSON; ``where`` (the file) is named in every ValueError, with the field
        that is missing, unknown or out of its domain."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"schema {where}: not valid JSON ({e}); fix it or delete it to infer it again") from None
        if not isinstance(doc, dict):
            raise ValueError(f"schema {where}: a JSON object is expected")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(doc) - set(fields) - {"format", "help"})
        if unknown:
            raise ValueError(f"schema {where}: unknown field {unknown[0]!r} (fields: {', '.join(fields)})")
        missing = [f for f in fields if f not in doc]
        if missing:
            raise ValueError(f"schema {where}: field {missing[0]!r} is missing")
        return cls(**{f: _field(doc[f], f, where) for f in fields})


def _bad(name, where, what):
    return ValueError(f"schema {where}: field {name!r} must be {what}")


def _ints(value, name, where, n=None):
    if not isinstance(value, list) or (n is not None and len(value) != n) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _bad(name, where, f"a list of {n or 'one or more'} integers, not {value!r}")
    return tuple(value)


def _field(value, name, where):
    """One schema field checked and converted (ValueError naming the file and the field)."""
    if name == "label_domain":
        v = _ints(value, name, where)
        if len(set(v)) != len(v) or min(v) < 0 or max(v) >= tfschema.NUM_CLASSES:
            raise _bad(name, where, f"distinct classes in 0..{tfschema.NUM_CLASSES - 1}, not {value!r}")
        return v
    if name == "image_shape":
        v = _ints(value, name, where, 2)
        if min(v) < 1:
            raise _bad(name, where, f"[height, width], both at least 1, not {value!r}")
        return v
    if name == "value_range":
        v = _ints(value, name, where, 2)
        if v[0] < 0 or v[0] > v[1]:
            raise _bad(name, where, f"[smallest, largest] with 0 <= smallest <= largest, not {value!r}")
        return v
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise _bad(name, where, f"a fraction between 0 and 1, not {value!r}")
    return float(value)


def _write_new(path: str, data: bytes) -> bool:
    """Write ``data`` at ``path`` unless a file is there: create-only (``O_EXCL``) locally, an existence
    check then a PUT on other stores (the storage layer has no create-only write yet). False when a file
    was already there."""
    fs.makedirs(fs.parent(path))
    if not fs.scheme_of(path).remote:
        try:
            with open(fs._local(path), "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
    if fs.exists(path):
        return False
    fs.write_bytes(path, data)
    return True


def load_or_infer_schema(path: str, stats: dict) -> tuple[Schema, bool]:
    """The schema at ``path`` (:meth:`Schema.loads`), or one inferred from ``stats`` and written there
    when none is; ``(schema, inferred_now)``. Two tasks inferring at once: the first write wins and both
    use the file that is there."""
    if not fs.exists(path):
        inferred = Schema.infer(stats)
        if _write_new(path, inferred.dumps()):
            return inferred, True
    return Schema.loads(fs.read_bytes(path), path), False


def _label_findings(name: str, split: dict, schema: Schema, floor: float) -> list[Finding]:
    """class_missing, single_class and class_below_min_fraction of one labeled split."""
    n = split["rows"]
    counts = {int(k): int(v) for k, v in split["label_counts"].items()}
    out = []
    nonzero = [c for c, v in counts.items() if v]
    if n and len(nonzero) == 1:
        out.append(Finding("single_class", name, f"class {nonzero[0]} holds all {n} rows", 1.0, 2.0, 0.0,
                           "schema.label_domain", None, len(schema.label_domain) > 1))
    for c in schema.label_domain:
        k = counts.get(c, 0)
        low, high = wilson(k, n)
        if k == 0:
            out.append(Finding("class_missing", name, f"class {c} (0 of {n} rows)", 0.0, floor, high,
                               "schema.label_domain", None, n >= MIN_ROWS_FOR_MISSING))
        else:
            out.append(Finding("class_below_min_fraction", name, f"class {c}", k / n, floor,
                               (high - low) / 2, "min_class_fraction", None, high < floor))
    return out


def _range_findings(name: str, split: dict, schema: Schema) -> list[Finding]:
    """value_out_of_range: the split's largest pixel against the schema's largest (always reported), its
    smallest when below the schema's smallest."""
    feats = split["features"]
    lo = min((v for v in feats["min"] if v is not None), default=None)
    hi = max((v for v in feats["max"] if v is not None), default=None)
    out = []
    if hi is not None:
        out.append(Finding("value_out_of_range", name, "largest pixel", float(hi), float(schema.value_range[1]),
                           0.0, "schema.value_range", None, hi > schema.value_range[1]))
        if lo < schema.value_range[0]:
            out.append(Finding("value_out_of_range", name, "smallest pixel", float(lo),
                               float(schema.value_range[0]), 0.0, "schema.value_range", None, True))
    return out


def schema_findings(stats: dict, schema: Schema, t: Thresholds, splits=("train", "eval")) -> list[Finding]:
    """The version's ``splits`` (those present) against ``schema``: image_shape (once, first split),
    value_out_of_range and blank_images per split; class_missing, single_class and
    class_below_min_fraction per labeled split (``score`` has no labels). One finding per check made."""
    floor = schema.min_class_fraction if t.min_class_fraction is None else t.min_class_fraction
    ceiling = schema.max_blank_fraction if t.max_blank_fraction is None else t.max_blank_fraction
    present = [s for s in splits if s in stats["splits"]]
    out = []
    shape = tuple(stats["image_shape"])
    if present:
        h, w = schema.image_shape
        out.append(Finding("image_shape", present[0], f"image shape {shape[0]}x{shape[1]} (schema {h}x{w})",
                           float(shape[0] * shape[1]), float(h * w), 0.0, "schema.image_shape", None,
                           shape != tuple(schema.image_shape)))
    for name in present:
        split = stats["splits"][name]
        n = split["rows"]
        if name != "score" and n:
            out += _label_findings(name, split, schema, floor)
        out += _range_findings(name, split, schema)
        low, high = wilson(split["blank_rows"], n)
        if n:
            out.append(Finding("blank_images", name, "all pixels zero", split["blank_rows"] / n, ceiling,
                               (high - low) / 2, "max_blank_fraction", None, low > ceiling))
    return out


def info_findings(stats: dict, splits=("train", "eval", "score")) -> list[Finding]:
    """Information, never an anomaly (:data:`INFO_KINDS`): per split the fraction of ``duplicate_rows``
    (a row equal, label and pixels, to an earlier one), and ``train_eval_overlap``: the fraction of eval
    rows whose image is also in train (under any label). Uncertainty: the Wilson half-width; threshold 0."""
    out = []
    for name in (s for s in splits if s in stats["splits"] and stats["splits"][s]["rows"]):
        n, k = stats["splits"][name]["rows"], stats["splits"][name]["duplicate_rows"]
        low, high = wilson(k, n)
        out.append(Finding("duplicate_rows", name, f"{k} of {n} rows", k / n, 0.0, (high - low) / 2, "none",
                           None, False))
    if "eval" in stats["splits"] and "train" in stats["splits"] and stats["splits"]["eval"]["rows"]:
        n, k = stats["splits"]["eval"]["rows"], stats.get("train_eval_overlap", 0)
        low, high = wilson(k, n)
        out.append(Finding("train_eval_overlap", "eval", f"{k} of {n} eval images also in train", k / n, 0.0,
                           (high - low) / 2, "none", "train split of the same version", False))
    return out


def label_distance(a: dict, b: dict) -> tuple[int, float, float]:
    """L-infinity distance of two labeled splits' label distributions (``label_counts``, ``rows``):
    ``(class, |diff|, noise)`` of the class with the largest ``|diff| - noise`` (noise: the two-sample
    bound of the module docstring, 1% family-wise over the classes). ``(-1, 0, 0)`` when a split is empty."""
    n1, n2 = a["rows"], b["rows"]
    if not n1 or not n2:
        return -1, 0.0, 0.0
    k = tfschema.NUM_CLASSES
    c1 = np.array([a["label_counts"].get(str(c), 0) for c in range(k)], float)
    c2 = np.array([b["label_counts"].get(str(c), 0) for c in range(k)], float)
    diff = np.abs(c1 / n1 - c2 / n2)
    pooled = (c1 + c2) / (n1 + n2)
    from scipy import stats as sstats  # here: the executors import this module's importers, never these checks
    z = sstats.norm.ppf(1 - FALSE_ALARM / (2 * k))
    noise = z * np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    worst = int(np.argmax(np.where(pooled > 0, diff - noise, -np.inf)))  # a class in neither says nothing
    return worst, float(diff[worst]), float(noise[worst])


def js_bits(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (bits, 0..1) of each row pair of two count histograms ``[F, B]``."""
    p = h1 / np.maximum(h1.sum(axis=1, keepdims=True), 1)
    q = h2 / np.maximum(h2.sum(axis=1, keepdims=True), 1)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=1)
    return (kl_p + kl_q) / 2


def js_noise(h1: np.ndarray, h2: np.ndarray, n1: int, n2: int) -> np.ndarray:
    """Per feature, the JS (bits) that sampling alone exceeds with probability ``FALSE_ALARM / F``:
    ``chi2.ppf(1 - FALSE_ALARM/F, B_eff - 1) / (8 N_h ln 2)`` (0 where ``B_eff`` is 1)."""
    f = h1.shape[0]
    df = ((h1 + h2) > 0).sum(axis=1) - 1
    n_h = n1 * n2 / (n1 + n2)
    from scipy import stats as sstats
    q = np.where(df > 0, sstats.chi2.ppf(1 - FALSE_ALARM / f, np.maximum(df, 1)), 0.0)
    return q / (8 * n_h * math.log(2))


def feature_distance(stats: dict, a: dict, ref_stats: dict, b: dict) -> tuple[int, float, float]:
    """``(feature, JS bits, noise)`` of the pixel with the largest ``JS - noise`` between split ``a`` of
    ``stats`` and split ``b`` of ``ref_stats`` (same bins and shape: see :func:`_comparable`), among the
    pixels not constant in both; ``(0, 0, 0)`` when all are or a split is empty."""
    h1 = np.asarray(a["features"]["histogram"], float)
    h2 = np.asarray(b["features"]["histogram"], float)
    if not a["rows"] or not b["rows"]:
        return 0, 0.0, 0.0
    js = js_bits(h1, h2)
    noise = js_noise(h1, h2, a["rows"], b["rows"])
    varied = noise > 0  # a pixel constant in both (one bin) says nothing
    worst = int(np.argmax(np.where(varied, js - noise, -np.inf))) if varied.any() else 0
    return worst, float(js[worst]), float(noise[worst])


def _comparable(kind, split, stats, ref_stats, param, reference) -> Finding | None:
    """An anomaly when the two statistics cannot be compared pixel by pixel (other image shape, other
    histogram range); None when they can."""
    if list(stats["image_shape"]) != list(ref_stats["image_shape"]):
        (h, w), (rh, rw) = stats["image_shape"], ref_stats["image_shape"]
        return Finding("image_shape", split, f"image shape {h}x{w} (reference {rh}x{rw})", float(h * w),
                       float(rh * rw), 0.0, "schema.image_shape", reference, True)
    if list(stats["bin_edges"]) != list(ref_stats["bin_edges"]):
        return Finding(kind, split, f"all pixels: histogram range 0..{stats['value_max']} vs "
                       f"0..{ref_stats['value_max']} (convert both with the same pixel_max)",
                       float(stats["value_max"]), float(ref_stats["value_max"]), 0.0, param, reference, True)
    return None


def _pixel(stats: dict, j: int) -> str:
    return f"pixel ({j // stats['image_shape'][1]}, {j % stats['image_shape'][1]})"


def _feature_finding(kind, split, stats, a, ref_stats, b, param, threshold, reference) -> Finding:
    bad = _comparable(kind, split, stats, ref_stats, param, reference)
    if bad:
        return bad
    j, js, noise = feature_distance(stats, a, ref_stats, b)
    return Finding(kind, split, _pixel(stats, j), js, threshold, noise, param, reference, js - noise > threshold)


def _label_finding(kind, split, a, b, param, threshold, reference) -> Finding:
    c, d, noise = label_distance(a, b)
    where = f"label distribution (class {c})" if c >= 0 else "label distribution (a split has no rows)"
    return Finding(kind, split, where, d, threshold, noise, param, reference, d - noise > threshold)


def drift_findings(stats: dict, reference: dict, reference_name: str, t: Thresholds,
                   split: str = "train") -> list[Finding]:
    """``split`` of this version against the same split of ``reference`` (an earlier version's
    ``_stats.json``, e.g. the serving model's training data, named ``reference_name``): label_drift
    (L-infinity beyond noise, ``max_label_drift``) and feature_drift (worst pixel's JS beyond noise,
    ``max_feature_drift``). [] when either lacks the split."""
    if split not in stats["splits"] or split not in reference["splits"]:
        return []
    a, b = stats["splits"][split], reference["splits"][split]
    out = []
    if split != "score":
        out.append(_label_finding("label_drift", split, a, b, "max_label_drift", t.max_label_drift,
                                  reference_name))
    out.append(_feature_finding("feature_drift", split, stats, a, reference, b, "max_feature_drift",
                                t.max_feature_drift, reference_name))
    return out


def eval_skew_findings(stats: dict, t: Thresholds) -> list[Finding]:
    """The eval split against the train split of the same version: labels (L-infinity beyond noise) and
    pixels (worst JS beyond noise), both against ``max_eval_skew``. [] without both splits."""
    if "train" not in stats["splits"] or "eval" not in stats["splits"]:
        return []
    a, b = stats["splits"]["eval"], stats["splits"]["train"]
    ref = "train split of the same version"
    return [_label_finding("eval_skew", "eval", a, b, "max_eval_skew", t.max_eval_skew, ref),
            _feature_finding("eval_skew", "eval", stats, a, stats, b, "max_eval_skew", t.max_eval_skew, ref)]


def score_skew_findings(stats: dict, training: dict, training_name: str, t: Thresholds) -> list[Finding]:
    """The score split (unlabeled rows to predict) against the train split of ``training`` (the serving
    model's training version, named ``training_name``): pixels only, worst JS beyond noise against
    ``max_score_skew``. [] without both splits."""
    if "score" not in stats["splits"] or "train" not in training["splits"]:
        return []
    return [_feature_finding("score_skew", "score", stats, stats["splits"]["score"], training,
                             training["splits"]["train"], "max_score_skew", t.max_score_skew, training_name)]


def serving_collapse_finding(own_accuracy: float, own_rows: int, new_accuracy: float, new_rows: int,
                             serving_name: str, t: Thresholds) -> Finding:
    """The serving model's accuracy on its own eval split (``own_rows`` rows) minus on the new version's
    eval split; uncertainty: the one-sided ``1 - FALSE_ALARM`` normal bound of the difference of two
    proportions; an anomaly when ``drop - uncertainty > max_serving_drop``."""
    from scipy import stats as sstats
    z = sstats.norm.ppf(1 - FALSE_ALARM)
    var = (own_accuracy * (1 - own_accuracy) / max(own_rows, 1)
           + new_accuracy * (1 - new_accuracy) / max(new_rows, 1))
    drop, unc = own_accuracy - new_accuracy, z * math.sqrt(var)
    return Finding("serving_collapse", "eval", f"accuracy {new_accuracy:.4f} on {new_rows} rows "
                   f"(own eval {own_accuracy:.4f} on {own_rows})", drop, t.max_serving_drop, unc,
                   "max_serving_drop", serving_name, drop - unc > t.max_serving_drop)


def decide(findings: list[Finding], mode: str, task: str, report: str | None = None) -> list[str]:
    """Act on the anomalies by ``mode``. ``fail``: raise :class:`runner.DataRefused` (a JobError: exit
    status 3, no retry) with one message (the
    first anomaly's line, how many more and their kinds, the report, the overrides); ``warn``: return one
    line per anomaly to log as warnings; ``off``: []. No anomaly: [] whatever the mode. ValueError on an
    unknown mode. ``task`` is not repeated in the message: the runner prefixes ``ERROR [<task>]`` and
    the caller ``WARNING [<task>]``."""
    if mode not in MODES:
        raise ValueError(f"data_checks must be one of {', '.join(MODES)}, not {mode!r}")
    bad = [f for f in findings if f.anomaly]
    if mode == "off" or not bad:
        return []
    if mode == "warn":
        return [f"data check: {f.line()}" for f in bad]
    more = ""
    if len(bad) > 1:
        kinds = sorted({f.kind for f in bad[1:]})
        more = f"; {len(bad) - 1} more anomal{'y' if len(bad) == 2 else 'ies'} ({', '.join(kinds)})"
    where = f"; report: {report}" if report else ""
    # the first anomaly's line names what overrides its threshold; data_checks=warn overrides them all
    raise runner.DataRefused(f"data check failed: {bad[0].line()}{more}{where}; to go on anyway, set "
                             "data_checks=warn")


def record(findings: list[Finding], mode: str, task: str, references: dict,
           thresholds: Thresholds | None = None) -> dict:
    """The JSON a task writes (``data-checks/{version}/{task}.json``): ``task``, ``mode``, ``decision``
    (``off``, ``pass``, ``warn`` or ``fail``), ``anomalies`` (count), ``thresholds`` (the Thresholds
    when given, and each finding's param and threshold), ``references`` (as given), ``findings``."""
    anomalies = sum(f.anomaly for f in findings)
    decision = "off" if mode == "off" else ("pass" if not anomalies else mode)
    used = dataclasses.asdict(thresholds) if thresholds else {}
    used.update({f.param: float(f.threshold) for f in findings if not f.param.startswith("schema.")})
    return {"task": task, "mode": mode, "decision": decision, "anomalies": int(anomalies), "thresholds": used,
            "references": dict(references), "findings": [f.as_dict() for f in findings]}


def save_record(path: str, rec: dict) -> None:
    """Write a :func:`record` as JSON (atomic where the store allows)."""
    fs.makedirs(fs.parent(path))
    fs.write_json_atomic(path, rec)
