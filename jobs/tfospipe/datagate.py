"""Which data checks each task runs, against which reference data, and what it leaves behind.

The checks themselves (what is measured, the thresholds, the noise bounds) are ``datachecks``; the
statistics they read are the ``_stats.json`` that convert commits with every version (``datastats``).
Here each task asks its question of the data before it does its work:

* **train** (:func:`check_training_data`, on the driver before any Spark application): the version
  against the schema (``schema/schema.json``, inferred from the first version checked and then the
  user's to edit), its eval split against its train split (eval skew), and its train split against the
  serving model's training data and against the previous version by data date (drift; a backfill so
  compares like with like). Training never starts on a version with an anomaly under ``fail``.
* **infer** (:func:`check_score_rows`): the score rows against the training data of the model that
  scores them (score skew). No prediction is published for skewed rows under ``fail``.
* **validate** (:func:`check_candidate`, :func:`check_serving_collapse`): the candidate's training
  split must hold every class of the schema, and not a single one, whatever its accuracy; and when the
  serving model scores far lower on the new eval split than on its own, the data changed: drift, not a
  win for the candidate.

Each check leaves ``data-checks/{version}/{task}.json`` (every finding: value, threshold, uncertainty,
the param that sets it; the references; the decision) and ``{task}.html`` (the data report), written
before the decision is applied, so a failed task still shows why. ``data_checks=off`` runs nothing and
writes nothing; ``warn`` prints each anomaly as a ``WARNING [task]`` line and goes on.
"""

from __future__ import annotations

import sys

from . import datachecks, fs, paths, serving
from .jobargs import InferParams, TrainParams, ValidateParams
from .runner import JobError


def load_stats(layout: paths.Layout, version: str) -> dict | None:
    """The committed ``_stats.json`` of ``version`` (datastats), or None when the version was not
    converted or was converted without statistics. Raises OSError/ValueError when it exists but cannot be read."""
    path = paths.join(fs.resolve(layout.tfrecords(version)), paths.STATS_FILE)
    if not fs.is_committed(layout.tfrecords(version)) or not fs.exists(path):
        return None
    return fs.read_json(path)


def _require_stats(layout: paths.Layout, version: str, task: str) -> dict:
    stats = load_stats(layout, version)
    if stats is None:
        raise JobError(f"dataset version {version} has no statistics ({layout.stats(version)}): it was converted "
                       "before convert wrote them, or without them. Rerun the convert task for this version, or "
                       f"run {task} with data_checks=off to skip the data checks")
    return stats


def serving_training_version(layout: paths.Layout, model_version: str | None = None) -> tuple[str, str] | None:
    """``(model version, dataset version it was trained on)`` of ``model_version``, or of the model
    serving now when None; None when nothing serves. Raises OSError when the model has no manifest."""
    if model_version is None:
        pointer = serving.current(layout)
        if pointer is None:
            return None
        model_version = pointer["model_version"]
    info = serving.model_info(layout, model_version)
    return model_version, info["dataset_version"]


def previous_version(layout: paths.Layout, version: str) -> str | None:
    """The newest converted version with statistics whose data date (its name, ``YYYY-MM-DD``) is before
    ``version``'s; None when ``version`` is no date or none is older."""
    date = paths.version_date(version)
    if date is None:
        return None
    base = paths.join(layout.root, "tfrecords")
    if not fs.exists(base):
        return None
    older = sorted(v for v in (e.rstrip("/") for e in fs.listdir(base))
                   if paths.version_date(v) is not None and v < date)
    for candidate in reversed(older):
        if fs.is_committed(layout.tfrecords(candidate)) and \
                fs.exists(paths.join(fs.resolve(layout.tfrecords(candidate)), paths.STATS_FILE)):
            return candidate
    return None


def _finish(layout, version, task, mode, findings, references, stats, reference, reference_name, split, ref_split):
    """Write the record and the report, then apply the decision (datachecks.decide): JobError under
    ``fail`` when a finding is an anomaly, WARNING lines under ``warn``. Returns the record."""
    from . import datareport
    fs.makedirs(layout.data_checks_dir(version))
    report_path = layout.data_report(version, task)
    html = datareport.render(version, stats, reference, reference_name, [f.as_dict() for f in findings], task,
                             split=split, ref_split=ref_split)
    datareport.write(report_path, html)
    record = datachecks.record(findings, mode, task, references)
    record["report"] = report_path
    datachecks.save_record(layout.data_checks(version, task), record)
    for line in datachecks.decide(findings, mode, task, report=report_path):
        print(f"WARNING [{task}] {line}", file=sys.stderr, flush=True)
    return record


def check_training_data(params: TrainParams) -> dict | None:
    """train's checks of ``params.version`` before any Spark application (runner.main's ``prepare``):
    schema, eval skew, drift from the serving model's training data and from the previous version.
    Returns the record (None under ``data_checks=off``). Raises JobError naming the first anomaly under
    ``fail``, or when the version has no statistics; StorageError when the root cannot be read."""
    if params.data_checks == "off":
        return None
    layout, version, t = paths.Layout(params.data_root), params.version, datachecks.Thresholds.of(params)
    stats = _require_stats(layout, version, "train")
    schema, inferred = datachecks.load_or_infer_schema(layout.schema(), stats)
    findings = (datachecks.schema_findings(stats, schema, t) + datachecks.eval_skew_findings(stats, t)
                + datachecks.info_findings(stats, splits=("train", "eval")))  # duplicates, overlap: for the record
    references = {"schema": layout.schema(), "schema_inferred_now": inferred}
    reference = reference_name = None
    served = serving_training_version(layout)
    compared = set()
    if served is not None and served[1] != version:
        ref = load_stats(layout, served[1])
        if ref is not None:
            reference, reference_name = ref, f"dataset version {served[1]} (training data of serving model {served[0]})"
            findings += datachecks.drift_findings(stats, ref, reference_name, t)
            references["serving"] = {"model_version": served[0], "dataset_version": served[1]}
            compared.add(served[1])
    previous = previous_version(layout, version)
    if previous is not None and previous not in compared:
        ref = load_stats(layout, previous)
        name = f"dataset version {previous} (the previous version by data date)"
        findings += datachecks.drift_findings(stats, ref, name, t)
        references["previous"] = {"dataset_version": previous}
        if reference is None:
            reference, reference_name = ref, name
    return _finish(layout, version, "train", params.data_checks, findings, references, stats, reference,
                   reference_name, "train", "train")


def check_score_rows(params: InferParams, model_version: str, split: str) -> dict | None:
    """infer's check: the ``score`` rows of ``params.version`` against the train split of the data
    ``model_version`` was trained on. Returns the record (None under ``off``, or when infer scores the
    eval split: no score rows, and the eval split was checked against train before training).
    Raises JobError under ``fail`` when the rows are skewed, or when a side has no statistics."""
    if params.data_checks == "off" or split != "score":
        return None
    layout, version, t = paths.Layout(params.data_root), params.version, datachecks.Thresholds.of(params)
    stats = _require_stats(layout, version, "infer")
    _mv, trained_on = serving_training_version(layout, model_version)
    training = _require_stats(layout, trained_on, "infer")
    name = f"dataset version {trained_on} (training data of model {model_version})"
    findings = datachecks.score_skew_findings(stats, training, name, t)
    references = {"model_version": model_version, "dataset_version": trained_on}
    return _finish(layout, version, "infer", params.data_checks, findings, references, stats, training, name,
                   "score", "train")


def check_candidate(params: ValidateParams) -> dict | None:
    """validate's check of the candidate's training split (``params.version``): a class of the schema
    missing, or a single class, refuses the promotion whatever the model's accuracy. Returns the record
    (None under ``off``); raises JobError under ``fail``."""
    if params.data_checks == "off":
        return None
    layout, version, t = paths.Layout(params.data_root), params.version, datachecks.Thresholds.of(params)
    stats = _require_stats(layout, version, "validate")
    schema, _inferred = datachecks.load_or_infer_schema(layout.schema(), stats)
    findings = [f for f in datachecks.schema_findings(stats, schema, t, splits=("train",))
                if f.kind in ("class_missing", "single_class")]
    return _finish(layout, version, "validate", params.data_checks, findings, {"schema": layout.schema()}, stats,
                   None, None, "train", "train")


def check_serving_collapse(params: ValidateParams, serving_mv: str, new_accuracy: float,
                           new_rows: int) -> datachecks.Finding | None:
    """The serving model's accuracy on the new eval split (``new_accuracy`` over ``new_rows``) against
    its accuracy on its own (its promotion's record). Returns the finding (None under ``off``, or when
    the record lacks them); the caller decides (validate: under ``fail`` an anomaly stops the promotion)."""
    if params.data_checks == "off":
        return None
    info = serving.model_info(paths.Layout(params.data_root), serving_mv)
    if info.get("accuracy") is None or not info.get("examples"):
        return None
    return datachecks.serving_collapse_finding(info["accuracy"], info["examples"], new_accuracy, new_rows,
                                               f"model {serving_mv} on its own eval split "
                                               f"(dataset version {info.get('dataset_version')})",
                                               datachecks.Thresholds.of(params))
