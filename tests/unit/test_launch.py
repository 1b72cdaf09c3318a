"""The submit side: the --py-files zip ships the job code and nothing submit-only; the command line."""
import ast
import os
import re
import zipfile

import pytest

from tfospipe import jobspec, launch

#: Modules the jobs' drivers and executors import (a few of them; the test below checks all).
EXECUTOR_MODULES = ("tfospipe/__init__.py", "tfospipe/jobargs.py", "tfospipe/paths.py", "tfospipe/fs.py",
                    "tfospipe/schema.py", "tfospipe/model.py", "tfospipe/runner.py", "tfospipe/convert.py",
                    "tfospipe/train.py", "tfospipe/validate.py", "tfospipe/infer.py")


def test_the_zip_ships_every_job_module_but_not_the_submit_side(tmp_path):
    with zipfile.ZipFile(launch.build_zip(str(tmp_path))) as z:
        members = set(z.namelist())
    assert "tfospipe/launch.py" not in members and "tfospipe/jobspec.py" not in members
    assert set(EXECUTOR_MODULES) <= members
    package = {os.path.relpath(os.path.join(d, f), launch.JOBS_DIR).replace(os.sep, "/")
               for d, _, files in os.walk(launch.PACKAGE_DIR) if "__pycache__" not in d
               for f in files if f.endswith(".py")}
    assert members == package - set(launch.SUBMIT_ONLY)
    assert launch.build_zip(str(tmp_path)) == launch.build_zip(str(tmp_path))  # one zip per content


def test_no_shipped_module_imports_a_submit_only_one():
    """The executors (and a driver in cluster mode) have only the zip: a shipped module importing
    launch or jobspec would fail there, though not on a machine with the package installed."""
    submit_only = {os.path.splitext(os.path.basename(p))[0] for p in launch.SUBMIT_ONLY}
    for full, rel in launch.shipped_sources():
        with open(full) as f:
            tree = ast.parse(f.read(), full)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = {a.name for a in node.names} | {(node.module or "").rsplit(".", 1)[-1]}
            elif isinstance(node, ast.Import):
                names = {a.name.rsplit(".", 1)[-1] for a in node.names}
            else:
                continue
            assert not names & submit_only, (rel, ast.unparse(node))


def test_spark_submit_argv_is_the_operators_command_line(tmp_path):
    argv = launch.spark_submit_argv("train", {"data_root": "/d", "version": "v1", "run_id": "r"}, "local[2]", 3,
                                    str(tmp_path))
    assert argv[0] == os.path.join(os.path.dirname(launch.PYTHON), "spark-submit")
    assert argv[1:3] == ["--master", "local[2]"] and argv[5:7] == ["--name", "tfos-train"]
    assert argv[4] == launch.build_zip(str(tmp_path))
    confs = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--conf")
    assert confs == launch.spark_conf("3", tfos=True) and confs["spark.task.maxFailures"] == "1"
    app = argv.index(jobspec.get("train").application)
    assert argv[app:] == [os.path.join(launch.JOBS_DIR, "train.py"), "--data-root", "/d", "--version", "v1",
                          "--run-id", "r"]
    convert = launch.spark_submit_argv("convert", {"data_root": "/d", "version": "v1"}, "local[2]", 2, str(tmp_path))
    assert not any(a.startswith("spark.task.maxFailures") for a in convert)


def test_one_spec_per_job():
    assert list(jobspec.SPECS) == ["convert", "train", "validate", "infer"]
    assert [s.name for s in jobspec.SPECS.values() if s.tfos] == ["train"]
    assert jobspec.get("validate").written({"data_root": "/d", "version": "v1", "run_id": "r"}) == "/d/serving"
    assert jobspec.get("infer").written({"data_root": "/d", "version": "v1"}) == "/d/predictions/v1"
    for spec in jobspec.SPECS.values():
        assert os.path.isfile(spec.application)


#: The conf keys that TFOS_EXECUTOR_PYTHON_ENV decides besides spark.pyspark.python.
MODE_KEYS = ("spark.archives", "spark.kubernetes.container.image")


@pytest.fixture
def python_env(monkeypatch):
    """A clean slate for TFOS_EXECUTOR_PYTHON_ENV and its companions; returns monkeypatch."""
    for name in ("TFOS_EXECUTOR_PYTHON_ENV", "TFOS_EXECUTOR_ARCHIVE", "TFOS_EXECUTOR_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("value", [None, "", "venv"])
def test_venv_mode_is_the_default_and_runs_this_python_everywhere(python_env, value):
    if value is not None:
        python_env.setenv("TFOS_EXECUTOR_PYTHON_ENV", value)
    conf = launch.spark_conf("2")
    assert conf["spark.pyspark.python"] == conf["spark.pyspark.driver.python"] == launch.PYTHON
    assert not set(MODE_KEYS) & set(conf)


def test_archive_mode_ships_the_packed_environment(python_env, tmp_path):
    archive = tmp_path / "env.tar.gz"
    archive.write_bytes(b"")
    python_env.setenv("TFOS_EXECUTOR_PYTHON_ENV", "archive")
    python_env.setenv("TFOS_EXECUTOR_ARCHIVE", str(archive))
    conf = launch.spark_conf("2", tfos=True)
    assert conf["spark.archives"] == f"{archive}#environment"
    assert conf["spark.pyspark.python"] == "./environment/bin/python"
    assert conf["spark.pyspark.driver.python"] == launch.PYTHON   # the driver runs here (client mode)
    assert "spark.kubernetes.container.image" not in conf
    assert conf["spark.task.maxFailures"] == "1"
    assert {n: conf.get(f"spark.executorEnv.{n}") for n in launch.TF_ENV} == launch.TF_ENV
    # a relative path is made absolute (spark-submit may run elsewhere); a URI is left to the cluster
    python_env.chdir(tmp_path)
    python_env.setenv("TFOS_EXECUTOR_ARCHIVE", "env.tar.gz")
    assert launch.spark_conf("2")["spark.archives"] == f"{archive}#environment"
    python_env.setenv("TFOS_EXECUTOR_ARCHIVE", "hdfs:///envs/executor-env.tar.gz")
    assert launch.spark_conf("2")["spark.archives"] == "hdfs:///envs/executor-env.tar.gz#environment"
    # the default archive is the one `make executor-env` builds
    assert launch.EXECUTOR_ARCHIVE == os.path.join(launch.PROJECT_DIR, "build", "executor-env.tar.gz")
    python_env.delenv("TFOS_EXECUTOR_ARCHIVE")
    python_env.setattr(launch, "EXECUTOR_ARCHIVE", str(archive))
    assert launch.spark_conf("2")["spark.archives"] == f"{archive}#environment"


def test_archive_mode_refuses_a_missing_archive(python_env, tmp_path):
    python_env.setenv("TFOS_EXECUTOR_PYTHON_ENV", "archive")
    python_env.setattr(launch, "EXECUTOR_ARCHIVE", str(tmp_path / "build" / "executor-env.tar.gz"))
    with pytest.raises(ValueError, match=r"executor-env\.tar\.gz does not exist; build it with `make executor-env`"):
        launch.spark_conf("2")
    python_env.setenv("TFOS_EXECUTOR_ARCHIVE", str(tmp_path / "other.tar.gz"))
    with pytest.raises(ValueError, match="other.tar.gz does not exist"):
        launch.spark_submit_argv("convert", {"data_root": "/d", "version": "v1"}, "yarn", 2, str(tmp_path))


def test_image_mode_names_the_image_and_its_python(python_env):
    python_env.setenv("TFOS_EXECUTOR_PYTHON_ENV", "image")
    with pytest.raises(ValueError, match="TFOS_EXECUTOR_PYTHON_ENV=image needs TFOS_EXECUTOR_IMAGE"):
        launch.spark_conf("2")
    python_env.setenv("TFOS_EXECUTOR_IMAGE", "registry.example.com/tfos-pipeline:1")
    conf = launch.spark_conf("2")
    assert conf["spark.kubernetes.container.image"] == "registry.example.com/tfos-pipeline:1"
    assert conf["spark.pyspark.python"] == launch.IMAGE_PYTHON
    assert conf["spark.pyspark.driver.python"] == launch.PYTHON and "spark.archives" not in conf
    # the image's venv is where the Dockerfile creates it
    with open(os.path.join(launch.PROJECT_DIR, "Dockerfile")) as f:
        venv = re.search(r"python -m venv (\S+)", f.read()).group(1)
    assert launch.IMAGE_PYTHON == f"{venv}/bin/python"


@pytest.mark.parametrize("value", ["conda", "Archive", "docker"])
def test_an_unknown_python_env_is_refused(python_env, value):
    python_env.setenv("TFOS_EXECUTOR_PYTHON_ENV", value)
    with pytest.raises(ValueError, match=f"TFOS_EXECUTOR_PYTHON_ENV='{value}' is not one of venv, archive, image"):
        launch.spark_conf("2")


def test_the_airflow_operator_takes_the_same_setting(python_env, tmp_path):
    """The operator builds its conf through launch.spark_conf when the DAG is parsed."""
    from tfos_spark import TFoSSparkSubmitOperator

    archive = tmp_path / "env.tar.gz"
    archive.write_bytes(b"")
    python_env.setenv("TFOS_EXECUTOR_PYTHON_ENV", "archive")
    python_env.setenv("TFOS_EXECUTOR_ARCHIVE", str(archive))
    op = TFoSSparkSubmitOperator(task_id="convert", job="convert", job_args={"data_root": "/d", "version": "v1"})
    assert op.conf == launch.spark_conf(op.conf["spark.executor.instances"])
    assert op.conf["spark.archives"] == f"{archive}#environment"
    assert op.conf["spark.pyspark.python"] == "./environment/bin/python"
