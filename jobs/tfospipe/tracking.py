"""The MLflow mirror: training runs, registered model versions and the ``champion`` alias.

MLflow is off unless the job's environment names a tracking server (``MLFLOW_TRACKING_URI``; the
Airflow operator sets it from the connection ``mlflow_default`` when the environment has none). Then:

* train's driver logs each committed training run as an MLflow run (:func:`log_training`) in the
  experiment ``MLFLOW_EXPERIMENT_NAME`` (default :data:`EXPERIMENT`): the job's params, the chief's
  per-epoch metrics (``loss``, ``accuracy``, ``eval_loss``, ``eval_accuracy`` at step = epoch, read from
  the ``epoch N/E`` lines of the run's ``progress.log``) and the run's final figures, the run directory's
  ``_manifest.json``, ``progress.log``, ``tensorboard/`` and SavedModel (``model/``) and the data checks'
  report (``data-checks/train.{json,html}``) as artifacts; tags: the dataset version, the Airflow dag,
  run and task ids, the git revision and the run directory (``tfos.run_dir``, by which the run is found
  again);
* validate's driver registers the candidate as a version of the registered model
  :data:`REGISTERED_MODEL` (source: the training run's ``model`` artifact), tagged with its
  ``model_version``, digest, the gate's metrics and the decision (:func:`register_candidate`), and moves
  the alias :data:`CHAMPION` to it when it was promoted; ``scripts/serving.py rollback`` moves the alias
  to the model the rollback made serving (:func:`set_champion`).

The pipeline's own files (``_manifest.json``, ``serving/CURRENT.json`` and its compare-and-swap) stay
the source of truth: MLflow mirrors them after they are committed. Every mirror is retried with
exponential backoff (tenacity) for at most ``retry_seconds`` (the job flag ``--mlflow-retry-seconds``,
default 30); the MLflow client's own HTTP retries are turned down (:data:`CLIENT_ENV`) so that bound
holds. A mirror that still fails prints one ``WARNING [job] MLflow mirror lags: ...`` line naming what
is missing and how to resync (``scripts/serving.py sync-mlflow``), and the job goes on, unless
``mlflow_required`` is true: then it raises :class:`runner.JobError` (the task fails and is retried).

``mlflow`` (the client, package ``mlflow-skinny``) is imported only when a tracking URI is set, so a job
with MLflow off pays nothing for it. Only the drivers call this module: they run on the Airflow host
(client mode), which can reach the tracking server; the executors never import it.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import fs, paths
from .runner import JobError, UserError, git_revision

#: The environment variable naming the tracking server (MLflow's own).
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
#: The experiment of the training runs when ``MLFLOW_EXPERIMENT_NAME`` is not set.
EXPERIMENT = "tfos_pipeline"
#: The registered model every candidate becomes a version of.
REGISTERED_MODEL = "tfos_pipeline"
#: The alias of the registered model's version that serves (``serving/CURRENT.json``).
CHAMPION = "champion"
#: The tag of a training run (and of a model version) naming its run directory: how a run is found again.
RUN_DIR_TAG = "tfos.run_dir"
#: The tag of a model version naming the pipeline's model version ``<version>__<run>__<digest>``.
MODEL_VERSION_TAG = "model_version"

#: The MLflow client's own HTTP retries and timeout, turned down (unless the environment sets them) so
#: that :func:`mirror`'s bounded retries decide how long a server that is down costs: the client's
#: defaults retry 7 times with backoff factor 2 (minutes) and wait 120 s for an answer. A deployment may
#: set any of them in the task's environment; those values are kept.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
              # the client's own "View run" line: ours (MLFLOW [job] ...) names the run and its URL
              "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}

#: What the task log says to resync MLflow with the pipeline's records.
RESYNC = "resync with: python scripts/serving.py sync-mlflow --root {root}"

#: A line of progress.epoch_line (the chief's ``progress.log``).
_EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+ step (\d+) loss (\S+) accuracy (\S+) eval_loss (\S+) "
                         r"eval_accuracy (\S+)", re.M)


#: The Spark properties naming the OpenLineage run of the Airflow task that submitted the job, which the
#: Spark provider sets when ``[openlineage] spark_inject_parent_job_info`` is on (README, "OpenLineage").
OPENLINEAGE_PARENT = ("parentJobNamespace", "parentJobName", "parentRunId", "rootParentJobName",
                      "rootParentRunId")


def openlineage_tags(conf: Any) -> dict[str, str]:
    """``openlineage.<property>`` tags of the :data:`OPENLINEAGE_PARENT` properties a SparkConf (``conf``,
    anything with ``get(key)``) holds: the OpenLineage task run an MLflow record belongs to. {} when the
    properties are not set."""
    found = {f"openlineage.{key}": conf.get(f"spark.openlineage.{key}") for key in OPENLINEAGE_PARENT}
    return {k: str(v) for k, v in found.items() if v}


class MirrorLag(Exception):
    """A mirror that did not reach MLflow within its retries (the last error is its cause)."""


def tracking_uri() -> str | None:
    """The tracking server's URI from ``MLFLOW_TRACKING_URI``, or None: MLflow is off."""
    return os.environ.get(TRACKING_URI_ENV) or None


def check_required(required: bool, job: str) -> None:
    """Raise runner.UserError when ``required`` (the ``mlflow_required`` param) but no tracking server is
    configured: the run would otherwise succeed without the records it was told it must have."""
    if required and not tracking_uri():
        raise UserError(f"mlflow_required is true but no MLflow tracking server is configured for the {job} job: "
                        f"set {TRACKING_URI_ENV} where the task runs, or the Airflow connection mlflow_default "
                        "(README, \"MLflow\"), or trigger with mlflow_required=false")


def client() -> Any:
    """An ``mlflow.MlflowClient`` of :func:`tracking_uri` (imported here: MLflow off costs no import),
    with the client's HTTP retries turned down (:data:`CLIENT_ENV`)."""
    for key, value in CLIENT_ENV.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=tracking_uri())


def _retried(error: BaseException) -> bool:
    """Errors worth another try: MLflow's (HTTP status, refused request), the network's and the store's."""
    import requests
    from mlflow.exceptions import MlflowException
    # not a file of ours that is missing (e.g. a hand-exported model's training manifest): no try mends that
    return isinstance(error, (MlflowException, requests.RequestException, OSError)) and \
        not isinstance(error, FileNotFoundError)


def mirror(job: str, what: str, action: Callable[[Any], Any], *, retry_seconds: float, required: bool,
           root: str) -> Any:
    """Run ``action(client)`` against the tracking server, retried with exponential backoff (0.5 s doubling
    up to 8 s) while it raises a network, HTTP or MLflow error, for at most ``retry_seconds`` in all.
    ``action`` must be idempotent (each try starts over). Returns its result, or None when MLflow is off.

    When every try failed: with ``required`` raises runner.JobError naming the server, ``what`` and the
    error; otherwise prints one ``WARNING [job] MLflow mirror lags: ...`` line (``what`` was not mirrored,
    the error, the tries, and the resync command for ``root``) and returns None. An error of another kind
    (:class:`MirrorLag`: e.g. a model MLflow never registered) ends the tries at once, the same way. No try
    starts after ``retry_seconds``; one try waits at most ``MLFLOW_HTTP_REQUEST_TIMEOUT`` per request.
    """
    uri = tracking_uri()
    if uri is None:
        return None
    import tenacity
    mlflow = client()  # the import and set-up, before the clock of the retries starts
    tries = tenacity.Retrying(stop=tenacity.stop_before_delay(retry_seconds),
                              wait=tenacity.wait_exponential(multiplier=0.5, max=8),
                              retry=tenacity.retry_if_exception(_retried), reraise=True)
    started, count = time.time(), 0
    try:
        for attempt in tries:
            with attempt:
                count += 1
                return action(mlflow)
    except Exception as e:  # noqa: BLE001 -- a mirror never fails a job that succeeded unless required
        error = " ".join(f"{type(e).__name__}: {e}".split())[:400]
        spent = time.time() - started
        if required:
            raise JobError(f"MLflow tracking server {uri} did not take {what} after {count} tries in {spent:.0f} s "
                           f"({error}); mlflow_required is true, so the task fails; the pipeline's own records are "
                           f"committed. Fix the server, then retry the task or {RESYNC.format(root=root)}") from None
        print(f"WARNING [{job}] MLflow mirror lags: {what} is not in MLflow at {uri} after {count} tries with "
              f"backoff in {spent:.0f} s ({error}); the pipeline's own records are committed and stay the source "
              f"of truth; {RESYNC.format(root=root)}", file=sys.stderr, flush=True)
        return None
    return None


def epoch_metrics(progress_log: str) -> list[dict[str, float]]:
    """The chief's per-epoch metrics from the text of a run's ``progress.log``: one dict per ``epoch N/E``
    line, in order, with ``epoch`` (1-based), ``step`` (global step at the epoch's end), ``loss``,
    ``accuracy``, ``eval_loss`` and ``eval_accuracy`` (NaN when the epoch did not evaluate). A resumed run
    repeats no finished epoch, so each epoch appears once (the last line of an epoch wins)."""
    by_epoch = {}
    for m in _EPOCH_LINE.finditer(progress_log):
        by_epoch[int(m[1])] = {"epoch": int(m[1]), "step": int(m[2]), "loss": float(m[3]),
                               "accuracy": float(m[4]), "eval_loss": float(m[5]), "eval_accuracy": float(m[6])}
    return [by_epoch[e] for e in sorted(by_epoch)]


def airflow_tags() -> dict[str, str]:
    """The Airflow dag, run and task ids (and try number) the job runs for, from the ``AIRFLOW_CTX_*``
    variables Airflow sets for the task (spark-submit inherits them); empty outside Airflow."""
    names = {"AIRFLOW_CTX_DAG_ID": "airflow.dag_id", "AIRFLOW_CTX_DAG_RUN_ID": "airflow.run_id",
             "AIRFLOW_CTX_TASK_ID": "airflow.task_id", "AIRFLOW_CTX_TRY_NUMBER": "airflow.try_number"}
    return {tag: os.environ[env] for env, tag in names.items() if os.environ.get(env)}


def _flat_params(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in sorted(params.items())}


def _experiment_id(mlflow: Any) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = mlflow.get_experiment_by_name(name)
    return found.experiment_id if found is not None else mlflow.create_experiment(name)


def find_run(mlflow: Any, run_dir: str) -> Any | None:
    """The finished MLflow run of the training run directory ``run_dir`` (tag :data:`RUN_DIR_TAG`), the
    latest when a run directory was trained and mirrored again under the same run id; None when none."""
    escaped = run_dir.replace("'", "\\'")
    found = mlflow.search_runs([_experiment_id(mlflow)], f"tags.`{RUN_DIR_TAG}` = '{escaped}' "
                               "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                               max_results=1)
    return found[0] if found else None


def _local_copy(files: Iterable[tuple[str, str]], into: str) -> None:
    """Copy each ``(source path on any store, relative target)`` under the local directory ``into``;
    sources that do not exist are skipped."""
    for source, rel in files:
        if not fs.exists(source):
            continue
        target = os.path.join(into, rel)
        if fs.isdir(source):
            fs.copytree(source, target)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with fs.open_read(source) as fin, open(target, "wb") as fout:
                fout.write(fin.read())


def _log_training(mlflow: Any, layout: paths.Layout, run_dir: str, manifest: Mapping[str, Any],
                  extra_tags: Mapping[str, str] | None = None) -> Any:
    """One try of :func:`log_training`: reuse the finished MLflow run of this run directory when its
    manifest digest is the committed one, else create it (deleting an unfinished one a failed try left)."""
    from mlflow.entities import Metric, Param
    manifest_sha = hashlib.sha256(fs.read_bytes(paths.join(run_dir, fs.MANIFEST))).hexdigest()
    done = find_run(mlflow, run_dir)
    if done is not None and done.data.tags.get("tfos.manifest_sha256") == manifest_sha:
        return done
    experiment = _experiment_id(mlflow)
    escaped = run_dir.replace("'", "\\'")
    for stale in mlflow.search_runs([experiment], f"tags.`{RUN_DIR_TAG}` = '{escaped}' and "
                                    "attributes.status != 'FINISHED'"):
        mlflow.delete_run(stale.info.run_id)
    version, run_id = manifest["dataset_version"], manifest["run_id"]
    tags = dict(airflow_tags(), **(extra_tags or {}), **{
        RUN_DIR_TAG: run_dir, "tfos.manifest_sha256": manifest_sha, "dataset_version": version,
        "tfos.run_id": run_id, "git_revision": manifest.get("git_revision") or git_revision(),
        "mlflow.source.git.commit": manifest.get("git_revision") or git_revision(),
        "mlflow.source.name": "jobs/train.py", "mlflow.source.type": "JOB"})
    run = mlflow.create_run(experiment, tags=tags, run_name=f"train {version} {run_id}")
    rid = run.info.run_id
    now = int(time.time() * 1000)
    metrics = []
    for e in epoch_metrics(fs.read_bytes(paths.join(run_dir, paths.PROGRESS_LOG)).decode("utf-8", "replace")
                           if fs.exists(paths.join(run_dir, paths.PROGRESS_LOG)) else ""):
        metrics += [Metric(k, e[k], now, e["epoch"]) for k in ("loss", "accuracy", "eval_loss", "eval_accuracy")
                    if e[k] == e[k]]  # NaN: the epoch did not evaluate
    for key in ("final_loss", "final_accuracy", "final_eval_loss", "final_eval_accuracy", "steps_run",
                "steady_examples_per_second", "train_seconds"):
        if isinstance(manifest.get(key), (int, float)):
            metrics.append(Metric(key, float(manifest[key]), now, 0))
    params = [Param(k, v[:6000]) for k, v in _flat_params(manifest.get("params") or {}).items()]
    for i in range(0, max(len(metrics), len(params)), 100):  # the server takes at most 100 params per batch
        mlflow.log_batch(rid, metrics=metrics[i:i + 100], params=params[i:i + 100])
    with tempfile.TemporaryDirectory(prefix="tfos-mlflow-") as tmp:
        _local_copy([(paths.join(run_dir, fs.MANIFEST), fs.MANIFEST),
                     (paths.join(run_dir, paths.PROGRESS_LOG), paths.PROGRESS_LOG),
                     (paths.join(run_dir, paths.TENSORBOARD_DIR), paths.TENSORBOARD_DIR),
                     (layout.data_checks(version, "train"), "data-checks/train.json"),
                     (layout.data_report(version, "train"), "data-checks/train.html")], tmp)
        mlflow.log_artifacts(rid, tmp)
    with tempfile.TemporaryDirectory(prefix="tfos-mlflow-model-") as tmp:
        _local_copy([(paths.join(run_dir, paths.MODEL_DIR), paths.MODEL_DIR)], tmp)
        mlflow.log_artifacts(rid, os.path.join(tmp, paths.MODEL_DIR), paths.MODEL_DIR)
    mlflow.set_terminated(rid, "FINISHED")
    return mlflow.get_run(rid)


def log_training(layout: paths.Layout, run_dir: str, manifest: Mapping[str, Any], *, job: str = "train",
                 retry_seconds: float = 30, required: bool = False,
                 tags: Mapping[str, str] | None = None) -> str | None:
    """Mirror the committed training run ``run_dir`` (its ``manifest``, as ``rundir.finish_run`` wrote it) as
    an MLflow run (module docstring: params, per-epoch metrics at step = epoch, final metrics, artifacts,
    tags, with ``tags`` added, e.g. :func:`openlineage_tags`), through :func:`mirror`. Idempotent: a
    finished MLflow run of the same run directory and manifest is reused. Returns the MLflow run id, or
    None (MLflow off, or the mirror lags: one WARNING line)."""
    run = mirror(job, f"training run {run_dir}",
                 lambda mlflow: _log_training(mlflow, layout, run_dir, manifest, tags),
                 retry_seconds=retry_seconds, required=required, root=layout.root)
    if run is None:
        return None
    print(f"MLFLOW [{job}] training run {manifest['dataset_version']}/{manifest['run_id']} logged as MLflow run "
          f"{run.info.run_id}: {tracking_uri().rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/"
          f"{run.info.run_id}", flush=True)
    return run.info.run_id


def _registered(mlflow: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException
    try:
        mlflow.get_registered_model(name)
    except MlflowException as e:
        if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        mlflow.create_registered_model(name, description="TFoS pipeline models; alias champion = the model "
                                                         "serving/CURRENT.json names")


def find_version(mlflow: Any, mv: str, name: str = REGISTERED_MODEL) -> Any | None:
    """The registered model version whose :data:`MODEL_VERSION_TAG` is the pipeline's model version ``mv``,
    or None (the latest when several were registered)."""
    found = [v for v in mlflow.search_model_versions(f"name = '{name}'")
             if v.tags.get(MODEL_VERSION_TAG) == mv]
    return max(found, key=lambda v: int(v.version)) if found else None


def _gate_tags(report: Mapping[str, Any]) -> dict[str, str]:
    """The gate's figures of a validation report (``metrics.json``) as model-version tags."""
    candidate, champion = report.get("candidate") or {}, report.get("champion") or {}
    promotion, gate = report.get("promotion") or {}, report.get("gate") or {}
    stats = gate.get("statistics") or {}
    tags = {"model_digest": report.get("model_digest"), "dataset_version": report.get("dataset_version"),
            "tfos.run_id": report.get("run_id"), "decision": promotion.get("decision"),
            "rule": promotion.get("rule"), "gate_mode": gate.get("mode"), "gate_passed": report.get("passed"),
            "accuracy": candidate.get("accuracy"), "loss": candidate.get("loss"),
            "eval_examples": candidate.get("examples"), "serving_model": report.get("champion_model_version"),
            "serving_accuracy": champion.get("accuracy"), "p_serving_better": stats.get("p_serving_better"),
            "p_candidate_better": stats.get("p_candidate_better")}
    return {k: str(v)[:5000] for k, v in tags.items() if v is not None}


def _register(mlflow: Any, layout: paths.Layout, run_dir: str, train_manifest: Mapping[str, Any], mv: str,
              report: Mapping[str, Any], champion: bool) -> Any:
    """One try of :func:`register_candidate`."""
    run = _log_training(mlflow, layout, run_dir, train_manifest)
    _registered(mlflow, REGISTERED_MODEL)
    tags = dict(_gate_tags(report), **{MODEL_VERSION_TAG: mv, RUN_DIR_TAG: run_dir})
    version = find_version(mlflow, mv)
    if version is None or version.run_id != run.info.run_id:
        version = mlflow.create_model_version(REGISTERED_MODEL, f"{run.info.artifact_uri}/{paths.MODEL_DIR}",
                                              run_id=run.info.run_id, tags=tags, await_creation_for=0)
    else:
        for key, value in tags.items():  # a model judged again: its latest decision
            mlflow.set_model_version_tag(REGISTERED_MODEL, version.version, key, value)
    if champion:
        mlflow.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version.version)
    return version


def register_candidate(layout: paths.Layout, run_dir: str, mv: str, report: Mapping[str, Any], *,
                       champion: bool, retry_seconds: float = 30, required: bool = False) -> str | None:
    """Register the candidate ``mv`` (trained in ``run_dir``, judged in ``report``: validate's
    ``metrics.json``) as a version of :data:`REGISTERED_MODEL`, through :func:`mirror`: the training run
    is mirrored first if it is not (:func:`log_training`), the version's source is its ``model`` artifact,
    its tags the pipeline's model version and digest, the gate's figures and the decision. With
    ``champion`` (the candidate serves now: promoted, or it already served) the alias :data:`CHAMPION`
    moves to it. Returns the registry's version number, or None (MLflow off, or the mirror lags)."""
    # the training manifest is read inside the mirror: with MLflow off nothing is read, and a run without one
    # (a model exported by hand) makes the mirror lag, not the job fail
    version = mirror("validate", f"model version {mv}" + (f" and alias {CHAMPION}" if champion else ""),
                     lambda mlflow: _register(mlflow, layout, run_dir, fs.read_json(paths.join(run_dir, fs.MANIFEST)),
                                              mv, report, champion),
                     retry_seconds=retry_seconds, required=required, root=layout.root)
    if version is None:
        return None
    print(f"MLFLOW [validate] {mv} registered as {REGISTERED_MODEL} version {version.version} (decision "
          f"{(report.get('promotion') or {}).get('decision')})" + (f"; alias {CHAMPION} -> version "
                                                                    f"{version.version}" if champion else ""),
          flush=True)
    return str(version.version)


def _set_champion(mlflow: Any, mv: str) -> Any:
    version = find_version(mlflow, mv)
    if version is None:
        raise MirrorLag(f"model {mv} is not registered in MLflow")
    mlflow.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version.version)
    return version


def set_champion(layout: paths.Layout, mv: str, *, job: str = "serving", retry_seconds: float = 30) -> str | None:
    """Move the alias :data:`CHAMPION` to the registered version of the pipeline's model version ``mv``
    (after a rollback's compare-and-swap made it serve), through :func:`mirror`. A model that was never
    registered (promoted while MLflow was off or down) makes the mirror lag: one WARNING line naming the
    resync command. Returns the registry's version number, or None."""
    version = mirror(job, f"alias {CHAMPION} -> {mv}", lambda mlflow: _set_champion(mlflow, mv),
                     retry_seconds=retry_seconds, required=False, root=layout.root)
    if version is None:
        return None
    print(f"MLFLOW [{job}] alias {CHAMPION} of {REGISTERED_MODEL} -> version {version.version} ({mv})", flush=True)
    return str(version.version)


def sync(layout: paths.Layout, *, retry_seconds: float = 30) -> list[str]:
    """Bring MLflow up to the pipeline's records after mirrors lagged: every promoted model of
    ``serving/models/`` whose training run directory is still committed is mirrored (its training run,
    its registered version tagged from its validation report, :func:`register_candidate`), then the alias
    :data:`CHAMPION` is set to the model ``serving/CURRENT.json`` names. Returns one line per model (what
    was done, or why it was skipped). Raises runner.JobError when MLflow is off or the server does not
    answer (each step is required here: the command exists to make MLflow complete)."""
    from . import serving
    if tracking_uri() is None:
        raise JobError(f"MLflow is off: set {TRACKING_URI_ENV} to the tracking server to sync with")
    now = serving.current(layout)
    serving_mv = now["model_version"] if now else None
    lines = []
    for mv in serving.versions(layout):
        info = serving.model_info(layout, mv)
        version, run_id = info.get("dataset_version"), info.get("run_id")
        run_dir = layout.model_run(version, run_id) if version and run_id else None
        if run_dir is None or not fs.is_committed(run_dir):
            lines.append(f"{mv}: skipped, its training run directory {run_dir} is gone or not committed")
            continue
        report_dir = info.get("report") or layout.validation(version, run_id)
        metrics = paths.join(report_dir, paths.METRICS_FILE)
        report = fs.read_json(metrics) if fs.exists(metrics) else {"model_digest": info.get("digest")}
        train_manifest = fs.read_json(paths.join(run_dir, fs.MANIFEST))
        found = mirror("sync", f"model version {mv}",
                       lambda mlflow: _register(mlflow, layout, run_dir, train_manifest, mv, report,
                                                mv == serving_mv),
                       retry_seconds=retry_seconds, required=True, root=layout.root)
        lines.append(f"{mv}: {REGISTERED_MODEL} version {found.version}"
                     + (f", alias {CHAMPION}" if mv == serving_mv else ""))
    return lines
