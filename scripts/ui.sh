#!/usr/bin/env bash
# The Airflow UI on this machine: `airflow standalone` (api-server, scheduler, dag-processor,
# triggerer; LocalExecutor, SQLite) with the project's AIRFLOW_HOME, bound to 127.0.0.1:8080.
# Sign in as `admin`; the password is printed at start-up and kept in
# $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$TFOS_PROJECT_DIR/scripts/airflow_setup.sh"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://127.0.0.1:$AIRFLOW__API__PORT}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
echo "Airflow UI: $AIRFLOW__API__BASE_URL  (Spark: $AIRFLOW_CONN_SPARK_DEFAULT; data: $AIRFLOW_VAR_TFOS_DATA_ROOT)"
exec airflow standalone
