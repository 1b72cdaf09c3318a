"""validate: the gate between training and serving.

Loads the chief-exported SavedModel of this run (its signature is checked against model.py and the
dataset's image shape), evaluates it on the version's eval split distributed over the executors,
and evaluates the model now serving (the champion) on the same records in the same pass. The gate:

1. the candidate's accuracy >= ``min_accuracy``;
2. when a champion serves: candidate accuracy >= champion accuracy - ``max_regression``;
3. every output is a finite probability vector summing to 1.

``{root}/validation/{version}/{run}/`` gets ``metrics.json``, ``confusion_matrix.png`` and ``report.md``
(both models side by side) for every run, passed or not. Only a
passed gate promotes: the model is copied to ``{root}/serving/models/{model_version}/`` and
``serving/CURRENT.json`` is swapped atomically to point at it. A failed gate changes nothing serving.

The model version is ``paths.model_version(version, run, digest)`` with the digest of the exported
files taken before evaluation: a run trained again under the same run id (a cleared task, a backfill
that reprocesses completed runs) is promoted under a new name beside the model that served, which
stays as it was; validating the same files again promotes nothing new.
"""

import time

from . import convert, fs, metrics, paths, predict, report as report_lib, serving
from .runner import JobError, executors, git_revision, requested_executors

EVAL_BATCH = 512


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


def run(spark, args):
    sc = spark.sparkContext
    layout = paths.Layout(args.data_root)
    manifest = convert.read_manifest(layout, args.version)
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

    models = {"candidate": candidate_dir}
    current = serving.current(layout)
    champion_note = "no model serving yet: judged on thresholds alone"
    if current is not None:
        champion_dir = layout.serving_model(current["model_version"])
        try:
            predict.loaded_model(champion_dir, image_shape)
            models["champion"] = champion_dir
            champion_note = f"compared with serving model {current['model_version']} on the same records"
        except Exception as e:  # e.g. the serving model takes another image shape
            champion_note = f"serving model {current['model_version']} cannot score this data ({e}); thresholds only"

    eval_files = convert.shard_files(layout, args.version, "eval")
    executors(sc, requested_executors(sc), timeout=30)  # spread the shards over every executor
    started = time.time()
    acc = (sc.parallelize(eval_files, max(len(eval_files), 1))
           .mapPartitions(evaluate_partition(models, image_shape))
           .reduce(lambda a, b: {k: metrics.merge(a[k], b[k]) for k in a}))
    results = {name: metrics.summarize(a) for name, a in acc.items()}
    candidate, champion = results["candidate"], results.get("champion")
    if candidate["examples"] != manifest["splits"]["eval"]:
        raise JobError(f"evaluated {candidate['examples']} examples, the conversion manifest lists "
                       f"{manifest['splits']['eval']} eval rows")
    passed, reasons = gate(candidate, champion, args)
    report = {
        "dataset_version": args.version,
        "run_id": args.run_id,
        "model_version": mv,
        "model_digest": digest,
        "candidate": candidate,
        "champion": champion,
        "champion_model_version": current["model_version"] if champion else None,
        "champion_note": champion_note,
        "thresholds": {"min_accuracy": args.min_accuracy, "max_regression": args.max_regression},
        "passed": passed,
        "failed_rules": reasons,
        "eval_seconds": round(time.time() - started, 1),
        "git_revision": git_revision(),
    }
    out = layout.validation(args.version, args.run_id)
    with fs.Staging(out) as stage:
        fs.write_json(stage.file("metrics.json"), report)
        fs.write_bytes(stage.file("confusion_matrix.png"), report_lib.confusion_png(results))
        fs.write_bytes(stage.file("report.md"), report_lib.markdown(report).encode("utf-8"))
        stage.commit({k: report[k] for k in ("dataset_version", "run_id", "model_version", "passed")})
    summary = {"accuracy": candidate["accuracy"], "loss": candidate["loss"], "examples": candidate["examples"],
               "champion_accuracy": champion["accuracy"] if champion else None, "report": out}
    if not passed:
        raise JobError(f"model {mv} rejected, serving unchanged: {'; '.join(reasons)}. Report: {out}/metrics.json")
    try:
        pointer = serving.promote(layout, candidate_dir, mv, {
            "accuracy": candidate["accuracy"], "loss": candidate["loss"], "examples": candidate["examples"],
            "dataset_version": args.version, "run_id": args.run_id, "report": out}, digest)
    except ValueError as e:
        raise JobError(f"model {mv} passed the gate but was not promoted, serving unchanged: {e}") from None
    return dict(summary, promoted=mv, serving_changed=pointer["changed"], previous=pointer["previous"])
