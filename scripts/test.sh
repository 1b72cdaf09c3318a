#!/usr/bin/env bash
# The test command: unit, DAG-integrity, Spark-job and end-to-end tests (pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TFOS_PROJECT_DIR"
exec python -m pytest tests "$@"
