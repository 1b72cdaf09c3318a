"""DAG integrity: imports cleanly, four Spark tasks in order, arguments the jobs accept, params validated."""
import copy
import os
import types

import jinja2
import pytest
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from tfospipe import jobargs, launch

DAGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "dags")


#: The Spark tasks, in order (the DAG's first task, wait_for_data, is a sensor).
JOBS = ("convert", "train", "validate", "infer")


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=DAGS_DIR)
    assert bag.import_errors == {}
    return bag.get_dag("tfos_pipeline")


def spark_tasks(dag):
    return [dag.get_task(job) for job in JOBS]


def test_a_sensor_then_four_spark_tasks_in_order(dag):
    assert [t.task_id for t in dag.topological_sort()] == ["wait_for_data", "convert", "train", "validate", "infer"]
    for upstream, downstream in [("wait_for_data", "convert"), ("convert", "train"), ("train", "validate"),
                                 ("validate", "infer")]:
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    for task in spark_tasks(dag):
        assert isinstance(task, SparkSubmitOperator)
        assert os.path.isfile(task.application), task.application
        assert task.application.endswith(f"jobs/{task.task_id}.py")
        assert task._conn_id == "spark_default"


def test_schedule_and_training_pool(dag):
    from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable
    assert isinstance(dag.timetable, CronDataIntervalTimetable) and dag.timetable.expression == "0 0 * * *"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.get_task("train").pool == "tfos_training"
    assert dag.get_task("validate").pool == "tfos_serving"


def test_every_pool_the_dag_uses_is_created_by_each_deployment(dag):
    """Airflow never schedules a task whose pool does not exist: the local setup (demo, UI, tests)
    and the compose deployment must both create every pool the DAG's tasks name."""
    import re
    project = os.path.dirname(DAGS_DIR)
    used = {t.pool for t in dag.tasks} - {"default_pool"}
    for path in ("scripts/airflow_setup.sh", "docker-compose.yaml"):
        created = set(re.findall(r"airflow pools set (\w+)", open(os.path.join(project, path)).read()))
        assert used <= created, (path, used - created)


def test_tfos_spark_conf_is_set_on_every_task(dag):
    import tfos_spark
    for task in spark_tasks(dag):
        conf = task.conf
        assert conf["spark.dynamicAllocation.enabled"] == "false"
        assert conf["spark.task.cpus"] == "1" and conf["spark.executor.cores"] == "1"
        assert conf["spark.executor.instances"] == conf["spark.cores.max"] == tfos_spark.CLUSTER_SIZE
        assert {n: conf.get(f"spark.executorEnv.{n}") for n in launch.TF_ENV} == launch.TF_ENV
        assert {n: task.env_vars.get(n) for n in launch.TF_ENV} == launch.TF_ENV
        assert os.path.isabs(conf["spark.pyspark.python"])
    assert dag.get_task("train").conf["spark.task.maxFailures"] == "1"


def _render(value, context):
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(value).render(**context)


@pytest.mark.parametrize("version_param, expected", [(None, "2026-11-28"), ("", "2026-11-28"),
                                                     ("mnist-v2", "mnist-v2")])
def test_rendered_arguments_parse_with_the_job_parsers(dag, version_param, expected):
    params = {name: p.value for name, p in dag.params.items()}
    params["dataset_version"] = version_param
    var = types.SimpleNamespace(value=types.SimpleNamespace(get=lambda key, default=None: default))
    context = {"params": params, "ds": "2026-11-28", "run_id": "scheduled__2026-11-28T00:00:00+00:00", "var": var}
    for task in spark_tasks(dag):
        argv = [_render(a, context) for a in task.application_args]
        args = jobargs.parse(task.task_id, argv)
        assert args.version == expected
        assert os.path.isabs(args.data_root)
        if hasattr(args, "run_id"):
            assert args.run_id == "scheduled__2026-11-28T00.3a00.3a00.2b00.3a00"


@pytest.mark.parametrize("version_param, expected", [(None, "2026-11-29"), ("mnist-v2", "mnist-v2")])
def test_a_run_without_a_logical_date_renders_the_day_it_was_triggered_for(dag, version_param, expected):
    """Airflow 3 triggers from the REST API or the CLI without a logical date by default: no ``ds`` in the
    context (StrictUndefined would fail the render), ``dag_run.run_after`` instead."""
    import datetime
    params = {name: p.value for name, p in dag.params.items()}
    params["dataset_version"] = version_param
    var = types.SimpleNamespace(value=types.SimpleNamespace(get=lambda key, default=None: default))
    dag_run = types.SimpleNamespace(run_after=datetime.datetime(2026, 11, 29, 21, 8, tzinfo=datetime.timezone.utc))
    context = {"params": params, "run_id": "manual__2026-11-29T21:08:06+00:00", "var": var, "dag_run": dag_run}
    for task in spark_tasks(dag):
        args = jobargs.parse(task.task_id, [_render(a, context) for a in task.application_args])
        assert args.version == expected
        if task.task_id == "validate":
            assert args.data_date == "2026-11-29"


@pytest.mark.parametrize("cluster_size, rendered", [(3, "3"), (2.0, "2"), (1e1, "10"), (256, "256")])
def test_executor_counts_render_as_integers(dag, cluster_size, rendered):
    """Spark reads spark.executor.instances / spark.cores.max as ints: a JSON-schema integer given as
    2.0 or 1e1 must not reach the conf as "2.0"."""
    copy.copy(dag.params.get_param("cluster_size")).resolve(cluster_size)  # the trigger accepts it
    for task in spark_tasks(dag):
        conf = task.render_template(task.conf, {"params": {"cluster_size": cluster_size}})
        assert conf["spark.executor.instances"] == conf["spark.cores.max"] == rendered


@pytest.mark.parametrize("name, value", [
    ("dataset_version", "../etc"), ("dataset_version", "/abs"), ("dataset_version", "a b"),
    ("dataset_version", "v1;rm -rf"), ("dataset_version", "$(id)"), ("cluster_size", 1), ("epochs", 0),
    ("min_accuracy", 1.5), ("image_shape", "28 x 28"), ("eval_fraction", 0.0),
    ("dataset_version", "v1\n"), ("dataset_version", "\n"), ("dataset_version", "a..b"),
    ("dataset_version", "a" * 129), ("image_shape", "0x0"), ("image_shape", "28x28\n"), ("epochs", 2.5),
    ("cluster_size", 2.5), ("min_accuracy", float("nan")), ("learning_rate", float("inf")),
])
def test_invalid_params_are_rejected_before_any_job(dag, name, value):
    from airflow.sdk.definitions.param import ParamValidationError
    with pytest.raises(ParamValidationError):
        dag.params.get_param(name).resolve(value)


def test_default_params_are_valid(dag):
    for name, p in dag.params.items():
        dag.params.get_param(name).resolve(p.value)


def test_each_task_declares_the_asset_it_produces(dag):
    uris = {t.task_id: [a.uri for a in t.outlets] for t in spark_tasks(dag)}
    assert uris == {"convert": ["tfos://pipeline/tfrecords"], "train": ["tfos://pipeline/models"],
                    "validate": ["tfos://pipeline/serving"], "infer": ["tfos://pipeline/predictions"]}


def test_task_links_point_at_the_runs_report_and_tensorboard(dag):
    import tfos_spark
    names = {t.task_id: sorted(link.name for link in t.operator_extra_links) for t in spark_tasks(dag)}
    assert names == {"convert": [], "train": ["Data report", "TensorBoard"],
                     "validate": ["Data report", "TensorBoard", "Validation report"], "infer": ["Data report"]}
    task = dag.get_task("validate")
    task.job_args = {"data_root": "/d", "version": "2026-11-28", "run_id": "scheduled__2026-11-28T00:00:00+00:00"}
    link = tfos_spark.ValidationReportLink().get_link(task, ti_key=None)
    assert link.endswith("/tfos/reports/2026-11-28/scheduled__2026-11-28T00.3a00.3a00.2b00.3a00/")
    assert tfos_spark.DataReportLink().get_link(task, ti_key=None).endswith("/tfos/data-checks/2026-11-28/validate")


def test_retries_back_off_and_every_task_has_a_timeout(dag):
    for task in spark_tasks(dag):
        assert task.execution_timeout is not None
        assert task.retry_exponential_backoff and task.max_retry_delay is not None
    assert dag.get_task("train").retries == 1 and dag.get_task("validate").retries == 0


def test_tasks_run_the_argv_of_their_rendered_job_args(dag, monkeypatch):
    """job_args is the templated field: execute builds application_args from its rendered values (the
    same argv as the declared application_args rendered), ships the zip, and records the Asset event."""
    import collections

    import tfos_spark
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from tfospipe import launch
    assert all("job_args" in t.template_fields and "application_args" not in t.template_fields for t in spark_tasks(dag))
    task = tfos_spark.TFoSSparkSubmitOperator(
        task_id="train", job="train",
        job_args={"data_root": "/d", "version": "{{ ds }}", "run_id": "{{ run_id }}", "epochs": "{{ params.epochs }}"})
    context = {"ds": "2026-11-28", "run_id": "scheduled__2026-11-28T00:00:00+00:00", "params": {"epochs": 3}}
    declared = [task.render_template(a, context) for a in task.application_args]
    task.job_args = task.render_template(task.job_args, context)
    submitted = {}
    monkeypatch.setattr(launch, "build_zip", lambda build_dir: "/b/tfospipe-x.zip")
    monkeypatch.setattr(SparkSubmitOperator, "execute",
                        lambda self, ctx: submitted.update(argv=self.application_args, py_files=self.py_files))
    events = collections.defaultdict(types.SimpleNamespace)
    task.execute({"outlet_events": events})
    assert submitted == {"argv": declared, "py_files": "/b/tfospipe-x.zip"}
    assert jobargs.parse("train", submitted["argv"]).epochs == 3
    assert vars(events[tfos_spark.ASSETS["train"]]) == {"extra": {
        "dataset_version": "2026-11-28", "path": "/d/models/2026-11-28/scheduled__2026-11-28T00.3a00.3a00.2b00.3a00"}}


def test_the_operator_hook_is_the_providers_with_every_setting_passed_through(dag):
    import tfos_spark
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    task = dag.get_task("train")
    ours, providers = task._get_hook(), SparkSubmitOperator._get_hook(task)
    assert type(ours) is tfos_spark.TFoSSparkSubmitHook and type(providers) is not type(ours)
    assert vars(ours).keys() == vars(providers).keys()
    for key, value in vars(providers).items():
        if key != "_log":
            assert vars(ours)[key] == value, key


def test_a_killed_task_stops_spark_submit_and_its_children(dag):
    """on_kill (the provider's, through the hook): SIGTERM to the tree, SIGKILL to what ignores it."""
    import subprocess
    import time

    import psutil
    import tfos_spark
    task = dag.get_task("convert")
    task._hook = task._get_hook()
    proc = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 60 & sleep 60 & wait"])
    try:
        for _ in range(100):
            children = psutil.Process(proc.pid).children(recursive=True)
            if len(children) == 2:
                break
            time.sleep(0.05)
        task._hook._submit_sp = proc
        start = time.monotonic()
        task.on_kill()
        assert proc.wait(timeout=5) == -9  # ignored SIGTERM, killed after the grace period
        assert time.monotonic() - start >= tfos_spark.TFoSSparkSubmitHook.KILL_GRACE_S - 0.5
        psutil.wait_procs(children, timeout=5)
        assert all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- conf keys that are no param: refused by the first task, before spark-submit, without retries ---------

def _execute_with_conf(task, conf, monkeypatch, reached):
    """Run ``task.execute`` for a run with ``conf`` (Airflow's context: ``dag_run.conf``), with spark-submit
    and the zip replaced by recorders that append to ``reached``."""
    import collections

    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from tfospipe import launch
    monkeypatch.setattr(launch, "build_zip", lambda build_dir: reached.append("zip") or "/b/tfospipe-x.zip")
    monkeypatch.setattr(SparkSubmitOperator, "execute", lambda self, ctx: reached.append("spark-submit"))
    task = copy.copy(task)
    filled = {"data_root": "/d", "version": "2026-11-28", "run_id": "manual__1"}
    task.job_args = {a.name: filled[a.name] for a in task.job_spec.args if a.name in filled}
    task.execute({"dag_run": types.SimpleNamespace(conf=conf),
                  "outlet_events": collections.defaultdict(types.SimpleNamespace)})


@pytest.mark.parametrize("conf, named", [
    ({"epoch": 10}, ["'epoch' (did you mean 'epochs'?)"]),
    ({"learning-rate": 0.01, "batchsize": 8},
     ["'learning-rate' (did you mean 'learning_rate'?)", "'batchsize' (did you mean 'batch_size'?)"]),
    ({"epochs": 3, "Cluster_Size": 3}, ["'Cluster_Size' (did you mean 'cluster_size'?)"]),
    ({"zzz": 1}, ["'zzz': "]),
])
def test_a_conf_key_that_is_no_param_fails_the_first_task_before_spark_submit(dag, monkeypatch, conf, named):
    """Airflow 3.3 accepts any conf key at trigger time (params.deep_merge adds it as a param without a
    schema), so a typo would train with the defaults: convert refuses it with AirflowFailException (no
    retries) before it builds the zip or starts spark-submit."""
    from airflow.sdk.exceptions import AirflowFailException
    reached = []
    with pytest.raises(AirflowFailException) as e:
        _execute_with_conf(dag.get_task("convert"), conf, monkeypatch, reached)
    assert reached == []
    line = str(e.value)
    assert "\n" not in line and line.startswith("ERROR [convert] unknown conf key")
    for words in named:
        assert words in line, line
    assert "(" + ", ".join(sorted(dag.params)) + ")" in line  # every valid key
    assert "Trigger the run again" in line and "--dag-run-conf" in line
    # the same refusal from any task (a cleared downstream task of the same run)
    with pytest.raises(AirflowFailException, match=r"^ERROR \[train\] unknown conf key"):
        _execute_with_conf(dag.get_task("train"), conf, monkeypatch, reached)
    assert reached == []


@pytest.mark.parametrize("conf", [None, {}, {"epochs": 10}, {"dataset_version": "mnist-v2", "promotion": "auto"},
                                  "every param"])
def test_valid_confs_reach_spark_submit(dag, monkeypatch, conf):
    if conf == "every param":
        conf = {name: p.value for name, p in dag.params.items()}
        # 21 (seed included), the data checks (jobargs.DataCheckParams): a mode and 7 thresholds, the gate's
        # gate, alpha, require_improvement and undecided, the sensor's data_wait_timeout, and mlflow_required
        assert len(conf) == 35
    for task in spark_tasks(dag):
        reached = []
        _execute_with_conf(task, conf, monkeypatch, reached)
        assert reached == ["zip", "spark-submit"], task.task_id


def test_the_conf_check_names_the_closest_param_of_each_typo():
    import tfos_spark
    valid = ["epochs", "batch_size", "learning_rate", "num_shards"]
    assert tfos_spark.unknown_conf_keys({}, valid) is None and tfos_spark.unknown_conf_keys(None, valid) is None
    assert tfos_spark.unknown_conf_keys({"epochs": 1, "num_shards": 2}, valid) is None
    msg = tfos_spark.unknown_conf_keys({"Num-Shards": 2, "learningrate": 1e-3, "qqq": 1}, valid)
    assert msg.startswith("unknown conf keys 'Num-Shards' (did you mean 'num_shards'?), 'learningrate' (did you "
                          "mean 'learning_rate'?), 'qqq': ")
    assert "(batch_size, epochs, learning_rate, num_shards)" in msg and "keys corrected" in msg


def test_airflow_runs_the_refusal_without_retrying_it(tmp_path):
    """The real path: `airflow dags test -c '{"epoch": 10}'` (the conf merged by Airflow, the task run by its
    task runner): the first task ends failed, not up for retry, with the ERROR line, and spark-submit never ran."""
    import subprocess
    env = dict(os.environ, AIRFLOW_VAR_TFOS_DATA_ROOT=str(tmp_path))
    proc = subprocess.run(["airflow", "dags", "test", "tfos_pipeline", "2026-11-28", "-c", '{"epoch": 10}'],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, env=env)
    log = proc.stdout
    assert proc.returncode != 0, log[-3000:]
    # the first task, the sensor, refuses it before it looks for (or waits for) any data
    assert "ERROR [wait_for_data] unknown conf key 'epoch' (did you mean 'epochs'?)" in log, log[-3000:]
    assert "new_state=failed" in log and "up_for_retry" not in log, log[-3000:]
    assert "spark-submit" not in log.lower() and not os.listdir(tmp_path)


@pytest.mark.parametrize("returncode, retried", [(3, False), (2, True), (1, True)])
def test_a_job_whose_data_checks_refused_its_data_is_not_retried(dag, monkeypatch, returncode, retried):
    """spark-submit ended with runner.EXIT_DATA_REFUSED: AirflowFailException (no retry); any other
    failure stays the provider's AirflowException, which Airflow retries (a lost executor, a kill)."""
    import collections

    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
    from tfospipe import launch, runner

    def failed_submit(self, ctx):
        self._hook = types.SimpleNamespace(_submit_sp=types.SimpleNamespace(returncode=returncode))
        raise AirflowException(f"Cannot execute: spark-submit ... Error code is: {returncode}.")

    monkeypatch.setattr(launch, "build_zip", lambda build_dir: "/b/tfospipe-x.zip")
    monkeypatch.setattr(SparkSubmitOperator, "execute", failed_submit)
    task = copy.copy(dag.get_task("infer"))
    task.job_args = {"data_root": "/d", "version": "2026-11-28"}
    with pytest.raises(AirflowException) as e:
        task.execute({"dag_run": types.SimpleNamespace(conf={}),
                      "outlet_events": collections.defaultdict(types.SimpleNamespace)})
    assert isinstance(e.value, AirflowFailException) is not retried and runner.EXIT_DATA_REFUSED == 3
    if not retried:
        assert "for dataset version 2026-11-28" in str(e.value) and "data_checks=warn" in str(e.value)


# --- user errors fail at once; infrastructure errors are retried ----------------------------------------

def _failed_submit(monkeypatch, returncode, output):
    """spark-submit replaced by one that 'prints' ``output`` through the hook's log processing and exits
    with ``returncode`` (the provider's AirflowException)."""
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from airflow.sdk.exceptions import AirflowException
    from tfospipe import launch

    def submit(self, ctx):
        self._hook = self._get_hook()
        self._hook._process_spark_submit_log(iter(line + "\n" for line in output))
        self._hook._submit_sp = types.SimpleNamespace(returncode=returncode)
        raise AirflowException(f"Cannot execute: spark-submit ... Error code is: {returncode}.")

    monkeypatch.setattr(launch, "build_zip", lambda build_dir: "/b/tfospipe-x.zip")
    monkeypatch.setattr(SparkSubmitOperator, "execute", submit)


LONG_ERROR = ("ERROR [convert] 300 of 1797 rows (16.7%) are bad, more than --max-bad-fraction 5.0%; by kind: "
              + "{'range': 300}; " * 20 + "fix the input or raise max_bad_fraction.")


@pytest.mark.parametrize("returncode, retried", [(4, False), (3, False), (2, True), (1, True)])
def test_a_user_error_fails_at_once_with_the_whole_error_line(dag, monkeypatch, returncode, retried):
    """runner.EXIT_USER_ERROR (a UserError: no input, too many bad rows, a failed gate, params that do not fit,
    too few executors) and EXIT_DATA_REFUSED: AirflowFailException whose message is the job's whole ERROR line
    (however long) and why it is not retried; 2 (a lost executor, a store timing out) and 1 stay retried."""
    import collections

    import tfos_spark
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
    from tfospipe import runner
    assert runner.EXIT_USER_ERROR == 4 and set(tfos_spark.NOT_RETRIED) == {3, 4}
    _failed_submit(monkeypatch, returncode, ["25/12/07 INFO SparkContext: stopped", LONG_ERROR,
                                             "25/12/07 INFO ShutdownHookManager: deleting"])
    task = copy.copy(dag.get_task("convert"))
    task.job_args = {"data_root": "/d", "version": "2026-11-28"}
    with pytest.raises(AirflowException) as e:
        task.execute({"dag_run": types.SimpleNamespace(conf={}),
                      "outlet_events": collections.defaultdict(types.SimpleNamespace)})
    assert isinstance(e.value, AirflowFailException) is not retried
    if not retried:
        assert str(e.value).startswith(LONG_ERROR + " -- not retried: ") and "\n" not in str(e.value)
        # the task log's closing exception is this line alone: not chained to the provider's "Cannot execute"
        assert e.value.__suppress_context__ and e.value.__cause__ is None


def test_the_operator_asks_the_jobs_for_the_user_error_status(dag):
    from tfospipe import runner
    for task in spark_tasks(dag):
        assert task.env_vars["TFOS_EXIT_USER_ERROR"] == str(runner.EXIT_USER_ERROR)


@pytest.mark.parametrize("env, expected", [({"TFOS_EXIT_USER_ERROR": "4"}, 4), ({}, 2)])
def test_a_user_error_exits_with_the_status_the_operator_asks_for(monkeypatch, capsys, env, expected):
    """runner.main: a UserError (and an argument argparse refuses) exits 4 under the operator, 2 elsewhere; any
    other JobError (a node failed, an executor lost) stays 2; all before a SparkSession for these."""
    from tfospipe import runner
    monkeypatch.delenv("TFOS_EXIT_USER_ERROR", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = ["--data-root", "/tmp", "--version", "v1"]

    def refuse(error):
        def prepare(params):
            raise error
        return prepare
    assert runner.main("convert", None, argv, prepare=refuse(runner.UserError("no input for v1"))) == expected
    assert capsys.readouterr().err.strip().endswith("ERROR [convert] no input for v1")
    assert runner.main("convert", None, argv, prepare=refuse(runner.JobError("node worker-1 failed"))) == 2
    assert runner.main("convert", None, argv + ["--num-shards", "0"]) == expected


def test_the_jobs_raise_user_errors_for_what_a_retry_cannot_mend():
    """The failures the issue names as the user's: no input, too many bad rows, a failed gate, too few
    executors, params that do not fit together."""
    import inspect

    from tfospipe import convert, train, trainplan, validate
    assert 'runner.UserError(f"no input for dataset version' in inspect.getsource(convert)
    assert "runner.UserError(\n            f\"{totals.bad} of {totals.read} rows" in inspect.getsource(convert)
    assert 'UserError(f"model {mv} rejected' in inspect.getsource(validate)
    assert 'UserError(\n            f"training needs cluster_size=' in inspect.getsource(train)
    assert inspect.getsource(trainplan).count("raise UserError(") >= 3


# --- wait_for_data: a scheduled run waits for its input, a manual run or backfill does not ---------------

def _sensor(dag, root, version="2026-12-06", timeout="30"):
    task = copy.copy(dag.get_task("wait_for_data"))
    task.data_root, task.version, task.wait_timeout = str(root), version, timeout
    return task


def _context(run_type, conf=None):
    return {"dag_run": types.SimpleNamespace(run_type=run_type, conf=conf or {}), "task_reschedule_count": 0}


def test_the_sensor_reschedules_with_its_timeout_from_the_param(dag):
    task = dag.get_task("wait_for_data")
    assert task.mode == "reschedule" and task.retries == 0 and task.downstream_task_ids == {"convert"}
    assert task.wait_timeout == "{{ params.data_wait_timeout }}" and "wait_timeout" in task.template_fields
    assert dag.params["data_wait_timeout"] == 6 * 3600
    assert [task.poke_seconds(t) for t in (0, 20, 600, 21600)] == [30, 30, 60, 300]


@pytest.mark.parametrize("files, ready", [([], False), (["_SUCCESS", ".digits.csv.crc", "_tmp"], False),
                                          (["digits.csv"], True), (["part.csv/part-00000.csv"], True)])
def test_the_sensor_looks_for_input_files_not_hidden_ones(dag, tmp_path, files, ready):
    raw = tmp_path / "raw" / "2026-12-06"
    for name in files:
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_text("1,2\n")
    assert _sensor(dag, tmp_path).poke(_context("scheduled")) is ready


@pytest.mark.parametrize("run_type", ["manual", "backfill", "asset_triggered"])
def test_a_manual_run_or_backfill_without_input_fails_at_once(dag, tmp_path, run_type):
    from airflow.sdk.exceptions import AirflowFailException
    with pytest.raises(AirflowFailException) as e:
        _sensor(dag, tmp_path, "mnist-v9").poke(_context(run_type))
    line = str(e.value)
    assert line.startswith("ERROR [wait_for_data] no input for dataset version mnist-v9: ") and "\n" not in line
    assert str(tmp_path / "raw" / "mnist-v9") in line and "not retried" in line
    (tmp_path / "raw" / "mnist-v9").mkdir(parents=True)
    (tmp_path / "raw" / "mnist-v9" / "a.csv").write_text("1,2\n")
    assert _sensor(dag, tmp_path, "mnist-v9").poke(_context(run_type)) is True  # exists: no wait


def test_a_scheduled_run_whose_data_does_not_come_times_out_with_one_line(dag, tmp_path, monkeypatch):
    """Reschedule mode: each look that finds nothing hands the slot back (AirflowRescheduleException); once
    the timeout has passed since the first look, AirflowSensorTimeout (never retried) with one ERROR line."""
    import datetime

    from airflow.sdk.exceptions import AirflowRescheduleException, AirflowSensorTimeout
    task = _sensor(dag, tmp_path, timeout="20")
    task.log.info  # noqa: B018 - the logger exists before execute
    ti = types.SimpleNamespace(get_first_reschedule_date=lambda ctx: None)
    context = dict(_context("scheduled"), ti=ti)
    with pytest.raises(AirflowRescheduleException):
        task.execute(context)
    assert task.timeout == 20 and task.poke_interval == 30
    started = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=25)
    context["ti"] = types.SimpleNamespace(get_first_reschedule_date=lambda ctx: started)
    with pytest.raises(AirflowSensorTimeout) as e:
        task.execute(context)
    line = str(e.value)
    assert line.startswith("ERROR [wait_for_data] dataset version 2026-12-06 did not arrive: no input file in ")
    assert "after waiting 20 s (data_wait_timeout)" in line and "not retried" in line and "\n" not in line


def test_a_conf_key_that_is_no_param_fails_the_sensor_before_it_waits(dag, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException
    with pytest.raises(AirflowFailException, match=r"^ERROR \[wait_for_data\] unknown conf key 'epoch'"):
        _sensor(dag, tmp_path).execute(_context("scheduled", {"epoch": 3}))


# --- the trigger form: titles, ranges and units, no clamping, readable refusals --------------------------

def test_every_param_has_a_title_and_a_description_with_its_range_and_unit(dag):
    for name, p in dag.params.items():
        schema = dag.params.get_param(name).schema
        assert schema.get("title") and schema["title"] != name, name
        description = dag.params.get_param(name).description
        assert "Valid: " in description, (name, description)
        if schema["type"] in ("integer", "number") or "integer" in schema["type"] or "number" in schema["type"]:
            assert "(unit: " in description and (" from " in description or " above " in description), description
            # the trigger form gives a number field the schema's top-level bounds, and clamps to them on blur
            assert "minimum" not in schema and "maximum" not in schema and "exclusiveMinimum" not in schema, name
    assert "an integer from 1 to 1000 (unit: epochs)" in dag.params.get_param("epochs").description
    assert "a number from 0.01 to 0.9" in dag.params.get_param("eval_fraction").description


@pytest.mark.parametrize("name, value, words", [
    ("epochs", 5000, "Epochs (epochs): 5000 is refused: use an integer from 1 to 1000 (unit: epochs)."),
    ("epochs", -1, "Epochs (epochs): -1 is refused: use an integer from 1 to 1000"),
    ("epochs", 2.5, "Epochs (epochs): 2.5 is refused: use an integer from 1 to 1000"),
    ("eval_fraction", 0.95, "Eval fraction (eval_fraction): 0.95 is refused: use a number from 0.01 to 0.9"),
    ("learning_rate", 0, "Learning rate (learning_rate): 0 is refused: use a number above 0 and at most 1"),
    ("dataset_version", "../etc", "Dataset version (dataset_version): '../etc' is refused: use empty, or 1-128 "
                                  "letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'."),
    ("data_wait_timeout", -5, "Wait for data (seconds) (data_wait_timeout): -5 is refused: use an integer from 0 to "
                              "604800 (unit: seconds)."),
])
def test_a_refused_value_is_explained_in_one_plain_sentence(dag, name, value, words):
    """What Airflow's API server answers (HTTP 400, jsonschema's message with the schema dumped) becomes one
    sentence (tfos_spark.readable_refusal, applied by the tfos_ui middleware)."""
    from airflow.sdk.definitions.param import ParamValidationError
    import tfos_spark
    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError) as e:
        params[name] = value
        params.validate()
    sentence = tfos_spark.readable_refusal(str(e.value))
    assert sentence.startswith(words) and sentence.endswith("No run was created; correct the value and trigger again.")
    assert "\n" not in sentence and "Failed validating" not in sentence and "allOf" not in sentence
    assert tfos_spark.readable_refusal("Dag with dag_id: 'x' not found") is None


def test_the_middleware_rewrites_only_the_pipelines_param_refusals():
    import asyncio
    import json

    import tfos_ui

    def call(path, status, detail):
        async def app(scope, receive, send):
            body = json.dumps({"detail": detail}).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        sent = []

        async def send(message):
            sent.append(message)
        asyncio.run(tfos_ui.ReadableParamRefusals(app)({"type": "http", "method": "POST", "path": path}, None, send))
        headers = dict(sent[0]["headers"])
        body = b"".join(m.get("body", b"") for m in sent[1:])
        assert int(headers[b"content-length"]) == len(body)
        return json.loads(body)["detail"]

    raw = ("Invalid input for param epochs: 5000 is greater than the maximum of 1000\n\nFailed validating 'maximum' "
           "in schema['allOf'][0]:\n    {'minimum': 1, 'maximum': 1000}\n\nOn instance:\n    5000")
    assert call("/api/v2/dags/tfos_pipeline/dagRuns", 400, raw).startswith("Epochs (epochs): 5000 is refused: use ")
    assert call("/api/v2/dags/other_dag/dagRuns", 400, raw) == raw
    assert call("/api/v2/dags/tfos_pipeline/dagRuns", 409, raw) == raw
