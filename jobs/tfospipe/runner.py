"""What every spark-submit entrypoint does: parse arguments, run the job in a SparkSession, exit code.

A job raises :class:`JobError` for anything a user must fix (bad input, missing upstream output, a
failed gate); it is printed as one ``ERROR`` line that ends up at the end of the Airflow task log,
and the process exits with status 2. Anything else is a bug and keeps its traceback (status 1).
"""

import json
import subprocess
import sys
import time

from . import jobargs


class JobError(Exception):
    """A failure with a message for the user: what is wrong, where, and what to do."""


def git_revision():
    """Commit of the project source the job runs from, or 'unknown' outside a git checkout."""
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def library_versions():
    from importlib.metadata import version
    return {"python": sys.version.split()[0], "pyspark": version("pyspark"), "tensorflow": version("tensorflow"),
            "tensorflowonspark": version("tensorflowonspark")}


def executors(sc, wanted=0, timeout=0):
    """Executors the app holds, after waiting up to ``timeout`` s for ``wanted`` of them to register."""
    deadline = time.time() + timeout
    while True:
        have = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
        if have >= wanted or time.time() >= deadline:
            return have
        time.sleep(0.5)


def requested_executors(sc):
    """How many executors the job was submitted for (the pipeline's conf sets both keys)."""
    conf = sc.getConf()
    return int(conf.get("spark.executor.instances", conf.get("spark.cores.max", "1")))


def main(job, run, argv=None):
    """Entry point body of ``jobs/<job>.py``: returns the process exit code."""
    args = jobargs.parse(job, sys.argv[1:] if argv is None else argv)
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName(f"tfos-{job}-{args.version}").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    started = time.time()
    try:
        summary = run(spark, args)
    except JobError as e:
        print(f"ERROR [{job}] {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        spark.stop()
    summary = dict(summary or {}, job=job, seconds=round(time.time() - started, 1))
    print(f"RESULT [{job}] " + json.dumps(summary, sort_keys=True, default=str), flush=True)
    return 0
