#!/usr/bin/env bash
# The main job on a fresh machine: install the dependencies (as root on Debian/Ubuntu), build
# the example programs, fetch distilbert-base-uncased and AG-News when missing, and run the quick
# AG-News sweep (minutes on a CPU) into results/agnews-quick/.
#
#   scripts/run-study.sh [more agnews_sweep flags, e.g. --preset seed --device cuda --out DIR]
#
# Without network, when ../shared (or $LORA_SHARED_DIR) holds the project's shared data, it
# falls back to that data and the small DistilBERT checkpoint there, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORA_BUILD_TESTS=OFF -DLORA_BUILD_BENCH=OFF >/dev/null
cmake --build build-release --target agnews_sweep wikitext_sweep lora_inspect

data=${LORA_DATA_DIR:-$HOME/.cache/lora}
model=$data/models/distilbert-base-uncased
if ! scripts/fetch-assets.sh "$data" agnews; then
  shared=${LORA_SHARED_DIR:-../shared}
  if [ -f "$shared/data/agnews/test.csv" ] && [ -f "$shared/fixtures/distilbert_news_small/model.safetensors" ]; then
    echo "run-study: could not fetch distilbert-base-uncased / AG-News. Falling back to $shared/data and the small" \
         "DistilBERT in $shared/fixtures/distilbert_news_small: the pipeline is the real one, the numbers are not the study's." >&2
    data=$shared/data
    model=$shared/fixtures/distilbert_news_small
  else
    exit 1
  fi
fi
exec build-release/examples/agnews_sweep --preset quick --data-dir "$data" --model-dir "$model" \
  --out results/agnews-quick "$@"
