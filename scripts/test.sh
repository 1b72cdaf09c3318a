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
# They also collect with the serial collector: a 1-GiB executor of a test does little JVM work, and G1's
# concurrent threads cost more than they save (convert on the sample digits: 11.4 CPU s instead of 11.9).
# The JVM prints "Picked up JAVA_TOOL_OPTIONS" once at start. Set JAVA_TOOL_OPTIONS (even empty) to override.
export JAVA_TOOL_OPTIONS="${JAVA_TOOL_OPTIONS--XX:TieredStopAtLevel=1 -XX:+UseSerialGC}"
# ... and maps Spark's classes from class-data-sharing archives (scripts/spark_cds.sh, built once and cached):
# a convert job on the sample digits took 11.9 CPU s instead of 14.8-17.0 (idle machine, cgroup CPU time). The driver's archive goes on spark-submit's
# command line (SPARK_SUBMIT_OPTS), the executors' in JAVA_TOOL_OPTIONS, which every other JVM (the launcher, the
# standalone daemons) ignores, silently, as its class path differs. TFOS_TEST_CDS=0 runs without them.
if [ "${TFOS_TEST_CDS:-1}" != 0 ]; then
  while read -r kind archive; do
    case "$kind" in
      driver) export SPARK_SUBMIT_OPTS="-XX:SharedArchiveFile=$archive -Xlog:cds=off -Xlog:cds+dynamic=off ${SPARK_SUBMIT_OPTS:-}" ;;
      executor) export JAVA_TOOL_OPTIONS="$JAVA_TOOL_OPTIONS -XX:SharedArchiveFile=$archive -Xlog:cds=off -Xlog:cds+dynamic=off" ;;
    esac
  done < <(bash "$TFOS_PROJECT_DIR/scripts/spark_cds.sh")
fi
# Three workers (pytest-xdist), a module's tests on one worker, modules handed out in collection order
# (the end-to-end modules first, then the other Spark modules: tests/conftest.py). Three on 2 cores: the
# suite mostly waits (Airflow's scheduling, a TensorFlow cluster's start-up barriers, JVM and executor
# start-ups); with two workers the machine was busy ~53% of a run (AMD EPYC with AVX-512: 32 CPU-minutes
# in 30 minutes on 2 cores). TFOS_TEST_WORKERS=0 runs everything in this one process.
workers="${TFOS_TEST_WORKERS:-3}"
xdist=()
[ "$workers" != 0 ] && xdist=(-n "$workers" --dist loadfile --no-loadscope-reorder)
# No path here: pytest.ini's testpaths (tests/) is the default, and paths given as arguments replace it
# (`bash scripts/test.sh tests/unit/test_csvparse.py` runs that module only).
exec python -m pytest "${xdist[@]}" "$@"
