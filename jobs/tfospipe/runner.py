"""What every spark-submit entrypoint does: parse arguments, run the job in a SparkSession, exit code.

A job raises :class:`JobError` for anything a user must fix (bad input, missing upstream output, a
failed gate); it is printed as one ``ERROR`` line that ends up at the end of the Airflow task log,
and the process exits with status 2. A Spark job that failed because an executor was lost (its JVM
killed, out of memory, its host gone) is reported the same way: one ``ERROR`` line with the executor,
its host, Spark's reason and whether a retry is safe (:data:`RETRY_AFTER_EXECUTOR_LOSS`), status 2.
Anything else is a bug and keeps its traceback (status 1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Callable, Iterable

from . import fs, jobargs

if TYPE_CHECKING:
    import argparse

    from pyspark import SparkContext
    from pyspark.sql import SparkSession


class JobError(Exception):
    """A failure with a message for the user: what is wrong, where, and what to do."""


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
    try:
        text = str(error or "")
    except Exception:  # a py4j error whose JVM is gone cannot render its Java side
        text = repr(error)
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


def main(job: str, run: Callable[[SparkSession, argparse.Namespace], dict | None],
         argv: list[str] | None = None) -> int:
    """Entry point body of ``jobs/<job>.py``: returns the process exit code.

    Parses ``argv`` (default: sys.argv[1:]) with ``jobargs.parse(job, ...)``, runs ``run(spark, args)``
    in a SparkSession named ``tfos-{job}-{version}`` and prints ``RESULT [job] {json}`` (status 0), or
    ``ERROR [job] message`` for a JobError or a lost executor (status 2). Any other exception
    propagates (status 1). Raises SystemExit (status 2) for invalid arguments, as argparse does."""
    args = jobargs.parse(job, sys.argv[1:] if argv is None else argv)
    try:  # credentials and reachability of the root, before any Spark job starts
        fs.check_access(args.data_root)
    except fs.StorageError as e:
        print(f"ERROR [{job}] {e}", file=sys.stderr, flush=True)
        return 2
    spark = session(f"tfos-{job}-{args.version}", args.data_root)
    spark.sparkContext.setLogLevel("WARN")
    started = time.time()
    failure = None
    try:
        summary = run(spark, args)
    except (JobError, fs.StorageError) as e:  # StorageError: e.g. a credential that expires mid-job
        failure = str(e)
    except Exception as e:
        loss = executor_loss(e)
        if loss is None:
            raise
        failure = executor_loss_message(job, loss)
    finally:
        spark.stop()
    if failure is not None:
        # after the shutdown's own log lines, so that this line ends the task log
        logging.getLogger("py4j").setLevel(logging.WARNING)
        print(f"ERROR [{job}] {failure}", file=sys.stderr, flush=True)
        return 2
    summary = dict(summary or {}, job=job, seconds=round(time.time() - started, 1))
    print(f"RESULT [{job}] " + json.dumps(summary, sort_keys=True, default=str), flush=True)
    return 0
