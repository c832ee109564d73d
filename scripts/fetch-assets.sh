#!/usr/bin/env bash
# Downloads what the example programs need into the data folder and checks each file:
#   models/distilbert-base-uncased/{config.json,model.safetensors,vocab.txt}   (Hugging Face Hub)
#   models/distilgpt2/{config.json,model.safetensors,vocab.json,merges.txt}      (Hugging Face Hub)
#   agnews/{train.csv,test.csv}                                                  (ag_news_csv, as torchtext pins it)
#   wikitext-2-raw/wiki.{train,valid,test}.raw                                   (WikiText-2 raw v1)
# and, only when asked for by name, pretrain's text (shared/data/corpus/):
#   corpus/...                       the 49 corpus files, as far as they can be made  (set corpus)
#   corpus-sources/OWNER/REPO/PATH   the 186 files of public GitHub repositories they come from,
#                                    each at a pinned commit                           (set corpus-sources)
#
#   scripts/fetch-assets.sh [DATA_DIR] [agnews|wikitext|corpus|corpus-sources|all]
#
# DATA_DIR defaults to $LORA_DATA_DIR, else ~/.cache/lora; the second argument limits the
# download to one program's needs (default: all, which is agnews and wikitext; pretrain's corpus
# only by name).
# Files already present and valid are kept. Needs curl and unzip.
#
# Pinned: each Hub model at one commit (resolve/<commit>/FILE, never resolve/main), and every
# file, the WikiText zip included, against a published sha256 and byte count (sources below,
# next to each hash). A file that does not match is not installed, and the script exits 1.
# The sha256 of each file it downloads is printed, to compare with the sources by hand.
#
# The corpus (scripts/corpus-assets.tsv, from shared/data/corpus/MANIFEST.sources.tsv and
# MANIFEST.sha256): each source file at its pinned commit (raw.githubusercontent.com/REPO/COMMIT/
# PATH), checked against its git blob id; each corpus file against its sha256 and size. Five
# corpus files are made here from their sources (four byte-for-byte copies, and the WikiText-103
# head: its source's complete lines). The other 44 are derived from their sources by processing
# that shared/data/corpus/README.md describes (Gutenberg headers stripped, Reuters SGML parsed,
# ...) and that this script does not automate: it checks them when present (copy them from a
# shared folder: cp -r SHARED/data/corpus DATA_DIR/) and lists those missing, exiting 1.
#
# Sourced (`source scripts/fetch-assets.sh`, as tests/scripts/fetch_assets_test.sh does), it only
# defines the table of assets and the functions check and fetch, and downloads nothing.

hub=https://huggingface.co
# Hub commits: not read off a Hub page, but the revision that many public projects pin for each
# repository (some record it as what main resolved to in their Hugging Face cache), with, at that
# revision, the sha256 values below; the Hub's own LFS pages give the same sha256 for both weight
# files.
distilbert_rev=12040accade4e8a0f71eabdb258fecc2e7e948be   # distilbert/distilbert-base-uncased
distilgpt2_rev=2290a62682d06624634c1f46a6ad5be0f47f38aa   # distilbert/distilgpt2
# ag_news_csv as torchtext and Hugging Face datasets take it (a moving branch: the hashes pin it).
agnews_url=https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv
wikitext_zip_url=https://wikitext.smerity.com/wikitext-2-raw-v1.zip

# asset DEST URL SHA256|- MIN_BYTES: one file of the table (DEST relative to the data folder).
# SHA256 '-' would mean "no published hash": then only the size is checked (every file below
# has a hash, so none uses it).
declare -gA asset_url=() asset_sha=() asset_bytes=()
asset() { asset_url[$1]=$2; asset_sha[$1]=$3; asset_bytes[$1]=$4; }

# distilbert-base-uncased @ distilbert_rev.
#  config.json and vocab.txt: the sha256 that public projects pin at this revision (a BERTScore
#    setup's BERTSCORE_MODEL_FILES_SHA256, a TKGQA reproduction's _DISTILBERT_FILES, an intent
#    model's BASE_SHA256, among others; all agree). config.json's byte count was not found: only
#    a lower bound is checked for it, the hash decides.
#    vocab.txt also equals shared/data/tokenizers/bert-base-uncased/vocab.txt (231,508 bytes; the
#    Hub's bert-base-uncased vocab.txt by git blob id, see shared/data/README.md), same sha256.
#  model.safetensors: also the Hub's Git LFS pointer, "SHA256: 5e3f1108..." on
#    huggingface.co/distilbert/distilbert-base-uncased/blob/main/model.safetensors, with
#    "size 267954768" in huggingface.co/codewithdark/model-cache/commit/da6c4442f37fda9621866098f21ca0865e3a89bb.
db=$hub/distilbert/distilbert-base-uncased/resolve/$distilbert_rev
asset models/distilbert-base-uncased/config.json "$db/config.json" \
  69c94b0222d5d1f4b0ad027ca7416cdafb98378cbbb8305d0bf47c9365c60c83 100
asset models/distilbert-base-uncased/vocab.txt "$db/vocab.txt" \
  07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3 231508
asset models/distilbert-base-uncased/model.safetensors "$db/model.safetensors" \
  5e3f1108e3cb34ee048634875d8482665b65ac713291a7e32396fb18f6ff0063 267954768

# distilgpt2 @ distilgpt2_rev: sha256 and byte counts as a public model catalog pins them at this
# revision (others agree on the weights and config.json). The weights' hash is also the Hub's LFS
# pointer, huggingface.co/distilbert/distilgpt2/blob/4244ff61fb228ec942af0d72c89fedc9bc5faa31/model.safetensors.
# vocab.json and merges.txt equal shared/data/tokenizers/gpt2/{vocab.json,merges.txt} (OpenAI's
# GPT-2 encoder.json and vocab.bpe, renamed), same sha256.
dg=$hub/distilbert/distilgpt2/resolve/$distilgpt2_rev
asset models/distilgpt2/config.json "$dg/config.json" \
  4ec5947c1d59fee6212cdf3b0ec1a53eac02092554c5ff0a733488cbd2c64f3a 762
asset models/distilgpt2/vocab.json "$dg/vocab.json" \
  196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783 1042301
asset models/distilgpt2/merges.txt "$dg/merges.txt" \
  1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5 456318
asset models/distilgpt2/model.safetensors "$dg/model.safetensors" \
  e1ff18884359fe8beb795a5f414feb85a6ce3d929ad019c0d958c039d2b94a1b 352824413

# AG-News: Hugging Face datasets' checksums for exactly these two URLs,
# github.com/huggingface/datasets datasets/ag_news/dataset_infos.json ("download_checksums").
# test.csv also equals shared/data/agnews/test.csv (same sha256 here), whose MD5
# d52ea96a97a2d943681189a97654912d is torchtext's AG_NEWS test MD5; torchtext's train MD5 is
# b1a00f826fdfbd249f79597b59e1dc12.
asset agnews/train.csv "$agnews_url/train.csv" 76a0a2d2f92b286371fe4d4044640910a04a803fdd2538e0f3f29a5c6f6b672e 29470338
asset agnews/test.csv "$agnews_url/test.csv" 521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699 1857427

# WikiText-2 raw v1: the zip's hash and size are Hugging Face datasets' checksum for it
# (datasets/wikitext/dataset_infos.json, under its former S3 address), and public projects pin
# the same hash for this wikitext.smerity.com address. The three members' hashes are as those
# projects state them; wiki.valid.raw and wiki.test.raw also equal shared/data/wikitext-2-raw/.
asset wikitext-2-raw-v1.zip "$wikitext_zip_url" ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11 4721645
asset wikitext-2-raw/wiki.train.raw "$wikitext_zip_url" 6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57 10940747
asset wikitext-2-raw/wiki.valid.raw "$wikitext_zip_url" 4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7 1146846
asset wikitext-2-raw/wiki.test.raw "$wikitext_zip_url" 173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08 1290590

# The corpus table (see the top of this file); corpus_table may be set before sourcing.
corpus_table=${corpus_table:-$(dirname "${BASH_SOURCE[0]}")/corpus-assets.tsv}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# blob_id FILE: the file's git blob id (what `git hash-object FILE` prints), without git.
blob_id() { { printf 'blob %s\0' "$(stat -c %s "$1")"; cat "$1"; } | sha1sum | cut -d' ' -f1; }

# check FILE SHA256|- MIN_BYTES: the file exists, is at least MIN_BYTES, and has the hash if given.
check() {
  local file=$1 sha=$2 min=$3
  [ -s "$file" ] || return 1
  [ "$(stat -c %s "$file")" -ge "$min" ] || return 1
  [ "$sha" = - ] || [ "$(sha256_of "$file")" = "$sha" ]
}

# mismatch FILE SHA256|- MIN_BYTES: why check failed, in words.
mismatch() {
  local file=$1 sha=$2 min=$3 size
  if [ ! -s "$file" ]; then echo "missing or empty"; return; fi
  size=$(stat -c %s "$file")
  if [ "$size" -lt "$min" ]; then echo "$size bytes, expected at least $min"; return; fi
  echo "sha256 $(sha256_of "$file"), expected $sha"
}

# fetch DEST: download asset DEST to DEST.part, check it, then rename (atomic). A valid DEST is
# kept; an invalid one stays until a valid download replaces it. Sets failed=1 on failure.
fetch() {
  local name=$1
  local url=${asset_url[$name]} sha=${asset_sha[$name]} min=${asset_bytes[$name]} dest=$dir/$1
  if check "$dest" "$sha" "$min"; then echo "ok       $name"; return; fi
  [ ! -e "$dest" ] || echo "stale    $name ($(mismatch "$dest" "$sha" "$min")): fetching it again"
  mkdir -p "$(dirname "$dest")"
  echo "fetch    $name  <- $url"
  if curl -fsSL --retry 3 --connect-timeout 20 -o "$dest.part" "$url" && check "$dest.part" "$sha" "$min"; then
    mv "$dest.part" "$dest"
    if [ "$sha" = - ]; then
      echo "         sha256 $(sha256_of "$dest") (no published hash to check it against: compare it yourself)"
    else
      echo "         sha256 $sha (as pinned)"
    fi
  else
    if [ -e "$dest.part" ]; then
      echo "FAILED   $name ($(mismatch "$dest.part" "$sha" "$min"))" >&2
    else
      echo "FAILED   $name (download failed)" >&2
    fi
    rm -f "$dest.part"
    failed=1
  fi
}

# fetch_wikitext: the three members of the pinned zip, when any is missing or invalid.
fetch_wikitext() {
  local f tmp need_wt=0 members=(wiki.train.raw wiki.valid.raw wiki.test.raw)
  for f in "${members[@]}"; do
    check "$dir/wikitext-2-raw/$f" "${asset_sha[wikitext-2-raw/$f]}" "${asset_bytes[wikitext-2-raw/$f]}" || need_wt=1
  done
  if [ $need_wt = 0 ]; then
    echo "ok       wikitext-2-raw/"
    return
  fi
  tmp=$(mktemp -d)
  local zip=$tmp/wikitext-2-raw-v1.zip
  local zsha=${asset_sha[wikitext-2-raw-v1.zip]} zmin=${asset_bytes[wikitext-2-raw-v1.zip]}
  echo "fetch    wikitext-2-raw/  <- $wikitext_zip_url"
  if ! curl -fsSL --retry 3 --connect-timeout 20 -o "$zip" "$wikitext_zip_url"; then
    echo "FAILED   wikitext-2-raw/ (download failed)" >&2
    failed=1
  elif ! check "$zip" "$zsha" "$zmin"; then
    echo "FAILED   wikitext-2-raw/ (the zip: $(mismatch "$zip" "$zsha" "$zmin"))" >&2
    failed=1
  elif ! unzip -q -o "$zip" -d "$tmp"; then
    echo "FAILED   wikitext-2-raw/ (unzip failed)" >&2
    failed=1
  else
    echo "         sha256 $zsha (the zip, as pinned)"
    mkdir -p "$dir/wikitext-2-raw"
    for f in "${members[@]}"; do
      local sha=${asset_sha[wikitext-2-raw/$f]} min=${asset_bytes[wikitext-2-raw/$f]}
      if check "$tmp/wikitext-2-raw/$f" "$sha" "$min"; then
        mv "$tmp/wikitext-2-raw/$f" "$dir/wikitext-2-raw/$f.part" && mv "$dir/wikitext-2-raw/$f.part" "$dir/wikitext-2-raw/$f"
      else echo "FAILED   wikitext-2-raw/$f ($(mismatch "$tmp/wikitext-2-raw/$f" "$sha" "$min"))" >&2; failed=1; fi
    done
  fi
  rm -rf "$tmp"
}

# fetch_source DEST URL BLOB: download one corpus source to DEST (under $dir) through DEST.part,
# installed only when its git blob id is BLOB; a present valid DEST is kept. Sets failed=1 on failure.
fetch_source() {
  local name=$1 url=$2 blob=$3 dest=$dir/$1
  if [ -s "$dest" ] && [ "$(blob_id "$dest")" = "$blob" ]; then return; fi
  mkdir -p "$(dirname "$dest")"
  echo "fetch    $name  <- $url"
  if curl -fsSL --retry 3 --connect-timeout 20 -o "$dest.part" "$url" && [ "$(blob_id "$dest.part")" = "$blob" ]; then
    mv "$dest.part" "$dest"
  else
    if [ -e "$dest.part" ]; then
      echo "FAILED   $name (git blob id $(blob_id "$dest.part"), expected $blob)" >&2
    else
      echo "FAILED   $name (download failed)" >&2
    fi
    rm -f "$dest.part"
    failed=1
  fi
}

# source_row DEST: "URL<TAB>BLOB" of the corpus table's source DEST (empty if none).
source_row() { awk -F'\t' -v d="$1" '$1 == "source" && $2 == d {print $3"\t"$4; exit}' "$corpus_table"; }

# fetch_corpus_sources: every source of the corpus table (set corpus-sources). Sets failed=1 on failure.
fetch_corpus_sources() {
  local kind dest how hash bytes n=0
  if [ ! -r "$corpus_table" ]; then echo "FAILED   corpus (no table: $corpus_table)" >&2; failed=1; return; fi
  while IFS=$'\t' read -r kind dest how hash bytes; do
    [ "$kind" = source ] || continue
    fetch_source "$dest" "$how" "$hash" </dev/null
    n=$((n + 1))
  done <"$corpus_table"
  echo "sources  $n corpus sources in $dir/corpus-sources/ (each checked against its git blob id)"
}

# fetch_corpus: every corpus file of the table that is present and valid, or made from its source
# (copy:, lines:; the source fetched first); the derived ones missing are listed. Sets failed=1 when
# a file is missing or invalid.
fetch_corpus() {
  local kind dest how hash bytes src row made=0 ok=0 derived_missing=()
  if [ ! -r "$corpus_table" ]; then echo "FAILED   corpus (no table: $corpus_table)" >&2; failed=1; return; fi
  while IFS=$'\t' read -r kind dest how hash bytes; do
    [ "$kind" = file ] || continue
    if check "$dir/$dest" "$hash" "$bytes"; then ok=$((ok + 1)); continue; fi
    [ ! -e "$dir/$dest" ] || echo "stale    $dest ($(mismatch "$dir/$dest" "$hash" "$bytes"))"
    case $how in
      copy:*|lines:*) ;;
      *) derived_missing+=("$dest"); continue ;;
    esac
    src=${how#*:}
    row=$(source_row "$src")
    if [ -n "$row" ]; then fetch_source "$src" "${row%%$'\t'*}" "${row#*$'\t'}" </dev/null; fi
    mkdir -p "$(dirname "$dir/$dest")"
    if [ -s "$dir/$src" ]; then
      case $how in
        copy:*) cp "$dir/$src" "$dir/$dest.part" || true ;;
        lines:*) head -n "$(wc -l <"$dir/$src")" "$dir/$src" >"$dir/$dest.part" || true ;;
      esac
    fi
    if [ -e "$dir/$dest.part" ] && check "$dir/$dest.part" "$hash" "$bytes"; then
      mv "$dir/$dest.part" "$dir/$dest"
      echo "made     $dest  <- $src (sha256 $hash, as pinned)"
      made=$((made + 1))
    else
      echo "FAILED   $dest (from $src: $(mismatch "$dir/$dest.part" "$hash" "$bytes"))" >&2
      rm -f "$dir/$dest.part"
      failed=1
    fi
  done <"$corpus_table"
  echo "corpus   $ok valid, $made made from their sources, ${#derived_missing[@]} derived files missing or invalid"
  if [ ${#derived_missing[@]} != 0 ]; then
    echo "MISSING  ${#derived_missing[@]} corpus files derived from their sources by processing this script does not" \
      "automate (shared/data/corpus/README.md describes it), e.g. ${derived_missing[0]}." \
      "Copy them from a shared folder: cp -r SHARED/data/corpus $dir/ (their sources: set corpus-sources)" >&2
    failed=1
  fi
}

# Sourced: the table and the functions only.
if [[ ${BASH_SOURCE[0]} != "$0" ]]; then return 0; fi

set -euo pipefail

dir=${1:-${LORA_DATA_DIR:-$HOME/.cache/lora}}
what=${2:-all}
case $what in agnews|wikitext|corpus|corpus-sources|all) ;;
  *) echo "fetch-assets: unknown set '$what' (agnews, wikitext, corpus, corpus-sources or all)" >&2; exit 2;; esac
mkdir -p "$dir"
failed=0

if [ "$what" = agnews ] || [ "$what" = all ]; then
  for f in config.json vocab.txt model.safetensors; do fetch "models/distilbert-base-uncased/$f"; done
  fetch agnews/train.csv
  fetch agnews/test.csv
fi
if [ "$what" = wikitext ] || [ "$what" = all ]; then
  for f in config.json vocab.json merges.txt model.safetensors; do fetch "models/distilgpt2/$f"; done
  fetch_wikitext
fi
if [ "$what" = corpus ]; then fetch_corpus; fi
if [ "$what" = corpus-sources ]; then fetch_corpus_sources; fi

if [ $failed != 0 ]; then
  echo "fetch-assets: some files are missing in $dir (see above). Without network, copy them there by hand." >&2
  exit 1
fi
echo "fetch-assets: everything is in $dir"
