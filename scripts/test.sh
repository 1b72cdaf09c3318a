#!/usr/bin/env bash
# The test command: unit, DAG-integrity, Spark-job and end-to-end tests (pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TFOS_PROJECT_DIR"
# The DAG-integrity tests parse the DAG with Airflow's DagBag, which needs a migrated metadata DB.
bash "$TFOS_PROJECT_DIR/scripts/airflow_setup.sh"
# Every JVM the tests start (spark-submit's driver, the executors, the standalone daemons) compiles with C1 only:
# the tests run ~70 short Spark applications whose JVMs do no per-row work (the jobs' Python does), and C2's
# compile threads were ~35% of each one's CPU (measured: convert 29.5 -> 19.5 CPU s, infer 41 -> 29 on 400 rows).
# The JVM prints "Picked up JAVA_TOOL_OPTIONS" once at start. Set JAVA_TOOL_OPTIONS (even empty) to override.
export JAVA_TOOL_OPTIONS="${JAVA_TOOL_OPTIONS--XX:TieredStopAtLevel=1}"
# Two workers (pytest-xdist), a module's tests on one worker, modules handed out in collection order (the
# end-to-end modules first: tests/conftest.py). TFOS_TEST_WORKERS=0 runs everything in this one process.
workers="${TFOS_TEST_WORKERS:-2}"
xdist=()
[ "$workers" != 0 ] && xdist=(-n "$workers" --dist loadfile --no-loadscope-reorder)
# No path here: pytest.ini's testpaths (tests/) is the default, and paths given as arguments replace it
# (`bash scripts/test.sh tests/unit/test_csvparse.py` runs that module only).
exec python -m pytest "${xdist[@]}" "$@"
