"""tfos_pipeline: CSV -> TFRecords -> distributed training (TensorFlowOnSpark) -> validation gate -> batch inference.

Every task is a spark-submit of a job in ``jobs/``, built from the job's spec (``tfospipe/jobspec.py``;
the Spark conf in ``tfospipe/launch.py``, the operator in plugins/tfos_spark.py).
The dataset version is the run's logical date (``ds``) for scheduled runs and backfills; a manual
trigger may name another version with the ``dataset_version`` param. The first task, ``wait_for_data``,
waits for the version's input files under ``raw/<version>/`` in a scheduled run (up to the
``data_wait_timeout`` param, seconds) and fails a manual run or backfill at once when there are none.
"""

import datetime
from typing import Any

from airflow.sdk import DAG
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable
from tfos_spark import (DATA_DATE, DATA_ROOT, RUN_ID, VERSION, TFoSInputSensor, TFoSSparkSubmitOperator,
                        pipeline_params)
from tfospipe import jobargs, jobspec

# The trigger form (tfos_spark.pipeline_params): the dataset version, how long a scheduled run waits for
# it, then every field of the jobs' params dataclasses that jobargs marks as a DAG param, each with a title,
# a description ending with its range and unit, and its JSON schema. Each param's schema is the rule its job
# checks the flag with, so a value the trigger accepts is one every job accepts, and an invalid one is
# refused before any Spark job starts.
params = pipeline_params()

#: The params the DAG fills itself, whichever job has them. data_date: what the promotion policy orders
#: models by when the dataset version is not a date (the logical date, or the day a manual run was
#: triggered for).
FILLED = {"data_root": DATA_ROOT, "version": VERSION, "run_id": RUN_ID, "data_date": DATA_DATE}


def job_args(job: str) -> dict[str, str]:
    """The job's argument values (Jinja templates) in the field order of its params dataclass: the ones
    the DAG fills (:data:`FILLED`) and the DAG params it reads; fields with neither keep the job's default.

    A param renders as ``str(value)``; the job reads it back under the same JSON schema
    (jobargs.schema_type), so e.g. an epochs of 2.0 (a JSON-schema integer) reaches the job as 2.
    """
    values = {}
    for spec in jobspec.get(job).args:
        if spec.param:
            values[spec.name] = "{{ params.%s }}" % spec.param
        elif spec.name in FILLED:
            values[spec.name] = FILLED[spec.name]
    return values


def job_task(job: str, **kwargs: Any) -> TFoSSparkSubmitOperator:
    """The task of ``job`` (task id = job name) with its spec's flags; ``kwargs``: pool, retries, timeout."""
    return TFoSSparkSubmitOperator(task_id=job, job=job, job_args=job_args(job), **kwargs)


with DAG(
    dag_id="tfos_pipeline",
    description="CSV -> TFRecords -> TFoS training -> validation gate -> Spark batch inference",
    # Daily, with data intervals: the run that starts at midnight covers the day that just ended, so
    # its logical date (ds), and so the dataset version it processes, is that day, a complete one.
    # (A plain "@daily" in Airflow 3 is a CronTriggerTimetable: ds would be the day just starting.)
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    params=params,
    # A lost executor or a killed job is retried (training resumes from its last checkpoint), with
    # exponential backoff; a user's error (the job's exit status says so: tfos_spark.NOT_RETRIED) is not; every task also has an execution_timeout, and a killed task stops its
    # Spark application (TFoSSparkSubmitHook.on_kill).
    default_args={"retries": 1, "retry_delay": datetime.timedelta(minutes=1), "retry_exponential_backoff": 2.0,
                  "max_retry_delay": datetime.timedelta(minutes=15)},
    tags=["tensorflowonspark", "spark", "ml"],
    doc_md=__doc__,
) as dag:
    # Waits for raw/<version>/ to hold input: a scheduled run up to data_wait_timeout seconds (reschedule
    # mode, no worker slot held), a manual run or backfill not at all (fails at once without input).
    wait_for_data = TFoSInputSensor(task_id="wait_for_data")
    convert = job_task("convert", execution_timeout=datetime.timedelta(hours=1))
    train = job_task("train", pool="tfos_training", execution_timeout=datetime.timedelta(hours=4))
    # Promotions one at a time (pool tfos_serving, 1 slot); the job's compare-and-swap of the serving
    # pointer (a conditional write, on S3 as on local disk) also covers writers outside Airflow.
    validate = job_task("validate", pool="tfos_serving",
                    retries=0,  # a failed gate is deterministic: do not retry it
                    execution_timeout=datetime.timedelta(hours=1))
    infer = job_task("infer", execution_timeout=datetime.timedelta(hours=2))

    wait_for_data >> convert >> train >> validate >> infer
