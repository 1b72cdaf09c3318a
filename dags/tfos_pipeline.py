"""tfos_pipeline: CSV -> TFRecords -> distributed training (TensorFlowOnSpark) -> validation gate -> batch inference.

Every task is a spark-submit of a job in ``jobs/`` (see plugins/tfos_spark.py for the Spark conf).
The dataset version is the run's logical date (``ds``) for scheduled runs and backfills; a manual
trigger may name another version with the ``dataset_version`` param.
"""

import datetime

from airflow.sdk import DAG, Param
from tfos_spark import DATA_ROOT, RUN_ID, VERSION, TFoSSparkSubmitOperator
from tfospipe import jobargs, paths


def _default(job, name):
    return jobargs.defaults(job)[name]


params = {
    "dataset_version": Param(
        "", type="string", pattern=f"^$|{paths.SEGMENT_PATTERN}", title="Dataset version",
        description="Directory under raw/ to process; empty = the run's logical date (YYYY-MM-DD)."),
    "eval_fraction": Param(_default("convert", "eval_fraction"), type="number", minimum=0.01, maximum=0.9,
                           description="Fraction of rows held out for evaluation (split by a hash of each row)."),
    "num_shards": Param(_default("convert", "num_shards"), type="integer", minimum=1, maximum=1024,
                        description="TFRecord shards per split; at least cluster_size."),
    "max_bad_fraction": Param(_default("convert", "max_bad_fraction"), type="number", minimum=0, maximum=1,
                              description="Fail conversion when more than this fraction of rows is bad."),
    "pixel_max": Param(_default("convert", "pixel_max"), type="integer", minimum=1, maximum=65535,
                       description="Largest valid pixel value (255 for MNIST)."),
    "image_shape": Param(_default("convert", "image_shape"), type="string", pattern=r"^(auto|[0-9]{1,4}x[0-9]{1,4})$",
                         description="HxW, or auto (square root of the pixel column count)."),
    "cluster_size": Param(_default("train", "cluster_size"), type="integer", minimum=2, maximum=256,
                          description="TensorFlow nodes = Spark executors used by training (chief + workers)."),
    "epochs": Param(_default("train", "epochs"), type="integer", minimum=1, maximum=1000,
                    description="Training epochs."),
    "batch_size": Param(_default("train", "batch_size"), type="integer", minimum=1, maximum=65536,
                        description="Training batch size per worker."),
    "learning_rate": Param(_default("train", "learning_rate"), type="number", exclusiveMinimum=0, maximum=1,
                           description="Adam learning rate."),
    "min_accuracy": Param(_default("validate", "min_accuracy"), type="number", minimum=0, maximum=1,
                          description="Gate: the new model's eval accuracy must reach this."),
    "max_regression": Param(_default("validate", "max_regression"), type="number", minimum=0, maximum=1,
                            description="Gate: the new model may trail the serving model by at most this accuracy."),
    "inference_batch_size": Param(_default("infer", "batch_size"), type="integer", minimum=1, maximum=65536,
                                  description="Rows per prediction batch in each executor."),
}


def p(name):
    return "{{ params.%s }}" % name


common = {"data_root": DATA_ROOT, "version": VERSION}

with DAG(
    dag_id="tfos_pipeline",
    description="CSV -> TFRecords -> TFoS training -> validation gate -> Spark batch inference",
    schedule="@daily",
    start_date=datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    params=params,
    default_args={"retries": 1, "retry_delay": datetime.timedelta(minutes=1)},
    tags=["tensorflowonspark", "spark", "ml"],
    doc_md=__doc__,
) as dag:
    convert = TFoSSparkSubmitOperator(
        task_id="convert", job="convert",
        job_args=dict(common, **{k: p(k) for k in ("eval_fraction", "num_shards", "max_bad_fraction",
                                                    "pixel_max", "image_shape")}),
        execution_timeout=datetime.timedelta(hours=1))
    train = TFoSSparkSubmitOperator(
        task_id="train", job="train", tfos=True, pool="tfos_training",
        job_args=dict(common, run_id=RUN_ID, **{k: p(k) for k in ("cluster_size", "epochs", "batch_size",
                                                                   "learning_rate")}),
        execution_timeout=datetime.timedelta(hours=4))
    validate = TFoSSparkSubmitOperator(
        task_id="validate", job="validate", retries=0,  # a failed gate is deterministic: do not retry
        job_args=dict(common, run_id=RUN_ID, min_accuracy=p("min_accuracy"), max_regression=p("max_regression")),
        execution_timeout=datetime.timedelta(hours=1))
    infer = TFoSSparkSubmitOperator(
        task_id="infer", job="infer",
        job_args=dict(common, batch_size=p("inference_batch_size")),
        execution_timeout=datetime.timedelta(hours=2))

    convert >> train >> validate >> infer
