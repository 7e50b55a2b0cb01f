#!/usr/bin/env bash
# Ingest benchmark: storescu -> imageserver against storescu -> DCMTK storescp
# (no index, no fsync: the practical ceiling) and -> Orthanc/SQLite (fsyncs
# each file), same corpus, interleaved runs, one invocation per association
# count. Uses the shared peer harness (../shared/bench/peer_bench.sh), which
# starts every peer fresh on free loopback ports and counts what each holds.
#
# usage: benches/ingest.sh [-r RUNS] [-a "1 8"] [-p PEERS] [CORPUS_DIR...]
#   CORPUS_DIR defaults to two generated corpora in $BENCH_TMPDIR (default /tmp):
#   1000 x 512x512 CT (0.5 MB each) and 2000 x 64x64.
# Prints the harness tables; JSON results land in $BENCH_TMPDIR.
# Needs: DCMTK, orthanc (Debian), python3 with pydicom + numpy (corpus).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH_DIR:-$ROOT/../shared/bench}
RUNS=3 ASSOCS="1 8" PEERS=storescp,orthanc,target
while getopts "r:a:p:" opt; do
  case $opt in
    r) RUNS=$OPTARG ;; a) ASSOCS=$OPTARG ;; p) PEERS=$OPTARG ;;
    *) sed -n '2,13p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
TMP=${BENCH_TMPDIR:-/tmp}
corpora=("$@")
if ((${#corpora[@]} == 0)); then
  [[ -d $TMP/imageserver_corpus_ct512 ]] || python3 "$BENCH/gen_corpus.py" --out "$TMP/imageserver_corpus_ct512" \
    --studies 20 --series-per-study 2 --instances-per-series 25 --seed 1
  [[ -d $TMP/imageserver_corpus_tiny2000 ]] || python3 "$BENCH/gen_corpus.py" --out "$TMP/imageserver_corpus_tiny2000" \
    --tiny --studies 40 --series-per-study 2 --instances-per-series 25 --seed 2
  corpora=("$TMP/imageserver_corpus_ct512" "$TMP/imageserver_corpus_tiny2000")
fi

(cd "$ROOT" && cargo build --release --bin imageserver)
export IMAGESERVER_BIN=$ROOT/target/release/imageserver
export TARGET_NAME=imageserver TARGET_AET=IMAGESERVER TARGET_CAPS="echo store"
# The index and config go to the work directory, instances to TARGET_STORAGE
# (the harness counts the files there).
export TARGET_CMD='printf "data_dir = \"%s\"\n[dicom]\nmax_associations = 64\n[[filesystems]]\npath = \"%s\"\n" \
    "$TARGET_WORKDIR" "$TARGET_STORAGE" > "$TARGET_WORKDIR/imageserver.toml";
  IMAGESERVER_LOG=warn exec "$IMAGESERVER_BIN" serve --config "$TARGET_WORKDIR/imageserver.toml" \
    --aet "$TARGET_AET" --bind "$TARGET_HOST" --port "$TARGET_PORT" \
    --device "$MOVE_DEST_AET=127.0.0.1:$MOVE_DEST_PORT"'

for corpus in "${corpora[@]}"; do
  for n in $ASSOCS; do
    echo "=== $(basename "$corpus"), $n association(s), $RUNS runs: $PEERS"
    "$BENCH/peer_bench.sh" -p "$PEERS" -r "$RUNS" -a "$n" "$corpus"
  done
done
