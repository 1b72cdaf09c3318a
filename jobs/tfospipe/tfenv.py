"""The environment TensorFlow runs under: the one place that names its variables.

TensorFlow reads these variables once, when it is first imported, so they are set before that import:
in the processes Spark starts by their environment (:data:`TF_ENV`, which ``launch.spark_conf`` gives
the driver and every executor and the Airflow operator gives spark-submit), and in any other process
that imports TensorFlow (the package's TensorFlow modules, the scripts, the benchmarks, the tests) by
:func:`prepare_tensorflow`, called before the import. ``scripts/env.sh`` sets the same for a shell.
"""

import os

#: tf-keras (Keras 2) as ``tf.keras``: Keras 3 cannot train under MultiWorkerMirroredStrategy with this
#: stack. Every process that imports TensorFlow needs it.
KERAS_ENV = {"TF_USE_LEGACY_KERAS": "1"}
#: Keep TensorFlow's C++ INFO lines out of the task log.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
#: Environment of the spark-submit process (driver in client mode) and of every executor.
TF_ENV = {
    **KERAS_ENV,
    **QUIET_ENV,
    "TF_NUM_INTRAOP_THREADS": "1",   # one core per executor: no thread oversubscription
    "TF_NUM_INTEROP_THREADS": "1",
}


def prepare_tensorflow(quiet: bool = False, force: bool = False) -> None:
    """Set this process's environment for TensorFlow: :data:`KERAS_ENV`, and :data:`QUIET_ENV` with
    ``quiet``. A value already set is kept (a caller's choice), unless ``force`` (a TensorFlow node,
    whose environment must be the pipeline's). Call it before TensorFlow is first imported in the
    process: afterwards it changes nothing TensorFlow does."""
    wanted = {**KERAS_ENV, **(QUIET_ENV if quiet else {})}
    for name, value in wanted.items():
        if force:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)
