"""What every spark-submit entrypoint does: parse arguments, run the job in a SparkSession, exit code.

A job raises :class:`JobError` for anything a user must fix (bad input, missing upstream output, a
failed gate); it is printed as one ``ERROR`` line that ends up at the end of the Airflow task log,
and the process exits with status 2. A :class:`UserError` (a JobError no retry can mend: no input, too
many bad rows, a failed gate, params that do not fit together, too few executors) exits with
:data:`EXIT_USER_ERROR` when the Airflow operator asks for it (``TFOS_EXIT_USER_ERROR``), so that the task
fails without a retry. A Spark job that failed because an executor was lost (its JVM
killed, out of memory, its host gone) is reported the same way: one ``ERROR`` line with the executor,
its host, Spark's reason and whether a retry is safe (:data:`RETRY_AFTER_EXECUTOR_LOSS`), status 2.
So is one whose executors could not run their Python (:func:`executor_python_failure`: an interpreter
missing on the node, or another Python minor version than the driver's): the line names both Pythons
and what to do (:func:`executor_python_message`). Anything else is a bug and keeps its traceback
(status 1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import fs, jobargs

if TYPE_CHECKING:
    from pyspark import SparkContext
    from pyspark.sql import SparkSession


class JobError(Exception):
    """A failure with a message for the user: what is wrong, where, and what to do."""


#: Exit status of a job whose data checks refused its data (:class:`DataRefused`): a retry of the same
#: data fails the same way, so the Airflow operator fails the task without retrying it (plugins/tfos_spark.py).
EXIT_DATA_REFUSED = 3


#: Exit status of a job that failed with a :class:`UserError` when the environment variable
#: ``TFOS_EXIT_USER_ERROR`` names one (the Airflow operator sets it to this, and fails such a task without a
#: retry); otherwise such a job exits with 2, as for any JobError.
EXIT_USER_ERROR = 4


class UserError(JobError):
    """A JobError only the user can fix (no input, too many bad rows, a failed gate, params that do not fit
    together, too few executors): the same run fails the same way, so it is not worth a retry. Exits with
    :func:`user_error_status`."""


def user_error_status() -> int:
    """The exit status of a :class:`UserError` (and of refused arguments): ``TFOS_EXIT_USER_ERROR`` when set
    (the operator's :data:`EXIT_USER_ERROR`), else 2."""
    try:
        return int(os.environ.get("TFOS_EXIT_USER_ERROR") or 2)
    except ValueError:
        return 2


def _status(error: BaseException) -> int:
    if isinstance(error, DataRefused):
        return EXIT_DATA_REFUSED
    return user_error_status() if isinstance(error, UserError) else 2


class DataRefused(JobError):
    """The data checks found an anomaly under ``data_checks=fail`` (datachecks.decide): the job exits
    with :data:`EXIT_DATA_REFUSED` instead of 2, and is not retried."""


#: Words by which Spark reports a job that failed because an executor was lost (a bare "exited with code"
#: is not one: a failing subprocess or a TensorFlow error can quote a child's exit too).
EXECUTOR_LOSS_MARKERS = ("ExecutorLostFailure", "Lost executor")
#: What a lost executor left behind, per job, and whether a retry is safe.
RETRY_AFTER_EXECUTOR_LOSS = {
    "convert": "nothing was published (the output is written to a staging directory first): Airflow's retry, "
               "or a rerun, converts the version again from its CSV",
    "train": "Airflow's retry, or a rerun under the same run id, resumes from the last finished epoch "
             "(BackupAndRestore state in the run's backup/)",
    "validate": "the gate did not finish, nothing was promoted and serving is unchanged: Airflow's retry, or a "
                "rerun, is safe",
    "infer": "no predictions were published (the version's previous predictions are unchanged): Airflow's retry, "
             "or a rerun, is safe",
}


@dataclasses.dataclass(frozen=True)
class ExecutorLoss:
    """A Spark job failure caused by a lost executor, as Spark reported it.

    ``executor``: Spark's executor id; ``host``: where it ran; ``task``: index of the task (partition)
    it was running, or None; ``reason``: Spark's words (``ExecutorLostFailure (...) Reason: Command
    exited with code 137``). Fields Spark did not report are None.
    """

    executor: str | None
    host: str | None
    task: int | None
    reason: str

    def describe(self) -> str:
        """``Spark executor E on host H (running task T) was lost: REASON`` (``?`` for what is unknown)."""
        where = f"Spark executor {self.executor or '?'} on host {self.host or '?'}"
        task = f" (running task {self.task})" if self.task is not None else ""
        return f"{where}{task} was lost: {self.reason}"


_LOST_TASK = re.compile(r"Lost task (\d+)\.\d+ in stage [\d.]+ \(TID \d+\) \((\S+) executor ([^)\s]+)\): "
                        r"(ExecutorLostFailure[^\n]*)")
_LOST_EXECUTOR = re.compile(r"Lost executor (\S+) on ([^:\s]+): ([^\n]*)")


def executor_loss(error: object) -> ExecutorLoss | None:
    """The executor loss an exception (or its text) reports, or None when it reports none.

    Reads what Spark writes when a job fails because an executor was lost (py4j's Py4JJavaError and
    PySpark's errors carry it in their message): ``Lost task 1.0 in stage 0.0 (TID 1) (HOST executor 1):
    ExecutorLostFailure (...) Reason: ...``, or ``Lost executor 1 on HOST: ...``.
    """
    text = _text(error)
    if not any(marker in text for marker in EXECUTOR_LOSS_MARKERS):
        return None
    m = _LOST_TASK.search(text)
    if m:
        return ExecutorLoss(m.group(3), m.group(2), int(m.group(1)), " ".join(m.group(4).split())[:300])
    m = _LOST_EXECUTOR.search(text)
    if m:
        return ExecutorLoss(m.group(1), m.group(2), None, " ".join(m.group(3).split())[:300])
    line = next((ln for ln in text.splitlines() if any(k in ln for k in EXECUTOR_LOSS_MARKERS)), text)
    return ExecutorLoss(None, None, None, " ".join(line.split())[:300])


def executor_loss_message(job: str, loss: ExecutorLoss) -> str:
    """The one-line message of a job whose Spark job failed because an executor was lost."""
    return (f"{loss.describe()}. The {job} job failed with it; "
            f"{RETRY_AFTER_EXECUTOR_LOSS.get(job, 'a rerun is safe')}. If executors keep dying, see their logs "
            "(Spark UI, or the executors' stderr) for memory limits (exit code 137: killed, often out of memory)")


@dataclasses.dataclass(frozen=True)
class ExecutorPythonFailure:
    """A Spark job that failed because an executor could not run its Python worker, as Spark reported it.

    ``program``: the interpreter Spark could not start (``java.io.IOException: Cannot run program
    "./environment/bin/python": error=2, No such file or directory``), or None; ``worker_version`` and
    ``driver_version``: the minor versions of PySpark's ``[PYTHON_VERSION_MISMATCH]`` (``3.12``,
    ``3.11``), or None; ``executor``, ``host``: where the last failed task ran, when Spark said so;
    ``reason``: Spark's words, one line.
    """

    program: str | None
    worker_version: str | None
    driver_version: str | None
    executor: str | None
    host: str | None
    reason: str


_PYTHON_MISMATCH = re.compile(r"\[PYTHON_VERSION_MISMATCH\] Python in worker has different version:? (\S+?) than "
                              r"that in driver:? (\S+?),")
_CANNOT_RUN = re.compile(r'Cannot run program "([^"]+)"(?: \(in directory "[^"]*"\))?: (error=\d+, [^\n]+)')
_TASK_WHERE = re.compile(r"Lost task \S+ in stage \S+ \(TID \d+\) \((\S+) executor ([^)\s]+)\)")


def _text(error: object) -> str:
    try:
        return str(error or "")
    except Exception:  # a py4j error whose JVM is gone cannot render its Java side
        return repr(error)


def executor_python_failure(error: object) -> ExecutorPythonFailure | None:
    """The executor Python failure an exception (or its text) reports, or None when it reports none.

    Reads what Spark writes (py4j's Py4JJavaError, PySpark's PythonException and TensorFlowOnSpark's
    status carry it in their text) when the Python worker cannot start: PySpark's
    ``[PYTHON_VERSION_MISMATCH] Python in worker has different version: 3.12 than that in driver: 3.11``,
    or Java's ``Cannot run program "PATH": error=N, ...`` for a program whose name starts with
    ``python`` (a missing interpreter, or a link to one the node lacks, as venv-pack leaves
    ``bin/python``).
    """
    text = _text(error)
    mismatch = _PYTHON_MISMATCH.search(text)
    cannot = _CANNOT_RUN.search(text)
    if cannot and not os.path.basename(cannot.group(1)).startswith("python"):
        cannot = None
    if not (mismatch or cannot):
        return None
    where = _TASK_WHERE.search(text)
    if mismatch:
        reason = f"[PYTHON_VERSION_MISMATCH] Python in worker has different version: {mismatch.group(1)} than that " \
                 f"in driver: {mismatch.group(2)}"
    else:
        reason = f"java.io.IOException: Cannot run program \"{cannot.group(1)}\": {cannot.group(2).strip()}"
    return ExecutorPythonFailure(
        program=cannot.group(1) if cannot else None,
        worker_version=mismatch.group(1) if mismatch else None, driver_version=mismatch.group(2) if mismatch else None,
        executor=where.group(2) if where else None, host=where.group(1) if where else None, reason=reason[:300])


#: Spark conf keys that say which Python the executors run (launch.executor_python_conf sets them).
PYTHON_CONF_KEYS = ("spark.pyspark.python", "spark.archives", "spark.kubernetes.container.image")


def archive_python(archive: str) -> tuple[str | None, str | None]:
    """``(interpreter, version)`` of a packed environment (a local ``.tar.gz`` of ``make executor-env``):
    what its ``bin/python`` links to (followed through the archive's own links, e.g. ``bin/python`` ->
    ``python3.11`` -> ``/usr/bin/python3.11``), and the ``version`` its ``pyvenv.cfg`` records; None for
    what the archive does not say, or when it cannot be read (not a local file, not a tar archive).
    Streams the archive once, stopping as soon as both are known (a 700 MiB archive: seconds at most).
    """
    import tarfile

    links, target, version = {}, None, None

    def resolve():
        name = "bin/python"
        for _ in range(10):
            if name not in links:
                return None
            link = links[name]
            if link is None or link.startswith("/"):
                return link or name
            name = os.path.normpath(os.path.join(os.path.dirname(name), link))
        return None

    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if name.startswith("bin/python"):
                    links[name] = member.linkname if member.issym() else None
                    target = resolve() or target
                elif name == "pyvenv.cfg" and member.isfile():
                    for line in tar.extractfile(member).read().decode("utf-8", "replace").splitlines():
                        key, _, value = line.partition("=")
                        if key.strip() in ("version", "version_info") and value.strip():
                            version = ".".join(value.strip().split(".")[:3])
                if target and version:
                    break
    except (OSError, tarfile.TarError, EOFError):
        pass
    return target, version


def executor_python_message(job: str, failure: ExecutorPythonFailure, conf: Mapping[str, str | None]) -> str:
    """The one-line message of a job whose executors could not run their Python: the executors' Python
    (the program Spark tried, the archive it comes from with what its ``bin/python`` links to, and its
    version, as far as known), the driver's (``sys.executable`` and version), Spark's words, and what to
    do for the way the executors get their Python (``conf``: the :data:`PYTHON_CONF_KEYS` of the job's
    Spark conf; the archive of ``spark.archives`` is read when it is a local file, :func:`archive_python`).
    """
    program = failure.program or conf.get("spark.pyspark.python") or "?"
    archive = (conf.get("spark.archives") or "").split(",")[0].split("#")[0] or None
    if archive and archive.startswith("file:"):  # Spark's form of a local path: file:///path
        archive = "/" + archive[len("file:"):].lstrip("/")
    where = f" (executor {failure.executor} on host {failure.host})" if failure.executor else ""
    executors = f"the executors' Python {program}{where}"
    link, packed_version = archive_python(archive) if archive and ":" not in archive else (None, None)
    if archive:
        executors += f" from the archive {archive}"
        if link:
            executors += f", whose bin/python links to {link}"
    version = failure.worker_version or packed_version
    if version:
        executors += f", Python {version}"
    driver_minor = ".".join(platform.python_version().split(".")[:2])
    driver = f"the driver's Python {sys.executable}, Python {platform.python_version()}"
    if failure.worker_version:
        what = f"{executors}, is not the same minor version as {driver}: PySpark runs only the same on both"
    elif link and "error=2," in failure.reason:  # ENOENT: the link's target is not on the node
        what = f"{executors}, could not be started on the node ({failure.reason}): {link} is missing there; {driver}"
    else:
        what = f"{executors} could not be started on the node ({failure.reason}); {driver}"
    if archive:
        todo = (f"build the archive with `make executor-env` on a machine with the nodes' Python (CPython "
                f"{driver_minor}, the driver's minor version), or set TFOS_EXECUTOR_PYTHON_PREFIX to the prefix of the "
                f"nodes' python{driver_minor} (e.g. /usr) when building it, so its bin/python links to a Python "
                "every node has (README, \"The executors' Python environment\")")
    elif conf.get("spark.kubernetes.container.image"):
        todo = (f"the image {conf['spark.kubernetes.container.image']} must hold the project's venv with CPython "
                f"{driver_minor} at {program}; rebuild it, or use TFOS_EXECUTOR_PYTHON_ENV=archive")
    else:
        todo = (f"TFOS_EXECUTOR_PYTHON_ENV=venv runs {program} on every node: install the venv (CPython "
                f"{driver_minor}) at that path on each node, or ship it with TFOS_EXECUTOR_PYTHON_ENV=archive and "
                "`make executor-env`")
    return (f"the {job} job failed: {what}. A retry fails the same way until the executors' Python is fixed: "
            f"{todo}")


def job_failure(job: str, error: BaseException, conf: Mapping[str, str | None]) -> str | None:
    """The one-line message of an exception the job raised that a user must act on, or None for a bug
    (kept with its traceback): executors that could not run their Python (:func:`executor_python_message`),
    or a lost executor (:func:`executor_loss_message`). ``conf``: :data:`PYTHON_CONF_KEYS` of the job's
    Spark conf."""
    python = executor_python_failure(error)
    if python is not None:
        return executor_python_message(job, python, conf)
    loss = executor_loss(error)
    if loss is not None:
        return executor_loss_message(job, loss)
    return None


def git_revision() -> str:
    """Commit of the project source the job runs from, or 'unknown' outside a git checkout."""
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def library_versions() -> dict[str, str]:
    """Versions of Python, PySpark, TensorFlow and TensorFlowOnSpark in this process (for manifests).

    Raises importlib.metadata.PackageNotFoundError when one of the packages is not installed."""
    from importlib.metadata import version
    return {"python": sys.version.split()[0], "pyspark": version("pyspark"), "tensorflow": version("tensorflow"),
            "tensorflowonspark": version("tensorflowonspark")}


def executor_python(pythons: Iterable[str]) -> list[str]:
    """The distinct interpreters (``sys.executable`` of each task's Python worker) a job's executors ran,
    sorted: recorded as ``executor_python`` in every job's manifest, so a run shows whether its executors
    used the same-path venv, the shipped archive (``.../environment/bin/python`` in each executor's working
    directory) or an image's Python (README, "The executors' Python")."""
    return sorted(set(pythons))


#: Seconds convert, validate and infer wait for the executors they were submitted for before they go on with
#: those they have (:func:`executors`): Spark hands tasks to the first executors that register, so one that
#: registers late (a busy node; a JVM that starts in a fresh container or unpacks the shipped environment)
#: would get no work. 120 s, as train's ``executor_wait`` (where fewer executors fail the job instead): a
#: loaded 2-core test machine started the second executor of a share-nothing cluster more than 30 s late.
SPREAD_WAIT_S = 120


def executors(sc: SparkContext, wanted: int = 0, timeout: float = 0) -> int:
    """Executors the app holds, after waiting up to ``timeout`` s for ``wanted`` of them to register.

    Polls every 0.5 s; returns the count it has at the deadline even when it is fewer than ``wanted``."""
    deadline = time.time() + timeout
    while True:
        have = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
        if have >= wanted or time.time() >= deadline:
            return have
        time.sleep(0.5)


def requested_executors(sc: SparkContext) -> int:
    """How many executors the job was submitted for (the pipeline's conf sets both keys)."""
    conf = sc.getConf()
    return int(conf.get("spark.executor.instances", conf.get("spark.cores.max", "1")))


def session(name: str, root: str) -> SparkSession:
    """The job's SparkSession. The storage credentials the executors need to reach ``root``
    (fs.executor_env: taken from this process's environment) are set in-process as
    ``spark.executorEnv.*``, never on spark-submit's command line, with a ``spark.redaction.regex``
    (fs.SPARK_REDACTION_REGEX) that hides every one of them in the Spark UI and the event log."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(name)
    env = fs.executor_env(root)
    if env:
        builder = builder.config("spark.redaction.regex", fs.SPARK_REDACTION_REGEX)
        for key, value in env.items():
            builder = builder.config(f"spark.executorEnv.{key}", value)
    return builder.getOrCreate()


def main(job: str, run: Callable[..., dict | None], argv: list[str] | None = None,
         prepare: Callable[[jobargs.JobParams], Any] | None = None) -> int:
    """Entry point body of ``jobs/<job>.py``: returns the process exit code.

    Parses ``argv`` (default: sys.argv[1:]) into the job's params (``jobargs.parse(job, ...)``, a frozen
    dataclass such as ``jobargs.TrainParams``), checks that the data root can be reached
    (fs.check_access), calls ``prepare(params)`` when given (the job's driver-only checks, e.g.
    convert.prepare: listing and sniffing the inputs), all before any SparkSession, then runs
    ``run(spark, params)`` (``run(spark, params, prepared)`` with ``prepare``) in a SparkSession named
    ``tfos-{job}-{version}`` and prints ``RESULT [job] {json}`` (status 0), or
    ``ERROR [job] message`` for a JobError, a StorageError, executors that could not run their Python
    or a lost executor (:func:`job_failure`; status 2; :data:`EXIT_DATA_REFUSED` for :class:`DataRefused`). Any other exception propagates (status 1).
    Invalid arguments return :func:`user_error_status` (2 unless the operator asks for
    :data:`EXIT_USER_ERROR`), after argparse's usage and reason on stderr; a :class:`UserError` returns the same."""
    try:
        params = jobargs.parse(job, sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # argparse refused an argument (usage and the reason are on stderr)
        if e.code == 2:
            return user_error_status()
        raise
    try:  # credentials and reachability of the root, and the job's own checks, before Spark starts
        fs.check_access(params.data_root)
        fs.check_commits(params.data_root)  # outputs are published by conditional writes
        prepared = prepare(params) if prepare is not None else None
    except (JobError, fs.StorageError) as e:
        print(f"ERROR [{job}] {e}", file=sys.stderr, flush=True)
        return _status(e)
    spark = session(f"tfos-{job}-{params.version}", params.data_root)
    spark.sparkContext.setLogLevel("WARN")
    # read now: a failed TensorFlow cluster stops the SparkContext before the job reports it
    python_conf = {key: spark.sparkContext.getConf().get(key) for key in PYTHON_CONF_KEYS}
    started = time.time()
    failure, status = None, 2
    try:
        summary = run(spark, params) if prepare is None else run(spark, params, prepared)
    except (JobError, fs.StorageError, fs.CommitConflict) as e:  # StorageError: e.g. a credential that expires mid-job
        failure = str(e)
        status = _status(e)
    except Exception as e:
        failure = job_failure(job, e, python_conf)
        if failure is None:
            raise
    finally:
        spark.stop()
    if failure is not None:
        # after the shutdown's own log lines, so that this line ends the task log
        logging.getLogger("py4j").setLevel(logging.WARNING)
        print(f"ERROR [{job}] {failure}", file=sys.stderr, flush=True)
        return status
    summary = dict(summary or {}, job=job, seconds=round(time.time() - started, 1))
    print(f"RESULT [{job}] " + json.dumps(summary, sort_keys=True, default=str), flush=True)
    return 0
