#!/usr/bin/env bash
# Builds everything and runs every test (library, model stack, examples, downstream package).
# Installs missing Debian packages first when run as root. The tests read the shared data and
# fixtures from $LORA_SHARED_DIR (default: ../shared beside this checkout); tests whose data is
# absent say so and skip.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
if [ -z "${LORA_SHARED_DIR:-}" ] && [ -d ../shared ]; then
  LORA_SHARED_DIR=$(cd ../shared && pwd)
fi
export LORA_SHARED_DIR=${LORA_SHARED_DIR:-}
[ -n "$LORA_SHARED_DIR" ] || echo "test: no shared data found (set LORA_SHARED_DIR): data tests will skip" >&2

build=${LORA_BUILD_DIR:-build}
jobs=${LORA_JOBS:-$(nproc)}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
