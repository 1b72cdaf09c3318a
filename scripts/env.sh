# Environment shared by the demo, the tests and the Airflow commands: source it, don't run it.
# Every setting can be overridden from the calling environment.
TFOS_PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TFOS_PROJECT_DIR
export TFOS_VENV="${TFOS_VENV:-$TFOS_PROJECT_DIR/.venv}"
# The venv's spark-submit is what Airflow's Spark hook runs: it must come first on PATH.
export PATH="$TFOS_VENV/bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$TFOS_PROJECT_DIR/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$TFOS_PROJECT_DIR/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$TFOS_PROJECT_DIR/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
# Spark master: a real multi-executor cluster on this machine (2 executor JVMs, 1 core and 2 GiB each).
# Point at another cluster by changing only this connection, e.g. {"conn_type":"spark","host":"spark://host:7077"}.
if [ -z "${AIRFLOW_CONN_SPARK_DEFAULT:-}" ]; then
  export AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local-cluster[2,1,2048]"}'
fi
# Data root: a local directory or a URI every executor can reach.
export AIRFLOW_VAR_TFOS_DATA_ROOT="${AIRFLOW_VAR_TFOS_DATA_ROOT:-$TFOS_PROJECT_DIR/data}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export TF_USE_LEGACY_KERAS=1
