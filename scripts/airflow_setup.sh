#!/usr/bin/env bash
# Create or upgrade the project-local Airflow metadata DB (SQLite under AIRFLOW_HOME) and the pools.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mkdir -p "$AIRFLOW_HOME"
airflow db migrate >/dev/null
# One TFoS training at a time: concurrent runs (backfills) must not split the executors between them.
airflow pools set tfos_training 1 "TensorFlowOnSpark training: one cluster at a time" >/dev/null
# One promotion at a time: validate compares with the serving model and swaps the pointer (serving.promote).
airflow pools set tfos_serving 1 "Promotions of the serving model: one validate at a time" >/dev/null
echo "Airflow metadata DB ready in $AIRFLOW_HOME"
