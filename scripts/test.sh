#!/usr/bin/env bash
# Builds everything and runs every test (library, model stack, examples, downstream package).
# Installs missing Debian packages first when run as root. The tests read the shared data and
# fixtures from $LORA_SHARED_DIR (default: ../shared beside this checkout); a test whose data is
# absent is reported by CTest as skipped (not passed), and under CI (CI=true) it fails instead.
#
#   scripts/test.sh               # Release build in build/ (LORA_BUILD_DIR)
#   scripts/test.sh --sanitize    # AddressSanitizer + UBSan build in build-sanitize/, then every
#                                 # test but the downstream-package ones (see docs/fuzzing.md)
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=0
for arg in "$@"; do
  case $arg in
    --sanitize) sanitize=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "test: unknown option '$arg' (use --sanitize or nothing)" >&2; exit 2 ;;
  esac
done

scripts/install-deps.sh
if [ -z "${LORA_SHARED_DIR:-}" ] && [ -d ../shared ]; then
  LORA_SHARED_DIR=$(cd ../shared && pwd)
fi
export LORA_SHARED_DIR=${LORA_SHARED_DIR:-}
[ -n "$LORA_SHARED_DIR" ] || echo "test: no shared data found (set LORA_SHARED_DIR): data tests will be skipped" >&2

jobs=${LORA_JOBS:-$(nproc)}
ctest_args=(--output-on-failure -j "$jobs")
if [ $sanitize = 1 ]; then
  build=${LORA_BUILD_DIR:-build-sanitize}
  flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLORA_BUILD_BENCH=OFF \
    -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined"
  # LibTorch is not instrumented: std::vector annotations cannot match across the boundary
  # (container-overflow false positives); leaks are reported, a UBSan finding stops the test.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_container_overflow=0:abort_on_error=1:strict_string_checks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  # The downstream tests build a separate, uninstrumented project against the installed package.
  ctest_args+=(-E '^downstream:' --timeout 3000)
else
  build=${LORA_BUILD_DIR:-build}
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$build" -j "$jobs"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
rc=0
ctest --test-dir "$build" "${ctest_args[@]}" 2>&1 | tee "$log" || rc=$?
skipped=$(grep -c '\*\*\*Skipped\| Skipped ' "$log" || true)
total=$(grep -oE 'out of [0-9]+' "$log" | tail -n1 | grep -oE '[0-9]+' || echo "?")
echo "test: $skipped of $total tests skipped (their data is absent; see 'The following tests did not run' above)"
exit $rc
