#!/usr/bin/env bash
# The test command: unit, DAG-integrity, Spark-job and end-to-end tests (pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TFOS_PROJECT_DIR"
# The DAG-integrity tests parse the DAG with Airflow's DagBag, which needs a migrated metadata DB.
bash "$TFOS_PROJECT_DIR/scripts/airflow_setup.sh"
# Two workers (pytest-xdist): the end-to-end group on one, every other module on the other (tests/conftest.py
# gives each test its group). TFOS_TEST_WORKERS=0 runs everything in this one process.
workers="${TFOS_TEST_WORKERS:-2}"
xdist=()
[ "$workers" != 0 ] && xdist=(-n "$workers" --dist loadgroup --no-loadscope-reorder)
exec python -m pytest tests "${xdist[@]}" "$@"
