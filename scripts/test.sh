#!/usr/bin/env bash
# The test command: unit, DAG-integrity, Spark-job and end-to-end tests (pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TFOS_PROJECT_DIR"
# The DAG-integrity tests parse the DAG with Airflow's DagBag, which needs a migrated metadata DB.
bash "$TFOS_PROJECT_DIR/scripts/airflow_setup.sh"
exec python -m pytest tests "$@"
