#!/usr/bin/env bash
# Class-data-sharing (AppCDS) archives of the venv's Spark, for the short Spark applications of the tests:
# prints two lines, `driver PATH` and `executor PATH`, or nothing when they cannot be built (the caller then
# runs without them).
#
# Each Spark JVM loads ~10,000 classes from Spark's jars before it does any work; a dynamic CDS archive
# (JDK 13+, `-XX:ArchiveClassesAtExit`, https://docs.oracle.com/en/java/javase/17/vm/class-data-sharing.html)
# holds them parsed and verified, so a JVM that starts with `-XX:SharedArchiveFile` maps them instead.
# An archive is only valid for the class path it was dumped with, and spark-submit's driver
# (`conf/:jars/*`) and the executors (`conf:slf4j-api-*.jar:jars/*`) have different ones: one archive each,
# dumped by one small application on a local cluster (an RDD job through the Python runner, a DataFrame
# written to Parquet and read back). A JVM whose class path does not match (the launcher, the standalone
# daemons, another Spark) ignores the archive and starts as it would without it.
#
# Built once per Java build and Spark jar set (key: `java -version` and the jars' names and sizes), in
# ${XDG_CACHE_HOME:-~/.cache}/tfos-pipeline/spark-cds-<key>/ (~250 MB); ~1 min on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${TFOS_VENV:-.venv}"
spark_home="$("$VENV/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
# the Java build and installation (not the flags: JAVA_TOOL_OPTIONS changes java -version's output), Spark's jars
# (names, sizes, times: what an archive is checked against), this script
key="$( { java -version 2>&1 | grep "Runtime Environment"; readlink -f "$(command -v java)"; ls -l "$spark_home/jars";
          cat "${BASH_SOURCE[0]}"; } | cksum | cut -d' ' -f1)"
dir="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/tfos-pipeline/spark-cds-$key"
if [ ! -f "$dir/driver.jsa" ] || [ ! -f "$dir/executor.jsa" ]; then
  mkdir -p "$(dirname "$dir")"
  tmp="$(mktemp -d "$dir.tmp-XXXXXX")"
  # The archives are written when each JVM exits; the Python is the project's venv, the master a local cluster
  # (the executors' class path is the one the tests' local clusters use).
  if SPARK_SUBMIT_OPTS="-XX:ArchiveClassesAtExit=$tmp/driver.jsa -Xlog:cds=off -Xlog:cds+dynamic=off" \
     TMP_DIR="$tmp" timeout 300 "$VENV/bin/python" - >"$tmp/dump.log" 2>&1 <<'EOF'
import os
from pyspark.sql import SparkSession

tmp = os.environ["TMP_DIR"]
spark = (SparkSession.builder.master("local-cluster[1,1,1024]").appName("tfos-cds-dump")
         .config("spark.executor.extraJavaOptions",
                 f"-XX:ArchiveClassesAtExit={tmp}/executor.jsa -Xlog:cds=off -Xlog:cds+dynamic=off")
         .getOrCreate())
assert spark.sparkContext.parallelize(range(100), 2).map(lambda x: 2 * x).sum() == 9900
df = spark.createDataFrame([(i, float(i)) for i in range(100)], "a long, b double")
df.write.parquet(os.path.join(tmp, "parquet"))
back = spark.read.parquet(os.path.join(tmp, "parquet"))
assert back.groupBy((back.a % 3).alias("k")).count().count() == 3
spark.stop()
EOF
  then
    # the executor JVM writes its archive after the driver has stopped it: wait for it
    for _ in $(seq 60); do [ -s "$tmp/executor.jsa" ] && ! pgrep -f "ArchiveClassesAtExit=$tmp/" >/dev/null && break; sleep 1; done
  fi
  if [ -s "$tmp/driver.jsa" ] && [ -s "$tmp/executor.jsa" ]; then
    rm -rf "$tmp/parquet" "$dir"
    chmod 755 "$tmp"
    mv "$tmp" "$dir"
  else
    echo "spark_cds.sh: no CDS archives (the Spark JVMs start without them): $(tail -3 "$tmp/dump.log" 2>/dev/null)" >&2
    rm -rf "$tmp"
    exit 0
  fi
fi
echo "driver $dir/driver.jsa"
echo "executor $dir/executor.jsa"
