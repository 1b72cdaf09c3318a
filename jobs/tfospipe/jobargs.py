"""The params of the four jobs, in one place: one frozen dataclass per job.

Each job's params are a frozen, typed dataclass (:data:`PARAMS`: :class:`ConvertParams`,
:class:`TrainParams`, :class:`ValidateParams`, :class:`InferParams`) whose fields are declared once
with :func:`param`: name, type, default, JSON-schema rule and help. Everything else comes from it: the
job's argparse parser (:func:`parser`; :func:`parse` returns the job's params object, which
``runner.main`` hands to the job's ``run``), the DAG's params with their defaults and schemas
(:func:`dag_params`), the argv the operator and the command-line builder pass (:func:`to_argv`), and
what each job's manifest records (``dataclasses.asdict(params)``). A params object holds plain values
only, so it pickles to the executors whole. No Spark or TensorFlow import here: the DAG processor
loads this module.

One rule per value: a field that is also a DAG param has a JSON schema, and that schema is both the
param's schema (which Airflow checks with jsonschema when a run is triggered from the UI, the REST
API, the CLI or a backfill) and the job's check of the flag (:func:`schema_type` validates the
flag's text with the same jsonschema validator). The DAG renders a param into the command line as
``str(value)`` (``{{ params.x }}``), so the job reads a number flag as the JSON number it came from:
an integer flag takes ``2``, and also ``2.0`` or ``1e1`` (JSON schema counts a whole-number float as
an integer) as 2 and 10, and refuses ``2.5``; NaN and infinities are refused everywhere.
"""

import argparse
import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from . import fs, paths, schema

#: How all-reduce training sends gradients: "none" (float32) or "fp16" (model.HalfPrecisionAllReduceAdam).
GRADIENT_COMPRESSIONS = ("none", "fp16")

#: The train job's default seed (``--seed``), and the largest seed: a seed plus a worker index or an input
#: pipeline's index stays below 2**31 (TensorFlow's seeds are int64, NumPy's and Python's any size).
DEFAULT_SEED = 20261207
MAX_SEED = 2**31 - 1 - 65536
#: The train job's ``--deterministic`` setting: on (op determinism, the default) or off.
DETERMINISTIC = ("on", "off")

#: When validate may move serving to a model that passed the gate (validate.promotion_rule):
#: "if_not_older" only when its data date is not older than the serving model's (a backfill of old
#: versions judges its models but leaves a newer one serving), "auto" always, "never" not at all.
PROMOTION_POLICIES = ("if_not_older", "auto", "never")

#: How validate's gate compares a candidate with the serving model (validate.gate): "threshold" (its
#: accuracy may trail by at most max_regression) or "significance" (exact McNemar and per-class tests
#: on the paired predictions at alpha).
GATE_MODES = ("threshold", "significance")
#: What the significance gate does when too few discordant pairs can decide at alpha: hold (not
#: promoted, the task succeeds) or promote (the overall rules count as passed).
UNDECIDED_FALLBACKS = ("hold", "promote")

#: The date a run's data stands for (validate --data-date): empty, or YYYY-MM-DD.
DATA_DATE = {"type": "string", "pattern": "^(|[0-9]{4}-[0-9]{2}-[0-9]{2})$(?!\\n)"}

#: JSON schema's number type admits NaN (every comparison with it is false, so minimum and maximum
#: pass it, and Python's json reads ``NaN``); this subschema matches NaN and no other number, so
#: number rules carry ``"not": NOT_NAN``.
NOT_NAN = {"description": "NaN (not a number)", "type": "number", "minimum": 1, "maximum": 0}


# The bounds of a number rule sit in an ``allOf`` subschema, not at its top level: Airflow's trigger form
# gives a number field the schema's top-level ``minimum``/``maximum``, and that field clamps a value outside
# them to the bound when it loses focus, so 5000 epochs would become 1000 without a word. Under ``allOf``
# the field takes any number, and the API server refuses one out of range (jsonschema reads the subschema
# as it reads the top level); :func:`bounds` reads them back.

def integer(minimum: int, maximum: int | None = None) -> dict:
    """JSON schema of a whole number in [minimum, maximum] (no upper bound when ``maximum`` is None)."""
    limits = {"minimum": minimum} if maximum is None else {"minimum": minimum, "maximum": maximum}
    return {"type": "integer", "allOf": [limits]}


def number(minimum: float | None = None, maximum: float | None = None, above: float | None = None) -> dict:
    """JSON schema of a finite number in [minimum, maximum], and > ``above`` when given; never NaN."""
    limits = {}
    if minimum is not None:
        limits["minimum"] = minimum
    if above is not None:
        limits["exclusiveMinimum"] = above
    if maximum is not None:
        limits["maximum"] = maximum
    rule = {"type": "number"}
    if limits:
        rule["allOf"] = [limits]
    rule["not"] = NOT_NAN
    return rule


def bounds(rule: dict) -> dict:
    """The ``minimum``, ``exclusiveMinimum`` and ``maximum`` of a number rule, wherever they sit (the top
    level or its ``allOf`` subschemas), as a dict holding the ones it has."""
    found = {k: rule[k] for k in ("minimum", "exclusiveMinimum", "maximum") if k in rule}
    for sub in rule.get("allOf", []):
        found.update({k: sub[k] for k in ("minimum", "exclusiveMinimum", "maximum") if k in sub})
    return found


def optional(rule: dict) -> dict:
    """``rule``, or null: a param the user may leave empty (the job then takes the value from elsewhere,
    e.g. the data's schema). The DAG renders a null param as ``None``; the job reads ``None``, ``null``
    and an empty flag as None."""
    return dict(rule, type=[rule["type"], "null"])


def one_of(*choices: str) -> dict:
    """JSON schema of one of ``choices`` (exact, case-sensitive strings)."""
    return {"type": "string", "enum": list(choices)}


def expected(rule: dict) -> str:
    """What a value under ``rule`` must be, in words, e.g. ``an integer from 1 to 1000``."""
    if "enum" in rule:
        return "one of " + ", ".join(map(str, rule["enum"]))
    if "pattern" in rule:
        return rule.get("description") or f"a string matching {rule['pattern']}"
    types = rule.get("type")
    if isinstance(types, list) and "null" in types:
        return expected(dict(rule, type=[t for t in types if t != "null"][0])) + ", or empty (null)"
    kind = {"integer": "an integer", "number": "a number"}.get(types, "a " + str(types))
    limits = bounds(rule)
    low, high = limits.get("minimum"), limits.get("maximum")
    if "exclusiveMinimum" in limits:
        return f"{kind} above {limits['exclusiveMinimum']}" + (f" and at most {high}" if high is not None else "")
    if low is not None and high is not None:
        return f"{kind} from {low} to {high}"
    if low is not None:
        return f"{kind} >= {low}"
    return kind


#: How a null param reaches a job's flag: ``str(None)`` (the DAG's rendering), JSON's word, or nothing.
NULL_TEXTS = ("None", "null", "")

#: A JSON number literal, which is also how Python's str() writes an int or a finite float.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?P<real>(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)")


def value_of(rule: dict, text: str) -> str | int | float:
    """The JSON value a flag's ``text`` stands for under ``rule``: the text itself for a string rule,
    else the JSON number it spells: an int for ``2``, a float for ``2.0``, ``1e1`` or ``1e-05``
    (ASCII digits; no spaces, ``+``, ``_``, ``nan`` or ``inf``, which JSON and str() never write).

    Raises ValueError when the text is no JSON number.
    """
    types = rule.get("type")
    if types == "string" or (isinstance(types, list) and "string" in types):
        return text
    if isinstance(types, list) and "null" in types and text in NULL_TEXTS:
        return None
    match = _JSON_NUMBER.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a JSON number")
    return float(text) if match["real"] else int(text)


def check(rule: dict, value: object) -> str | None:
    """Validate a JSON ``value`` against ``rule`` exactly as Airflow validates a param (jsonschema,
    with a format checker); return the first error's message, or None when it is valid."""
    # Imported here: the executors import this module (model.py) but never check a flag.
    from jsonschema import FormatChecker
    from jsonschema.validators import validator_for
    validator = validator_for(rule)(rule, format_checker=FormatChecker())
    error = next(iter(validator.iter_errors(value)), None)
    return None if error is None else error.message


def schema_type(rule: dict, what: str, convert: Callable[[object], object] | None = None,
                hint: str | None = None) -> Callable[[str], object]:
    """argparse type for a flag under the JSON schema ``rule``: reads the text as :func:`value_of`,
    validates it with :func:`check`, and returns it as int (integer rule), float (number rule), or
    ``convert(value)`` when given. A refused value exits with usage (exit code 2) naming the flag,
    the text given, why, and what to use (``hint``, default :func:`expected`).
    """
    def parse(text):
        try:
            value = value_of(rule, text)
        except ValueError:
            error = "not a JSON number"
        else:
            error = check(rule, value)
        if error is not None:
            raise argparse.ArgumentTypeError(f"{text!r} is refused ({error}); use {hint or expected(rule)}")
        if convert is not None:
            return convert(value)
        if value is None:
            return None
        kind = [t for t in rule["type"] if t != "null"][0] if isinstance(rule.get("type"), list) else rule.get("type")
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
        return value
    parse.__name__ = what
    return parse


def _segment(what):
    def check_text(text):
        try:
            return paths.check_segment(text, what)
        except paths.PathError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return check_text


def _root(text: str) -> str:
    """The ``--data-root`` flag: a root of a supported store (fs.check_root: scheme, bucket, no password
    in the URI), local paths made absolute (paths.normalize_root)."""
    try:
        return paths.normalize_root(fs.check_root(text))
    except fs.StorageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _run_id(text):
    try:
        return paths.run_slug(text)
    except paths.PathError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


#: ``image_shape``: auto, or HxW with H and W from 1 to 9999 (no leading zeros, lowercase x).
IMAGE_SHAPE = {"type": "string", "pattern": "^(auto|[1-9][0-9]{0,3}x[1-9][0-9]{0,3})$(?!\\n)"}

#: The DAG's dataset_version param: null or empty = the run's logical date, else a path segment that every
#: job's --version accepts (paths.check_segment; tests/unit/test_param_rules.py checks they agree). Written
#: as two plain rules, so that jsonschema's message for a refused value stays readable where Airflow shows
#: it (the CLI, a backfill): the characters and length, then no ``..`` (``\\Z``: no trailing newline).
#: What a valid dataset_version is, in words (the trigger form's description says it).
DATASET_VERSION_TEXT = "empty, or 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"
DATASET_VERSION = {
    "type": ["null", "string"],
    "pattern": "^(|[A-Za-z0-9][A-Za-z0-9._-]{0,127})\\Z",
    "not": {"description": "two dots in a row ('..')", "type": "string", "pattern": "\\.\\."},
}

#: The DAG's data_wait_timeout param: seconds a scheduled run waits for its dataset version's input
#: (the DAG's wait_for_data sensor); 0 = look once.
DATA_WAIT_TIMEOUT = integer(0, 7 * 86400)


def _date(value):
    """Empty or a real calendar date ``YYYY-MM-DD`` (``2026-02-30`` is refused)."""
    if value:
        import datetime
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a calendar date; use YYYY-MM-DD, or empty") from None
    return value


def _image_shape(value):
    """``auto`` -> None (the shape comes from the data), ``HxW`` -> (H, W)."""
    if value == "auto":
        return None
    h, w = value.split("x")
    return int(h), int(w)


class ParamSpec:
    """How one param reaches its job: the flag ``--name``, its default (None = required, :data:`NULL` = optional, None when absent), help and rule.

    ``rule`` is the param's JSON schema: the job checks the flag with it (:func:`schema_type`) and,
    unless ``param`` is False, the DAG exposes it as a param with the same schema, named ``param``
    (default: ``name``). Params the DAG fills itself (data root, version, run id) have an argparse
    ``type`` instead. ``convert`` turns a valid JSON value into what the job uses; ``hint`` says in words
    what a valid value is (default: derived from the rule). Built from a params dataclass's fields
    (:func:`param` declares one; :func:`specs` reads them).
    """

    def __init__(self, name: str, default: object, help: str, rule: dict | None = None, *,
                 type: Callable[[str], object] | None = None, param: str | bool | None = None,
                 convert: Callable[[object], object] | None = None, hint: str | None = None,
                 unit: str | None = None) -> None:
        self.name, self.default, self.help, self.schema, self.unit = name, default, help, rule, unit
        self.hint = hint
        self.param = (param or name) if rule is not None and param is not False else None
        self.type = schema_type(rule, self.flag, convert, hint) if rule is not None else type

    @property
    def flag(self) -> str:
        """The command-line flag: ``--`` and the name with ``-`` for ``_`` (``num_shards`` -> ``--num-shards``)."""
        return "--" + self.name.replace("_", "-")


class _Null:
    """The default of an optional param whose value may be null (:func:`optional`): the flag is not
    required, and the job, the DAG param and the params object hold None."""

    def __repr__(self) -> str:
        return "NULL"


#: Default of a param that may be left empty (null): :class:`_Null`.
NULL = _Null()

#: The metadata key of a params field's :class:`ParamSpec` arguments (:func:`param`).
SPEC = "tfospipe.param"


def param(default: object, help: str, rule: dict | None = None, *,
          type: Callable[[str], object] | None = None, dag: str | bool | None = None,
          convert: Callable[[object], object] | None = None, hint: str | None = None, unit: str | None = None) -> Any:
    """One field of a job's params dataclass, written once: its flag default (None = a required flag),
    help, JSON-schema ``rule``, ``unit`` (what a number counts, for the trigger form) and the rest of
    :class:`ParamSpec` (``dag``: its ``param``). The field's own default is the flag default as the job
    holds it (``convert(default)``, e.g. ``auto`` -> None)."""
    meta = {"default": default, "help": help, "rule": rule, "type": type, "param": dag, "convert": convert,
            "hint": hint, "unit": unit}
    if default is None:
        return dataclasses.field(metadata={SPEC: meta})
    if default is NULL:
        return dataclasses.field(default=None, metadata={SPEC: meta})
    return dataclasses.field(default=convert(default) if convert else default, metadata={SPEC: meta})


def specs(params_class: type) -> list[ParamSpec]:
    """The :class:`ParamSpec` of every field of a params dataclass, in field order (the parser's)."""
    out = []
    for f in dataclasses.fields(params_class):
        meta = dict(f.metadata[SPEC])
        out.append(ParamSpec(f.name, meta.pop("default"), meta.pop("help"), meta.pop("rule"), **meta))
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobParams:
    """The params every job takes: where the data is and which version (filled by the DAG)."""

    data_root: str = param(None, "root of all data: a local directory every executor sees, or a URI of a "
                           f"supported store ({fs.supported_schemes()})", type=_root)
    version: str = param(None, "dataset version, e.g. the run's logical date 2026-11-28",
                         type=_segment("dataset version"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunParams(JobParams):
    """The params of a job about one training run (train, validate)."""

    run_id: str = param(None, "Airflow run id; keys the model directory so a retry resumes it", type=_run_id)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvertParams(JobParams):
    """convert's params: CSV rows -> TFRecord shards."""

    eval_fraction: float = param(0.2, "fraction of rows for the eval split (by a hash of the row's content)",
                                 number(0.01, 0.9), unit="fraction of the rows")
    num_shards: int = param(4, "TFRecord shards per split (at least the training cluster size)", integer(1, 1024), unit="shards")
    max_bad_fraction: float = param(0.05, "fail when more than this fraction of rows is quarantined", number(0, 1),
                                    unit="fraction of the rows read")
    pixel_max: int = param(255, "largest valid pixel value; larger values are quarantined", integer(1, 65535), unit="pixel value")
    image_shape: tuple[int, int] | None = param(
        "auto", "HxW, or auto: square root of the pixel column count", IMAGE_SHAPE,
        convert=_image_shape, hint="auto, or HxW with H and W from 1 to 9999 (e.g. 28x28)")
    label_column: int = param(
        0, "index of the label column in the labeled CSV (0 = first, -1 = last); the others are the pixels",
        integer(-1, 1000000), unit="column index")
    compression: str = param(
        "none", "TFRecord shard compression: none, or gzip (*.tfrecord.gz; the readers follow the file names)",
        one_of(*schema.COMPRESSIONS))
    # Not a DAG param: a job setting (bench/convert_bench.py measures the job with and without it).
    statistics: str = param(
        "on", "on: compute the splits' statistics in the conversion pass and commit them as _stats.json beside "
        "the shards (datastats); off: neither", one_of("on", "off"), dag=False)


#: What a task does with an anomaly its data checks find (datachecks.decide): fail the task, log a
#: WARNING line and go on, or run no check.
DATA_CHECK_MODES = ("fail", "warn", "off")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataCheckParams:
    """The data checks' mode and thresholds (datachecks.Thresholds), shared by train (schema, drift and
    eval skew of the version), infer (score skew) and validate (the training split's classes, the
    serving model's collapse). Each threshold is one DAG param, the same for every task that reads it.
    The defaults and why they sit where they do: datachecks' module docstring and the README."""

    data_checks: str = param(
        "fail", "what an anomaly in the data does: fail = the task stops before training, scoring or promoting "
        "(one ERROR line naming it), warn = WARNING lines and the task goes on, off = no data checks",
        one_of(*DATA_CHECK_MODES))
    min_class_fraction: float | None = param(
        NULL, "smallest fraction of a labeled split each class must have (its 95% upper bound); empty = the "
        "schema's (schema/schema.json under the data root)", optional(number(0, 1)),
        unit="fraction of the split's rows")
    max_blank_fraction: float | None = param(
        NULL, "largest fraction of all-zero images in a split (its 95% lower bound); empty = the schema's",
        optional(number(0, 1)), unit="fraction of the split's images")
    max_label_drift: float = param(
        0.03, "largest change of a class's fraction (L-infinity distance of the label distributions) from the "
        "serving model's training data and from the previous version, beyond sampling noise", number(0, 1),
        unit="L-infinity distance of two label distributions (difference of a class's fractions)")
    max_feature_drift: float = param(
        0.02, "largest Jensen-Shannon divergence (bits, 0-1) of a pixel's histogram from the serving model's "
        "training data and from the previous version, beyond sampling noise", number(0, 1),
        unit="bits of Jensen-Shannon divergence")
    max_eval_skew: float = param(
        0.03, "largest Jensen-Shannon divergence (bits) of a pixel's histogram, or L-infinity distance of the "
        "labels, between a version's eval and train splits, beyond sampling noise", number(0, 1),
        unit="bits of Jensen-Shannon divergence (pixels), L-infinity distance (labels)")
    max_score_skew: float = param(
        0.02, "largest Jensen-Shannon divergence (bits) of a pixel's histogram between the score rows and the "
        "serving model's training data, beyond sampling noise", number(0, 1),
        unit="bits of Jensen-Shannon divergence")
    max_serving_drop: float = param(
        0.05, "largest drop of the serving model's accuracy from its own eval split to the new version's, "
        "beyond sampling noise, before the data counts as changed (drift) rather than the candidate as better",
        number(0, 1), unit="accuracy (fraction of the eval rows)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrackingParams:
    """How train and validate mirror their records to MLflow (tracking.py), when a tracking server is
    configured (``MLFLOW_TRACKING_URI``, or the Airflow connection ``mlflow_default``)."""

    mlflow_required: str = param(
        "false", "true = the task fails when its records cannot be mirrored to the MLflow tracking server (or none "
        "is configured); false = a mirror that fails after its retries leaves one WARNING line and the task goes "
        "on (the pipeline's own records stay the source of truth; scripts/serving.py sync-mlflow resyncs)",
        one_of("false", "true"))
    # Not a DAG param: a job setting (tests shorten it).
    mlflow_retry_seconds: int = param(
        30, "seconds a mirror to MLflow is retried with exponential backoff before it counts as failed",
        integer(0, 3600), dag=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainParams(TrackingParams, DataCheckParams, RunParams):
    """train's params: the cluster, its topology and the training hyperparameters (picklable: the
    training nodes receive them whole, ``node.NodeSetup``)."""

    input_mode: str = param(
        "tensorflow",
        "tensorflow: each node reads its TFRecord shards with tf.data; spark: Spark feeds the rows (TFNode.DataFeed)",
        one_of("tensorflow", "spark"))
    cluster_size: int = param(2, "TensorFlow nodes = Spark executors (chief + workers)", integer(2, 256),
                              unit="nodes (Spark executors)")
    num_ps: int = param(
        0, "parameter servers among the cluster_size nodes: 0 = all-reduce (MultiWorkerMirroredStrategy); "
        "> 0 = ParameterServerStrategy (needs cluster_size >= num_ps + 2 and input_mode tensorflow)",
        integer(0, 16), unit="nodes (Spark executors)")
    gradient_compression: str = param(
        "none", "how all-reduce training sends gradients: none (float32) or fp16 (half the bytes and CPU of the "
        "all-reduce, gradients rounded to float16; num_ps=0 only)",
        one_of(*GRADIENT_COMPRESSIONS))
    epochs: int = param(5, "passes over the train split", integer(1, 1000), unit="epochs")
    batch_size: int = param(64, "batch size per worker", integer(1, 65536), unit="rows per worker and step")
    learning_rate: float = param(0.001, "Adam learning rate", number(maximum=1, above=0),
                                  unit="none (a step-size factor)")
    seed: int = param(
        DEFAULT_SEED, "the run's random seed: each node seeds Python, NumPy and TensorFlow (weights, dropout) with "
        "seed + its worker index and shuffles its share with seed + its input pipeline; the same seed, data, "
        "params and cluster give the same model (scripts/reproduce.py)", integer(0, MAX_SEED), unit="none")
    # Not a DAG param: a job setting (bench/train_bench.py --deterministic both measures its cost).
    deterministic: str = param(
        "on", "on: TensorFlow's op determinism (tf.config.experimental.enable_op_determinism) on every node and "
        "the ring all-reduce forced, so a rerun with the same seed gives the same weights bit for bit "
        "(input_mode tensorflow, all-reduce); off: TensorFlow's defaults (the seeds still apply)",
        one_of(*DETERMINISTIC), dag=False)
    # Not a DAG param: a job setting (tests shorten it), checked by the same kind of rule.
    executor_wait: int = param(120, "seconds to wait for cluster_size executors before failing", integer(1),
                               dag=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValidateParams(TrackingParams, DataCheckParams, RunParams):
    """validate's params: the gate's thresholds and tests (validate.GateThresholds) and the promotion policy."""

    min_accuracy: float = param(0.8, "the candidate's eval accuracy must reach this", number(0, 1),
                                 unit="accuracy (fraction of the eval rows)")
    max_regression: float = param(
        0.02, "the candidate may trail the serving model's accuracy by at most this", number(0, 1),
        unit="accuracy (fraction of the eval rows)")
    gate: str = param(
        "threshold",
        "how the candidate is compared with the serving model: threshold = its accuracy may trail by at most "
        "max_regression; significance = exact McNemar test on the records only one model gets right: refused "
        "when significantly worse at alpha (one-sided), when a class's recall is significantly lower (Holm over "
        "the classes) or when it loses a class the serving model recognizes. min_accuracy applies in both",
        one_of(*GATE_MODES))
    alpha: float = param(
        0.05, "gate=significance: significance level of its one-sided tests (the overall test and, Holm-adjusted, "
        "the per-class tests)", number(maximum=0.5, above=0), unit="probability")
    require_improvement: str = param(
        "false", "gate=significance: true = the candidate must also be significantly better than the serving "
        "model at alpha (one-sided)", one_of("false", "true"))
    undecided: str = param(
        "hold", "gate=significance: what happens when too few records differ between the two models for any "
        "decision at alpha: hold = not promoted (serving unchanged, the task succeeds); promote = the overall "
        "tests count as passed", one_of(*UNDECIDED_FALLBACKS))
    promotion: str = param(
        "if_not_older",
        "when a model that passed the gate goes into serving: if_not_older = only if its data date (the "
        "dataset version when it is a date, else the run's logical date) is not older than the serving "
        "model's, so a backfill of old versions leaves a newer model serving; auto = always; never = "
        "evaluate and report only",
        one_of(*PROMOTION_POLICIES))
    # Not a DAG param: the DAG passes the run's logical date (or the day a manual run was triggered for).
    data_date: str = param(
        "", "YYYY-MM-DD the run's data stands for when the dataset version is not a date "
        "(the DAG passes the logical date); empty = today (UTC)", DATA_DATE, dag=False, convert=_date,
        hint="YYYY-MM-DD, or empty")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InferParams(DataCheckParams, JobParams):
    """infer's params: which model, how many rows per model call, and where it runs."""

    batch_size: int = param(256, "rows per prediction batch in each executor", integer(1, 65536),
                            dag="inference_batch_size", unit="rows")
    model_version: str = param("", "promoted model version to use; empty = the one serving now", type=str)
    mode: str = param(
        "executors",
        "executors: each executor loads the model and scores its shards (mapInArrow); tfos: a TFoS cluster "
        "in InputMode.SPARK scores the rows Spark feeds it (TFCluster.inference)",
        one_of("executors", "tfos"), dag="inference_mode")


#: Each job's params dataclass, in the pipeline's order.
PARAMS: dict[str, type[JobParams]] = {"convert": ConvertParams, "train": TrainParams, "validate": ValidateParams,
                                      "infer": InferParams}
#: Each job's flags (:class:`ParamSpec`), from its params dataclass.
JOBS: dict[str, list[ParamSpec]] = {job: specs(cls) for job, cls in PARAMS.items()}


def parser(job: str) -> argparse.ArgumentParser:
    """The argparse parser of ``job``'s flags (:data:`JOBS`); flags without a default are required.
    Raises KeyError for an unknown job."""
    p = argparse.ArgumentParser(prog=f"{job}.py", description=f"{job} job of the TFoS pipeline")
    for a in JOBS[job]:
        required = a.default is None
        p.add_argument(a.flag, dest=a.name, type=a.type, default=None if required or a.default is NULL else a.default,
                       required=required, help=a.help)
    return p


def parse(job: str, argv: list[str]) -> JobParams:
    """``job``'s params (its :data:`PARAMS` dataclass) parsed from ``argv``: one field per flag,
    converted and checked by its rule, a local ``data_root`` made absolute. A missing or refused flag
    exits with usage (SystemExit, code 2) naming it."""
    return PARAMS[job](**vars(parser(job).parse_args(argv)))


def defaults(job: str) -> dict:
    """{flag name: default} of ``job``'s optional flags."""
    return {a.name: None if a.default is NULL else a.default for a in JOBS[job] if a.default is not None}


def dag_params(job: str) -> list[tuple]:
    """(param name, default, help, JSON schema) of the params a DAG run may set for ``job`` (the fields of
    its params dataclass that have a rule and are not marked ``dag=False``)."""
    return [(a.param, None if a.default is NULL else a.default, a.help, a.schema) for a in JOBS[job] if a.param]


def dag_param_specs() -> dict[str, ParamSpec]:
    """{DAG param name: its :class:`ParamSpec`} over the four jobs (the first job's, for a param several read)."""
    out = {}
    for specs_ in JOBS.values():
        for a in specs_:
            if a.param:
                out.setdefault(a.param, a)
    return out


def describe(help: str, rule: dict, unit: str | None = None, hint: str | None = None) -> str:
    """A param's description for the trigger form: what it does, then what a valid value is (its range,
    :func:`expected`, or ``hint``) and its unit, e.g. ``passes over the train split. Valid: an integer from
    1 to 1000 (unit: epochs).``"""
    text = help.rstrip(". ")
    valid = hint or expected(rule)
    return f"{text}. Valid: {valid}" + (f" (unit: {unit})." if unit else ".")


def to_argv(job: str, values: Mapping[str, object]) -> list[str]:
    """A job's argv (the operator's ``application_args``): every value of the mapping ``values`` given,
    as ``--flag str(value)``, in the mapping's order (values may be Jinja templates). Raises KeyError
    naming the values that are no flag of ``job``."""
    known = {a.name: a for a in JOBS[job]}
    unknown = set(values) - set(known)
    if unknown:
        raise KeyError(f"unknown arguments for {job}: {sorted(unknown)}")
    argv = []
    for name, value in values.items():
        argv += [known[name].flag, str(value)]
    return argv
