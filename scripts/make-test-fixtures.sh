#!/usr/bin/env bash
# Derives tests/fixtures/ (the small fixtures committed with the tests, so that every clone
# compares the models, a PEFT adapter and the tokenizers with outside reference outputs) from the
# shared folder's fixtures/ and data/tokenizers/. No network, no Python: the derivation is
# tests/tools/make_test_fixtures.cpp, which copies reference values and never computes them.
# tests/fixtures/README.md says what each file holds and where it comes from.
#
#   scripts/make-test-fixtures.sh [SHARED_DIR]          # rewrite tests/fixtures/ (but its README.md)
#   scripts/make-test-fixtures.sh --check [SHARED_DIR]  # derive into a temporary folder and compare
#                                                       # with tests/fixtures/, changing nothing
#
# The shared folder: $LORA_SHARED_DIR when set (as for the tests), else SHARED_DIR, else ../shared
# beside this checkout. Its files must be the ones tests/fixtures/ was made from (sha256 pinned
# below). The tool is compiled with ${CXX:-c++} (nlohmann/json on the include path), unless
# LORA_FIXTURE_TOOL names a built one (the tests' CMake target lora_make_test_fixtures).
# Exit status: 0 done (--check: identical), 1 failed or different, 2 usage, 4 (--check only)
# shared folder absent, which CTest reports as skipped; under CI (CI=true or CI=1) that fails.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
args=()
for arg in "$@"; do
  case $arg in
    --check) check=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "make-test-fixtures: unknown option '$arg' (use --check or nothing)" >&2; exit 2 ;;
    *) args+=("$arg") ;;
  esac
done
[ ${#args[@]} -le 1 ] || { echo "make-test-fixtures: one SHARED_DIR at most" >&2; exit 2; }
shared=${LORA_SHARED_DIR:-${args[0]:-../shared}}

if [ ! -d "$shared/fixtures" ] || [ ! -d "$shared/data/tokenizers" ]; then
  msg="$shared has no fixtures/ and data/tokenizers/: point LORA_SHARED_DIR (or SHARED_DIR) at the shared folder"
  ci=${CI:-}
  if [ $check = 1 ] && [ "$ci" != true ] && [ "$ci" != 1 ]; then
    echo "SKIPPED: $msg" >&2
    exit 4
  fi
  echo "make-test-fixtures: $msg" >&2
  exit 1
fi

# The inputs tests/fixtures/ was derived from (also listed in tests/fixtures/README.md).
pins="\
b381fb300cc51d00560f4356e77f4a0e86accb15cb387d8b4404232864a4fa88  fixtures/distilbert_seqcls_tiny/config.json
09feeac7eb736a88d2f1369a162b61e368cf01fe7a025c264deb0b6aba18f90a  fixtures/distilbert_seqcls_tiny/expected.json
22c0e6ee46dd4d0b1799fd1db0706faf8096406f17e0a47bcf47e43a4fb40c95  fixtures/distilbert_seqcls_tiny/model.safetensors
2dcebb2366abcb18fbadd975dbe9ef95051c4c578f8f129809f220b6d2e342c5  fixtures/gpt2_hub_layout_tiny/config.json
6d9aea030b06b13020ca73b06cf7352057d96a7b5e8642002eb30233bbbaa915  fixtures/gpt2_hub_layout_tiny/expected.json
2644342927d868a76e57e2c8c9e97140787f0a57f6e3715d67887a4303e60a7d  fixtures/gpt2_hub_layout_tiny/model.safetensors
ce8b71c07daa643666e44fb595ee6faed6e946c6ac333387c0ed452862060d25  fixtures/gpt2_lora_adapter_tiny/adapter_config.json
8d9a0dddab5de9cc8bac76ad14918b61c3d2dcf397e73c5a27e67cf43292b8e7  fixtures/gpt2_lora_adapter_tiny/adapter_model.safetensors
2dcebb2366abcb18fbadd975dbe9ef95051c4c578f8f129809f220b6d2e342c5  fixtures/gpt2_lora_adapter_tiny/config.json
478beaea6c28709c44ee5e446ff6a2beef4477864cdf38b7135e738d727ad664  fixtures/gpt2_lora_adapter_tiny/expected.json
162ea76ce0aa1838593c50cecd94ad352a3d4a90afee27ea25fd09830731826a  fixtures/gpt2_lora_adapter_tiny/model.safetensors
d9cd0df186bcf2884b9c6c441c7ca2d670f52d37cd0ddfb8d251026e31aced16  fixtures/tokenizers/expected.json
07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3  data/tokenizers/bert-base-uncased/vocab.txt
196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783  data/tokenizers/gpt2/vocab.json
1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5  data/tokenizers/gpt2/merges.txt"
if ! bad=$(cd "$shared" && sha256sum --quiet -c - <<<"$pins" 2>&1); then
  echo "make-test-fixtures: these files of $shared are not the ones tests/fixtures/ was made from:" >&2
  echo "$bad" >&2
  echo "Use the shared folder they came from, or, if the shared fixtures changed on purpose, update the" >&2
  echo "pins here and in tests/fixtures/README.md after checking the new reference outputs." >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tool=${LORA_FIXTURE_TOOL:-}
if [ -z "$tool" ]; then
  tool=$tmp/make_test_fixtures
  "${CXX:-c++}" -std=c++17 -O1 tests/tools/make_test_fixtures.cpp -o "$tool"
fi
"$tool" "$shared" "$tmp/out" >"$tmp/log" || { cat "$tmp/log" >&2; exit 1; }

if [ $check = 1 ]; then
  if ! diff -r -x README.md "$tmp/out" tests/fixtures >"$tmp/diff" 2>&1; then
    echo "FAIL: tests/fixtures/ differs from what scripts/make-test-fixtures.sh derives from $shared:" >&2
    head -n 40 "$tmp/diff" >&2
    echo "Run scripts/make-test-fixtures.sh to rewrite it (and review the change), or restore it with git." >&2
    exit 1
  fi
  echo "tests/fixtures/ is what scripts/make-test-fixtures.sh derives from $shared"
  exit 0
fi

for d in "$tmp"/out/*/; do
  name=$(basename "$d")
  rm -rf "tests/fixtures/$name"
  cp -r "$d" "tests/fixtures/$name"
done
sed "s|$tmp/out|tests/fixtures|" "$tmp/log"
echo "tests/fixtures/: $(find tests/fixtures -type f -printf '%s\n' | awk '{s += $1} END {printf "%.1f KiB", s / 1024}') in files; du: $(du -sh tests/fixtures | cut -f1)"
