#!/usr/bin/env bash
# Ingest, C-FIND and C-MOVE benchmark: storescu -> imageserver against storescu -> DCMTK storescp
# (no index, no fsync: the practical ceiling) and -> Orthanc/SQLite (fsyncs
# each file), same corpus, interleaved runs, one invocation per association
# count. Uses the shared peer harness (../shared/bench/peer_bench.sh), which
# starts every peer fresh on free loopback ports and counts what each holds.
#
# usage: benches/ingest.sh [-r RUNS] [-a "1 8"] [-p PEERS] [-d sqlite|postgres] [CORPUS_DIR...]
#   -d postgres: imageserver indexes into a throwaway PostgreSQL cluster
#   (scripts/pg.sh, a fresh database per run); compare it with -p
#   storescp,orthanc-pg,target (Orthanc's PostgreSQL index plugin).
#   CORPUS_DIR defaults to two generated corpora in $BENCH_TMPDIR (default /tmp):
#   1000 x 512x512 CT (0.5 MB each) and 2000 x 64x64.
# Prints the harness tables; JSON results land in $BENCH_TMPDIR.
# Needs: DCMTK, orthanc (Debian), python3 with pydicom + numpy (corpus).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH_DIR:-$ROOT/../shared/bench}
RUNS=3 ASSOCS="1 8" PEERS=storescp,orthanc,target BACKEND=sqlite
while getopts "r:a:p:d:" opt; do
  case $opt in
    r) RUNS=$OPTARG ;; a) ASSOCS=$OPTARG ;; p) PEERS=$OPTARG ;; d) BACKEND=$OPTARG ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
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

# IMAGESERVER_BIN=path skips the build (e.g. a binary copied aside).
if [[ -z ${IMAGESERVER_BIN:-} ]]; then
  (cd "$ROOT" && cargo build --release --bin imageserver)
  IMAGESERVER_BIN=$ROOT/target/release/imageserver
fi
export IMAGESERVER_BIN
export TARGET_AET=IMAGESERVER TARGET_CAPS="echo store find move get"
# The index and config go to the work directory, instances to TARGET_STORAGE
# (the harness counts the files there).
DB_SETUP=':;'
DB_FLAG=''
if [[ $BACKEND == postgres ]]; then
  PG_DIR=$(mktemp -d "$TMP/imageserver-bench-pg.XXXXXX")
  chmod 755 "$PG_DIR"  # the cluster runs as the postgres user
  PG_URL=$("$ROOT/scripts/pg.sh" start "$PG_DIR/cluster")
  trap '"$ROOT/scripts/pg.sh" stop "$PG_DIR/cluster" >/dev/null 2>&1 || true; rm -rf "$PG_DIR"' EXIT
  export PG_URL PG_ADMIN_BASE=${PG_URL%/postgres}
  # A fresh database per run, named after the run's work directory.
  DB_SETUP='set -e; db=bench_$(printf %s "$TARGET_WORKDIR" | md5sum | cut -c1-16); psql -q "$PG_URL" -c "CREATE DATABASE $db" >/dev/null;'
  DB_FLAG='--db "$PG_ADMIN_BASE/$db"'
fi
export TARGET_NAME="imageserver-$BACKEND"
export TARGET_CMD="$DB_SETUP"'printf "data_dir = \"%s\"\n[dicom]\nmax_associations = 64\n[[filesystems]]\npath = \"%s\"\n" \
    "$TARGET_WORKDIR" "$TARGET_STORAGE" > "$TARGET_WORKDIR/imageserver.toml";
  IMAGESERVER_LOG=warn exec "$IMAGESERVER_BIN" serve --config "$TARGET_WORKDIR/imageserver.toml" \
    --aet "$TARGET_AET" --bind "$TARGET_HOST" --port "$TARGET_PORT" \
    --device "$MOVE_DEST_AET=127.0.0.1:$MOVE_DEST_PORT" '"$DB_FLAG"


for corpus in "${corpora[@]}"; do
  for n in $ASSOCS; do
    echo "=== $(basename "$corpus"), $n association(s), $RUNS runs: $PEERS"
    "$BENCH/peer_bench.sh" -p "$PEERS" -r "$RUNS" -a "$n" ${PEER_BENCH_ARGS:-} "$corpus"
  done
done
