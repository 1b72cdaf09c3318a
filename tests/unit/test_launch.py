"""The submit side: the --py-files zip ships the job code and nothing submit-only; the command line."""
import ast
import os
import zipfile

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
