#!/usr/bin/env bash
# Sweep throughput, side by side in one run: the same AG-News grid (the CPU-scale study's
# protocol on the small DistilBERT: 2,000 rows, 2 epochs) trained by agnews_sweep one point at
# a time (--jobs 1, LibTorch's default threads: how the sweeps ran before --jobs) and N points
# at once (--jobs N, cores / N threads each). Prints points per hour for each and the ratio.
# Run it on an otherwise idle machine: anything else on the cores skews both sides.
#
#   bench/sweep_throughput.sh [BUILD_DIR] [JOBS]     (defaults: build-release, 2)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-release}
jobs=${2:-2}
shared=$(cd "${LORA_SHARED_DIR:-../shared}" && pwd)
prog=$build/examples/agnews_sweep
[ -x "$prog" ] || { echo "sweep_throughput: build $prog first" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 4 points: LoRA r16 and FullFT at two LRs each, one seed.
grid=(--model-dir "$shared/fixtures/distilbert_news_small" --data-dir "$shared/data" --train-size 2000
      --val-size 1000 --epochs 2 --max-len 128 --seed 1 --ranks 16 --lrs 1e-3 3e-3 --full-lrs 3e-4 1e-3)

run() {  # run NAME FLAGS...: prints the seconds it took
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s.%N)
  "$prog" "${grid[@]}" --out "$tmp/$name" "$@" >"$tmp/$name.log" 2>&1 || { cat "$tmp/$name.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
points=4
s1=$(run jobs1 --jobs 1)
sn=$(run jobsN --jobs "$jobs")
printf 'machine: %s, %s cores\n' "$(uname -m)" "$(nproc)"
printf '%-32s %8s s  %6.1f points/hour\n' "--jobs 1 (default threads)" "$(printf %.1f "$s1")" "$(echo "$points * 3600 / $s1" | bc -l)"
printf '%-32s %8s s  %6.1f points/hour\n' "--jobs $jobs" "$(printf %.1f "$sn")" "$(echo "$points * 3600 / $sn" | bc -l)"
printf 'points_per_hour_ratio: %.2f\n' "$(echo "$s1 / $sn" | bc -l)"
# The two runs must agree where they can: same points, same metric (threads differ, so the
# last bits may too; the agreement test with equal --threads is in tests/examples).
for f in "$tmp"/jobs1/points/*.json; do
  a=$(grep -m1 "\"test_acc\": [0-9]" "$f"); b=$(grep -m1 "\"test_acc\": [0-9]" "$tmp/jobsN/points/$(basename "$f")")
  a=${a##*: } b=${b##*: }
  echo "$(basename "$f" .json): test_acc ${a%,} (--jobs 1), ${b%,} (--jobs $jobs)"
done
