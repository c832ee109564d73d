#!/usr/bin/env bash
# Downloads what the example programs need into the data folder and checks each file:
#   models/distilbert-base-uncased/{config.json,model.safetensors,vocab.txt}   (Hugging Face Hub)
#   models/distilgpt2/{config.json,model.safetensors,vocab.json,merges.txt}      (Hugging Face Hub)
#   agnews/{train.csv,test.csv}                                                  (ag_news_csv, as torchtext pins it)
#   wikitext-2-raw/wiki.{train,valid,test}.raw                                   (WikiText-2 raw v1)
#
#   scripts/fetch-assets.sh [DATA_DIR] [agnews|wikitext|all]
#
# DATA_DIR defaults to $LORA_DATA_DIR, else ~/.cache/lora; the second argument limits the
# download to one program's needs (default: all).
# Files already present and valid are kept. Needs curl and unzip.
set -euo pipefail

dir=${1:-${LORA_DATA_DIR:-$HOME/.cache/lora}}
what=${2:-all}
case $what in agnews|wikitext|all) ;; *) echo "fetch-assets: unknown set '$what' (agnews, wikitext or all)" >&2; exit 2;; esac
mkdir -p "$dir"
hub=https://huggingface.co
failed=0

# check FILE SHA256|- MIN_BYTES: the file exists, is at least MIN_BYTES, and has the hash if given.
check() {
  local file=$1 sha=$2 min=$3
  [ -s "$file" ] || return 1
  [ "$(stat -c %s "$file")" -ge "$min" ] || return 1
  [ "$sha" = - ] || [ "$(sha256sum "$file" | cut -d' ' -f1)" = "$sha" ]
}

# fetch URL DEST SHA256|- MIN_BYTES: download to DEST.part, check, then rename (atomic).
fetch() {
  local url=$1 dest=$dir/$2 sha=$3 min=$4
  if check "$dest" "$sha" "$min"; then echo "ok       $2"; return; fi
  mkdir -p "$(dirname "$dest")"
  echo "fetch    $2  <- $url"
  if curl -fsSL --retry 3 --connect-timeout 20 -o "$dest.part" "$url" && check "$dest.part" "$sha" "$min"; then
    mv "$dest.part" "$dest"
  else
    rm -f "$dest.part"
    echo "FAILED   $2 (download failed, or size/hash did not match)" >&2
    failed=1
  fi
}

if [ "$what" != wikitext ]; then
  for f in config.json vocab.txt; do
    fetch "$hub/distilbert-base-uncased/resolve/main/$f" "models/distilbert-base-uncased/$f" - 100
  done
  fetch "$hub/distilbert-base-uncased/resolve/main/model.safetensors" \
    models/distilbert-base-uncased/model.safetensors - 200000000
  ag=https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv
  fetch "$ag/train.csv" agnews/train.csv - 29000000
  fetch "$ag/test.csv" agnews/test.csv 521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699 1000000
fi

fetch_wikitext() {
  for f in config.json vocab.json merges.txt; do
    fetch "$hub/distilgpt2/resolve/main/$f" "models/distilgpt2/$f" - 100
  done
  fetch "$hub/distilgpt2/resolve/main/model.safetensors" models/distilgpt2/model.safetensors - 300000000

  local wt=$dir/wikitext-2-raw
  local -A wt_sha=(
    [wiki.train.raw]=6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57
    [wiki.valid.raw]=4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7
    [wiki.test.raw]=173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08
  )
  need_wt=0
  for f in "${!wt_sha[@]}"; do check "$wt/$f" "${wt_sha[$f]}" 1000000 || need_wt=1; done
  if [ $need_wt = 0 ]; then
    echo "ok       wikitext-2-raw/"
  else
    tmp=$(mktemp -d)
    echo "fetch    wikitext-2-raw/  <- https://wikitext.smerity.com/wikitext-2-raw-v1.zip"
    if curl -fsSL --retry 3 --connect-timeout 20 -o "$tmp/wt.zip" https://wikitext.smerity.com/wikitext-2-raw-v1.zip &&
       unzip -q -o "$tmp/wt.zip" -d "$tmp"; then
      mkdir -p "$wt"
      for f in "${!wt_sha[@]}"; do
        if check "$tmp/wikitext-2-raw/$f" "${wt_sha[$f]}" 1000000; then mv "$tmp/wikitext-2-raw/$f" "$wt/$f"
        else echo "FAILED   wikitext-2-raw/$f (hash did not match)" >&2; failed=1; fi
      done
    else
      echo "FAILED   wikitext-2-raw/ (download failed)" >&2
      failed=1
    fi
    rm -rf "$tmp"
  fi
}
[ "$what" = agnews ] || fetch_wikitext

if [ $failed != 0 ]; then
  echo "fetch-assets: some files are missing in $dir (see above). Without network, copy them there by hand." >&2
  exit 1
fi
echo "fetch-assets: everything is in $dir"
