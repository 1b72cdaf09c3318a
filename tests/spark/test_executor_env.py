"""TFOS_EXECUTOR_PYTHON_ENV=archive on a real 2-executor cluster: the executors run the environment
that `make executor-env` packs (shipped with spark.archives), not the Airflow host's venv.

A small PySpark application, submitted with the pipeline's conf (launch.spark_conf) and --py-files
zip, reports from each executor (one barrier task per executor) its Python, where each package comes
from and whether every shipped tfospipe module imports there; then runs a mapInArrow, as infer does.

The archive is built by the make target (minutes the first time; a no-op while requirements.txt,
requirements-executor.txt and the venv are unchanged). Opt-in, with TFOS_TEST_EXECUTOR_ENV=1: on
this 2-core machine the build takes ~1.6 min (683 MiB archive) and the run ~1.4 min (the driver and
each executor unpack 1.9 GiB), together past the ~3 minutes a test may take by default.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import PROJECT_DIR, TEST_MASTER
from tfospipe import launch

pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(os.environ.get("TFOS_TEST_EXECUTOR_ENV") != "1",
                       reason="archive mode on a real cluster: ~3 min (builds build/executor-env.tar.gz with "
                              "`make executor-env`, then a Spark run); set TFOS_TEST_EXECUTOR_ENV=1 to run it"),
]

#: What the executors import from the archive (requirements-executor.txt), by module name.
ARCHIVE_MODULES = ("tensorflow", "tensorboard", "tf_keras", "tensorflowonspark.TFCluster", "tensorflowonspark.TFNode",
                   "pkg_resources", "numpy", "pyarrow", "pyarrow.parquet", "google_crc32c", "fsspec",
                   "s3fs", "gcsfs", "adlfs")

APP = r'''
import importlib, json, os, sys
from pyspark.sql import SparkSession

ARCHIVE_MODULES, SHIPPED = json.loads(sys.argv[1]), json.loads(sys.argv[2])


def probe(_):
    from pyspark import BarrierTaskContext
    BarrierTaskContext.get().barrier()  # both tasks at once: one on each executor
    files = {name: importlib.import_module(name).__file__ for name in ARCHIVE_MODULES + SHIPPED + ["pyspark"]}
    try:
        import pandas  # noqa: F401  (in the host's venv, not in the archive)
        pandas_found = True
    except ImportError:
        pandas_found = False
    yield json.dumps({"executable": sys.executable, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
                      "cwd": os.getcwd(),
                      "version": list(sys.version_info[:3]), "files": files, "pandas": pandas_found})


def double(batches):
    import pyarrow as pa
    for batch in batches:
        yield pa.RecordBatch.from_arrays([pa.array(batch.column(0).to_numpy() * 2)], names=["id"])


spark = SparkSession.builder.getOrCreate()
reports = spark.sparkContext.parallelize(range(2), 2).barrier().mapPartitions(probe).collect()
doubled = sorted(r.id for r in spark.range(6).repartition(2).mapInArrow(double, "id long").collect())
print("PROBE " + json.dumps({"executors": [json.loads(r) for r in reports], "doubled": doubled}))
spark.stop()
'''


def local_cluster_work_dir():
    """Where a local-cluster's workers put their executors' working directories: pip's pyspark's
    ``work/`` (Spark keeps them, ``app-*/<executor id>/``, after the application ends)."""
    import pyspark
    return os.path.join(os.path.dirname(pyspark.__file__), "work")


def remove_new_environments(work, before):
    """Remove the application directories under ``work`` that are not in ``before`` and hold an
    unpacked archive (``<executor>/environment``: 1.9 GiB each)."""
    for app in set(os.listdir(work) if os.path.isdir(work) else ()) - before:
        path = os.path.join(work, app)
        if any(os.path.isdir(os.path.join(path, e, "environment")) for e in os.listdir(path)):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def archive():
    """build/executor-env.tar.gz, built (or found up to date) by `make executor-env`."""
    proc = subprocess.run(["make", "-s", "executor-env"], cwd=PROJECT_DIR, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert os.path.isfile(launch.EXECUTOR_ARCHIVE), proc.stdout[-5000:]
    return launch.EXECUTOR_ARCHIVE


def test_archive_mode_executors_run_the_packed_environment(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("TFOS_EXECUTOR_PYTHON_ENV", "archive")
    monkeypatch.delenv("TFOS_EXECUTOR_ARCHIVE", raising=False)
    conf = launch.spark_conf("2")
    assert conf["spark.archives"] == f"{archive}#environment"
    app = tmp_path / "probe.py"
    app.write_text(APP)
    shipped = [rel[:-len(".py")].replace("/", ".").removesuffix(".__init__") for _, rel in launch.shipped_sources()]
    argv = [os.path.join(os.path.dirname(launch.PYTHON), "spark-submit"), "--master", TEST_MASTER,
            "--py-files", launch.build_zip(str(tmp_path))]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    argv += [str(app), json.dumps(list(ARCHIVE_MODULES)), json.dumps(shipped)]
    work = local_cluster_work_dir()
    before = set(os.listdir(work) if os.path.isdir(work) else ())
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                              env=dict(os.environ, **launch.TF_ENV))
    finally:
        remove_new_environments(work, before)
    assert proc.returncode == 0, proc.stdout[-8000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE "))
    probe = json.loads(line[len("PROBE "):])

    assert probe["doubled"] == [0, 2, 4, 6, 8, 10]          # mapInArrow without pandas
    assert len({e["cwd"] for e in probe["executors"]}) == 2  # one report per executor
    host_prefix = sys.prefix
    for e in probe["executors"]:
        env_dir = os.path.join(e["cwd"], "environment")
        assert e["executable"].startswith(env_dir + "/") and e["executable"].endswith("/bin/python"), e
        assert os.path.realpath(e["prefix"]) == os.path.realpath(env_dir), e
        assert e["version"][:2] == list(sys.version_info[:2])  # PySpark: the driver's minor version
        # the interpreter the archive links to: this machine's, or the nodes' (TFOS_EXECUTOR_PYTHON_PREFIX)
        assert e["base_prefix"] == (os.environ.get("TFOS_EXECUTOR_PYTHON_PREFIX") or sys.base_prefix), e
        assert not e["pandas"], "the executors see the host's venv (pandas is not in the archive)"
        for name in ARCHIVE_MODULES:
            assert os.path.realpath(e["files"][name]).startswith(os.path.realpath(env_dir) + "/"), (name, e)
        # pyspark from Spark's own pyspark.zip, tfospipe from the --py-files zip: neither in the archive
        assert "pyspark.zip" in e["files"]["pyspark"], e["files"]["pyspark"]
        assert all(".zip" in e["files"][m] and not e["files"][m].startswith(host_prefix)
                   for m in e["files"] if m.startswith("tfospipe")), e["files"]
