"""Submit side of the pipeline: how a job is started with spark-submit, set once.

* :func:`spark_conf`: one executor per TensorFlow node with one task slot each, dynamic allocation
  off, :data:`TF_ENV` for driver and executors, :data:`PYTHON` for the driver, the executors' Python
  as ``TFOS_EXECUTOR_PYTHON_ENV`` chooses (:func:`executor_python_conf`: this same venv, the packed
  environment of ``make executor-env``, or the project's image), TCMalloc preloaded
  (:func:`executor_malloc`);
* :func:`build_zip`: the ``--py-files`` zip of the ``tfospipe`` package, built from the source at
  submit time, without the submit-only modules (:data:`SUBMIT_ONLY`: this one, :mod:`.jobspec` and
  :mod:`.lineage_facets`);
* :func:`spark_submit_argv`: the whole spark-submit command line of a job, as the Airflow operator
  runs it, for running a job outside Airflow (tests, benchmarks).

The Airflow operator (``plugins/tfos_spark.py``) builds its task from the same pieces. No Airflow,
Spark or TensorFlow import here: the DAG processor loads this module through the plugin.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping

from . import jobspec, tfenv

#: The ``tfospipe`` package directory; the zip holds its modules as ``tfospipe/...``.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
JOBS_DIR = jobspec.JOBS_DIR
PROJECT_DIR = os.path.dirname(JOBS_DIR)
#: Where the ``--py-files`` zips are written (``TFOS_BUILD_DIR``, default ``build/`` of the project).
BUILD_DIR = os.environ.get("TFOS_BUILD_DIR", os.path.join(PROJECT_DIR, "build"))
#: Python of the driver and executors: this one (the project's venv; the same path in the image).
PYTHON = os.environ.get("TFOS_PYSPARK_PYTHON", sys.executable)

#: How the executors get their Python (``TFOS_EXECUTOR_PYTHON_ENV``; :func:`executor_python_conf`).
EXECUTOR_PYTHON_ENVS = ("venv", "archive", "image")
#: The packed executor environment ``make executor-env`` builds (scripts/executor_env.sh: venv-pack of
#: requirements-executor.txt); ``TFOS_EXECUTOR_ARCHIVE`` names another path, or a URI the cluster
#: reads (``hdfs://``, ``s3a://``, ``gs://``...).
EXECUTOR_ARCHIVE = os.path.join(PROJECT_DIR, "build", "executor-env.tar.gz")
#: Where Spark unpacks the archive in each executor's working directory (the ``#`` fragment of
#: ``spark.archives``), and the Python the executors then run.
ARCHIVE_ALIAS = "environment"
ARCHIVE_PYTHON = f"./{ARCHIVE_ALIAS}/bin/python"
#: The venv's Python in the project's image (Dockerfile: ``python -m venv /opt/tfos/.venv``).
IMAGE_PYTHON = "/opt/tfos/.venv/bin/python"

#: Modules of the package that run only where a job is submitted (paths relative to ``jobs/``):
#: never imported by a job's driver or executors, so not shipped in the zip.
SUBMIT_ONLY = ("tfospipe/jobspec.py", "tfospipe/launch.py", "tfospipe/lineage_facets.py")

#: Environment of the spark-submit process (driver in client mode) and of every executor (tf-keras, quiet
#: C++ logs, one TensorFlow thread pool thread per executor core); defined in :mod:`.tfenv`.
TF_ENV = tfenv.TF_ENV

#: Where Debian/Ubuntu (x86-64, arm64) and RHEL put TCMalloc (package libtcmalloc-minimal4 / gperftools-libs).
TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")


def executor_malloc() -> str | None:
    """The memory allocator preloaded into every executor (``LD_PRELOAD``), or None for glibc's.

    TensorFlow under a distribution strategy allocates and frees its large tensors from short-lived
    threads; glibc's malloc gives that memory back to the kernel each time, so every training step
    page-faults it in again (measured here: 33,000 faults and ~100 ms of kernel time per step of the
    seed CNN at batch 64, +60% step time). TCMalloc keeps it. ``TFOS_EXECUTOR_MALLOC`` overrides the
    path (as the executors see it); set it empty to keep glibc's allocator. Otherwise the first of
    :data:`TCMALLOC_PATHS` that exists on this machine, or None. The same whatever
    ``TFOS_EXECUTOR_PYTHON_ENV`` says: TCMalloc is a system library, in no archive; on nodes that keep
    it elsewhere (or lack it: the loader then warns and goes on with glibc's), set the variable.
    """
    path = os.environ.get("TFOS_EXECUTOR_MALLOC")
    if path is None:
        path = next((p for p in TCMALLOC_PATHS if os.path.exists(p)), "")
    return path or None


def _archive_conf() -> dict[str, str]:
    """``spark.archives`` and ``spark.pyspark.python`` of ``TFOS_EXECUTOR_PYTHON_ENV=archive``. Raises
    ValueError when the archive is a local path (no ``scheme://``) that does not exist."""
    archive = os.environ.get("TFOS_EXECUTOR_ARCHIVE") or EXECUTOR_ARCHIVE
    if "://" not in archive:
        archive = os.path.abspath(archive)
        if not os.path.isfile(archive):
            raise ValueError(f"TFOS_EXECUTOR_PYTHON_ENV=archive: the executor environment {archive} does not "
                             "exist; build it with `make executor-env` (or set TFOS_EXECUTOR_ARCHIVE to the "
                             "archive's path or URI)")
    return {"spark.archives": f"{archive}#{ARCHIVE_ALIAS}", "spark.pyspark.python": ARCHIVE_PYTHON}


def executor_python_conf() -> dict[str, str]:
    """Spark conf that gives the executors their Python, as ``TFOS_EXECUTOR_PYTHON_ENV`` says (read at
    each call; the Airflow operator gets it through :func:`spark_conf`):

    * ``venv`` (default, also when unset or empty): :data:`PYTHON`, this machine's venv, which must
      exist at the same path on every node (one machine; the compose deployment's shared image);
    * ``archive``: the packed environment (:data:`EXECUTOR_ARCHIVE`, or ``TFOS_EXECUTOR_ARCHIVE``)
      shipped with ``spark.archives=<archive>#environment`` and run as ``./environment/bin/python``
      (Spark's Python package management; YARN, Kubernetes, standalone, EMR, Dataproc);
    * ``image``: the project's image ``TFOS_EXECUTOR_IMAGE`` as ``spark.kubernetes.container.image``,
      and its venv's Python (:data:`IMAGE_PYTHON`).

    The driver's Python (``spark.pyspark.driver.python``) stays :data:`PYTHON` in every mode: the
    driver runs where spark-submit runs (client mode). Raises ValueError for another value, a missing
    local archive (naming ``make executor-env``) or ``image`` without ``TFOS_EXECUTOR_IMAGE``.
    """
    mode = os.environ.get("TFOS_EXECUTOR_PYTHON_ENV") or "venv"
    if mode == "venv":
        return {"spark.pyspark.python": PYTHON}
    if mode == "archive":
        return _archive_conf()
    if mode == "image":
        image = os.environ.get("TFOS_EXECUTOR_IMAGE")
        if not image:
            raise ValueError("TFOS_EXECUTOR_PYTHON_ENV=image needs TFOS_EXECUTOR_IMAGE: the project's image "
                             "(built from its Dockerfile) as the Kubernetes executors pull it, e.g. "
                             "registry.example.com/tfos-pipeline:1")
        return {"spark.kubernetes.container.image": image, "spark.pyspark.python": IMAGE_PYTHON}
    raise ValueError(f"TFOS_EXECUTOR_PYTHON_ENV={mode!r} is not one of {', '.join(EXECUTOR_PYTHON_ENVS)}")


def spark_conf(cluster_size: str, tfos: bool = False) -> dict[str, str]:
    """Spark conf (``--conf`` key -> value) for a pipeline job on ``cluster_size`` executors.

    ``cluster_size`` is the executor count as an integer string, or a Jinja template rendering to one
    (the operator's ``CLUSTER_SIZE``). ``tfos=True`` (a job whose spec has ``tfos``: training) also
    stops Spark from retrying a failed TF node's task: a retried node cannot rejoin a running
    TensorFlow cluster and would hang it; Airflow retries the whole job. The executors' Python comes
    from :func:`executor_python_conf` (ValueError as it says).
    """
    conf = {
        "spark.executor.instances": cluster_size,   # YARN, Kubernetes
        "spark.cores.max": cluster_size,            # standalone: cluster_size executors x 1 core
        "spark.executor.cores": "1",
        "spark.task.cpus": "1",                     # one task, so one TF node, per executor
        "spark.dynamicAllocation.enabled": "false",
        "spark.python.worker.reuse": "true",        # models stay loaded across tasks
        **executor_python_conf(),
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


def shipped_sources() -> list[tuple[str, str]]:
    """(absolute path, path in the zip) of every module the executors get: each ``.py`` file under
    the package (``tfospipe/...``, sorted, ``__pycache__`` skipped) but :data:`SUBMIT_ONLY`."""
    sources = []
    for dirpath, dirnames, filenames in os.walk(PACKAGE_DIR):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, JOBS_DIR).replace(os.sep, "/")
            if name.endswith(".py") and rel not in SUBMIT_ONLY:
                sources.append((full, rel))
    return sources


def build_zip(dest_dir: str) -> str:
    """Path of the ``--py-files`` zip ``tfospipe-<hash>.zip`` in ``dest_dir``, written if not there yet.

    Built from the source (:func:`shipped_sources`; never committed) and named by the first 16 hex
    digits of a sha256 over its members' names and bytes, so concurrent tasks share one file and a
    changed source always yields a new zip. Written to a temporary name and renamed into place.
    Raises OSError when ``dest_dir`` cannot be created or written.
    """
    import zipfile

    digest = hashlib.sha256()
    sources = shipped_sources()
    for full, rel in sources:
        digest.update(rel.encode())
        with open(full, "rb") as f:
            digest.update(f.read())
    os.makedirs(dest_dir, exist_ok=True)
    path = os.path.join(dest_dir, f"tfospipe-{digest.hexdigest()[:16]}.zip")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for full, rel in sources:
                z.write(full, rel)
        os.replace(tmp, path)
    return path


def spark_submit_argv(job: str, job_args: Mapping[str, object], master: str, cluster_size: int | str = 2,
                      build_dir: str = BUILD_DIR) -> list[str]:
    """The spark-submit command line the operator runs for ``job`` (argv list, ready for subprocess).

    ``job_args``: the job's flag values (rendered, e.g. ``{"data_root": ..., "version": ...}``);
    ``master``: the Spark master URL (``local-cluster[2,1,1024]``, ``spark://host:7077``, ``yarn``);
    ``cluster_size``: executors; ``build_dir``: where the ``--py-files`` zip is built. Run it with
    :data:`TF_ENV` in the environment, as the operator does. Raises ValueError for an unknown job and
    KeyError for a value that is no flag of the job.
    """
    spec = jobspec.get(job)
    argv = [os.path.join(os.path.dirname(PYTHON), "spark-submit"), "--master", master,
            "--py-files", build_zip(build_dir), "--name", spec.app_name]
    for key, value in spark_conf(str(cluster_size), tfos=spec.tfos).items():
        argv += ["--conf", f"{key}={value}"]
    return argv + [spec.application] + spec.argv(job_args)
