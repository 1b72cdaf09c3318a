"""Airflow side of the pipeline: the Spark conf TensorFlowOnSpark needs, set once, and the operator.

``TFoSSparkSubmitOperator`` is a thin ``SparkSubmitOperator`` that

* points ``application`` at ``jobs/<job>.py`` and builds its ``application_args`` from
  ``tfospipe.jobargs`` (one definition of every flag);
* zips ``jobs/tfospipe`` at execute time and ships it with ``--py-files``;
* applies :func:`spark_conf`: one executor per TensorFlow node with one task slot each, dynamic
  allocation off, ``TF_USE_LEGACY_KERAS=1`` and this Python for driver and executors;
* declares the Asset its job produces (:data:`ASSETS`) and records the dataset version and output
  path on the asset event;
* adds task links to the validation report and TensorBoard (``tfos_ui`` plugin serves the report);
* on kill (Airflow marks the task failed, times it out, or stops the worker) stops the Spark
  application: SIGTERM to spark-submit so its shutdown hook stops the SparkContext, then anything
  left of its process tree.

The Spark master comes from the Airflow connection ``spark_default``; the data root from the Airflow
Variable ``tfos_data_root`` (or ``AIRFLOW_VAR_TFOS_DATA_ROOT``). Nothing else names a cluster.
"""

import os
import sys

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, BaseOperatorLink
from tfospipe import jobargs, package, paths

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS_DIR = os.path.join(PROJECT_DIR, "jobs")

DEFAULT_DATA_ROOT = os.path.join(PROJECT_DIR, "data")
BUILD_DIR = os.environ.get("TFOS_BUILD_DIR", os.path.join(PROJECT_DIR, "build"))
#: Python of the driver and executors: this one (the project's venv; the same path in the image).
PYTHON = os.environ.get("TFOS_PYSPARK_PYTHON", sys.executable)

DATA_ROOT = "{{ var.value.get('tfos_data_root', '%s') }}" % DEFAULT_DATA_ROOT
#: The dataset version: the dataset_version param, else the run's logical date, else (a manual run
#: triggered without a logical date) the day it was triggered for.
VERSION = "{{ params.dataset_version or ds or dag_run.run_after.strftime('%Y-%m-%d') }}"
RUN_ID = "{{ run_id }}"
#: Executors of a job: the cluster_size param as an integer string, which Spark's settings need. The
#: param's schema (jobargs) admits whole numbers only, but JSON schema counts 2.0 as an integer, so a
#: run triggered with {"cluster_size": 2.0} renders "2" here (Jinja's int filter) rather than "2.0".
CLUSTER_SIZE = "{{ params.cluster_size | int }}"

#: Environment of the spark-submit process (driver in client mode) and of every executor.
TF_ENV = {
    "TF_USE_LEGACY_KERAS": "1",      # tf-keras: Keras 3 fails under MultiWorkerMirroredStrategy
    "TF_CPP_MIN_LOG_LEVEL": "2",     # keep TensorFlow's C++ INFO lines out of the task log
    "TF_NUM_INTRAOP_THREADS": "1",   # one core per executor: no thread oversubscription
    "TF_NUM_INTEROP_THREADS": "1",
}

#: Where Debian/Ubuntu (x86-64, arm64) and RHEL put TCMalloc (package libtcmalloc-minimal4 / gperftools-libs).
TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")


def executor_malloc():
    """The memory allocator preloaded into every executor (``LD_PRELOAD``), or None for glibc's.

    TensorFlow under a distribution strategy allocates and frees its large tensors from short-lived
    threads; glibc's malloc gives that memory back to the kernel each time, so every training step
    page-faults it in again (measured here: 33,000 faults and ~100 ms of kernel time per step of the
    seed CNN at batch 64, +60% step time). TCMalloc keeps it. ``TFOS_EXECUTOR_MALLOC`` overrides the
    path (as the executors see it); set it empty to keep glibc's allocator.
    """
    path = os.environ.get("TFOS_EXECUTOR_MALLOC")
    if path is None:
        path = next((p for p in TCMALLOC_PATHS if os.path.exists(p)), "")
    return path or None


#: What each job produces, as Airflow Assets (lineage in the UI). Each event's extra names the
#: dataset version and the path written; the data root itself is a runtime Variable.
ASSETS = {
    "convert": Asset(name="tfos_tfrecords", uri="tfos://pipeline/tfrecords"),
    "train": Asset(name="tfos_trained_model", uri="tfos://pipeline/models"),
    "validate": Asset(name="tfos_serving_model", uri="tfos://pipeline/serving"),
    "infer": Asset(name="tfos_predictions", uri="tfos://pipeline/predictions"),
}


def spark_conf(cluster_size, tfos=False):
    """Spark conf for a pipeline job; ``cluster_size`` may be a Jinja template.

    ``tfos=True`` (training) also stops Spark from retrying a failed TF node's task: a retried node
    cannot rejoin a running TensorFlow cluster and would hang it; Airflow retries the whole job.
    """
    conf = {
        "spark.executor.instances": cluster_size,   # YARN, Kubernetes
        "spark.cores.max": cluster_size,            # standalone: cluster_size executors x 1 core
        "spark.executor.cores": "1",
        "spark.task.cpus": "1",                     # one task, so one TF node, per executor
        "spark.dynamicAllocation.enabled": "false",
        "spark.python.worker.reuse": "true",        # models stay loaded across tasks
        "spark.pyspark.python": PYTHON,
        "spark.pyspark.driver.python": PYTHON,
    }
    for key, value in TF_ENV.items():
        conf[f"spark.executorEnv.{key}"] = value
        conf[f"spark.yarn.appMasterEnv.{key}"] = value
        conf[f"spark.kubernetes.driverEnv.{key}"] = value
    malloc = executor_malloc()
    if malloc:
        conf["spark.executorEnv.LD_PRELOAD"] = malloc
    if tfos:
        conf["spark.task.maxFailures"] = "1"
    return conf


def _link_base():
    from airflow.configuration import conf
    return conf.get("api", "base_url", fallback="").rstrip("/")


class ValidationReportLink(BaseOperatorLink):
    """The gate's report of this run (metrics side by side, confusion matrices), served by tfos_ui."""

    name = "Validation report"

    def get_link(self, operator, *, ti_key):
        version, run = operator.job_arg("version"), operator.job_arg("run_id")
        if not (version and run):
            return ""
        return f"{_link_base()}/tfos/reports/{version}/{paths.run_slug(run)}/"


class TensorBoardLink(BaseOperatorLink):
    """TensorBoard (Variable ``tfos_tensorboard_url``, started with ``--logdir {data_root}/models``)
    filtered to this run's event logs."""

    name = "TensorBoard"

    def get_link(self, operator, *, ti_key):
        from airflow.sdk import Variable
        version, run = operator.job_arg("version"), operator.job_arg("run_id")
        if not (version and run):
            return ""
        url = Variable.get("tfos_tensorboard_url", default="http://127.0.0.1:6006").rstrip("/")
        return f"{url}/?pinnedCards=&runFilter={version}/{paths.run_slug(run)}#timeseries"


class TFoSSparkSubmitOperator(SparkSubmitOperator):
    """spark-submit of ``jobs/<job>.py`` with the pipeline's conf, arguments and ``--py-files`` zip."""

    def __init__(self, *, job, job_args, cluster_size=CLUSTER_SIZE, tfos=False, **kwargs):
        if job not in jobargs.JOBS:
            raise ValueError(f"unknown job {job!r}; jobs: {sorted(jobargs.JOBS)}")
        super().__init__(
            application=os.path.join(JOBS_DIR, f"{job}.py"),
            application_args=jobargs.to_argv(job, job_args),
            conf=spark_conf(cluster_size, tfos=tfos),
            env_vars=dict(TF_ENV),
            name=f"tfos-{job}",
            conn_id=kwargs.pop("conn_id", "spark_default"),
            outlets=[ASSETS[job]],
            **kwargs,
        )
        self.job = job

    @property
    def operator_extra_links(self):
        return {"train": (TensorBoardLink(),),
                "validate": (ValidationReportLink(), TensorBoardLink())}.get(self.job, ())

    def job_arg(self, name):
        """The (rendered) value of the job flag ``name`` in this task's application_args, or None."""
        flags = {a.name: a.flag for a in jobargs.JOBS[self.job]}
        argv = list(self.application_args or ())
        if name in flags and flags[name] in argv[:-1]:
            return argv[argv.index(flags[name]) + 1]
        return None

    def execute(self, context):
        self.py_files = package.build_zip(BUILD_DIR)
        result = super().execute(context)
        version, root = self.job_arg("version"), self.job_arg("data_root")
        layout = paths.Layout(root)
        written = {"convert": lambda: layout.tfrecords(version),
                   "train": lambda: layout.model_run(version, paths.run_slug(self.job_arg("run_id"))),
                   "validate": lambda: layout.serving(),
                   "infer": lambda: layout.predictions(version)}[self.job]()
        context["outlet_events"][ASSETS[self.job]].extra = {"dataset_version": version, "path": written}
        return result

    def on_kill(self):
        # Airflow's task supervisor escalates to SIGKILL 5 s after its SIGTERM, so this is quick:
        # SIGTERM to spark-submit (its shutdown hook stops the SparkContext, and the cluster ends the
        # application and its executors) and to the Python driver it started, then SIGKILL to
        # whatever is left after 3 s.
        hook = getattr(self, "_hook", None)
        proc = getattr(hook, "_submit_sp", None)
        if proc is not None and proc.poll() is None:
            import psutil
            try:
                root = psutil.Process(proc.pid)
                tree = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            self.log.info("Stopping the Spark application: SIGTERM to spark-submit (pid %s) and its children",
                          proc.pid)
            for p in tree:
                try:
                    p.terminate()
                except psutil.NoSuchProcess:
                    pass
            _gone, alive = psutil.wait_procs(tree, timeout=3)
            for p in alive:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        super().on_kill()


def spark_submit_argv(job, job_args, master, cluster_size=2, build_dir=BUILD_DIR):
    """The spark-submit command line the operator runs, for running a job outside Airflow (tests, benchmarks)."""
    argv = [os.path.join(os.path.dirname(PYTHON), "spark-submit"), "--master", master,
            "--py-files", package.build_zip(build_dir), "--name", f"tfos-{job}"]
    for key, value in spark_conf(str(cluster_size), tfos=(job == "train")).items():
        argv += ["--conf", f"{key}={value}"]
    return argv + [os.path.join(JOBS_DIR, f"{job}.py")] + jobargs.to_argv(job, job_args)
