"""Executors that cannot run their Python: Spark's own failure texts (as a convert job on local-cluster
printed them, with TFOS_EXECUTOR_PYTHON_ENV=archive and a packed bin/python that is a dangling link, or a
link to Python 3.12) read by runner's classifier, and told in one line naming both Pythons and what to do."""
import io
import platform
import sys
import tarfile

import pytest

from tfospipe import runner

#: Py4JJavaError's text (head) when bin/python is a link to a path the node lacks, as venv-pack leaves it.
MISSING_INTERPRETER = """An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 1 in stage 0.0 failed 4 times, most recent \
failure: Lost task 1.3 in stage 0.0 (TID 10) (192.0.2.2 executor 1): java.io.IOException: Cannot run program \
"./environment/bin/python": error=2, No such file or directory
\tat java.base/java.lang.ProcessBuilder.start(ProcessBuilder.java:1143)
\tat java.base/java.lang.ProcessBuilder.start(ProcessBuilder.java:1073)
\tat org.apache.spark.api.python.PythonWorkerFactory.startDaemon(PythonWorkerFactory.scala:346)
\tat org.apache.spark.api.python.PythonWorkerFactory.createThroughDaemon(PythonWorkerFactory.scala:204)
Caused by: java.io.IOException: error=2, No such file or directory
\tat java.base/java.lang.ProcessImpl.forkAndExec(Native Method)
"""

#: PySpark's PythonException text (head) when the executors' Python is 3.12 and the driver's 3.11.
VERSION_MISMATCH = """An exception was thrown from the Python worker:
Traceback (most recent call last):
  File "/work/main/.venv/lib/python3.11/site-packages/pyspark/python/lib/pyspark.zip/pyspark/worker.py", line 3569, in main
    check_python_version(infile)
  File "/work/main/.venv/lib/python3.11/site-packages/pyspark/python/lib/pyspark.zip/pyspark/worker_util.py", line 86, \
in check_python_version
    raise PySparkRuntimeError(
pyspark.errors.exceptions.base.PySparkRuntimeError: [PYTHON_VERSION_MISMATCH] Python in worker has different version: \
3.12 than that in driver: 3.11, PySpark cannot run with different minor versions.
Please check environment variables PYSPARK_PYTHON and PYSPARK_DRIVER_PYTHON are correctly set.
 SQLSTATE: 38000
"""

#: The same as the task's warning names the executor (Spark's TaskSetManager).
MISMATCH_IN_TASK = ("Lost task 0.0 in stage 0.0 (TID 0) (10.0.0.7 executor 3): org.apache.spark.api.python."
                    "PythonException: [PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback "
                    "...\n" + VERSION_MISMATCH)

#: The bare messages, as Spark's error classes and Java write them.
BARE_MISMATCH = ("[PYTHON_VERSION_MISMATCH] Python in worker has different version: 3.12 than that in driver: 3.11, "
                 "PySpark cannot run with different minor versions. Please check environment variables PYSPARK_PYTHON "
                 "and PYSPARK_DRIVER_PYTHON are correctly set.")
BARE_MISSING = 'java.io.IOException: Cannot run program "./environment/bin/python": error=2, No such file or directory'

ARCHIVE_CONF = {"spark.pyspark.python": "./environment/bin/python", "spark.archives": None,
                "spark.kubernetes.container.image": None}


def packed(path, links, pyvenv=None):
    """A .tar.gz like venv-pack's: ``links`` {member: link target}, optionally a pyvenv.cfg."""
    with tarfile.open(path, "w:gz") as tar:
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        if pyvenv is not None:
            data = pyvenv.encode()
            info = tarfile.TarInfo("pyvenv.cfg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.mark.parametrize("error", [Exception(MISSING_INTERPRETER), MISSING_INTERPRETER, BARE_MISSING])
def test_a_missing_interpreter_is_read_from_the_java_error(error):
    found = runner.executor_python_failure(error)
    assert found.program == "./environment/bin/python" and found.worker_version is None
    assert found.reason == ('java.io.IOException: Cannot run program "./environment/bin/python": error=2, No such file '
                            'or directory')
    if "Lost task" in str(error):
        assert (found.executor, found.host) == ("1", "192.0.2.2")


@pytest.mark.parametrize("error", [Exception(VERSION_MISMATCH), BARE_MISMATCH, MISMATCH_IN_TASK])
def test_a_version_mismatch_is_read_from_pysparks_error(error):
    found = runner.executor_python_failure(error)
    assert (found.worker_version, found.driver_version, found.program) == ("3.12", "3.11", None)
    assert found.reason.startswith("[PYTHON_VERSION_MISMATCH] Python in worker has different version: 3.12")
    if error is MISMATCH_IN_TASK:
        assert (found.executor, found.host) == ("3", "10.0.0.7")


@pytest.mark.parametrize("error", [ValueError("a bug"), None, "ExecutorLostFailure (executor 1 exited) Reason: x",
                                   'java.io.IOException: Cannot run program "git": error=2, No such file or directory'])
def test_other_failures_are_not_an_executor_python_failure(error):
    assert runner.executor_python_failure(error) is None


def test_the_archive_says_what_its_python_links_to_and_its_version(tmp_path):
    venv = packed(tmp_path / "venv.tar.gz", {"bin/python": "python3.11", "bin/python3": "python3.11",
                                             "bin/python3.11": "/opt/py/bin/python3.11"},
                  "home = /opt/py/bin\ninclude-system-site-packages = false\nversion = 3.11.7\n")
    assert runner.archive_python(venv) == ("/opt/py/bin/python3.11", "3.11.7")
    assert runner.archive_python(packed(tmp_path / "d.tar.gz", {"bin/python": "/nonexistent/python3.11"})) \
        == ("/nonexistent/python3.11", None)
    assert runner.archive_python(str(tmp_path / "none.tar.gz")) == (None, None)
    (tmp_path / "not.tar.gz").write_bytes(b"not an archive")
    assert runner.archive_python(str(tmp_path / "not.tar.gz")) == (None, None)


def _one_line(message):
    assert "\n" not in message
    driver = f"the driver's Python {sys.executable}, Python {platform.python_version()}"
    assert driver in message
    return message


def test_archive_mode_names_the_link_the_node_lacks_and_what_to_do(tmp_path):
    archive = packed(tmp_path / "env.tar.gz", {"bin/python": "/nonexistent/python3.11"})
    conf = dict(ARCHIVE_CONF, **{"spark.archives": f"{archive}#environment"})
    message = _one_line(runner.job_failure("convert", Exception(MISSING_INTERPRETER), conf))
    assert message.startswith(f"the convert job failed: the executors' Python ./environment/bin/python (executor 1 on "
                              f"host 192.0.2.2) from the archive {archive}, whose bin/python links to "
                              "/nonexistent/python3.11, could not be started on the node (java.io.IOException: Cannot "
                              'run program "./environment/bin/python": error=2, No such file or directory): '
                              "/nonexistent/python3.11 is missing there")
    assert "`make executor-env`" in message and "TFOS_EXECUTOR_PYTHON_PREFIX" in message
    assert "A retry fails the same way" in message


def test_archive_mode_names_both_versions_of_a_mismatch(tmp_path):
    archive = packed(tmp_path / "env.tar.gz", {"bin/python": "/usr/local/bin/python3.12"},
                     "home = /usr/local/bin\nversion = 3.12.1\n")
    conf = dict(ARCHIVE_CONF, **{"spark.archives": f"file://{archive}#environment"})  # as the driver's conf has it
    message = _one_line(runner.job_failure("train", RuntimeError(VERSION_MISMATCH), conf))
    assert (f"the executors' Python ./environment/bin/python from the archive {archive}, whose bin/python links to "
            "/usr/local/bin/python3.12, Python 3.12, is not the same minor version as the driver's Python") in message
    assert "`make executor-env`" in message and "TFOS_EXECUTOR_PYTHON_PREFIX" in message


def test_a_remote_archive_is_named_without_reading_it():
    conf = dict(ARCHIVE_CONF, **{"spark.archives": "hdfs:///envs/executor-env.tar.gz#environment"})
    message = _one_line(runner.job_failure("infer", Exception(BARE_MISSING), conf))
    assert "from the archive hdfs:///envs/executor-env.tar.gz could not be started on the node" in message


def test_venv_and_image_modes_say_what_to_install_where():
    venv = {"spark.pyspark.python": "/srv/tfos/.venv/bin/python", "spark.archives": None,
            "spark.kubernetes.container.image": None}
    error = 'java.io.IOException: Cannot run program "/srv/tfos/.venv/bin/python": error=2, No such file or directory'
    message = _one_line(runner.job_failure("validate", Exception(error), venv))
    assert "the executors' Python /srv/tfos/.venv/bin/python could not be started on the node" in message
    assert "install the venv" in message and "TFOS_EXECUTOR_PYTHON_ENV=archive" in message
    image = dict(venv, **{"spark.pyspark.python": "/opt/tfos/.venv/bin/python",
                          "spark.kubernetes.container.image": "registry.example.com/tfos:1"})
    message = _one_line(runner.job_failure("infer", Exception(BARE_MISMATCH), image))
    assert "Python 3.12, is not the same minor version" in message
    assert "the image registry.example.com/tfos:1 must hold the project's venv" in message


def test_job_failure_still_tells_a_lost_executor_and_leaves_bugs_alone():
    lost = ("Job aborted due to stage failure: Lost task 1.0 in stage 0.0 (TID 1) (192.0.2.2 executor 1): "
            "ExecutorLostFailure (executor 1 exited caused by one of the running tasks) Reason: Command exited with "
            "code 137")
    assert "Spark executor 1 on host 192.0.2.2" in runner.job_failure("convert", Exception(lost), ARCHIVE_CONF)
    assert runner.job_failure("convert", ValueError("a bug"), ARCHIVE_CONF) is None


def test_a_training_cluster_whose_executors_cannot_run_python_is_left_to_the_runner(tmp_path):
    """TFoS stops the SparkContext and exits when its node job fails (the error only in its status): the
    train driver hands the failure's text on, so runner.main names both Pythons."""
    from tfospipe import nodefailure
    failure = nodefailure.cluster_failure(SystemExit(1), str(tmp_path), {"error": MISSING_INTERPRETER}, None, 0)
    assert isinstance(failure, RuntimeError) and not isinstance(failure, runner.JobError)
    assert runner.executor_python_failure(failure).program == "./environment/bin/python"
