"""One spec per pipeline job: its params, the Asset it produces, what it publishes, its task links, and
whether it runs a TensorFlow cluster.

Everything that differs between the four jobs outside their own code is written here once, and read
by the DAG (its tasks), the Airflow operator (``plugins/tfos_spark.py``: application, Spark conf, the
Asset and its event, the task links) and the spark-submit command-line builder (:mod:`.launch`, used
by the tests and benchmarks as well). The params themselves stay in :mod:`.jobargs` (one frozen
dataclass per job, :data:`.jobargs.PARAMS`), where the jobs' parsers read them; a spec points at its job's.

No Airflow, Spark or TensorFlow import: the DAG processor loads this module. It is submit-side only
(no job reads it), so the ``--py-files`` zip leaves it out (:data:`.launch.SUBMIT_ONLY`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

from . import jobargs, paths

#: ``jobs/``: the spark-submit entrypoints ``jobs/<job>.py`` and this package.
JOBS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Names of the task links (``plugins/tfos_spark.py`` has one link class per name).
VALIDATION_REPORT = "Validation report"
TENSORBOARD = "TensorBoard"
DATA_REPORT = "Data report"


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """A pipeline job as the DAG, the operator and the command-line builder see it.

    ``name``: the job (``jobs/<name>.py``, the task id, the params dataclass :data:`.jobargs.PARAMS[name]`).
    ``asset_name``/``asset_uri``: the Airflow Asset the job produces (lineage in the UI).
    ``output(layout, version, run_id)``: the path a successful run publishes under ``layout``
    (``run_id`` is the Airflow run id as given, None for a job without ``--run-id``); it raises
    :class:`.paths.PathError` for a version or run id that is no safe path segment.
    ``links``: names of the task's links, in the order the UI shows them.
    ``tfos``: the job runs a TensorFlow cluster in the executors, so Spark must not retry a failed
    task (a retried TF node cannot rejoin a running cluster and would hang it; Airflow retries the job).
    """

    name: str
    asset_name: str
    asset_uri: str
    output: Callable[[paths.Layout, str, str | None], str]
    links: tuple[str, ...] = ()
    tfos: bool = False

    @property
    def args(self) -> list[jobargs.ParamSpec]:
        """The job's command-line arguments: its params' :class:`.jobargs.ParamSpec`, in field order."""
        return jobargs.JOBS[self.name]

    @property
    def application(self) -> str:
        """Absolute path of the job's spark-submit entrypoint, ``jobs/<name>.py``."""
        return os.path.join(JOBS_DIR, f"{self.name}.py")

    @property
    def app_name(self) -> str:
        """The Spark application name, ``tfos-<name>`` (Spark UI, cluster manager)."""
        return f"tfos-{self.name}"

    def argv(self, values: Mapping[str, object]) -> list[str]:
        """The job's command-line arguments: ``--flag str(value)`` for every value given, in the order
        given (values may be Jinja templates). Raises KeyError naming any value that is no flag of the job."""
        return jobargs.to_argv(self.name, values)

    def written(self, values: Mapping[str, object]) -> str:
        """The path a run with these (rendered) ``values`` publishes: :attr:`output` under
        ``values["data_root"]`` for ``values["version"]`` (and ``values["run_id"]`` when the job has one).

        Raises KeyError without ``data_root`` or ``version``, PathError for an unsafe version or run id."""
        run_id = values.get("run_id")
        return self.output(paths.Layout(str(values["data_root"])), str(values["version"]),
                           None if run_id is None else str(run_id))


SPECS: dict[str, JobSpec] = {spec.name: spec for spec in (
    JobSpec("convert", "tfos_tfrecords", "tfos://pipeline/tfrecords",
            output=lambda layout, version, run_id: layout.tfrecords(version)),
    JobSpec("train", "tfos_trained_model", "tfos://pipeline/models",
            output=lambda layout, version, run_id: layout.model_run(version, paths.run_slug(run_id)),
            links=(DATA_REPORT, TENSORBOARD), tfos=True),
    JobSpec("validate", "tfos_serving_model", "tfos://pipeline/serving",
            output=lambda layout, version, run_id: layout.serving(),
            links=(VALIDATION_REPORT, DATA_REPORT, TENSORBOARD)),
    JobSpec("infer", "tfos_predictions", "tfos://pipeline/predictions",
            output=lambda layout, version, run_id: layout.predictions(version), links=(DATA_REPORT,)),
)}
if list(SPECS) != list(jobargs.JOBS):
    raise RuntimeError(f"one spec per job of jobargs.JOBS, in its order: {list(SPECS)} != {list(jobargs.JOBS)}")


def get(job: str) -> JobSpec:
    """The spec of ``job``; raises ValueError naming the known jobs when there is none."""
    try:
        return SPECS[job]
    except KeyError:
        raise ValueError(f"unknown job {job!r}; jobs: {sorted(SPECS)}") from None
