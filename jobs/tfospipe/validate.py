"""validate: the gate between training and serving.

Loads the chief-exported SavedModel of this run (its signature is checked against model.py and the
dataset's image shape), evaluates it on the version's eval split distributed over the executors,
and evaluates the model now serving (the champion) on the same records in the same pass, counting the
records only one of the two gets right (the discordant pairs, per class). The gate (:func:`gate`):

1. every output is a finite probability vector summing to 1;
2. the candidate's accuracy >= ``min_accuracy``;
3. when a champion serves, by ``gate`` (the param): ``threshold``: candidate accuracy >= champion
   accuracy - ``max_regression``; ``significance``: the candidate is not significantly worse (exact
   McNemar, one-sided, at ``alpha``), no class's recall is significantly lower (Holm over the classes),
   no class the champion recognizes is lost, and with ``require_improvement`` it is significantly
   better. When too few records differ for any decision at ``alpha``, ``undecided`` decides (hold or
   promote) and a WARNING line says how many eval records would resolve ``max_regression``.
   Both modes compute and report the same statistics (:mod:`significance`).

``{root}/validation/{version}/{run}/`` gets ``metrics.json``, ``confusion_matrix.png`` and ``report.md``
(both models side by side, and the promotion rule that decided) for every run, passed or not. Only a
passed gate promotes, and only when the promotion policy (``--promotion``, :func:`promotion_rule`)
allows it: the model is copied to ``{root}/serving/models/{model_version}/`` and
``serving/CURRENT.json`` is swapped to point at it. A failed gate changes nothing serving and fails
the task; a model the policy holds back changes nothing serving and the task succeeds. Every
decision is recorded in ``serving/history/`` (``serving.record``). With an MLflow tracking server
configured, the candidate is then registered as a model version (its digest, the gate's figures, the
decision) and the alias ``champion`` follows serving (:func:`tracking.register_candidate`): a mirror
after the files are committed, which lags (one WARNING line) rather than fails unless ``mlflow_required``.

The swap is a compare-and-swap (``serving.promote(expected=...)``): it happens only if the pointer
still names the model the candidate was compared with. When another run promoted (or someone rolled
back) during the evaluation, the candidate is evaluated again against the model now serving, up to
:data:`MAX_ROUNDS` times, so a model never replaces one it was not compared with; after that the
task fails with serving unchanged by it.

The model version is ``paths.model_version(version, run, digest)`` with the digest of the exported
files taken before evaluation: a run trained again under the same run id (a cleared task, a backfill
that reprocesses completed runs) is promoted under a new name beside the model that served, which
stays as it was; validating the same files again promotes nothing new.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from . import datagate, dataset, fs, metrics, paths, predict, report as report_lib, serving, significance, tracking
from .paths import version_date
from .jobargs import ValidateParams
from .runner import (SPREAD_WAIT_S, DataRefused, JobError, UserError, executor_python, executors, git_revision,
                     requested_executors)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Eval records per model call on an executor.
EVAL_BATCH = 512
#: Evaluations of one candidate against a serving model that keeps changing before the task gives up.
MAX_ROUNDS = 3


def evaluate_partition(models: dict[str, str],
                       image_shape: tuple[int, int]) -> Callable[[Iterable[str]], Iterator[tuple]]:
    """Executor side (``mapPartitions``): one metrics accumulator per model over this partition's files.

    ``models``: SavedModel directory by name (``candidate``, ``champion``); ``image_shape``: ``(H, W)``.
    The returned function yields one 4-tuple per partition: ``{name: metrics.empty()-style accumulator}``
    (empty for a partition without files), a ``metrics.empty_pairs()`` accumulator of the candidate
    against the champion on the same rows (all zero without a champion), ``{sys.executable}`` (the
    executor's interpreter, for the manifest) and ``{name: error text}`` of the models that do not meet
    the serving contract for ``image_shape`` (predict.loaded_model: missing, not a SavedModel, another
    signature). Every model sees the same records, :data:`EVAL_BATCH` at a time; a model with an error
    gets no accumulator, and no records are read when it is the candidate.

    Every partition loads the models, files or not: the contract is checked here, on the executors,
    where the models are loaded anyway (predict's per-process cache), so validate's driver never
    imports TensorFlow (5.5-7.6 CPU s and ~700 MB of RSS on an AMD EPYC).
    """
    def run(files):
        files = list(files)
        fns, errors = {}, {}
        for name, path in models.items():
            try:
                fns[name] = predict.loaded_model(path, image_shape)
            except Exception as e:  # what loading or the signature check raised: reported to the driver
                errors[name] = str(e) or type(e).__name__
        accs = {name: metrics.empty() for name in fns}
        pairs = metrics.empty_pairs()
        if files and "candidate" in fns:
            for images, labels, _ids in predict.batches(files, image_shape, EVAL_BATCH):
                outputs = {}
                for name, fn in fns.items():
                    outputs[name], _classes = fn(images)
                    metrics.update(accs[name], labels, outputs[name])
                if "champion" in outputs:
                    metrics.update_pairs(pairs, labels, outputs["candidate"], outputs["champion"])
        yield accs, pairs, {sys.executable}, errors
    return run


def _merge_partitions(a: tuple, b: tuple) -> tuple:
    """Two :func:`evaluate_partition` results summed: accumulators of the models both hold, paired counts,
    interpreters and errors (a model with an error in either is dropped by :func:`_evaluate`)."""
    accs = {k: metrics.merge(a[0][k], b[0][k]) for k in a[0].keys() & b[0].keys()}
    accs.update({k: v for side in (a[0], b[0]) for k, v in side.items() if k not in a[0] or k not in b[0]})
    return accs, metrics.merge_pairs(a[1], b[1]), a[2] | b[2], {**a[3], **b[3]}


def data_date(version: str, given: str = "") -> str:
    """``YYYY-MM-DD`` the data of a run stands for: the dataset version when it is a date (a scheduled
    run or a backfill processes ``raw/<logical date>/``), else ``given`` (the run's logical date, which
    the DAG passes), else today in UTC (a job run by hand)."""
    return version_date(version) or given or datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def champion_date(layout: paths.Layout, pointer: dict | None) -> str | None:
    """Data date of the serving model: recorded with its promotion, else its dataset version when that
    is a date, else None (promoted before data dates were recorded, under a version that is no date)."""
    if not pointer:
        return None
    if pointer.get("data_date"):
        return pointer["data_date"]
    try:
        recorded = serving.model_info(layout, pointer["model_version"]).get("data_date")
    except (OSError, ValueError):
        recorded = None
    return recorded or version_date(pointer.get("dataset_version"))


def promotion_rule(policy: str, candidate_date: str, champion_mv: str | None,
                   champion_data_date: str | None) -> tuple[bool, str]:
    """(allowed, rule in words): may a model that passed the gate replace ``champion_mv``?

    ``policy`` is one of jobargs.PROMOTION_POLICIES: ``auto`` always; ``never`` never;
    ``if_not_older`` when nothing serves, when the serving model's data date is unknown, or when
    ``candidate_date`` (``YYYY-MM-DD``) is the same as or later than ``champion_data_date``.
    Raises ValueError for another policy.
    """
    if policy == "auto":
        return True, "promotion=auto: every model that passes the gate is promoted"
    if policy == "never":
        return False, "promotion=never: evaluated and reported only, serving unchanged"
    if policy != "if_not_older":
        raise ValueError(f"unknown promotion policy {policy!r}")
    if champion_mv is None:
        return True, "promotion=if_not_older: no model serving yet"
    if champion_data_date is None:
        return True, (f"promotion=if_not_older: serving model {champion_mv} has no recorded data date, "
                      "so the gate alone decides")
    if candidate_date >= champion_data_date:
        return True, (f"promotion=if_not_older: data date {candidate_date} is not older than serving model "
                      f"{champion_mv}'s {champion_data_date}")
    return False, (f"promotion=if_not_older: data date {candidate_date} is older than serving model "
                   f"{champion_mv}'s {champion_data_date}, which stays; trigger with promotion=auto to "
                   "promote it anyway")


@dataclasses.dataclass(frozen=True)
class GateThresholds:
    """The gate's thresholds, from the validate params (``jobargs.ValidateParams``): accuracies are
    fractions (0..1); ``alpha`` a probability in (0, 0.5]."""

    min_accuracy: float    # the candidate's accuracy must reach this
    max_regression: float  # threshold: the candidate may trail the serving model's accuracy by at most this
    gate: str = "threshold"            # jobargs.GATE_MODES: how the candidate is compared with the serving model
    alpha: float = 0.05                # significance: level of the one-sided tests (per class: Holm-adjusted)
    require_improvement: bool = False  # significance: the candidate must also be significantly better
    undecided: str = "hold"            # significance: too few discordant pairs to decide: hold or promote

    @classmethod
    def of(cls, params: ValidateParams) -> GateThresholds:
        """The thresholds of the parsed validate ``params``."""
        return cls(min_accuracy=params.min_accuracy, max_regression=params.max_regression, gate=params.gate,
                   alpha=params.alpha, require_improvement=params.require_improvement == "true",
                   undecided=params.undecided)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The gate's verdict on a candidate. ``passed``: no rule refused it; ``reasons``: every refusal, in
    words with the measured value, the threshold and the param that overrides it; ``decided_by``: the
    rule that decided, in words (``threshold``, ``significance: not significantly worse (p=0.41)``,
    ``undecided: hold ...``); ``hold``: why a passed candidate is held back by the gate itself (the
    significance gate could not decide and ``undecided=hold``), else None; ``statistics``:
    ``significance.compare`` of the candidate against the serving model (None when nothing serves);
    ``warnings``: lines for the task log (``WARNING [validate] ...``)."""

    passed: bool
    reasons: list[str]
    decided_by: str
    hold: str | None = None
    statistics: dict | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)


def paired_statistics(candidate: dict, champion: dict, pairs: dict, alpha: float) -> dict:
    """``significance.compare`` of the ``candidate`` and ``champion`` summaries (``metrics.summarize``, the
    same records) with their paired counts ``pairs`` (``metrics.empty_pairs`` keys, lists or arrays [C]).
    Raises ValueError when the counts do not fit the two confusion matrices."""
    cm1 = np.asarray(candidate["confusion_matrix"], np.int64)
    cm2 = np.asarray(champion["confusion_matrix"], np.int64)
    records = np.asarray(pairs["records"], np.int64)
    if not (np.array_equal(cm1.sum(axis=1), records) and np.array_equal(cm2.sum(axis=1), records)):
        raise ValueError("the paired counts' class records differ from the confusion matrices'")
    return significance.compare(np.diag(cm1), np.diag(cm2), records, pairs["cand_only"], pairs["serving_only"],
                                alpha)


def _p(p: float) -> str:
    return f"{p:.3g}"


def _significance_rules(candidate, champion, stats, t):
    """(reasons, refusing rules, passing rule, hold, warnings) of the significance rules: lost classes,
    per-class recall (Holm), too few discordant pairs (``undecided``), significantly worse, and with
    ``require_improvement`` not significantly better. ``stats``: :func:`paired_statistics`."""
    reasons, rules, warnings = [], [], []
    override = "trigger with gate=threshold to judge by max_regression instead"
    for cls, m in stats["per_class"].items():
        if m["lost"]:
            reasons.append(f"class {cls} lost: candidate recall 0.0000 on its {m['records']} eval records, the "
                           f"serving model's {m['serving_recall']:.4f} (gate=significance refuses a lost class "
                           f"whatever the p-values; {override})")
            rules.append(f"significance: class {cls} lost")
        elif m["p_holm"] < t.alpha:
            reasons.append(f"class {cls} recall {m['recall']:.4f} is significantly below the serving model's "
                           f"{m['serving_recall']:.4f} ({m['serving_only']} vs {m['cand_only']} discordant records, "
                           f"one-sided McNemar p={_p(m['p_serving_better'])}, Holm-adjusted over "
                           f"{len(stats['per_class'])} classes p={_p(m['p_holm'])} < alpha {t.alpha}; "
                           f"a smaller alpha, or {override})")
            rules.append(f"significance: class {cls} recall significantly lower (Holm p={_p(m['p_holm'])})")
    b, c = stats["cand_only"], stats["serving_only"]
    if not stats["decidable"]:
        n = stats["examples"]
        observed = (b + c) / n if n else 0.0
        rate = max(observed, t.max_regression)  # the smallest discordant rate that can hold the difference
        try:
            needed = f"about {significance.records_to_resolve(t.max_regression, rate, t.alpha)} eval records"
        except ValueError:
            needed = "an unknown number of eval records (max_regression is 0)"
        warnings.append(f"too few discordant pairs to decide: candidate right alone on b={b}, the serving model on "
                        f"c={c} of {n} eval records; even {b + c} of {b + c} on one side gives p="
                        f"{_p(stats['smallest_p'])} >= alpha {t.alpha}. Resolving a difference of max_regression "
                        f"{t.max_regression} at 80% power takes {needed} (at a discordant rate of {rate:.3g}: the "
                        f"observed {observed:.3g}, at least max_regression; Connor 1987); applying "
                        f"undecided={t.undecided}")
        if t.undecided == "hold":
            hold = (f"undecided: hold (b={b}, c={c} discordant pairs cannot reach p < alpha {t.alpha}; "
                    "trigger with undecided=promote to promote such a model)")
            return reasons, rules, hold, hold, warnings
        return reasons, rules, (f"undecided: promote (b={b}, c={c} discordant pairs cannot reach p < alpha "
                                f"{t.alpha})"), None, warnings
    worse, better = stats["p_serving_better"], stats["p_candidate_better"]
    if worse < t.alpha:
        reasons.append(f"accuracy {candidate['accuracy']:.4f} trails the serving model's {champion['accuracy']:.4f} "
                       f"significantly: {c} records only the serving model gets right vs {b} only the candidate, "
                       f"one-sided McNemar p={_p(worse)} < alpha {t.alpha} (a smaller alpha, or {override})")
        rules.append(f"significance: significantly worse (p={_p(worse)})")
    if t.require_improvement and better >= t.alpha:
        reasons.append(f"accuracy {candidate['accuracy']:.4f} is not significantly better than the serving model's "
                       f"{champion['accuracy']:.4f}: {b} records only the candidate gets right vs {c} only the "
                       f"serving model, one-sided McNemar p={_p(better)} >= alpha {t.alpha} "
                       "(require_improvement=true; trigger with require_improvement=false to accept a model "
                       "that is not significantly worse)")
        rules.append(f"significance: not significantly better (p={_p(better)}, require_improvement)")
    passing = (f"significance: significantly better (p={_p(better)})" if t.require_improvement
               else f"significance: not significantly worse (p={_p(worse)})")
    return reasons, rules, passing, None, warnings


def gate(candidate: dict, champion: dict | None, thresholds: GateThresholds,
         pairs: dict | None = None) -> Verdict:
    """The gate's :class:`Verdict` on ``candidate``.

    ``candidate``, ``champion``: ``metrics.summarize`` results on the same eval records (``champion``
    None when nothing serves or the serving model cannot score this data); ``pairs``: their paired
    counts (``metrics.empty_pairs`` keys), needed when ``champion`` is given. Every mode: no output that
    is not a finite probability vector summing to 1; accuracy >= ``thresholds.min_accuracy``; nothing
    more without a champion. With one, ``thresholds.gate`` decides: ``threshold``: accuracy >= the
    champion's - ``max_regression``; ``significance``: no lost class, no class's recall significantly
    lower (Holm at ``alpha``), not significantly worse (one-sided exact McNemar p >= ``alpha``) and, with
    ``require_improvement``, significantly better; when even the most extreme split of the discordant
    pairs could not reach ``alpha``, a warning and ``undecided`` (hold: passed but held; promote: the
    overall rules count as passed). Both modes compute the statistics (``Verdict.statistics``).
    Raises ValueError when ``champion`` is given without ``pairs``, or for an unknown ``thresholds.gate``.
    """
    t = thresholds
    if t.gate not in ("threshold", "significance"):
        raise ValueError(f"unknown gate {t.gate!r}")
    reasons, rules = [], []
    if candidate["bad_outputs"]:
        reasons.append(f"{candidate['bad_outputs']} outputs are not finite probabilities summing to 1")
        rules.append("finite probabilities")
    if candidate["accuracy"] < t.min_accuracy:
        reasons.append(f"accuracy {candidate['accuracy']:.4f} < min_accuracy {t.min_accuracy:.4f}")
        rules.append(f"min_accuracy {t.min_accuracy}")
    if champion is None:
        rules = rules or [f"{t.gate}: no serving model to compare with, min_accuracy {t.min_accuracy} alone"]
        return Verdict(not reasons, reasons, "; ".join(rules))
    if pairs is None:
        raise ValueError("the gate needs the paired counts of the candidate and the serving model")
    stats = paired_statistics(candidate, champion, pairs, t.alpha)
    hold, warnings = None, []
    if t.gate == "threshold":
        if candidate["accuracy"] < champion["accuracy"] - t.max_regression:
            reasons.append(f"accuracy {candidate['accuracy']:.4f} trails the serving model's "
                           f"{champion['accuracy']:.4f} by more than max_regression {t.max_regression:.4f}")
            rules.append(f"threshold: trails by more than max_regression {t.max_regression}")
        rules = rules or [f"threshold: within max_regression {t.max_regression} of the serving model"]
    else:
        more, refused_by, passing, hold, warnings = _significance_rules(candidate, champion, stats, t)
        reasons += more
        rules = rules + refused_by or [passing]
    passed = not reasons
    return Verdict(passed, reasons, "; ".join(rules), hold if passed else None, stats, warnings)


def _legacy_run_note(layout, version, airflow_run_id):
    """``''``, or a clause for the missing-run error when a folder of ``airflow_run_id`` under the old,
    lossy run-id encoding (``paths.legacy_run_slug``) exists: it is not read as this run's."""
    if not airflow_run_id:
        return ""
    try:
        old = layout.model_run(version, paths.legacy_run_slug(airflow_run_id))
    except paths.PathError:
        return ""
    if old == layout.model_run(version, paths.run_slug(airflow_run_id)) or not fs.exists(old):
        return ""
    return (f"; {old} was written under the old run-id encoding, which gave different run ids one folder "
            "(e.g. 'exp:1' and 'exp+1' both 'exp_1'), so it is not read as this run's: train again under "
            "this run id")


def _evaluate(sc, layout, candidate_dir, image_shape, eval_files, current):
    """(results by model name, paired counts, champion note, executor_python): candidate and serving model
    on the same records in one pass; the paired counts (``metrics.empty_pairs`` keys, lists) are None
    without a serving model that scores this data. Raises JobError when the candidate does not meet the
    serving contract (checked on the executors, :func:`evaluate_partition`)."""
    models = {"candidate": candidate_dir}
    if current is not None:
        models["champion"] = serving.promoted_dir(layout, current["model_version"])
    accs, pairs, pythons, errors = (sc.parallelize(eval_files, max(len(eval_files), 1))
                                    .mapPartitions(evaluate_partition(models, image_shape))
                                    .reduce(_merge_partitions))
    if "candidate" in errors:
        raise JobError(f"the model at {candidate_dir} does not meet the serving contract: {errors['candidate']}")
    if current is None:
        champion_note = "no model serving yet: judged on thresholds alone"
    elif "champion" in errors:  # e.g. the serving model takes another image shape
        accs.pop("champion", None)
        champion_note = (f"serving model {current['model_version']} cannot score this data ({errors['champion']}); "
                         "thresholds only")
    else:
        champion_note = f"compared with serving model {current['model_version']} on the same records"
    paired = {k: v.tolist() for k, v in pairs.items()} if "champion" in accs else None
    return ({name: metrics.summarize(a) for name, a in accs.items()}, paired, champion_note,
            executor_python(pythons))


def _write_report(layout, out, report, results):
    """Commit ``validation/{version}/{run}/``: metrics.json (``report``), confusion_matrix.png, report.md."""
    with fs.Staging(out) as stage:
        fs.write_json(stage.file(paths.METRICS_FILE), report)
        fs.write_bytes(stage.file(paths.CONFUSION_FILE), report_lib.confusion_png(results))
        fs.write_bytes(stage.file(paths.REPORT_FILE), report_lib.markdown(report).encode("utf-8"))
        stage.commit({k: report[k] for k in ("dataset_version", "run_id", "model_version", "passed",
                                             "executor_python", "params")})


def _log(line):
    print(f"PROMOTION [validate] {line}", flush=True)


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """The model this run judges: the training run it comes from (``version``, ``run_id``), its exported
    directory, digest, model version and data date, the eval data it is judged on (``image_shape``
    (H, W), shard files, rows the conversion wrote), the promotion policy it is judged under and the
    run's params as its records keep them (``dataclasses.asdict``)."""

    version: str
    run_id: str
    policy: str
    params: dict
    dir: str
    digest: str
    mv: str
    data_date: str
    image_shape: tuple[int, int]
    eval_files: list[str]
    eval_rows: int
    report_dir: str


def _candidate(layout, params):
    """The candidate of ``params.run_id``; JobError when the version was not converted or the run did not
    finish (the serving contract is checked by the evaluation pass, :func:`evaluate_partition`)."""
    version, run_id = params.version, params.run_id
    date = data_date(version, params.data_date)
    eval_files = dataset.shard_files(layout, version, "eval")
    manifest = dataset.read_manifest(layout, version)
    image_shape = tuple(manifest["image_shape"])
    run_dir = layout.model_run(version, run_id)
    if not fs.is_committed(run_dir):
        raise JobError(f"no finished training run at {run_dir} (no _SUCCESS): run the train task first"
                       + _legacy_run_note(layout, version, os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")))
    candidate_dir = layout.exported_model(version, run_id)
    digest = serving.model_digest(candidate_dir)  # names the model; promote checks the copy against it
    return _Candidate(version=version, run_id=run_id, policy=params.promotion, params=dataclasses.asdict(params),
                      dir=candidate_dir, digest=digest, mv=paths.model_version(version, run_id, digest),
                      data_date=date, image_shape=image_shape, eval_files=eval_files,
                      eval_rows=manifest["splits"]["eval"], report_dir=layout.validation(version, run_id))


@dataclasses.dataclass(frozen=True)
class _Round:
    """One evaluation round: the candidate against the model serving when the round started
    (``champ_mv``, None when nothing served), the gate's verdict and the promotion rule's (``allowed``
    False and ``rule`` the gate's hold when the gate held a passed model back)."""

    number: int
    champ_mv: str | None
    champ_date: str | None
    results: dict
    champion_note: str
    executor_python: list[str]
    verdict: Verdict
    allowed: bool
    rule: str
    started: float

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def reasons(self) -> list[str]:
        return self.verdict.reasons

    @property
    def candidate(self) -> dict:
        return self.results["candidate"]

    @property
    def champion(self) -> dict | None:
        return self.results.get("champion")

    @property
    def decision(self) -> str:
        return "promote" if self.passed and self.allowed else "held" if self.passed else "rejected"

    @property
    def decided_by(self) -> str:
        return self.rule if self.passed else "gate: " + "; ".join(self.reasons)


def _judge(sc, layout, thresholds, cand, number):
    """Round ``number``: evaluate the candidate and the model serving now, apply the gate and the policy."""
    current = serving.current(layout)  # the champion this round compares with and the swap expects
    champ_mv = current["model_version"] if current else None
    started = time.time()
    results, pairs, champion_note, pythons = _evaluate(sc, layout, cand.dir, cand.image_shape, cand.eval_files,
                                                       current)
    candidate, champion = results["candidate"], results.get("champion")
    if candidate["examples"] != cand.eval_rows:
        raise JobError(f"evaluated {candidate['examples']} examples, the conversion manifest lists "
                       f"{cand.eval_rows} eval rows")
    verdict = gate(candidate, champion, thresholds, pairs)
    champ_date = champion_date(layout, current)
    allowed, rule = promotion_rule(cand.policy, cand.data_date, champ_mv, champ_date)
    if verdict.hold:  # the significance gate could not decide and undecided=hold
        allowed, rule = False, verdict.hold
    return _Round(number, champ_mv, champ_date, results, champion_note, pythons, verdict, allowed, rule, started)


def _report(thresholds, cand, r, compared):
    """The gate's report of round ``r`` (metrics.json); ``compared``: the serving model of each round so far."""
    return {
        "dataset_version": cand.version,
        "run_id": cand.run_id,
        "model_version": cand.mv,
        "model_digest": cand.digest,
        "candidate": r.candidate,
        "champion": r.champion,
        "champion_model_version": r.champ_mv if r.champion else None,
        "champion_note": r.champion_note,
        "thresholds": dataclasses.asdict(thresholds),
        "passed": r.passed,
        "failed_rules": r.reasons,
        "gate": {"mode": thresholds.gate, "decided_by": r.verdict.decided_by, "warnings": r.verdict.warnings,
                 "statistics": r.verdict.statistics},
        "promotion": {"policy": cand.policy, "decision": r.decision, "rule": r.decided_by,
                      "policy_rule": r.rule, "data_date": cand.data_date, "serving_model": r.champ_mv,
                      "serving_data_date": r.champ_date, "round": r.number, "compared_with": list(compared)},
        "eval_seconds": round(time.time() - r.started, 1),
        "executor_python": r.executor_python,
        "git_revision": git_revision(),
        "params": cand.params,
    }


def _event(cand, r):
    """The facts of round ``r`` for the serving history (serving.reject, serving.promote)."""
    candidate, champion = r.candidate, r.champion
    return {"run_id": cand.run_id, "dataset_version": cand.version, "data_date": cand.data_date,
            "accuracy": candidate["accuracy"], "loss": candidate["loss"], "examples": candidate["examples"],
            "eval_data": f"eval split of dataset version {cand.version} ({candidate['examples']} examples)",
            "champion_accuracy": champion["accuracy"] if champion else None, "compared_with": r.champ_mv,
            "rounds": r.number, "policy": cand.policy, "rule": r.decided_by, "gate_passed": r.passed,
            "gate": _gate_record(r.verdict), "report": cand.report_dir}


def _gate_record(verdict):
    """The gate's decision and statistics as the serving history keeps them: the rule that decided, the
    discordant counts, the p-values (overall both sides and two-sided; per class one-sided "serving
    better" after Holm), the Wilson intervals of both accuracies and the paired interval of their
    difference (None without a serving model)."""
    stats = verdict.statistics
    record = {"decided_by": verdict.decided_by}
    if stats is None:
        return record
    return dict(record, **{k: stats[k] for k in (
        "cand_only", "serving_only", "p_serving_better", "p_candidate_better", "p_two_sided", "decidable",
        "accuracy_interval", "serving_accuracy_interval", "difference", "difference_interval")},
        p_holm_by_class={cls: m["p_holm"] for cls, m in stats["per_class"].items()},
        lost_classes=[cls for cls, m in stats["per_class"].items() if m["lost"]])


def _summary(cand, r, compared):
    """The RESULT summary of round ``r`` (the caller adds what promotion did)."""
    candidate, champion = r.candidate, r.champion
    return {"accuracy": candidate["accuracy"], "loss": candidate["loss"], "examples": candidate["examples"],
            "champion_accuracy": champion["accuracy"] if champion else None, "report": cand.report_dir,
            "decision": r.decision, "rule": r.decided_by, "gate_rule": r.verdict.decided_by, "rounds": r.number,
            "compared_with": list(compared)}


def _gave_up(layout, cand, report, r, compared):
    """The JobError once serving changed during every round (the report of the last round ``r`` says so)."""
    now = serving.current(layout)
    mv, out = cand.mv, cand.report_dir
    report["promotion"].update(decision="not promoted", rule=f"serving changed during each of {MAX_ROUNDS} rounds")
    _write_report(layout, out, report, r.results)
    now_mv = now["model_version"] if now else None
    return JobError(f"model {mv} passed the gate but serving changed during each of its {MAX_ROUNDS} evaluations "
                    f"(compared with {', '.join(str(c) for c in compared)}; now {now_mv}): "
                    "not promoted, serving unchanged by this run; run validate again when other promotions are done. "
                    f"Report: {out}/metrics.json")


def _serving_collapse(params, r):
    """The serving model's accuracy on this eval split against its own (datagate.check_serving_collapse),
    or None when nothing serves, it could not score this data, or the checks are off."""
    if r.champion is None or r.champ_mv is None:
        return None
    return datagate.check_serving_collapse(params, r.champ_mv, r.champion["accuracy"], r.champion["examples"])


def _collapsed(layout, params, cand, report, r, finding):
    """The serving model collapsed on the new eval split: the data changed. Under ``data_checks=fail`` the
    candidate is not promoted (its lead is the data's change, not its merit): the report and the serving
    history say so and JobError is raised; under ``warn`` a WARNING line, and the gate decides."""
    if params.data_checks != "fail":
        print(f"WARNING [validate] {finding.line()}", file=sys.stderr, flush=True)
        return
    rule = f"data check: {finding.line()}"
    report["promotion"].update(decision="rejected", rule=rule)
    _write_report(layout, cand.report_dir, report, r.results)
    serving.reject(layout, cand.mv, dict(_event(cand, r), rule=rule))
    raise DataRefused(f"data check failed: {finding.line()}. The serving model scores far lower on dataset "
                      f"version {cand.version} than on its own data: the data changed (drift); model {cand.mv} is "
                      f"not promoted on this comparison. Check the data (report: {cand.report_dir}/metrics.json), "
                      "or rerun validate with data_checks=warn")


def _mirror(layout, params, cand, report, champion, required=None):
    """Register the candidate in MLflow (tracking.register_candidate) after its decision is committed;
    ``champion``: it serves now, so the alias moves to it."""
    tracking.register_candidate(layout, layout.model_run(cand.version, cand.run_id), cand.mv, report,
                                champion=champion, retry_seconds=params.mlflow_retry_seconds,
                                required=params.mlflow_required == "true" if required is None else required)


def run(spark: SparkSession, params: ValidateParams) -> dict:
    """Judge training run ``params.run_id`` of dataset version ``params.version`` (``params``: the parsed
    validate params, ``jobargs.ValidateParams``; the gate's :class:`GateThresholds` come from them).

    Evaluates the run's exported model and the model serving on the version's eval split, writes the
    report (``validation/{version}/{run}/``) every round, records the decision in ``serving/history/``
    and, when the gate passes and ``params.promotion`` allows it, promotes the model (compare-and-swap
    on the model it was compared with; up to :data:`MAX_ROUNDS` rounds when serving changes meanwhile).

    Returns the RESULT summary: accuracy, loss (mean cross-entropy), examples, champion_accuracy,
    report, decision (``promote``/``held``), rule, gate_rule (the gate rule that decided, ``Verdict.decided_by``),
    rounds, compared_with, and ``promoted`` (the model
    version or None), ``serving_changed``, and ``previous`` or ``serving``. Raises JobError, leaving
    serving unchanged, when the version was not converted, the run did not finish, its model does not
    meet the serving contract, the evaluated examples differ from the manifest's eval rows, the gate
    fails, the promotion fails, or serving changed during every round. A model the significance gate
    cannot judge (too few discordant pairs, ``undecided=hold``) is held like one the promotion policy
    holds: serving unchanged, a ``rejected`` history event with the rule, and the task succeeds.
    """
    tracking.check_required(params.mlflow_required == "true", "validate")
    thresholds = GateThresholds.of(params)
    sc = spark.sparkContext
    layout = paths.Layout(params.data_root)
    cand = _candidate(layout, params)
    # a model trained on a single class or without a class of the schema is never promoted
    data_checks = datagate.check_candidate(params)
    executors(sc, requested_executors(sc), timeout=SPREAD_WAIT_S)  # spread the shards over every executor
    mv, out = cand.mv, cand.report_dir
    compared = []  # the serving model of each round, in order

    for round_ in range(1, MAX_ROUNDS + 1):
        r = _judge(sc, layout, thresholds, cand, round_)
        compared.append(r.champ_mv)
        report = _report(thresholds, cand, r, compared)
        collapse = _serving_collapse(params, r)
        report["data_checks"] = {"candidate": data_checks, "serving_collapse": collapse and collapse.as_dict()}
        if collapse is not None and collapse.anomaly:
            _collapsed(layout, params, cand, report, r, collapse)
        _write_report(layout, out, report, r.results)
        for line in r.verdict.warnings:
            print(f"WARNING [validate] {line}", file=sys.stderr, flush=True)
        gate_rule = "" if r.verdict.decided_by == r.rule else f"; gate: {r.verdict.decided_by}"
        _log(f"round {round_}: {mv} vs {r.champ_mv or 'nothing serving'}: {r.decision} ({r.decided_by}{gate_rule})")
        event = _event(cand, r)
        summary = _summary(cand, r, compared)
        if not r.passed:
            serving.reject(layout, mv, event)
            _mirror(layout, params, cand, report, champion=False, required=False)  # the gate's failure decides
            raise UserError(f"model {mv} rejected, serving unchanged: {'; '.join(r.reasons)}. "
                           f"Report: {out}/metrics.json")
        if not r.allowed:
            serving.reject(layout, mv, event)
            _mirror(layout, params, cand, report, champion=False)
            return dict(summary, promoted=None, serving_changed=False, serving=r.champ_mv)
        candidate = r.candidate
        try:
            pointer = serving.promote(layout, cand.dir, mv, {
                "accuracy": candidate["accuracy"], "loss": candidate["loss"], "examples": candidate["examples"],
                "dataset_version": cand.version, "run_id": cand.run_id, "data_date": cand.data_date, "report": out},
                cand.digest, expected=r.champ_mv, event=event)
        except serving.ChampionChanged as e:
            _log(f"round {round_}: {e}; {'evaluating again against it' if round_ < MAX_ROUNDS else 'giving up'}")
            continue
        except (ValueError, TimeoutError) as e:  # the report and the history must not say it was promoted
            report["promotion"].update(decision="not promoted", rule=f"promotion failed: {e}")
            _write_report(layout, out, report, r.results)
            serving.reject(layout, mv, dict(event, rule=f"gate passed, promotion failed: {e}"))
            raise JobError(f"model {mv} passed the gate but was not promoted, serving unchanged: {e}") from None
        # the compare-and-swap succeeded: CURRENT.json is the truth, the champion alias follows it
        _mirror(layout, params, cand, report, champion=True)
        return dict(summary, promoted=mv, serving_changed=pointer["changed"], previous=pointer["previous"])

    raise _gave_up(layout, cand, report, r, compared)
