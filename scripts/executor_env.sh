#!/usr/bin/env bash
# Builds build/executor-env.tar.gz: the executors' Python environment, packed with venv-pack, for
# TFOS_EXECUTOR_PYTHON_ENV=archive (jobs/tfospipe/launch.py ships it with spark.archives and runs
# ./environment/bin/python on every executor). `make executor-env` runs it.
#
#   1. a fresh venv in build/executor-env/ from the base interpreter of the project's .venv (so the
#      executors run the driver's Python version, as PySpark requires);
#   2. pip install -r requirements-executor.txt (names only) under two constraint files:
#      requirements.txt (the project's pins) and the .venv's `pip freeze` (every other package at the
#      driver's version); then pip check. No Airflow, no pyspark, no tfospipe (the --py-files zip);
#   3. venv-pack (pinned in requirements.txt, run from .venv) to build/executor-env.tar.gz, written
#      under a temporary name and renamed into place; the unpacked venv is removed. Left out:
#      TensorFlow's C++ headers (tensorflow/include: 430 MiB, half the archive's files; only a build
#      of custom ops reads them), so each executor has less to unpack. The packed
#      bin/python is a link to the base interpreter (venv-pack does not copy it), so every node needs
#      that Python (same minor version) at that path: by default this machine's path;
#      TFOS_EXECUTOR_PYTHON_PREFIX names the nodes' prefix instead (e.g. /usr for /usr/bin/python3.11:
#      bin/python3.11 and pyvenv.cfg's home are pointed there before packing; venv-pack 0.2.0's own
#      --python-prefix writes a broken link for Python 3.11, bin/python3.11 -> .../python3.113.11).
#
# Idempotent: the archive is rebuilt only when the checksum of requirements.txt,
# requirements-executor.txt, this script, the .venv's freeze, the base Python or the prefix changes
# (kept in build/executor-env.cksum). The archive of the current checksum is also kept in
# ~/.cache/tfos-pipeline/ (TFOS_EXECUTOR_ENV_CACHE; empty: no cache), where a fresh clone takes it
# instead of building it (~1.5 min on 2 cores). Prints the archive's size and the build's seconds.
set -euo pipefail
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
cd "$(dirname "$SELF")/.."
VENV="${TFOS_VENV:-.venv}"
BUILD=build
ENV_DIR="$BUILD/executor-env"
ARCHIVE="$BUILD/executor-env.tar.gz"
KEY_FILE="$BUILD/executor-env.cksum"

test -x "$VENV/bin/venv-pack" || { echo "executor_env.sh: $VENV/bin/venv-pack is missing: run make install" >&2; exit 1; }
base="$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)')"
minor="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

mkdir -p "$BUILD"
# Every package of the driver's venv at its version, but editable and direct-URL installs.
constraints="$BUILD/executor-env.constraints.txt"
"$VENV/bin/pip" freeze --exclude-editable | grep -v ' @ ' > "$constraints.new"
key="$(cat requirements.txt requirements-executor.txt "$SELF" "$constraints.new" <(echo "$base ${TFOS_EXECUTOR_PYTHON_PREFIX:-}") \
       | cksum | cut -d' ' -f1)"
if [ -f "$ARCHIVE" ] && [ "$(cat "$KEY_FILE" 2>/dev/null)" = "$key" ]; then
  rm -f "$constraints.new"
  echo "$ARCHIVE is up to date ($(du -m "$ARCHIVE" | cut -f1) MiB)"
  exit 0
fi
mv "$constraints.new" "$constraints"
# A copy of the archive per key outside the checkout, so that a fresh clone with the same requirements and
# venv (CI, a second checkout) takes it instead of building it again. TFOS_EXECUTOR_ENV_CACHE= (empty) turns it off.
CACHE="${TFOS_EXECUTOR_ENV_CACHE-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/tfos-pipeline}"
cached="${CACHE:+$CACHE/executor-env-$key.tar.gz}"
if [ -n "$cached" ] && [ -f "$cached" ]; then
  ln -f "$cached" "$ARCHIVE.tmp" 2>/dev/null || cp "$cached" "$ARCHIVE.tmp"
  mv "$ARCHIVE.tmp" "$ARCHIVE"
  echo "$key" > "$KEY_FILE"
  echo "$ARCHIVE taken from the cache $cached ($(du -m "$ARCHIVE" | cut -f1) MiB)"
  exit 0
fi

start=$SECONDS
rm -rf "$ENV_DIR" "$KEY_FILE"
"$base" -m venv "$ENV_DIR"
"$ENV_DIR/bin/pip" install --quiet --disable-pip-version-check \
  -c requirements.txt -c "$constraints" -r requirements-executor.txt
"$ENV_DIR/bin/pip" check
if [ -n "${TFOS_EXECUTOR_PYTHON_PREFIX:-}" ]; then
  ln -sfn "$TFOS_EXECUTOR_PYTHON_PREFIX/bin/python$minor" "$ENV_DIR/bin/python$minor"
  ln -sfn "python$minor" "$ENV_DIR/bin/python3"
  ln -sfn "python$minor" "$ENV_DIR/bin/python"
  sed -i "s#^home = .*#home = $TFOS_EXECUTOR_PYTHON_PREFIX/bin#" "$ENV_DIR/pyvenv.cfg"
fi
installed=$SECONDS
"$VENV/bin/venv-pack" --quiet --prefix "$ENV_DIR" --format tar.gz --output "$ARCHIVE.tmp" --force \
  --exclude 'lib/python*/site-packages/tensorflow/include/*'
chmod a+r "$ARCHIVE.tmp"
mv "$ARCHIVE.tmp" "$ARCHIVE"
unpacked_mib="$(du -sm --exclude='*/site-packages/tensorflow/include' "$ENV_DIR" | cut -f1)"
rm -rf "$ENV_DIR"
echo "$key" > "$KEY_FILE"
if [ -n "$cached" ] && mkdir -p "$CACHE" 2>/dev/null; then  # one archive kept: this key's
  find "$CACHE" -maxdepth 1 -name 'executor-env-*.tar.gz' ! -name "$(basename "$cached")" -delete
  { ln -f "$ARCHIVE" "$cached.tmp" 2>/dev/null || cp "$ARCHIVE" "$cached.tmp"; } && mv "$cached.tmp" "$cached"
fi
echo "$ARCHIVE: $(du -m "$ARCHIVE" | cut -f1) MiB (unpacked ${unpacked_mib} MiB); pip $((installed - start)) s, venv-pack $((SECONDS - installed)) s"
