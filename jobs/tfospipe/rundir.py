"""The training run directory ``{root}/models/{version}/{run}/``: prepared before the cluster starts,
checked and committed after it ends.

::

    backup/          BackupAndRestore state: a retried task resumes from the last finished epoch
    tensorboard/     event logs (loss, accuracy, eval) written by the chief
    progress.log     progress lines of the chief, echoed into the driver's (Airflow task's) log
    workers/         one done marker per node: worker index, train and eval steps run, share, final loss;
                     or <node>.error with the traceback of a node that failed
    model/           the exported SavedModel (signature in model.py), renamed into place complete
    _manifest.json   dataset version, params (seed included), plan, final metrics, the data's identity
                     (dataset_identity), library versions, git revision; then _SUCCESS

:func:`prepare_run_dir` starts an attempt, :func:`check_markers` reads the nodes' done markers,
:func:`run_manifest` describes the run and :func:`commit_run` commits it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import TYPE_CHECKING, Any

from . import fs, markers, paths
from .jobargs import TrainParams
from .runner import JobError, executor_python, git_revision, library_versions

if TYPE_CHECKING:
    from .node import NodeSetup
    from .trainplan import Plan

#: What a new attempt removes from the run directory before it starts: everything but backup/.
STALE_ENTRIES = (fs.SUCCESS, fs.MANIFEST, paths.MODEL_DIR, paths.MODEL_STAGING_DIR, paths.MARKERS_DIR,
                 paths.PROGRESS_LOG)


def prepare_run_dir(run_dir: str) -> None:
    """Start an attempt: remove what an earlier attempt left (:data:`STALE_ENTRIES`: its model, markers,
    progress log, manifest and ``_SUCCESS``) but keep ``backup/``, from which training resumes; create
    ``workers/`` for the markers. See :func:`commit_run`."""
    for stale in STALE_ENTRIES:
        fs.rmtree(paths.join(run_dir, stale))
    fs.makedirs(markers.markers_dir(run_dir))


def commit_run(run_dir: str, manifest: dict[str, Any]) -> None:
    """Commit the run: write ``_manifest.json``, then ``_SUCCESS``, the commit marker readers trust.

    Training commits its run directory in place, not with ``fs.Staging`` (an attempt directory published
    by a conditional write of a pointer) as the other jobs do: a retried task must resume from ``backup/`` (BackupAndRestore
    state) inside the run directory, which a fresh staging directory would not hold, and TensorFlow's
    nodes write into the run directory while they train. So an attempt starts by removing everything
    but ``backup/`` (:func:`prepare_run_dir`), the chief renames its complete export
    ``.model.staging`` to ``model/`` (``node.export``), and the driver, having checked every node's done
    marker and the SavedModel, writes the manifest and ``_SUCCESS`` last: a run directory without
    ``_SUCCESS`` is an unfinished (or failed) attempt, whatever else it holds.
    """
    fs.write_json(paths.join(run_dir, fs.MANIFEST), manifest)
    fs.write_bytes(paths.join(run_dir, fs.SUCCESS), b"")


def check_markers(run_dir: str, params: TrainParams, plan: Plan) -> dict[str, dict[str, Any]]:
    """Every node's done marker, ``{node: record}``, once the cluster ended.

    Raises JobError when a training node left none, or (all-reduce) when the nodes ran different step
    counts or more than the budget: their collectives did not line up. A resumed run skips the epochs
    that had finished, every node the same ones, so fewer steps than the budget are fine.
    """
    done = markers.read_done(run_dir)
    missing = [i for i, name in enumerate(markers.worker_names(plan.workers)) if name not in done]
    if missing:
        raise JobError(f"workers {missing} of {plan.workers} left no done marker in {run_dir}/workers: "
                       "they did not finish training; see the executor logs")
    if not params.num_ps:
        budget = (params.epochs * plan.steps_per_epoch, params.epochs * plan.eval_steps)
        ran = {i: (done[name]["steps_run"], done[name]["eval_steps_run"])
               for i, name in enumerate(markers.worker_names(plan.workers))}
        if len(set(ran.values())) > 1 or any(t > budget[0] or e > budget[1] for t, e in ran.values()):
            raise JobError(f"the nodes ran different step counts (train, eval) {ran}, budget {budget}: their "
                           "collectives did not line up; rerun the task, and report this with the executor logs")
    return done

def start_run(layout: paths.Layout, params: TrainParams) -> str:
    """The run directory of ``params.run_id`` for ``params.version`` under ``layout``, prepared for a new
    attempt (:func:`prepare_run_dir`)."""
    run_dir = layout.model_run(params.version, params.run_id)
    prepare_run_dir(run_dir)
    return run_dir


def finish_run(setup: NodeSetup, layout: paths.Layout, started: float,
               data_checks: dict[str, Any] | None = None) -> dict[str, Any]:
    """After the cluster ended: check every node's done marker (:func:`check_markers`) and the chief's
    SavedModel, then commit the run with its manifest (:func:`run_manifest`, :func:`commit_run`), which
    is returned. ``setup``: what the nodes got (run directory, params, plan); ``started``: when
    training started (epoch seconds); ``data_checks``: the record of the data checks run before
    training (datagate.check_training_data), kept in the manifest. Raises JobError when a marker or the export is missing, or the
    nodes' step counts disagree."""
    run_dir, params, plan = setup.run_dir, setup.params, setup.plan
    done = check_markers(run_dir, params, plan)
    model_dir = layout.exported_model(params.version, params.run_id)
    if not fs.exists(paths.join(model_dir, "saved_model.pb")):
        raise JobError(f"the chief exported no SavedModel at {model_dir}")
    manifest = dict(run_manifest(params, plan, done, model_dir, started), data_checks=data_checks)
    commit_run(run_dir, manifest)
    return manifest


def run_manifest(params: TrainParams, plan: Plan, done: dict[str, dict[str, Any]], model_dir: str,
                 started: float) -> dict[str, Any]:
    """The run's ``_manifest.json``: dataset version, params (``dataclasses.asdict(params)``), plan, the
    chief's final metrics, every node's done marker, seconds since ``started`` (epoch seconds), what
    identifies the data read (:func:`dataset_identity`), library versions, git revision."""
    chief = done[markers.name_of("chief", 0)]
    return {
        "dataset_version": params.version,
        "run_id": params.run_id,
        "model_dir": model_dir,
        "image_shape": plan.image_shape,
        "pixel_max": plan.pixel_max,
        "params": dataclasses.asdict(params),
        "steps_per_epoch": plan.steps_per_epoch,
        "eval_steps": plan.eval_steps,
        # records each reading node gets of each split (spark input mode: Spark feeds the train rows)
        "shares": {split: [s["records"] for s in plan.shares[split]] for split in plan.shares},
        "steps_run": chief["steps_run"],
        "final_loss": chief["final_loss"],
        "final_accuracy": chief["final_accuracy"],
        "final_eval_loss": chief["final_eval_loss"],
        "final_eval_accuracy": chief["final_eval_accuracy"],
        "steady_examples_per_second": chief["steady_examples_per_second"],
        "workers": sorted((m for m in done.values() if "worker" in m), key=lambda m: m["worker"]),
        "parameter_servers": sorted((m for m in done.values() if m.get("job_name") == "ps"),
                                    key=lambda m: m["task_index"]),
        "train_seconds": round(time.time() - started, 1),
        # what the run read: a rerun from this manifest checks it (scripts/reproduce.py)
        "dataset": dataset_identity(paths.Layout(params.data_root), params.version, plan),
        "versions": library_versions(),
        "executor_python": executor_python(m["python"] for m in done.values() if "python" in m),
        "git_revision": git_revision(),
    }


def dataset_identity(layout: paths.Layout, version: str, plan: Plan) -> dict[str, Any]:
    """What identifies the data a run read, cheaply (no shard is read): the sha256 of the version's
    conversion manifest (which holds every input file's sha256 and every shard's record count) and the
    bytes of every shard the plan gave the nodes, by path relative to ``tfrecords/{version}/``."""
    base = fs.resolve(layout.tfrecords(version))
    files = sorted({f for shares in plan.shares.values() for share in shares for f in share["files"]})

    def relative(path):
        rel = path[len(base):] if path.startswith(base) else os.path.basename(path)
        return rel.replace("\\", "/").strip("/")

    return {"manifest_sha256": hashlib.sha256(fs.read_bytes(paths.join(base, fs.MANIFEST))).hexdigest(),
            "shard_bytes": {relative(f): fs.size(f) for f in files}}
