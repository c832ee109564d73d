#!/usr/bin/env bash
# Reruns the CPU-scale study of docs/results.md, resumably, into docs/results/<experiment>/:
# each experiment is one sweep with a preset of agnews_sweep or wikitext_sweep, on the small
# pretrained bases in the shared fixtures (distilbert-base-uncased and distilgpt2 cannot be
# downloaded here). A rerun skips every finished point (its points/<key>.json) and trains the
# rest; stop it at any time. Commit docs/results/*/points/ as points finish.
#
#   scripts/reproduce-small.sh                 # every experiment, in order
#   scripts/reproduce-small.sh agnews-alpha32  # some of them
#   LORA_JOBS=1 scripts/reproduce-small.sh ... # points at once (default 2: one per core here)
#   LORA_THREADS=1 ...                         # threads per point (default: cores / jobs)
# Two runs of this script on the same experiments share the work (each point is claimed by
# one process), so a second one started later adds a core to the first.
#
# Experiments (presets in examples/common/tasks/*_task.hpp; costs measured on a 2-core VM
# with --jobs 2, see docs/results.md):
#   agnews-alpha32         alpha 32, ranks 4/16/64, uniform/zero init, FullFT beside it
#   agnews-alpha10r        alpha = 10r (scale 10 at every rank), same ranks and FullFT
#   agnews-gaussian-1      gaussian A and B, sigma 1, r16 (alpha 32, experiment 1's grid)
#   agnews-gaussian-0.1    the same with sigma 0.1
#   agnews-gaussian-0.01   the same with sigma 0.01
#   wikitext               GPT-2 projections vs FullFT on WikiText (trained on WikiText-103 text)
#   wikitext-lm-head       LoRA on the tied lm_head only (the seed's probable setting)
#  The second round (docs/results.md):
#   agnews-alpha-scan      r16 at alpha 8, 32, 128, 512 (scale 0.5 to 32): does the optimum follow 1/scale?
#   agnews-fine            FullFT, r4, r16, r64 on a fine grid (E12 steps) around optima and edges, 5 seeds
#   agnews-gaussian-subtracted-1    gaussian A and B (sigma 1) with s B0 A0 subtracted from W
#   agnews-gaussian-subtracted-0.1  the same with sigma 0.1
#   agnews-full-no-embeddings       FullFT with the embedding tables frozen, beside experiment 1's LoRA
#   agnews-full-linear              FullFT of the Linear layers only, beside experiment 1's LoRA
#   agnews-budget          8 epochs instead of 2, FullFT and r4/r16/r64 around their optima
#   wikitext-fine          experiment 4's projections (r4, r64) and FullFT on a fine grid, 5 seeds
#   wikitext-lm-head-fine  the lm_head adapter (r16) on a fine grid, FullFT's points copied
# A point another experiment already ran with the same settings is copied over rather than
# trained twice (agnews-alpha32's FullFT points for agnews-alpha10r, its LoRA points for the
# agnews-full-* experiments, wikitext's FullFT points for wikitext-lm-head, ...); the sweep
# checks each copied file's settings against its own.
set -euo pipefail
cd "$(dirname "$0")/.."

shared=${LORA_SHARED_DIR:-../shared}
if [ ! -f "$shared/fixtures/distilbert_news_small/model.safetensors" ]; then
  echo "reproduce-small: no shared data in '$shared' (set LORA_SHARED_DIR to the folder with data/ and fixtures/)" >&2
  exit 1
fi
shared=$(cd "$shared" && pwd)
# OpenBLAS picks its kernels from the CPU it detects; on some VMs (this project's 2-core Xeon
# among them) it does not recognise the CPU and falls back to Prescott's SSE3 kernels, 2.4x
# slower on sgemm than its AVX2 (Haswell) ones. Every AVX2 CPU runs the Haswell kernels; set
# OPENBLAS_CORETYPE yourself to choose others (docs/performance.md).
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
  export OPENBLAS_CORETYPE=Haswell
  echo "reproduce-small: OPENBLAS_CORETYPE=Haswell (this CPU has AVX2; set OPENBLAS_CORETYPE to override)"
fi
jobs=${LORA_JOBS:-2}
threads=${LORA_THREADS:-0}  # per point; 0: cores / jobs
all=(agnews-alpha32 agnews-alpha10r agnews-gaussian-1 agnews-gaussian-0.1 agnews-gaussian-0.01 wikitext wikitext-lm-head
     agnews-alpha-scan agnews-fine agnews-gaussian-subtracted-1 agnews-gaussian-subtracted-0.1
     agnews-full-no-embeddings agnews-full-linear agnews-budget wikitext-fine wikitext-lm-head-fine)
experiments=("$@")
[ ${#experiments[@]} -gt 0 ] || experiments=("${all[@]}")

scripts/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORA_BUILD_TESTS=OFF -DLORA_BUILD_BENCH=OFF >/dev/null
cmake --build build-release --target agnews_sweep wikitext_sweep

# copy_points PROGRAM PRESET FROM TO GLOB: the finished points of experiment FROM whose key
# matches GLOB and that TO's grid (PROGRAM --preset PRESET) holds but TO lacks.
copy_points() {
  local prog=$1 preset=$2 from=docs/results/$3 to=docs/results/$4 glob=$5 k
  mkdir -p "$to/points"
  for k in $(build-release/examples/"$prog" --preset "$preset" --out "$to" --dry-run | awk '$2 == "to" {print $1}'); do
    # shellcheck disable=SC2254  # GLOB is a pattern
    case $k in $glob) ;; *) continue ;; esac
    [ -f "$from/points/$k.json" ] && cp "$from/points/$k.json" "$to/points/"
  done
  return 0
}

for e in "${experiments[@]}"; do
  echo "== $e"
  out=docs/results/$e
  case $e in
    agnews-*)
      preset=small-${e#agnews-}
      case $e in
        agnews-alpha10r|agnews-alpha-scan) copy_points agnews_sweep "$preset" agnews-alpha32 "$e" 'full_*' ;;
        agnews-fine) copy_points agnews_sweep "$preset" agnews-alpha32 "$e" '*' ;;
        agnews-full-*) copy_points agnews_sweep "$preset" agnews-alpha32 "$e" 'lora_*' ;;
      esac
      build-release/examples/agnews_sweep --preset "$preset" --jobs "$jobs" --threads "$threads" --out "$out" \
        --model-dir "$shared/fixtures/distilbert_news_small" --data-dir "$shared/data" ;;
    wikitext*)
      case $e in
        wikitext) preset=small ;;
        wikitext-lm-head) preset=small-lm-head; copy_points wikitext_sweep "$preset" wikitext "$e" 'full_*' ;;
        wikitext-fine) preset=small-fine; copy_points wikitext_sweep "$preset" wikitext "$e" '*' ;;
        wikitext-lm-head-fine) preset=small-lm-head-fine; copy_points wikitext_sweep "$preset" wikitext-fine "$e" 'full_*' ;;
        *) echo "reproduce-small: unknown experiment '$e'; use one of: ${all[*]}" >&2; exit 2 ;;
      esac
      build-release/examples/wikitext_sweep --preset "$preset" --jobs "$jobs" --threads "$threads" --out "$out" \
        --model-dir "$shared/fixtures/gpt2_pretrained_tiny" --data-dir "$shared/data" ;;
    *) echo "reproduce-small: unknown experiment '$e'; use one of: ${all[*]}" >&2; exit 2 ;;
  esac
done
