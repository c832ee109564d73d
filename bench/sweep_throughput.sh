#!/usr/bin/env bash
# Sweep throughput, side by side in one run: the same AG-News grid (the CPU-scale study's
# protocol on the small DistilBERT: 2,000 rows, 2 epochs) trained by agnews_sweep three ways:
#   1. one point at a time with LibTorch's and OpenBLAS's default threads (--jobs 1: how the
#      sweeps ran before --jobs),
#   2. one point at a time with the threads a --jobs N worker gets (--jobs 1 --threads cores/N),
#   3. N points at once (--jobs N, cores / N threads each).
# Prints points per hour for each and three ratios of them: 3 over 1 (what --jobs gains), 3 over
# 2 (how close N workers come to N times one worker: N means they do not slow each other), and N
# times 2 over 1 (the most 3 over 1 can be even when they do not; it falls as one point gains
# more from all cores).
# Run it on an otherwise idle machine: anything else on the cores skews every side.
#
#   bench/sweep_throughput.sh [BUILD_DIR] [JOBS]     (defaults: build-release, 2)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-release}
jobs=${2:-2}
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "sweep_throughput: JOBS must be a positive integer, got '$jobs'" >&2; exit 2; }
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
cores=$(nproc)
threads=$((cores / jobs))
[ "$threads" -ge 1 ] || threads=1
s1=$(run jobs1 --jobs 1)
st=$(run jobs1t --jobs 1 --threads "$threads")
sn=$(run jobsN --jobs "$jobs" --threads "$threads")  # the same threads as side 2, stated, not left to the engine
side() { printf '%-36s %8s s  %6.1f points/hour\n' "$1" "$(printf %.1f "$2")" "$(echo "$points * 3600 / $2" | bc -l)"; }
printf 'machine: %s, %s cores\n' "$(uname -m)" "$cores"
side "--jobs 1 (default threads)" "$s1"
side "--jobs 1 --threads $threads" "$st"
side "--jobs $jobs ($threads thread(s) each)" "$sn"
printf 'points_per_hour_ratio: %.2f   (--jobs %s over --jobs 1 with default threads)\n' "$(echo "$s1 / $sn" | bc -l)" "$jobs"
printf 'jobs_scaling: %.2f of %s   (--jobs %s over --jobs 1 --threads %s)\n' "$(echo "$st / $sn" | bc -l)" "$jobs" "$jobs" "$threads"
printf 'ratio_ceiling: %.2f   (%s x the points/hour of --jobs 1 --threads %s over those with default threads:\n' \
  "$(echo "$jobs * $s1 / $st" | bc -l)" "$jobs" "$threads"
printf '                        points_per_hour_ratio if the %s workers did not slow each other at all)\n' "$jobs"
# The three runs must agree where they can: same points, same metric (threads differ, so the
# last bits may too; the agreement test with equal --threads is in tests/examples).
acc() { local l; l=$(grep -m1 "\"test_acc\": [0-9]" "$1"); l=${l##*: }; echo "${l%,}"; }
for f in "$tmp"/jobs1/points/*.json; do
  n=$(basename "$f")
  echo "${n%.json}: test_acc $(acc "$f") (--jobs 1), $(acc "$tmp/jobs1t/points/$n") (--threads $threads)," \
       "$(acc "$tmp/jobsN/points/$n") (--jobs $jobs)"
done
