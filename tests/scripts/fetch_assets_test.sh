#!/usr/bin/env bash
# Tests of scripts/fetch-assets.sh without network: it is sourced (which defines its table of
# pinned assets and its functions, and downloads nothing) and its functions run on local files.
#
#   tests/scripts/fetch_assets_test.sh fetch SCRIPT
#       check and fetch on files with a known sha256, served through file:// URLs: a valid file
#       is kept, a download lands through DEST.part, a wrong hash or size installs nothing and
#       sets failed=1, a stale file is replaced; the script exits 2 on an unknown set.
#   tests/scripts/fetch_assets_test.sh pins SCRIPT SHARED_DIR
#       the pinned sha256 and sizes of the files the shared data holds verified copies of
#       (shared/data/README.md) match those copies. $LORA_SHARED_DIR overrides SHARED_DIR.
#
# Exit status: 0 passed, 1 failed, 4 skipped (no shared data; CTest's SKIP_RETURN_CODE), except
# that under CI (CI=true or CI=1) missing shared data fails, as in the C++ tests.
set -uo pipefail

mode=${1:?mode: fetch or pins}
script=${2:?path of fetch-assets.sh}
errors=0
fail() { echo "FAIL: $*" >&2; errors=$((errors + 1)); }

# shellcheck source=SCRIPTDIR/../../scripts/fetch-assets.sh
source "$script" || { echo "FAIL: sourcing $script" >&2; exit 1; }
for fn in asset check fetch fetch_wikitext; do
  declare -F "$fn" >/dev/null || fail "sourcing $script did not define $fn"
done

case $mode in
fetch)
  command -v curl >/dev/null || { echo "SKIPPED: curl is absent (fetch-assets.sh needs it)" >&2; exit 4; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  src=$tmp/src
  dir=$tmp/data   # fetch's destination folder (a global of the script)
  mkdir -p "$src" "$dir"
  printf 'known content\n' >"$src/a.txt"
  good=$(sha256sum "$src/a.txt" | cut -d' ' -f1)
  [ "$good" = a5e29604a88ef9dace3ea3de21aa0cfb09946846146070b9a9fe17f2f9701212 ] ||
    fail "sha256sum gives $good for the test file"
  size=$(stat -c %s "$src/a.txt")
  bad=0000000000000000000000000000000000000000000000000000000000000000
  # run_fetch NAME: fetch in this shell (so that its failed=1 is seen), its output in $out.
  run_fetch() { failed=0; fetch "$1" >"$tmp/out" 2>&1; out=$(cat "$tmp/out"); }

  # check: hash and size.
  check "$src/a.txt" "$good" "$size" || fail "check rejects a file with its own hash and size"
  check "$src/a.txt" - "$size" || fail "check with '-' rejects a file of the right size"
  ! check "$src/a.txt" "$bad" 1 || fail "check accepts a wrong sha256"
  ! check "$src/a.txt" "$good" $((size + 1)) || fail "check accepts a file below its size"
  ! check "$src/none.txt" - 1 || fail "check accepts a missing file"

  # A fresh download lands at DEST through DEST.part, and its sha256 is printed.
  asset sub/a.txt "file://$src/a.txt" "$good" "$size"
  run_fetch sub/a.txt
  [ "$failed" = 0 ] || fail "fetch of a valid file set failed=$failed: $out"
  cmp -s "$src/a.txt" "$dir/sub/a.txt" || fail "fetch did not install the file: $out"
  [ ! -e "$dir/sub/a.txt.part" ] || fail "fetch left sub/a.txt.part"
  [[ $out == *"sha256 $good"* ]] || fail "fetch did not print the sha256: $out"

  # A valid file is kept (not downloaded again).
  touch -d '2001-01-01' "$dir/sub/a.txt"
  run_fetch sub/a.txt
  [[ $out == ok* ]] || fail "fetch of a present valid file did not say ok: $out"
  [ "$(stat -c %Y "$dir/sub/a.txt")" = "$(date -d '2001-01-01' +%s)" ] || fail "a valid file was rewritten"

  # A stale file (other content) is replaced by a valid download.
  printf 'other content!\n' >"$dir/sub/a.txt"
  run_fetch sub/a.txt
  cmp -s "$src/a.txt" "$dir/sub/a.txt" || fail "a stale file was not replaced: $out"
  [[ $out == *stale* ]] || fail "fetch did not report the stale file: $out"

  # A download with the wrong hash, or too small, installs nothing, leaves no .part, sets failed.
  asset sub/wrong.txt "file://$src/a.txt" "$bad" "$size"
  asset sub/small.txt "file://$src/a.txt" "$good" $((size + 1))
  for name in sub/wrong.txt sub/small.txt; do
    run_fetch "$name"
    [[ $out == *FAILED* && $failed == 1 ]] || fail "fetch of $name did not fail: $out"
    if [ -e "$dir/$name" ] || [ -e "$dir/$name.part" ]; then fail "fetch of $name left a file behind"; fi
  done
  run_fetch sub/wrong.txt
  [[ $out == *"expected $bad"* ]] || fail "a hash mismatch is not explained"

  # A download that fails (no such source) sets failed and leaves an invalid file alone.
  asset sub/gone.txt "file://$src/none.txt" "$good" "$size"
  printf 'keep me\n' >"$dir/sub/gone.txt"
  run_fetch sub/gone.txt
  [[ $out == *"download failed"* && $failed == 1 ]] || fail "a failed download was not reported: $out"
  [ "$(cat "$dir/sub/gone.txt")" = "keep me" ] || fail "a failed download touched the file there"

  # fetch_wikitext: the members of a zip whose own hash is checked first (needs zip(1)).
  if command -v zip >/dev/null && command -v unzip >/dev/null; then
    mkdir -p "$tmp/z/wikitext-2-raw"
    for f in wiki.train.raw wiki.valid.raw wiki.test.raw; do
      printf ' = %s = \n' "$f" >"$tmp/z/wikitext-2-raw/$f"
      asset "wikitext-2-raw/$f" - "$(sha256sum "$tmp/z/wikitext-2-raw/$f" | cut -d' ' -f1)" 5
    done
    (cd "$tmp/z" && zip -qr "$src/wt.zip" wikitext-2-raw)
    wikitext_zip_url=file://$src/wt.zip
    asset wikitext-2-raw-v1.zip - "$bad" 1
    failed=0
    fetch_wikitext >"$tmp/out" 2>&1
    [[ $failed == 1 && $(cat "$tmp/out") == *"the zip: sha256"* ]] || fail "a zip with the wrong hash was used: $(cat "$tmp/out")"
    [ ! -e "$dir/wikitext-2-raw/wiki.test.raw" ] || fail "a zip with the wrong hash installed a member"
    asset wikitext-2-raw-v1.zip - "$(sha256sum "$src/wt.zip" | cut -d' ' -f1)" 1
    failed=0
    fetch_wikitext >"$tmp/out" 2>&1
    [ "$failed" = 0 ] || fail "fetch_wikitext failed on a valid zip: $(cat "$tmp/out")"
    for f in wiki.train.raw wiki.valid.raw wiki.test.raw; do
      cmp -s "$tmp/z/wikitext-2-raw/$f" "$dir/wikitext-2-raw/$f" || fail "fetch_wikitext did not install $f"
    done
    failed=0
    fetch_wikitext >"$tmp/out" 2>&1
    [[ $failed == 0 && $(cat "$tmp/out") == ok* ]] || fail "valid members were not kept: $(cat "$tmp/out")"
    rm "$dir/wikitext-2-raw/wiki.valid.raw"
    asset wikitext-2-raw/wiki.test.raw - "$bad" 5
    failed=0
    fetch_wikitext >"$tmp/out" 2>&1
    [[ $failed == 1 && $(cat "$tmp/out") == *"FAILED   wikitext-2-raw/wiki.test.raw"* ]] ||
      fail "a member with the wrong hash was not reported: $(cat "$tmp/out")"
    [ -e "$dir/wikitext-2-raw/wiki.valid.raw" ] || fail "a valid member was not installed beside an invalid one"
    ls "$dir"/wikitext-2-raw/*.part >/dev/null 2>&1 && fail "fetch_wikitext left a .part file"
  else
    echo "note: zip or unzip absent, fetch_wikitext not tested" >&2
  fi
  # The real table again (without the test's own entries above), for the checks below.
  # shellcheck source=SCRIPTDIR/../../scripts/fetch-assets.sh
  source "$script"

  # Every pinned asset has a 64-digit sha256 and a size; every Hub URL names the pinned commit.
  for name in "${!asset_sha[@]}"; do
    [[ ${asset_sha[$name]} =~ ^[0-9a-f]{64}$ ]] || fail "$name: sha256 '${asset_sha[$name]}'"
    [[ ${asset_bytes[$name]} =~ ^[0-9]+$ ]] || fail "$name: size '${asset_bytes[$name]}'"
    case ${asset_url[$name]} in
      */resolve/main/*) fail "$name: unpinned URL ${asset_url[$name]}" ;;
      https://huggingface.co/*/resolve/*)
        [[ ${asset_url[$name]} == */resolve/$distilbert_rev/* || ${asset_url[$name]} == */resolve/$distilgpt2_rev/* ]] ||
          fail "$name: ${asset_url[$name]} is not at a pinned revision" ;;
    esac
  done
  # 3 distilbert-base-uncased files, 4 distilgpt2 files, 2 AG-News files, the WikiText zip and
  # its 3 members.
  [ "${#asset_sha[@]}" = 13 ] || fail "${#asset_sha[@]} assets in the table, not 13"

  # The command line: an unknown set exits 2 before anything is downloaded.
  bash "$script" "$tmp/cli" nonsense >/dev/null 2>&1
  rc=$?
  [ $rc = 2 ] || fail "an unknown set exits $rc, not 2"
  [ ! -e "$tmp/cli" ] || fail "an unknown set created the data folder"
  ;;

pins)
  shared=${LORA_SHARED_DIR:-${3:?shared folder}}
  # pinned asset -> verified copy in the shared data (shared/data/README.md says how each is known
  # to be the same file: git blob ids, torchtext's MD5, the Hub's published hashes).
  declare -A copy=(
    [agnews/test.csv]=agnews/test.csv
    [models/distilbert-base-uncased/vocab.txt]=tokenizers/bert-base-uncased/vocab.txt
    [models/distilgpt2/vocab.json]=tokenizers/gpt2/vocab.json
    [models/distilgpt2/merges.txt]=tokenizers/gpt2/merges.txt
    [wikitext-2-raw/wiki.valid.raw]=wikitext-2-raw/wiki.valid.raw
    [wikitext-2-raw/wiki.test.raw]=wikitext-2-raw/wiki.test.raw
  )
  missing=()
  for name in "${!copy[@]}"; do
    file=$shared/data/${copy[$name]}
    if [ ! -f "$file" ]; then missing+=("$file"); continue; fi
    got=$(sha256sum "$file" | cut -d' ' -f1)
    [ "$got" = "${asset_sha[$name]}" ] || fail "$name: pinned ${asset_sha[$name]}, $file has $got"
    [ "$(stat -c %s "$file")" -ge "${asset_bytes[$name]}" ] || fail "$name: $file is below the pinned size"
  done
  if [ ${#missing[@]} != 0 ] && [ "$errors" = 0 ]; then
    why="${#missing[@]} shared file(s) absent, first: ${missing[0]}. Point LORA_SHARED_DIR at the shared folder."
    case ${CI:-} in
      true|1) fail "MISSING (CI is set, so a missing file fails instead of skipping): $why" ;;
      *) echo "SKIPPED: $why" >&2; exit 4 ;;
    esac
  fi
  ;;

*) echo "unknown mode '$mode' (fetch or pins)" >&2; exit 2 ;;
esac

if [ "$errors" != 0 ]; then echo "$errors failure(s)" >&2; exit 1; fi
echo "passed"
