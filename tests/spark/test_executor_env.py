"""TFOS_EXECUTOR_PYTHON_ENV=archive on a real 2-executor cluster: the executors run the environment
that `make executor-env` packs (shipped with spark.archives), not the Airflow host's venv.

A small PySpark application, submitted with the pipeline's conf (launch.spark_conf) and --py-files
zip, reports from each executor (one barrier task per executor) its Python, where each package comes
from and whether every shipped tfospipe module imports there; then runs a mapInArrow, as infer does.

The archive is built by the make target (minutes the first time; a no-op while requirements.txt,
requirements-executor.txt and the venv are unchanged). Opt-in, with TFOS_TEST_EXECUTOR_ENV=1: on
this 2-core machine the build takes ~1.6 min (683 MiB archive) and the run ~1.4 min (the driver and
each executor unpack 1.9 GiB), together past the ~3 minutes a test may take by default.

Always run: an archive whose bin/python the executors cannot run (a link to a path no node has, as
venv-pack leaves it; a link to another Python minor version) ends the convert job with one ERROR line
naming both Pythons and what to do (a tiny archive of links: ~30 s each).
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import PROJECT_DIR, TEST_MASTER, run_job
from tfospipe import launch

pytestmark = pytest.mark.spark
opt_in = pytest.mark.skipif(os.environ.get("TFOS_TEST_EXECUTOR_ENV") != "1",
                            reason="archive mode on a real cluster: ~3 min (builds build/executor-env.tar.gz with "
                                   "`make executor-env`, then a Spark run); set TFOS_TEST_EXECUTOR_ENV=1 to run it")

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


@opt_in
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


def other_minor_python():
    """The real path of an installed CPython 3 of another minor version than this one (on PATH, in /usr,
    /usr/local or pyenv's versions), or None."""
    import glob
    found = [shutil.which(f"python3.{minor}") for minor in (12, 13, 10)]
    for pattern in ("/usr/bin/python3.*", "/usr/local/bin/python3.*", os.path.expanduser("~/.pyenv/versions/3.*/bin/python3.*")):
        found += sorted(glob.glob(pattern))
    found = [exe for exe in found if exe and os.path.basename(exe)[len("python3."):].isdigit()]
    # the nearest newer minor first (an older one may not even import the cluster's PySpark)
    found.sort(key=lambda exe: (lambda minor: (minor < sys.version_info[1], abs(minor - sys.version_info[1])))(
        int(os.path.basename(exe)[len("python3."):])))
    for exe in found:
        proc = subprocess.run([exe, "-c", "import sys; print(sys.executable, sys.version_info[0], sys.version_info[1])"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=30)
        out = proc.stdout.split()
        if proc.returncode == 0 and len(out) == 3 and out[1] == "3" and int(out[2]) != sys.version_info[1]:
            return out[0]
    return None


@pytest.mark.parametrize("case", ["missing interpreter", "other minor version"])
def test_executors_that_cannot_run_the_archives_python_fail_the_job_in_one_line(case, tmp_path, monkeypatch,
                                                                                 build_dir):
    """A packed environment whose bin/python is a link to a path the node lacks (what venv-pack leaves when
    the nodes' Python is elsewhere), or to another Python minor version: the convert job ends with one
    ERROR line naming the executors' Python, the driver's, and what to do, and no Python traceback."""
    import tarfile
    target = "/nonexistent/python3.11" if case == "missing interpreter" else other_minor_python()
    if target is None:
        pytest.skip("no CPython of another minor version on this machine")
    env_dir = tmp_path / "env" / "bin"
    env_dir.mkdir(parents=True)
    os.symlink(target, env_dir / "python")
    archive = tmp_path / "executor-env.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(env_dir, arcname="bin")
    raw = tmp_path / "root" / "raw" / "v1"
    raw.mkdir(parents=True)
    (raw / "a.csv").write_text("".join(f"{i % 10},0,1,2,3\n" for i in range(40)))
    monkeypatch.setenv("TFOS_EXECUTOR_PYTHON_ENV", "archive")
    monkeypatch.setenv("TFOS_EXECUTOR_ARCHIVE", str(archive))
    run = run_job("convert", {"data_root": str(tmp_path / "root"), "version": "v1", "num_shards": 1}, build_dir,
                  timeout=300)
    assert run.returncode == 2, run.explain(4000)
    err = run.error()
    assert err.startswith("ERROR [convert] the convert job failed: the executors' Python ./environment/bin/python "), err
    assert re.search(r"\./environment/bin/python (\(executor \d+ on host \S+\) )?from the archive " + re.escape(
        f"{archive}, whose bin/python links to {target}"), err), err
    assert f"the driver's Python {sys.executable}, Python {'.'.join(map(str, sys.version_info[:3]))}" in err
    assert "`make executor-env`" in err and "TFOS_EXECUTOR_PYTHON_PREFIX" in err
    if case == "missing interpreter":
        assert f"{target} is missing there" in err and "error=2, No such file or directory" in err
        assert "Traceback" not in run.output
    else:
        minor = ".".join(os.path.basename(target)[len("python"):].split(".")[:2])
        assert f"Python {minor}, is not the same minor version as the driver's Python" in err
        # none of the driver's code (the executors' own Python traceback, quoted by Spark, names the venv's pyspark)
        assert "Traceback (most recent call last):\n  File \"" + os.path.join(PROJECT_DIR, "jobs") not in run.output
    assert run.output.rstrip().splitlines()[-1] == err  # the line ends the log
    assert not (tmp_path / "root" / "tfrecords" / "v1").exists()
