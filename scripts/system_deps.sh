#!/usr/bin/env bash
# Debian packages the project uses, installed with apt-get when missing (as root, or through
# passwordless sudo).
#   scripts/system_deps.sh runtime   libtcmalloc-minimal4: the memory allocator the Spark executors
#                                    preload (jobs/tfospipe/launch.py, executor_malloc). Optional: without
#                                    it training runs ~1.5x slower; says so and goes on.
#   scripts/system_deps.sh test      that, and what the tests use: chromium (the browser test drives it
#                                    with Playwright; no browser download) and docker-compose (validates
#                                    docker-compose.yaml; no Docker engine needed). Fails without them.
set -euo pipefail
mode="${1:-test}"
missing=()
ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal.so.4 || missing+=(libtcmalloc-minimal4)
if [ "$mode" = test ]; then
  command -v chromium >/dev/null || missing+=(chromium)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  if [ "$mode" = runtime ]; then
    echo "Note: training is faster with TCMalloc: sudo apt-get install libtcmalloc-minimal4" >&2
    exit 0
  fi
  echo "The tests need these Debian packages: ${missing[*]}. Install them: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "Installing ${missing[*]} (apt-get)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
