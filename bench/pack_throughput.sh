#!/usr/bin/env bash
# Packed training throughput, side by side in one run: the same 8 AG-News LoRA points (the
# CPU-scale study's protocol on the small DistilBERT, with every data size divided by SCALE,
# default 4, so that the run takes minutes: 2,000 / SCALE training rows for 2 epochs, 1,000 /
# SCALE validation and 7,600 / SCALE test rows; r4 and r16 at alpha 32, four LRs each, one
# seed). Training and evaluation shrink together, so the ratios hold for the full protocol and
# its points per hour are about the printed ones / SCALE. Trained by agnews_sweep four ways:
#   1. --jobs 2: two points at a time, one thread each (how the study runs; the baseline),
#   2. --jobs 2 --pack 2, 3. --jobs 2 --pack 4: two processes, one thread each, each training
#      packs of K points in one forward/backward pass,
#   4. --pack 8 with every core's threads: one process, one pass for all 8.
# Prints points per hour for each and its ratio to side 1, and each point's test accuracy on
# every side (a packed point draws other dropout masks than the same point alone, so its
# numbers are another draw, not the same bits; tests/examples shows packed = alone within float
# noise on a model without dropout).
# Run it on an otherwise idle machine: anything else on the cores skews every side.
#
#   bench/pack_throughput.sh [BUILD_DIR] [SCALE]     (defaults: build-release, 4)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-release}
scale=${2:-4}
[[ "$scale" =~ ^[1-9][0-9]*$ ]] || { echo "pack_throughput: SCALE must be a positive integer, got '$scale'" >&2; exit 2; }
shared=$(cd "${LORA_SHARED_DIR:-../shared}" && pwd)
prog=$build/examples/agnews_sweep
[ -x "$prog" ] || { echo "pack_throughput: build $prog first" >&2; exit 1; }
[[ "$("$prog" --help)" == *--pack* ]] || { echo "pack_throughput: $prog has no --pack; rebuild it" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

grid=(--model-dir "$shared/fixtures/distilbert_news_small" --data-dir "$shared/data" --train-size $((2000 / scale))
      --val-size $((1000 / scale)) --test-size $((7600 / scale)) --epochs 2 --max-len 128 --seed 1 --ranks 4 16
      --alpha 32 --lrs 3e-4 1e-3 2e-3 3e-3)
points=8
cores=$(nproc)

run() {  # run NAME FLAGS...: prints the seconds it took
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s.%N)
  "$prog" "${grid[@]}" --out "$tmp/$name" "$@" >"$tmp/$name.log" 2>&1 || { cat "$tmp/$name.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
names=(jobs2 jobs2pack2 jobs2pack4 pack8)
labels=("--jobs 2 (1 thread each)" "--jobs 2 --pack 2 (1 thread each)" "--jobs 2 --pack 4 (1 thread each)"
        "--pack 8 ($cores threads)")
flags=("--jobs 2 --threads 1" "--jobs 2 --threads 1 --pack 2" "--jobs 2 --threads 1 --pack 4" "--pack 8 --threads $cores")
secs=()
for i in "${!names[@]}"; do
  # shellcheck disable=SC2086  # flags are words
  secs+=("$(run "${names[$i]}" ${flags[$i]})")
done
printf 'machine: %s, %s cores, OPENBLAS_CORETYPE=%s; data sizes / %s\n' "$(uname -m)" "$cores" \
  "${OPENBLAS_CORETYPE:-(detected)}" "$scale"
for i in "${!names[@]}"; do
  printf '%-36s %8.1f s  %6.1f points/hour  %.2fx of --jobs 2\n' "${labels[$i]}" "${secs[$i]}" \
    "$(echo "$points * 3600 / ${secs[$i]}" | bc -l)" "$(echo "${secs[0]} / ${secs[$i]}" | bc -l)"
done
acc() { local l; l=$(grep -m1 "\"test_acc\": [0-9]" "$1"); l=${l##*: }; echo "${l%,}"; }
for f in "$tmp"/jobs2/points/*.json; do
  n=$(basename "$f")
  line="${n%.json}: test_acc"
  for name in "${names[@]}"; do line+=" $(acc "$tmp/$name/points/$n") ($name)"; done
  echo "$line"
done
