#!/usr/bin/env bash
# The Airflow UI on this machine: `airflow standalone` (api-server, scheduler, dag-processor, triggerer;
# LocalExecutor, SQLite) with the project's AIRFLOW_HOME, bound to 127.0.0.1:8080, and TensorBoard beside it
# on 127.0.0.1:6006 over every training run's logs (the train and validate tasks' TensorBoard link).
#
# Sign in as user `admin` (role admin) with the password of $AIRFLOW_HOME/passwords.json: made once, at
# random, on the first start (delete the file for a new one). The last line this prints, once both answer,
# is the URL, the user and the password. Their logs go to $AIRFLOW_HOME/standalone.log and tensorboard.log.
# Ctrl-C (or the end of Airflow) stops both.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$TFOS_PROJECT_DIR/scripts/airflow_setup.sh"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://127.0.0.1:$AIRFLOW__API__PORT}"

# One user, admin, whose role is admin (SIMPLE_AUTH_MANAGER_USERS is user:role), and its password in a file
# of ours, so that it stays the same from one start to the next.
UI_USER=admin
PASSWORDS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/passwords.json}"
if [ ! -s "$PASSWORDS" ]; then
  (umask 077 && python -c 'import json, secrets, sys; json.dump({sys.argv[2]: secrets.token_urlsafe(12)}, open(sys.argv[1], "w"))' \
    "$PASSWORDS" "$UI_USER")
fi
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="$UI_USER:admin"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$PASSWORDS"
UI_PASSWORD="$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$PASSWORDS" "$UI_USER")"

# TensorBoard, where the task links point (Airflow Variable tfos_tensorboard_url).
TB_PORT="${TFOS_TENSORBOARD_PORT:-6006}"
export AIRFLOW_VAR_TFOS_TENSORBOARD_URL="${AIRFLOW_VAR_TFOS_TENSORBOARD_URL:-http://127.0.0.1:$TB_PORT}"
case "$AIRFLOW_VAR_TFOS_DATA_ROOT" in *://*) ;; *) mkdir -p "$AIRFLOW_VAR_TFOS_DATA_ROOT/models" ;; esac

pids=()
stop() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT INT TERM

echo "Starting Airflow (log: $AIRFLOW_HOME/standalone.log) and TensorBoard (log: $AIRFLOW_HOME/tensorboard.log);" \
     "Spark: $AIRFLOW_CONN_SPARK_DEFAULT; data: $AIRFLOW_VAR_TFOS_DATA_ROOT"
tensorboard --logdir "$AIRFLOW_VAR_TFOS_DATA_ROOT/models" --host 127.0.0.1 --port "$TB_PORT" \
  >"$AIRFLOW_HOME/tensorboard.log" 2>&1 &
pids+=($!)
airflow standalone >"$AIRFLOW_HOME/standalone.log" 2>&1 &
airflow_pid=$!
pids+=("$airflow_pid")

answers() { python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1" 2>/dev/null; }
for _ in $(seq 300); do
  if answers "$AIRFLOW__API__BASE_URL/api/v2/monitor/health" && answers "$AIRFLOW_VAR_TFOS_TENSORBOARD_URL"; then
    echo "Airflow UI: $AIRFLOW__API__BASE_URL  user: $UI_USER  password: $UI_PASSWORD  (TensorBoard: $AIRFLOW_VAR_TFOS_TENSORBOARD_URL; Ctrl-C stops both)"
    break
  fi
  if ! kill -0 "$airflow_pid" 2>/dev/null; then
    echo "airflow standalone exited; the end of $AIRFLOW_HOME/standalone.log:" >&2
    tail -20 "$AIRFLOW_HOME/standalone.log" >&2
    exit 1
  fi
  sleep 1
done
wait "$airflow_pid"
