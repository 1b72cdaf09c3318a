#!/usr/bin/env bash
# Run the whole pipeline once through Airflow (airflow dags test) on a real 2-executor Spark cluster.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
command -v java >/dev/null || { echo "Java (17) is required by Spark: install a JDK and retry" >&2; exit 1; }
VERSION="${DEMO_VERSION:-$(date -u +%F)}"
ROOT="$AIRFLOW_VAR_TFOS_DATA_ROOT"
LOG="$AIRFLOW_HOME/demo-$VERSION.log"

bash "$TFOS_PROJECT_DIR/scripts/airflow_setup.sh"
if ! ls "$ROOT/raw/$VERSION/"*.csv* >/dev/null 2>&1; then
  python "$TFOS_PROJECT_DIR/scripts/make_sample_data.py" --root "$ROOT" "$VERSION"
fi
echo "Running DAG tfos_pipeline for dataset version $VERSION (Spark master: $AIRFLOW_CONN_SPARK_DEFAULT)"
echo "Full log: $LOG"
start=$(date +%s)
set +e
airflow dags test tfos_pipeline "$VERSION" 2>&1 | tee "$LOG" \
  | grep --line-buffered -E "RESULT \[|ERROR \[|train progress|training on|Task instance state updated|DagRun Finished" \
  | sed -u -E 's/^[0-9T:.Z-]+ \[[a-z ]+\] //; s/ \[airflow[^]]*\].*$//; s/ correlation_id=.*new_state=/ -> /; s/ rows_affected.*$//'
rc=${PIPESTATUS[0]}
set -e
echo "Wall time: $(( $(date +%s) - start )) s"
if [ "$rc" -ne 0 ] || ! grep -q "DagRun Finished.*state=success" "$LOG"; then
  echo "The DAG run failed; see $LOG" >&2
  exit 1
fi
echo
python "$TFOS_PROJECT_DIR/scripts/summary.py" --root "$ROOT" --version "$VERSION"
