#!/usr/bin/env bash
# Tests of scripts/fetch-assets.sh without network: it is sourced (which defines its table of
# pinned assets and its functions, and downloads nothing) and its functions run on local files.
#
#   tests/scripts/fetch_assets_test.sh fetch SCRIPT
#       check and fetch on files with a known sha256, served through file:// URLs: a valid file
#       is kept, a download lands through DEST.part, a wrong hash or size installs nothing and
#       sets failed=1, a stale file is replaced; the script exits 2 on an unknown set.
#       The corpus set too: git blob ids, sources fetched through file:// URLs, corpus files made
#       from them (copy:, lines:) or listed as missing (derived), on a table of test files.
#   tests/scripts/fetch_assets_test.sh pins SCRIPT SHARED_DIR
#       the pinned sha256 and sizes of the files the shared data holds verified copies of
#       (shared/data/README.md) match those copies, and the corpus table (scripts/corpus-assets.tsv)
#       matches the shared corpus: its manifests (sources, commits, blob ids) and its files
#       (sha256, sizes). $LORA_SHARED_DIR overrides SHARED_DIR.
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
for fn in asset check fetch fetch_wikitext blob_id fetch_source fetch_corpus fetch_corpus_sources; do
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
  # The corpus set on a table of test files: a source whose blob id matches is installed, one
  # whose id does not is refused; corpus files are made from a valid source (copy:, lines:), kept
  # when valid, and a derived one that is missing is listed and fails the run.
  [ "$(blob_id "$src/a.txt")" = 99ec96ac8b38178826d325fad9e5c3ac2df5d4f1 ] ||
    fail "blob_id gives $(blob_id "$src/a.txt"), not git's id for the test file"
  printf 'line 1\nline 2\npartial li' >"$src/trunc.txt"
  printf 'line 1\nline 2\n' >"$tmp/lines.txt"
  cp "$src/a.txt" "$tmp/derived.txt"
  printf 'unused\n' >"$src/unused.txt"
  table=$tmp/corpus.tsv
  {
    printf '# a comment\n'
    printf 'source\tcorpus-sources/o/r/a.txt\tfile://%s\t%s\t-\n' "$src/a.txt" "$(blob_id "$src/a.txt")"
    printf 'source\tcorpus-sources/o/r/trunc.txt\tfile://%s\t%s\t-\n' "$src/trunc.txt" "$(blob_id "$src/trunc.txt")"
    printf 'source\tcorpus-sources/o/r/unused.txt\tfile://%s\t%s\t-\n' "$src/unused.txt" "$(blob_id "$src/unused.txt")"
    printf 'file\tcorpus/copy.txt\tcopy:corpus-sources/o/r/a.txt\t%s\t%s\n' "$good" "$size"
    printf 'file\tcorpus/lines.txt\tlines:corpus-sources/o/r/trunc.txt\t%s\t%s\n' \
      "$(sha256sum "$tmp/lines.txt" | cut -d' ' -f1)" "$(stat -c %s "$tmp/lines.txt")"
    printf 'file\tcorpus/derived.txt\tderived\t%s\t%s\n' "$good" "$size"
  } >"$table"
  corpus_table=$table
  failed=0
  fetch_corpus >"$tmp/out" 2>&1
  out=$(cat "$tmp/out")
  cmp -s "$src/a.txt" "$dir/corpus-sources/o/r/a.txt" || fail "fetch_corpus did not install a source: $out"
  cmp -s "$src/a.txt" "$dir/corpus/copy.txt" || fail "fetch_corpus did not make a copy: file: $out"
  cmp -s "$tmp/lines.txt" "$dir/corpus/lines.txt" || fail "fetch_corpus did not make a lines: file: $out"
  [[ $failed == 1 && $out == *"MISSING  1 corpus files"*"corpus/derived.txt"* ]] ||
    fail "a missing derived corpus file was not reported: $out"
  [ ! -e "$dir/corpus-sources/o/r/unused.txt" ] || fail "fetch_corpus fetched a source no file is made from"
  cp "$tmp/derived.txt" "$dir/corpus/derived.txt"
  failed=0
  fetch_corpus >"$tmp/out" 2>&1
  [[ $failed == 0 && $(cat "$tmp/out") == *"3 valid, 0 made"* ]] || fail "valid corpus files were not kept: $(cat "$tmp/out")"
  failed=0
  fetch_corpus_sources >"$tmp/out" 2>&1
  [[ $failed == 0 && $(cat "$tmp/out") == *"3 corpus sources"* ]] || fail "fetch_corpus_sources: $(cat "$tmp/out")"
  cmp -s "$src/unused.txt" "$dir/corpus-sources/o/r/unused.txt" || fail "fetch_corpus_sources did not fetch every source"
  printf 'source\tcorpus-sources/o/r/bad.txt\tfile://%s\t%s\t-\n' "$src/a.txt" "$bad" >>"$table"
  failed=0
  fetch_corpus_sources >"$tmp/out" 2>&1
  [[ $failed == 1 && $(cat "$tmp/out") == *"FAILED   corpus-sources/o/r/bad.txt (git blob id"* ]] ||
    fail "a source with the wrong blob id was not refused: $(cat "$tmp/out")"
  [ ! -e "$dir/corpus-sources/o/r/bad.txt" ] || fail "a source with the wrong blob id was installed"
  unset corpus_table

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
  # The corpus table: 186 sources at pinned commits (40-digit commit, 40-digit blob id) and 49 files.
  [ "$(grep -c $'^source\t' "$corpus_table")" = 186 ] || fail "the corpus table does not list 186 sources"
  [ "$(grep -c $'^file\t' "$corpus_table")" = 49 ] || fail "the corpus table does not list 49 files"
  while IFS=$'\t' read -r kind dest how hash bytes; do
    case $kind in
      source)
        [[ $how =~ ^https://raw\.githubusercontent\.com/[^/]+/[^/]+/[0-9a-f]{40}/ ]] || fail "$dest: unpinned URL $how"
        [[ $hash =~ ^[0-9a-f]{40}$ ]] || fail "$dest: git blob id '$hash'" ;;
      file)
        [[ $hash =~ ^[0-9a-f]{64}$ && $bytes =~ ^[0-9]+$ ]] || fail "$dest: sha256 '$hash' or size '$bytes'"
        [[ $how == derived ]] || grep -q $'^source\t'"${how#*:}"$'\t' "$corpus_table" || fail "$dest: made from ${how#*:}, not a source of the table" ;;
      '#'*|'') ;;
      *) fail "corpus table: unknown kind '$kind'" ;;
    esac
  done <"$corpus_table"

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
  # The corpus table against the shared corpus: every source row of its manifest (repository,
  # commit, path, blob id) and every file's sha256 and size.
  manifest=$shared/data/corpus/MANIFEST.sources.tsv
  if [ -f "$manifest" ]; then
    want=$(tail -n +2 "$manifest" | awk -F'\t' '{print "corpus-sources/"$2"/"$4"\thttps://raw.githubusercontent.com/"$2"/"$3"/"$4"\t"$5}' | sort -u)
    have=$(awk -F'\t' '$1 == "source" {print $2"\t"$3"\t"$4}' "$corpus_table" | sort -u)
    [ "$want" = "$have" ] || fail "the corpus table's sources differ from $manifest: $(diff <(echo "$want") <(echo "$have") | head -5)"
    while IFS=$'\t' read -r kind dest how hash bytes; do
      [ "$kind" = file ] || continue
      file=$shared/data/$dest
      if [ ! -f "$file" ]; then missing+=("$file"); continue; fi
      [ "$(sha256sum "$file" | cut -d' ' -f1)" = "$hash" ] || fail "$dest: pinned $hash, $file differs"
      [ "$(stat -c %s "$file")" = "$bytes" ] || fail "$dest: pinned $bytes bytes, $file has $(stat -c %s "$file")"
      case $how in
        copy:*) [ "$(blob_id "$file")" = "$(awk -F'\t' -v s="${how#*:}" '$2 == s {print $4}' "$corpus_table")" ] ||
                  fail "$dest: not a byte-for-byte copy of its source ${how#*:}" ;;
      esac
    done <"$corpus_table"
  else
    missing+=("$manifest")
  fi
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
