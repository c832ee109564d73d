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
# The FullFT points of agnews-alpha32 are the same runs (same settings) as those that
# agnews-alpha10r needs: they are copied over rather than trained twice, likewise wikitext's
# for wikitext-lm-head.
set -euo pipefail
cd "$(dirname "$0")/.."

shared=${LORA_SHARED_DIR:-../shared}
if [ ! -f "$shared/fixtures/distilbert_news_small/model.safetensors" ]; then
  echo "reproduce-small: no shared data in '$shared' (set LORA_SHARED_DIR to the folder with data/ and fixtures/)" >&2
  exit 1
fi
shared=$(cd "$shared" && pwd)
jobs=${LORA_JOBS:-2}
all=(agnews-alpha32 agnews-alpha10r agnews-gaussian-1 agnews-gaussian-0.1 agnews-gaussian-0.01 wikitext wikitext-lm-head)
experiments=("$@")
[ ${#experiments[@]} -gt 0 ] || experiments=("${all[@]}")

scripts/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORA_BUILD_TESTS=OFF -DLORA_BUILD_BENCH=OFF >/dev/null
cmake --build build-release --target agnews_sweep wikitext_sweep

# copy_full FROM TO: the finished FullFT points of FROM that TO lacks.
copy_full() {
  mkdir -p "docs/results/$2/points"
  for f in docs/results/"$1"/points/full_*.json; do
    [ -f "$f" ] || continue
    [ -f "docs/results/$2/points/$(basename "$f")" ] || cp "$f" "docs/results/$2/points/"
  done
}

for e in "${experiments[@]}"; do
  echo "== $e"
  out=docs/results/$e
  case $e in
    agnews-*)
      [ "$e" = agnews-alpha10r ] && copy_full agnews-alpha32 "$e"
      build-release/examples/agnews_sweep --preset "small-${e#agnews-}" --jobs "$jobs" --out "$out" \
        --model-dir "$shared/fixtures/distilbert_news_small" --data-dir "$shared/data" ;;
    wikitext|wikitext-lm-head)
      [ "$e" = wikitext-lm-head ] && copy_full wikitext "$e"
      preset=small; [ "$e" = wikitext-lm-head ] && preset=small-lm-head
      build-release/examples/wikitext_sweep --preset "$preset" --jobs "$jobs" --out "$out" \
        --model-dir "$shared/fixtures/gpt2_pretrained_tiny" --data-dir "$shared/data" ;;
    *) echo "reproduce-small: unknown experiment '$e'; use one of: ${all[*]}" >&2; exit 2 ;;
  esac
done
