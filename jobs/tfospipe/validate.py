"""validate: the gate between training and serving.

Loads the chief-exported SavedModel of this run (its signature is checked against model.py and the
dataset's image shape), evaluates it on the version's eval split distributed over the executors,
and evaluates the model now serving (the champion) on the same records in the same pass. The gate:

1. the candidate's accuracy >= ``min_accuracy``;
2. when a champion serves: candidate accuracy >= champion accuracy - ``max_regression``;
3. every output is a finite probability vector summing to 1.

``{root}/validation/{version}/{run}/`` gets ``metrics.json``, ``confusion_matrix.png`` and ``report.md``
(both models side by side, and the promotion rule that decided) for every run, passed or not. Only a
passed gate promotes, and only when the promotion policy (``--promotion``, :func:`promotion_rule`)
allows it: the model is copied to ``{root}/serving/models/{model_version}/`` and
``serving/CURRENT.json`` is swapped to point at it. A failed gate changes nothing serving and fails
the task; a model the policy holds back changes nothing serving and the task succeeds. Every
decision is recorded in ``serving/history/`` (``serving.record``).

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

import datetime
import time

from . import dataset, fs, metrics, paths, predict, report as report_lib, serving
from .runner import JobError, executors, git_revision, requested_executors

EVAL_BATCH = 512
#: Evaluations of one candidate against a serving model that keeps changing before the task gives up.
MAX_ROUNDS = 3


def evaluate_partition(models, image_shape):
    """Executor side: one metrics accumulator per model over this partition's files."""
    def run(files):
        files = list(files)
        accs = {name: metrics.empty() for name in models}
        if files:
            fns = {name: predict.loaded_model(path, image_shape) for name, path in models.items()}
            for images, labels, _ids in predict.batches(files, image_shape, EVAL_BATCH):
                for name, fn in fns.items():
                    probabilities, _classes = fn(images)
                    metrics.update(accs[name], labels, probabilities)
        yield accs
    return run


def version_date(version: str | None) -> str | None:
    """``version`` itself when it is a calendar date ``YYYY-MM-DD``, else None (``mnist-v2``)."""
    if isinstance(version, str) and len(version) == 10:
        try:
            return datetime.date.fromisoformat(version).isoformat()
        except ValueError:
            return None
    return None


def data_date(version: str, given: str = "") -> str:
    """``YYYY-MM-DD`` the data of a run stands for: the dataset version when it is a date (a scheduled
    run or a backfill processes ``raw/<logical date>/``), else ``given`` (the run's logical date, which
    the DAG passes), else today in UTC (a job run by hand)."""
    return version_date(version) or given or datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def champion_date(layout, pointer: dict | None) -> str | None:
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


def gate(candidate, champion, args):
    """(passed, reasons): every rule that failed, in words with the figures."""
    reasons = []
    if candidate["bad_outputs"]:
        reasons.append(f"{candidate['bad_outputs']} outputs are not finite probabilities summing to 1")
    if candidate["accuracy"] < args.min_accuracy:
        reasons.append(f"accuracy {candidate['accuracy']:.4f} < min_accuracy {args.min_accuracy:.4f}")
    if champion is not None and candidate["accuracy"] < champion["accuracy"] - args.max_regression:
        reasons.append(f"accuracy {candidate['accuracy']:.4f} trails the serving model's "
                       f"{champion['accuracy']:.4f} by more than max_regression {args.max_regression:.4f}")
    return not reasons, reasons


def _evaluate(sc, layout, candidate_dir, image_shape, eval_files, current):
    """(results by model name, champion note): candidate and serving model on the same records in one pass."""
    models = {"candidate": candidate_dir}
    champion_note = "no model serving yet: judged on thresholds alone"
    if current is not None:
        champion_dir = layout.serving_model(current["model_version"])
        try:
            predict.loaded_model(champion_dir, image_shape)
            models["champion"] = champion_dir
            champion_note = f"compared with serving model {current['model_version']} on the same records"
        except Exception as e:  # e.g. the serving model takes another image shape
            champion_note = f"serving model {current['model_version']} cannot score this data ({e}); thresholds only"
    acc = (sc.parallelize(eval_files, max(len(eval_files), 1))
           .mapPartitions(evaluate_partition(models, image_shape))
           .reduce(lambda a, b: {k: metrics.merge(a[k], b[k]) for k in a}))
    return {name: metrics.summarize(a) for name, a in acc.items()}, champion_note


def _write_report(layout, out, report, results):
    with fs.Staging(out) as stage:
        fs.write_json(stage.file("metrics.json"), report)
        fs.write_bytes(stage.file("confusion_matrix.png"), report_lib.confusion_png(results))
        fs.write_bytes(stage.file("report.md"), report_lib.markdown(report).encode("utf-8"))
        stage.commit({k: report[k] for k in ("dataset_version", "run_id", "model_version", "passed")})


def _log(line):
    print(f"PROMOTION [validate] {line}", flush=True)


def run(spark, args):
    sc = spark.sparkContext
    layout = paths.Layout(args.data_root)
    manifest = dataset.read_manifest(layout, args.version)
    image_shape = tuple(manifest["image_shape"])
    run_dir = layout.model_run(args.version, args.run_id)
    if not fs.is_committed(run_dir):
        raise JobError(f"no finished training run at {run_dir} (no _SUCCESS): run the train task first")
    candidate_dir = layout.exported_model(args.version, args.run_id)
    try:  # the driver checks the signature once before any executor does work
        predict.loaded_model(candidate_dir, image_shape)
    except Exception as e:
        raise JobError(f"the model at {candidate_dir} does not meet the serving contract: {e}") from None
    digest = serving.model_digest(candidate_dir)  # names the model; promote checks the copy against it
    mv = paths.model_version(args.version, args.run_id, digest)
    cand_date = data_date(args.version, args.data_date)
    eval_files = dataset.shard_files(layout, args.version, "eval")
    executors(sc, requested_executors(sc), timeout=30)  # spread the shards over every executor
    out = layout.validation(args.version, args.run_id)
    compared = []  # the serving model of each round, in order

    for round_ in range(1, MAX_ROUNDS + 1):
        current = serving.current(layout)  # the champion this round compares with and the swap expects
        champ_mv = current["model_version"] if current else None
        compared.append(champ_mv)
        started = time.time()
        results, champion_note = _evaluate(sc, layout, candidate_dir, image_shape, eval_files, current)
        candidate, champion = results["candidate"], results.get("champion")
        if candidate["examples"] != manifest["splits"]["eval"]:
            raise JobError(f"evaluated {candidate['examples']} examples, the conversion manifest lists "
                           f"{manifest['splits']['eval']} eval rows")
        passed, reasons = gate(candidate, champion, args)
        champ_date = champion_date(layout, current)
        allowed, rule = promotion_rule(args.promotion, cand_date, champ_mv, champ_date)
        decision = "promote" if passed and allowed else "held" if passed else "rejected"
        decided_by = rule if passed else "gate: " + "; ".join(reasons)
        report = {
            "dataset_version": args.version,
            "run_id": args.run_id,
            "model_version": mv,
            "model_digest": digest,
            "candidate": candidate,
            "champion": champion,
            "champion_model_version": champ_mv if champion else None,
            "champion_note": champion_note,
            "thresholds": {"min_accuracy": args.min_accuracy, "max_regression": args.max_regression},
            "passed": passed,
            "failed_rules": reasons,
            "promotion": {"policy": args.promotion, "decision": decision, "rule": decided_by,
                          "policy_rule": rule, "data_date": cand_date, "serving_model": champ_mv,
                          "serving_data_date": champ_date, "round": round_, "compared_with": list(compared)},
            "eval_seconds": round(time.time() - started, 1),
            "git_revision": git_revision(),
        }
        _write_report(layout, out, report, results)
        _log(f"round {round_}: {mv} vs {champ_mv or 'nothing serving'}: {decision} ({decided_by})")
        event = {"run_id": args.run_id, "dataset_version": args.version, "data_date": cand_date,
                 "accuracy": candidate["accuracy"], "loss": candidate["loss"], "examples": candidate["examples"],
                 "eval_data": f"eval split of dataset version {args.version} ({candidate['examples']} examples)",
                 "champion_accuracy": champion["accuracy"] if champion else None, "compared_with": champ_mv,
                 "rounds": round_, "policy": args.promotion, "rule": decided_by, "gate_passed": passed,
                 "report": out}
        summary = {"accuracy": candidate["accuracy"], "loss": candidate["loss"], "examples": candidate["examples"],
                   "champion_accuracy": champion["accuracy"] if champion else None, "report": out,
                   "decision": decision, "rule": decided_by, "rounds": round_, "compared_with": list(compared)}
        if not passed:
            serving.reject(layout, mv, event)
            raise JobError(f"model {mv} rejected, serving unchanged: {'; '.join(reasons)}. Report: {out}/metrics.json")
        if not allowed:
            serving.reject(layout, mv, event)
            return dict(summary, promoted=None, serving_changed=False, serving=champ_mv)
        try:
            pointer = serving.promote(layout, candidate_dir, mv, {
                "accuracy": candidate["accuracy"], "loss": candidate["loss"], "examples": candidate["examples"],
                "dataset_version": args.version, "run_id": args.run_id, "data_date": cand_date, "report": out},
                digest, expected=champ_mv, event=event)
        except serving.ChampionChanged as e:
            _log(f"round {round_}: {e}; {'evaluating again against it' if round_ < MAX_ROUNDS else 'giving up'}")
            continue
        except (ValueError, TimeoutError) as e:  # the report and the history must not say it was promoted
            report["promotion"].update(decision="not promoted", rule=f"promotion failed: {e}")
            _write_report(layout, out, report, results)
            serving.reject(layout, mv, dict(event, rule=f"gate passed, promotion failed: {e}"))
            raise JobError(f"model {mv} passed the gate but was not promoted, serving unchanged: {e}") from None
        return dict(summary, promoted=mv, serving_changed=pointer["changed"], previous=pointer["previous"])

    now = serving.current(layout)
    report["promotion"].update(decision="not promoted", rule=f"serving changed during each of {MAX_ROUNDS} rounds")
    _write_report(layout, out, report, results)
    raise JobError(f"model {mv} passed the gate but serving changed during each of its {MAX_ROUNDS} evaluations "
                   f"(compared with {', '.join(str(c) for c in compared)}; now {now['model_version'] if now else None}): "
                   "not promoted, serving unchanged by this run; run validate again when other promotions are done. "
                   f"Report: {out}/metrics.json")
