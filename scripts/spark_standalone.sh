#!/usr/bin/env bash
# A Spark standalone cluster on this machine: one master and N workers (1 core each) on 127.0.0.1,
# started with the same commands the docker-compose services run. Point the pipeline at it with
#   export AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "spark://127.0.0.1:7077"}'
#
#   scripts/spark_standalone.sh start [WORKERS]   (default 2)   scripts/spark_standalone.sh stop
#
# Settings (environment): SPARK_STANDALONE_DIR (pids, logs, work dirs; default .spark-standalone),
# SPARK_MASTER_PORT (7077), SPARK_MASTER_WEBUI_PORT (8081), SPARK_WORKER_MEMORY (3g per worker).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
DIR="${SPARK_STANDALONE_DIR:-$TFOS_PROJECT_DIR/.spark-standalone}"
PORT="${SPARK_MASTER_PORT:-7077}"
WEBUI="${SPARK_MASTER_WEBUI_PORT:-8081}"
MEMORY="${SPARK_WORKER_MEMORY:-3g}"
MASTER="spark://127.0.0.1:$PORT"
export SPARK_LOCAL_IP=127.0.0.1 SPARK_LOCAL_HOSTNAME=127.0.0.1

start_daemon() {  # name, then the command
  local name="$1"; shift
  nohup "$@" >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

wait_for_workers() {  # the master's JSON status lists every worker ALIVE
  local want="$1" alive=0
  for _ in $(seq 1 90); do
    alive=$(python - "$WEBUI" <<'EOF' 2>/dev/null || echo 0
import json, sys, urllib.request
status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/json/", timeout=2))
print(sum(1 for w in status["workers"] if w["state"] == "ALIVE"))
EOF
)
    [ "$alive" -ge "$want" ] && { echo "Spark master $MASTER: $alive workers alive (UI http://127.0.0.1:$WEBUI)"; return 0; }
    sleep 1
  done
  echo "Spark standalone: only $alive of $want workers registered with $MASTER; logs in $DIR" >&2
  return 1
}

case "${1:-}" in
  start)
    workers="${2:-2}"
    mkdir -p "$DIR"
    if [ -f "$DIR/master.pid" ] && kill -0 "$(cat "$DIR/master.pid")" 2>/dev/null; then
      echo "already running (pid $(cat "$DIR/master.pid")); stop it first" >&2; exit 1
    fi
    start_daemon master spark-class org.apache.spark.deploy.master.Master \
      --host 127.0.0.1 --port "$PORT" --webui-port "$WEBUI"
    for i in $(seq 1 "$workers"); do
      mkdir -p "$DIR/worker-$i"
      start_daemon "worker-$i" spark-class org.apache.spark.deploy.worker.Worker \
        --host 127.0.0.1 --cores 1 --memory "$MEMORY" --webui-port 0 --work-dir "$DIR/worker-$i" "$MASTER"
    done
    wait_for_workers "$workers"
    ;;
  stop)
    for pidfile in "$DIR"/*.pid; do
      [ -f "$pidfile" ] || continue
      kill "$(cat "$pidfile")" 2>/dev/null || true
      rm -f "$pidfile"
    done
    echo "Spark standalone stopped"
    ;;
  *)
    echo "usage: $0 start [WORKERS] | stop" >&2; exit 2 ;;
esac
