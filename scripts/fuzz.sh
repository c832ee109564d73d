#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz, clang with AddressSanitizer + UBSan) and runs each
# for SECONDS (default 60), or for N executions with --runs N, from its generated seeds plus what
# earlier runs left in fuzz-corpus/<harness>/. Prints each harness's execution count and time;
# exits non-zero when one found something (its crash-*/timeout-*/oom-* file is left in
# fuzz-corpus/). See docs/fuzzing.md.
#
#   scripts/fuzz.sh [SECONDS] [HARNESS...]     # e.g. scripts/fuzz.sh 600 bpe_encode agnews_csv
#   scripts/fuzz.sh --runs 1000000             # every harness to a million executions
#
# Environment: LORA_FUZZ_BUILD_DIR (default build-fuzz), CXX (default clang++, else clang++-14),
# LORA_SHARED_DIR (default ../shared when present: real vocabularies and data rows as extra seeds),
# LORA_FUZZ_JOBS (harnesses run at once, default 1; one per core at most).
set -euo pipefail
cd "$(dirname "$0")/.."

limit=(-max_total_time=60)
what="60s"
if [ "${1:-}" = --runs ]; then
  [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: --runs needs a positive number of executions" >&2; exit 2; }
  limit=(-runs="$2"); what="$2 executions"; shift 2
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  limit=(-max_total_time="$1"); what="$1s"; shift
fi
all=(safetensors vocab_txt wordpiece_encode bpe_files bpe_encode agnews_csv wikitext sweep_point hub_config peft_config peft_load)
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=("${all[@]}")
for h in "${harnesses[@]}"; do
  [[ " ${all[*]} " == *" $h "* ]] || { echo "fuzz: unknown harness '$h'; use one of: ${all[*]}" >&2; exit 2; }
done

build=${LORA_FUZZ_BUILD_DIR:-build-fuzz}
mkdir -p "$build" && build=$(cd "$build" && pwd)
cxx=${CXX:-$(command -v clang++ || command -v clang++-14 || true)}
[ -n "$cxx" ] || { echo "fuzz: clang++ not found (libFuzzer needs clang)" >&2; exit 2; }
if [ -z "${LORA_SHARED_DIR:-}" ] && [ -d ../shared ]; then LORA_SHARED_DIR=$(cd ../shared && pwd); fi
export LORA_SHARED_DIR=${LORA_SHARED_DIR:-}

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S tests/fuzz -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" "${launcher[@]}" >/dev/null
cmake --build "$build" -j "${LORA_JOBS:-$(nproc)}"

seeds=$build/seeds
rm -rf "$seeds" && mkdir -p "$seeds"
"$build/safetensors_fuzz_seeds" "$seeds/safetensors" "$seeds/safetensors.dict"
for h in vocab_txt wordpiece_encode bpe_files bpe_encode agnews_csv wikitext sweep_point; do
  LORA_FUZZ_SEEDS=$seeds "$build/fuzz_$h"
done
LORA_FUZZ_SEEDS=$seeds "$build/model_files_fuzz"

# fuzz_one HARNESS: one libFuzzer run; its log in fuzz-corpus/HARNESS.log, its exit status and
# wall time in fuzz-corpus/HARNESS.result.
fuzz_one() {
  local h=$1 cmd target rc=0 start
  case $h in
    safetensors) cmd=("$build/safetensors_fuzz"); target= ;;
    hub_config|peft_config|peft_load) cmd=("$build/model_files_fuzz"); target=$h ;;
    *) cmd=("$build/fuzz_$h"); target= ;;
  esac
  mkdir -p "fuzz-corpus/$h"
  echo "fuzz: $h for $what (log: fuzz-corpus/$h.log)"
  start=$SECONDS
  (cd fuzz-corpus && LORA_FUZZ_TARGET=$target "${cmd[@]}" "${limit[@]}" \
     -dict="$seeds/$h.dict" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
     -print_final_stats=1 "$h" "$seeds/$h") >"fuzz-corpus/$h.log" 2>&1 || rc=$?
  echo "$rc $((SECONDS - start))" >"fuzz-corpus/$h.result"
}

for h in "${harnesses[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "${LORA_FUZZ_JOBS:-1}" ]; do wait -n || true; done
  fuzz_one "$h" &
done
wait

status=0
summary=""
for h in "${harnesses[@]}"; do
  log=fuzz-corpus/$h.log
  read -r rc wall <"fuzz-corpus/$h.result"
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  if [ "$rc" -ne 0 ]; then
    status=1
    summary+="$h: FOUND SOMETHING after $runs executions (exit $rc): see $log"$'\n'
  else
    summary+="$h: $runs executions in ${wall}s, nothing found"$'\n'
  fi
done
printf '\n%s' "$summary"
exit $status
