"""Airflow side of the pipeline: the operator, its hook, its task links and Assets, and the templates
the DAG fills job flags with.

``TFoSSparkSubmitOperator`` is a thin ``SparkSubmitOperator`` built from its job's spec
(``tfospipe.jobspec``; the Spark conf, environment and ``--py-files`` zip from ``tfospipe.launch``):

* ``application`` is ``jobs/<job>.py``; ``job_args`` (the job's flag values, templated) become its
  ``application_args`` when the task runs, from the rendered values;
* zips ``jobs/tfospipe`` at execute time and ships it with ``--py-files``;
* applies ``launch.spark_conf``: one executor per TensorFlow node with one task slot each, dynamic
  allocation off, ``launch.TF_ENV`` (tf-keras, thread counts: tfospipe.tfenv) and this Python for
  driver and executors (and no Spark task retries for a job whose spec says ``tfos``);
* declares the Asset its job produces (:data:`ASSETS`) and records the dataset version and output
  path on the asset event;
* adds the task links its spec names (the ``tfos_ui`` plugin serves the validation report);
* refuses a run whose conf has a key that is no DAG param (:func:`unknown_conf_keys`), before
  spark-submit and without retries: Airflow itself accepts any key at trigger time;
* on kill (Airflow marks the task failed, times it out, or stops the worker) stops the Spark
  application through its hook (:class:`TFoSSparkSubmitHook`): SIGTERM to spark-submit so its
  shutdown hook stops the SparkContext, then anything left of its process tree.

* passes the MLflow tracking server of the Airflow connection ``mlflow_default`` to train and validate as
  ``MLFLOW_TRACKING_URI`` (:func:`mlflow_env`) unless the environment names one already;
* implements the OpenLineage provider's ``get_openlineage_facets_on_start/complete/failure``: the
  task's input and output datasets under the data root with the facets of what its job committed
  (``tfospipe.lineage_facets``), as does the sensor.

The Spark master comes from the Airflow connection ``spark_default``; the data root from the Airflow
Variable ``tfos_data_root`` (or ``AIRFLOW_VAR_TFOS_DATA_ROOT``). Nothing else names a cluster.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, BaseOperatorLink, BaseSensorOperator, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout
from tfospipe import inputs, jobargs, jobspec, launch, paths
from tfospipe.runner import EXIT_DATA_REFUSED, EXIT_USER_ERROR

#: What a job's exit status says about a retry: the statuses of failures a retry cannot mend (the job's
#: ERROR line says what to fix), with the reason the task log gives for not retrying.
NOT_RETRIED = {
    EXIT_DATA_REFUSED: "its data checks refused the data; fix the data, or rerun with data_checks=warn",
    EXIT_USER_ERROR: "the same input and params would fail the same way; fix what the line names, then clear the "
                     "task or trigger a new run",
}

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_ROOT = os.path.join(PROJECT_DIR, "data")

DATA_ROOT = "{{ var.value.get('tfos_data_root', '%s') }}" % DEFAULT_DATA_ROOT
#: The run's logical date ``YYYY-MM-DD``, else (a manual run triggered without a logical date, the REST
#: API's and the CLI's default in Airflow 3, whose context has no ``ds`` at all) the day it was triggered for.
RUN_DATE = "((ds if ds is defined else none) or dag_run.run_after.strftime('%Y-%m-%d'))"
#: The dataset version: the dataset_version param, else :data:`RUN_DATE`.
VERSION = "{{ params.dataset_version or %s }}" % RUN_DATE
RUN_ID = "{{ run_id }}"
#: The date a run's data stands for (validate's --data-date): the logical date, or the day a manual
#: run was triggered for.
DATA_DATE = "{{ %s }}" % RUN_DATE
#: Executors of a job: the cluster_size param as an integer string, which Spark's settings need. The
#: param's schema (jobargs) admits whole numbers only, but JSON schema counts 2.0 as an integer, so a
#: run triggered with {"cluster_size": 2.0} renders "2" here (Jinja's int filter) rather than "2.0".
CLUSTER_SIZE = "{{ params.cluster_size | int }}"

#: What each job produces, as Airflow Assets (lineage in the UI), from the job specs. Each event's
#: extra names the dataset version and the path written; the data root itself is a runtime Variable.
ASSETS = {job: Asset(name=spec.asset_name, uri=spec.asset_uri) for job, spec in jobspec.SPECS.items()}


#: Titles of the trigger form's fields where the param's name, capitalized, would read badly.
TITLES = {"dataset_version": "Dataset version", "data_wait_timeout": "Wait for data (seconds)",
          "num_shards": "Shards per split", "max_bad_fraction": "Max bad-row fraction", "pixel_max": "Largest pixel value",
          "image_shape": "Image shape (HxW)", "label_column": "Label column index", "compression": "TFRecord compression",
          "input_mode": "Training input mode", "cluster_size": "Cluster size (executors)",
          "num_ps": "Parameter servers", "batch_size": "Training batch size", "learning_rate": "Learning rate",
          "min_accuracy": "Gate: min accuracy", "max_regression": "Gate: max regression", "gate": "Gate rule",
          "alpha": "Gate: significance level alpha", "require_improvement": "Gate: require improvement",
          "undecided": "Gate: when undecided", "promotion": "Promotion policy", "data_checks": "Data checks",
          "mlflow_required": "MLflow required",
          "inference_batch_size": "Inference batch size", "inference_mode": "Inference mode"}

#: The Airflow connection naming the MLflow tracking server (:func:`mlflow_env`).
MLFLOW_CONN_ID = "mlflow_default"


def mlflow_env() -> dict[str, str]:
    """The environment that points a job at the MLflow tracking server (tfospipe.tracking): {} when this
    process's environment has ``MLFLOW_TRACKING_URI`` already (spark-submit inherits it) or there is no
    Airflow connection :data:`MLFLOW_CONN_ID` (MLflow stays off); otherwise ``MLFLOW_TRACKING_URI`` built
    from the connection (host, which may hold the scheme, else ``http://`` or the connection's schema as
    the scheme; port; extra ``path``), its login and password as ``MLFLOW_TRACKING_USERNAME`` and
    ``MLFLOW_TRACKING_PASSWORD``, and its extra ``experiment_name`` as ``MLFLOW_EXPERIMENT_NAME``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return {}
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException
    try:
        conn = BaseHook.get_connection(MLFLOW_CONN_ID)
    except AirflowNotFoundException:
        return {}
    host = (conn.host or "").rstrip("/")
    if not host:
        return {}
    uri = host if "://" in host else f"{conn.schema or 'http'}://{host}"
    if conn.port:
        uri += f":{conn.port}"
    extra = conn.extra_dejson or {}
    env = {"MLFLOW_TRACKING_URI": uri + (("/" + str(extra["path"]).strip("/")) if extra.get("path") else "")}
    if conn.login:
        env["MLFLOW_TRACKING_USERNAME"] = conn.login
    if conn.password:
        env["MLFLOW_TRACKING_PASSWORD"] = conn.password
    if extra.get("experiment_name"):
        env["MLFLOW_EXPERIMENT_NAME"] = str(extra["experiment_name"])
    return env


def openlineage_facets(task: str, values: Mapping[str, Any], complete: bool) -> Any:
    """The provider's ``OperatorLineage`` of task ``task`` for its rendered flag values ``values``
    (``data_root``, ``version``, ``run_id``): the input and output datasets of
    ``tfospipe.lineage_facets.task_lineage``, with the facets of what the job committed when ``complete``.
    Imported here: the OpenLineage provider loads only where lineage is on."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from tfospipe import lineage_facets
    inputs, outputs = lineage_facets.task_lineage(task, values, complete)
    return OperatorLineage(inputs=inputs, outputs=outputs)


#: The default of ``data_wait_timeout`` (seconds): how long a scheduled run waits for its data. A deployment
#: may set another with the environment variable ``TFOS_DATA_WAIT_TIMEOUT`` where the DAG is parsed.
DATA_WAIT_TIMEOUT_S = 6 * 3600


def title(name: str) -> str:
    """The trigger form's label of param ``name``: :data:`TITLES`, else the name capitalized with spaces."""
    return TITLES.get(name) or name.replace("_", " ").capitalize()


def pipeline_params() -> dict[str, Param]:
    """The DAG's params, in the trigger form's order: the dataset version, how long a scheduled run waits
    for it, then every field of the jobs' params dataclasses that jobargs marks as a DAG param
    (jobargs.dag_params), each with a title, its JSON schema (the rule its job checks the flag with, so a
    value the trigger accepts is one every job accepts) and a description that ends with its valid range
    and unit (jobargs.describe)."""
    wait_default = int(os.environ.get("TFOS_DATA_WAIT_TIMEOUT") or DATA_WAIT_TIMEOUT_S)
    params = {
        # Optional (null allowed), so the UI's trigger form accepts it left empty.
        "dataset_version": Param(
            None, title=title("dataset_version"), **jobargs.DATASET_VERSION,
            description="Directory under raw/ to process; empty = the run's logical date (YYYY-MM-DD). Valid: "
                        + jobargs.DATASET_VERSION_TEXT + "."),
        "data_wait_timeout": Param(
            wait_default, title=title("data_wait_timeout"), **jobargs.DATA_WAIT_TIMEOUT,
            description=jobargs.describe(
                "how long a scheduled run waits for its dataset version's input files under raw/<version>/ "
                "before it ends failed (task wait_for_data, looking every 30 s to 5 min); 0 = look once. Manual runs "
                "and backfills do not wait: they fail at once when the version has no input",
                jobargs.DATA_WAIT_TIMEOUT, "seconds")),
    }
    for spec in jobspec.SPECS.values():
        for name, default, _help, schema in jobargs.dag_params(spec.name):
            if name in params:
                continue
            arg = jobargs.dag_param_specs()[name]
            params[name] = Param(default, title=title(name), **schema,
                                 description=f"{spec.name}: " + jobargs.describe(arg.help, schema, arg.unit, arg.hint))
    return params


_REFUSAL = re.compile(r"Invalid input for param (\w+): ")
_INSTANCE = re.compile(r"\nOn instance:\n(.*)\Z", re.S)


@functools.cache
def _params_by_name() -> dict[str, Param]:
    return pipeline_params()


def readable_refusal(detail: str) -> str | None:
    """A plain sentence for Airflow's refusal of a run's param (``Invalid input for param NAME: <jsonschema's
    message, the failed subschema and the value>``, the API server's HTTP 400 detail): the param's title and
    name, the value given, and what a valid one is (its range and unit, from the param's description), e.g.
    ``Epochs (epochs): 5000 is refused: use an integer from 1 to 1000 (unit: epochs). No run was created;
    correct the value and trigger again.`` None when ``detail`` is no such refusal or names no param of
    this DAG."""
    m = _REFUSAL.match(detail or "")
    param = _params_by_name().get(m.group(1)) if m else None
    if param is None:
        return None
    name = m.group(1)
    found = _INSTANCE.search(detail)
    value = " ".join(found.group(1).split()) if found else None
    valid = (param.description or "").split("Valid: ", 1)[-1].rstrip(".") or jobargs.expected(param.schema)
    given = f"{value} is refused" if value is not None else "the value is refused"
    return (f"{title(name)} ({name}): {given}: use {valid}. No run was created; correct the value and "
            "trigger again.")


def _link_base() -> str:
    from airflow.configuration import conf
    return conf.get("api", "base_url", fallback="").rstrip("/")


def _version_and_run(operator: Any) -> tuple[str, str] | None:
    """(dataset version, run id as a path segment) of the task's rendered ``job_args``, or None when
    it has no version or run id. Raises PathError for a run id that makes no path segment."""
    values = getattr(operator, "job_args", None) or {}
    version, run = values.get("version"), values.get("run_id")
    if not (version and run):
        return None
    return str(version), paths.run_slug(run)


class ValidationReportLink(BaseOperatorLink):
    """The gate's report of this run (metrics side by side, confusion matrices), served by tfos_ui.

    Airflow computes a task's links on the worker when the task ends, from the task with its
    template fields rendered, and stores them as XComs (``xcom_key``); the UI reads those. So
    ``operator.job_args`` holds the run's actual version and run id here.
    """

    name = jobspec.VALIDATION_REPORT

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        """``{api base_url}/tfos/reports/<version>/<run slug>/``, or "" without a version and run id."""
        found = _version_and_run(operator)
        if found is None:
            return ""
        version, run = found
        return f"{_link_base()}/tfos/reports/{version}/{run}/"


class TensorBoardLink(BaseOperatorLink):
    """TensorBoard (Variable ``tfos_tensorboard_url``, started with ``--logdir {data_root}/models``)
    filtered to this run's event logs (rendered ``job_args``, as :class:`ValidationReportLink`)."""

    name = jobspec.TENSORBOARD

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        """``{tfos_tensorboard_url}/?pinnedCards=&runFilter=<version>/<run slug>#timeseries``, or ""
        without a version and run id."""
        from airflow.sdk import Variable
        found = _version_and_run(operator)
        if found is None:
            return ""
        version, run = found
        url = Variable.get("tfos_tensorboard_url", default="http://127.0.0.1:6006").rstrip("/")
        return f"{url}/?pinnedCards=&runFilter={version}/{run}#timeseries"


class DataReportLink(BaseOperatorLink):
    """The data report of this task's data checks on its dataset version (datagate: train, validate,
    infer), served by tfos_ui from ``data-checks/{version}/{task}.html`` (rendered ``job_args``, as
    :class:`ValidationReportLink`)."""

    name = jobspec.DATA_REPORT

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        """``{api base_url}/tfos/data-checks/<version>/<task id>``, or "" without a version."""
        version = (getattr(operator, "job_args", None) or {}).get("version")
        if not version:
            return ""
        return f"{_link_base()}/tfos/data-checks/{version}/{operator.task_id}"


#: The link class of each link name a job spec may list.
LINKS = {link.name: link for link in (ValidationReportLink, TensorBoardLink, DataReportLink)}


def _key_form(name: str) -> str:
    """A conf key as compared for suggestions: lower case, ``-`` as ``_`` (``Learning-Rate`` ~ ``learning_rate``)."""
    return name.lower().replace("-", "_")


def unknown_conf_keys(conf: Mapping[str, Any] | None, valid: Iterable[str]) -> str | None:
    """What is wrong with a run's conf whose keys are not all in ``valid`` (the DAG's param names), in
    one line, or None when every key is one of them (an empty or None conf included).

    Each unknown key is named with the closest valid name when there is one (difflib's
    ``get_close_matches`` on the lower-case, ``_``-for-``-`` forms), e.g. ``unknown conf key 'epoch'
    (did you mean 'epochs'?)``, followed by every valid key and what to do. Airflow 3 accepts a conf
    key that is no param (it adds it to the run's params), so without this check a misspelt
    ``{"epoch": 10}`` would train silently with the default.
    """
    valid = sorted(valid)
    unknown = [key for key in (conf or {}) if key not in valid]
    if not unknown:
        return None
    forms = {}
    for name in valid:
        forms.setdefault(_key_form(name), name)
    named = []
    for key in unknown:
        close = difflib.get_close_matches(_key_form(str(key)), list(forms), n=1)
        named.append(f"{str(key)!r}" + (f" (did you mean {forms[close[0]]!r}?)" if close else ""))
    keys = "key " if len(unknown) == 1 else "keys "
    return (f"unknown conf {keys}{', '.join(named)}: a run's conf may set only the DAG's params ({', '.join(valid)}); "
            f"the task started no Spark job. Trigger the run again (or create the backfill again with "
            f"--dag-run-conf) with the key{'s' if len(unknown) > 1 else ''} corrected; the trigger form lists every "
            "param with its meaning")


def check_conf(task: Any, context: Any, name: str) -> None:
    """Refuse a run whose conf (``context["dag_run"].conf``) has a key that is no param of ``task``'s DAG:
    log ``ERROR [<name>] unknown conf key ...`` (:func:`unknown_conf_keys`) and raise AirflowFailException
    with the same line, so the task fails at once and is not retried. Nothing when the conf is empty or
    every key is a param, or the context has no run (a bare ``execute``)."""
    dag_run = context.get("dag_run") if hasattr(context, "get") else None
    conf = getattr(dag_run, "conf", None)
    valid = set(task.params or {}) | (set(task.dag.params) if task.has_dag() else set())
    problem = unknown_conf_keys(conf, valid)
    if problem is not None:
        line = f"ERROR [{name}] {problem}"
        task.log.error(line)
        raise AirflowFailException(line)


class TFoSSparkSubmitHook(SparkSubmitHook):
    """The provider's hook, stopping spark-submit's whole process tree when the task is killed."""

    #: Seconds between the SIGTERM and the SIGKILL of what is left. Airflow's task supervisor
    #: escalates to SIGKILL 5 s after its own SIGTERM, so this stays short.
    KILL_GRACE_S = 3

    #: The last ``ERROR [job] ...`` line spark-submit's output held (the job's own, whole), or None.
    error_line: str | None = None

    def _process_spark_submit_log(self, itr: Iterable[Any]) -> None:
        """The provider's processing of spark-submit's output (every line logged), remembering the last
        line that starts with ``ERROR [`` as :attr:`error_line`."""
        def lines():
            for line in itr:
                text = line.strip() if isinstance(line, str) else line
                if isinstance(text, str) and text.startswith("ERROR ["):
                    self.error_line = text
                yield line
        super()._process_spark_submit_log(lines())

    def on_kill(self) -> None:
        """Stop the Spark application: :meth:`stop_submit_tree`, then the provider's own kill steps
        (driver kill in cluster mode, Kubernetes pod deletion, post-submit commands)."""
        self.stop_submit_tree()
        super().on_kill()

    def stop_submit_tree(self) -> None:
        """SIGTERM to spark-submit (its shutdown hook stops the SparkContext, and the cluster ends the
        application and its executors) and to every process under it (the Python driver), then
        SIGKILL to whatever is left after :data:`KILL_GRACE_S` seconds. Nothing when spark-submit is
        not running. Processes that end on their own meanwhile are skipped; nothing is raised for them."""
        proc = self._submit_sp
        if proc is None or proc.poll() is not None:
            return
        import psutil
        try:
            root = psutil.Process(proc.pid)
            tree = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        self.log.info("Stopping the Spark application: SIGTERM to spark-submit (pid %s) and its children", proc.pid)
        for p in tree:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _gone, alive = psutil.wait_procs(tree, timeout=self.KILL_GRACE_S)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


class TFoSSparkSubmitOperator(SparkSubmitOperator):
    """spark-submit of ``jobs/<job>.py`` with the pipeline's conf, arguments and ``--py-files`` zip.

    ``job``: a job of :data:`tfospipe.jobspec.SPECS` (ValueError otherwise); ``job_args``: its flag
    values by name (str or Jinja templates; KeyError for a name that is no flag of the job);
    ``cluster_size``: executors, an integer string or a template rendering to one. The other keyword
    arguments go to ``SparkSubmitOperator`` (pool, retries, timeouts, ``conn_id``...).

    ``application_args`` holds the job's argv as the DAG declares it (templates, what the DAG tests
    render); the task runs with the argv of the rendered ``job_args`` (the templated field).
    """

    template_fields = tuple(f for f in SparkSubmitOperator.template_fields if f != "application_args") + ("job_args",)

    def __init__(self, *, job: str, job_args: Mapping[str, Any], cluster_size: str = CLUSTER_SIZE,
                 **kwargs: Any) -> None:
        spec = jobspec.get(job)
        super().__init__(
            application=spec.application,
            application_args=spec.argv(job_args),
            conf=launch.spark_conf(cluster_size, tfos=spec.tfos),
            # a runner.UserError exits with EXIT_USER_ERROR, which fails the task without a retry
            env_vars=dict(launch.TF_ENV, TFOS_EXIT_USER_ERROR=str(EXIT_USER_ERROR)),
            name=spec.app_name,
            conn_id=kwargs.pop("conn_id", "spark_default"),
            outlets=[ASSETS[job]],
            **kwargs,
        )
        self.job = job
        self.job_args = dict(job_args)

    @property
    def job_spec(self) -> jobspec.JobSpec:
        """This task's job spec."""
        return jobspec.get(self.job)

    @property
    def operator_extra_links(self) -> tuple[BaseOperatorLink, ...]:
        """One link per name in the job spec's ``links`` (:data:`LINKS`)."""
        return tuple(LINKS[name]() for name in self.job_spec.links)

    def _get_hook(self) -> TFoSSparkSubmitHook:
        """The provider's hook, as ``SparkSubmitOperator._get_hook`` builds it (every setting passed
        through, whatever the provider's version adds), made a :class:`TFoSSparkSubmitHook`: that class
        adds methods and no state, so the instance changes class in place. The provider's ``on_kill``
        calls its ``on_kill``. TypeError when the provider builds a hook of another class."""
        hook = super()._get_hook()
        if type(hook) is not SparkSubmitHook:
            raise TypeError(f"SparkSubmitOperator._get_hook built a {type(hook).__name__}, not a SparkSubmitHook: "
                            "TFoSSparkSubmitHook cannot extend it")
        hook.__class__ = TFoSSparkSubmitHook
        return hook

    def check_conf(self, context: Any) -> None:
        """:func:`check_conf` for this task (its lines name the job)."""
        check_conf(self, context, self.job)

    def fail_user_error(self) -> None:
        """After spark-submit failed: when the job exited with a status of :data:`NOT_RETRIED`
        (runner.EXIT_DATA_REFUSED: its data checks refused the data under data_checks=fail;
        runner.EXIT_USER_ERROR: a runner.UserError such as no input, too many bad rows, a failed gate, params
        that do not fit together, too few executors, or an argument the job refused), raise
        AirflowFailException (its context suppressed), so the task fails at once without a retry. Its message,
        which ends the task log, is the job's whole ``ERROR [job] ...`` line (as spark-submit printed it) and why it is not retried.
        Nothing for any other failure (a lost executor, a store timing out, a killed job: those are retried)."""
        hook = getattr(self, "_hook", None)
        proc = getattr(hook, "_submit_sp", None)
        why = NOT_RETRIED.get(getattr(proc, "returncode", None))
        if why is None:
            return
        error = getattr(hook, "error_line", None) or (
            f"ERROR [{self.job}] the {self.job} job refused its arguments or input for dataset version "
            f"{self.job_args.get('version')} (see its output above)")
        line = f"{error} -- not retried: {why}"
        self.log.error(line)
        # from None: Airflow's closing "Task failed with exception" entry then holds this line alone, not the
        # provider's chained "Cannot execute: spark-submit ..." with the whole argv and output tail again
        raise AirflowFailException(line) from None

    def execute(self, context: Any) -> Any:
        """Check the run's conf (:meth:`check_conf`: AirflowFailException for a key that is no DAG param,
        before anything runs), add the MLflow server of the connection to the environment of a job that
        mirrors to MLflow (:func:`mlflow_env`; its params have ``mlflow_required``), build the argv from the rendered ``job_args`` and the ``--py-files`` zip,
        run spark-submit (the provider raises AirflowException when it fails), then record the dataset
        version and the path published on the job's Asset event. Returns what
        ``SparkSubmitOperator.execute`` returns."""
        self.check_conf(context)
        spec = self.job_spec
        if any(a.name == "mlflow_required" for a in spec.args):  # the jobs that mirror to MLflow (train, validate)
            self.env_vars = dict(self.env_vars or {}, **mlflow_env())
        self.application_args = spec.argv(self.job_args)
        self.py_files = launch.build_zip(launch.BUILD_DIR)
        try:
            result = super().execute(context)
        except AirflowException:
            self.fail_user_error()
            raise
        context["outlet_events"][ASSETS[self.job]].extra = {
            "dataset_version": str(self.job_args["version"]), "path": spec.written(self.job_args)}
        return result


    def get_openlineage_facets_on_start(self) -> Any:
        """OpenLineage (provider's DefaultExtractor): the job's input and output datasets, named only."""
        return openlineage_facets(self.job, self.job_args, complete=False)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the job's datasets with the facets of what it committed (schema, row counts, splits,
        quarantine, data statistics, model figures: tfospipe.lineage_facets)."""
        return openlineage_facets(self.job, self.job_args, complete=True)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """OpenLineage: the job's datasets, named only (a failed job committed nothing new)."""
        return openlineage_facets(self.job, self.job_args, complete=False)


class TFoSInputSensor(BaseSensorOperator):
    """Waits until the run's dataset version has input: ``raw/<version>/`` holds a file (``tfospipe.inputs.input_entries``).

    It looks for the input files themselves, not for a ``_SUCCESS`` marker (most producers of CSV write
    none); a producer that writes a version's files in place should write each under a hidden name and
    rename it, as Spark and Hadoop do, so that a half-written file is never seen.

    * **Scheduled runs wait**, in ``reschedule`` mode (no worker slot is held between looks), up to
      ``wait_timeout`` seconds (the ``data_wait_timeout`` param, rendered), looking every
      :meth:`poke_seconds` (30 s to 5 min). When the time is up the task fails, not retried (Airflow's
      AirflowSensorTimeout), and its log ends with one ``ERROR [wait_for_data]`` line naming the version,
      the directory, how long it waited and what to do.
    * **Manual runs and backfills do not wait**: they name a version that should exist, so they go on at
      once when it has input and otherwise fail at once, not retried (AirflowFailException), with one
      ``ERROR [wait_for_data] no input for dataset version ...`` line.

    The run's conf is checked first (:func:`check_conf`), as the Spark tasks do, so that a misspelt key
    fails the run before it waits for anything.
    """

    template_fields = ("data_root", "version", "wait_timeout")
    ui_color = "#f3e8d0"

    def __init__(self, *, data_root: str = DATA_ROOT, version: str = VERSION,
                 wait_timeout: str = "{{ params.data_wait_timeout }}", **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("retries", 0)  # a timeout is final (Airflow does not retry AirflowSensorTimeout either)
        super().__init__(**kwargs)
        self.data_root, self.version, self.wait_timeout = data_root, version, wait_timeout

    #: The shortest time between two looks. Shorter ones meet a race in Airflow 3.3's scheduler: when the
    #: reschedule date passes before the executor has reported the previous look's end (a worker finishing
    #: a few seconds late on a busy machine), the scheduler queues the next look under the same key and then
    #: takes the old "success" event for it, and fails the task ("finished with state success, but the task
    #: instance's state attribute is queued"), which happened with 5 s.
    MIN_POKE_S = 30.0

    @classmethod
    def poke_seconds(cls, timeout: float) -> float:
        """Seconds between two looks: a tenth of the timeout, at least :data:`MIN_POKE_S` and at most 300 s."""
        return min(300.0, max(cls.MIN_POKE_S, timeout / 10))

    def raw_dir(self) -> str:
        return paths.Layout(str(self.data_root)).raw(str(self.version))

    def poke(self, context: Any) -> bool:
        raw_dir = self.raw_dir()
        found = inputs.input_entries(raw_dir)
        if found:
            self.log.info("Dataset version %s has input in %s: %s", self.version, raw_dir,
                          ", ".join(found[:10]) + (" ..." if len(found) > 10 else ""))
            return True
        run_type = getattr(context.get("dag_run"), "run_type", None)
        if str(getattr(run_type, "value", run_type)) != "scheduled":
            line = (f"ERROR [{self.task_id}] no input for dataset version {self.version}: {raw_dir} holds no input "
                    f"file (a {getattr(run_type, 'value', run_type) or 'manual'} run does not wait for data; "
                    "only scheduled runs do). Put the version's CSV files there, or name another version in "
                    "dataset_version, then clear this task or trigger a new run -- not retried")
            self.log.error(line)
            raise AirflowFailException(line)
        self.log.info("Waiting for dataset version %s: no input file in %s yet (looking every %.0f s, up to %.0f s "
                      "in all: data_wait_timeout)", self.version, raw_dir, self.poke_interval, self.timeout)
        return False

    def execute(self, context: Any) -> Any:
        """:func:`check_conf`, then the sensor's loop with ``timeout`` = the rendered ``wait_timeout``; a
        timeout becomes one ``ERROR [wait_for_data]`` line (logged, and the AirflowSensorTimeout's message)."""
        check_conf(self, context, self.task_id)
        self.timeout = float(self.wait_timeout)
        self.poke_interval = self.poke_seconds(self.timeout)
        try:
            return super().execute(context)
        except AirflowSensorTimeout:
            line = (f"ERROR [{self.task_id}] dataset version {self.version} did not arrive: no input file in "
                    f"{self.raw_dir()} after waiting {self.timeout:.0f} s (data_wait_timeout), so this run ends "
                    "here with nothing processed -- not retried. When the files are there, clear this task (the run "
                    f"goes on) or trigger a run with dataset_version {self.version}; to wait longer every day, set "
                    "TFOS_DATA_WAIT_TIMEOUT (seconds) where the DAG is parsed")
            self.log.error(line)
            raise AirflowSensorTimeout(line) from None

    def _lineage_values(self) -> dict[str, str]:
        return {"data_root": str(self.data_root), "version": str(self.version)}

    def get_openlineage_facets_on_start(self) -> Any:
        """OpenLineage: the input ``raw/<version>`` it waits for."""
        return openlineage_facets("wait_for_data", self._lineage_values(), complete=False)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: ``raw/<version>`` with its count of input files."""
        return openlineage_facets("wait_for_data", self._lineage_values(), complete=True)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """OpenLineage: ``raw/<version>``, which had no input."""
        return openlineage_facets("wait_for_data", self._lineage_values(), complete=False)
