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
#
# imageserver's figures are checked before they are printed: each run must
# start on an empty archive (no file in its storage, no index; on PostgreSQL
# a database created for the run), and after the run both the index
# counters (the harness's C-FIND count) and the instance files in storage
# must equal the corpus, with nothing left in .tmp. A run that fails any of
# this gets no rate (the harness's own imageserver ingest rows, which would
# show one, are left out), and the script exits 1. The binary's path and
# sha256 are printed and recorded beside the figures
# ($BENCH_TMPDIR/ingest_<corpus>_a<N>_<time>.imageserver.json).
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
# Without its plugin Orthanc would start on its SQLite index and the
# "PostgreSQL" reference would silently be Orthanc/SQLite.
ORTHANC_PG_PLUGIN=${ORTHANC_PG_INDEX_PLUGIN:-/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so}
if [[ ,$PEERS, == *,orthanc-pg,* && ! -f $ORTHANC_PG_PLUGIN ]]; then
  echo "ingest.sh: Orthanc's PostgreSQL index plugin is missing ($ORTHANC_PG_PLUGIN): apt-get install -y orthanc-postgresql" >&2
  exit 1
fi
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
  IMAGESERVER_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/imageserver
fi
[[ -x $IMAGESERVER_BIN ]] || { echo "no imageserver binary at $IMAGESERVER_BIN" >&2; exit 1; }
BIN_SHA256=$(sha256sum "$IMAGESERVER_BIN" | cut -d' ' -f1)
echo "imageserver binary $IMAGESERVER_BIN sha256 $BIN_SHA256"
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
# The server runs as a child of this wrapper (not exec'd): when the harness
# stops it (SIGTERM to the process group), the wrapper waits for it, then
# writes "<instance files> <temporary files>" of the storage to
# $INGEST_COUNTS/<run directory>. It refuses to start on a non-empty archive.
export TARGET_CMD='set -u;
  if [ -n "$(find "$TARGET_STORAGE" -mindepth 1 -print -quit)" ] || [ -e "$TARGET_WORKDIR/index.db" ]; then
    echo "ingest.sh: the archive is not empty at start: $TARGET_STORAGE, $TARGET_WORKDIR" >&2; exit 1
  fi;
  '"$DB_SETUP"'printf "data_dir = \"%s\"\n[dicom]\nmax_associations = 64\nunknown_devices_query_retrieve = true\n[[filesystems]]\npath = \"%s\"\n" \
    "$TARGET_WORKDIR" "$TARGET_STORAGE" > "$TARGET_WORKDIR/imageserver.toml";
  trap ":" TERM;
  IMAGESERVER_LOG=warn "$IMAGESERVER_BIN" serve --config "$TARGET_WORKDIR/imageserver.toml" \
    --aet "$TARGET_AET" --bind "$TARGET_HOST" --port "$TARGET_PORT" \
    --device "$MOVE_DEST_AET=127.0.0.1:$MOVE_DEST_PORT" '"$DB_FLAG"'; rc=$?;
  files=$(find "$TARGET_STORAGE" -type f -name "*.dcm" -not -path "*/.tmp/*" -not -path "*/.metadata/*" | wc -l);
  temps=$(find "$TARGET_STORAGE" -path "*/.tmp/*" -type f | wc -l);
  echo "$files $temps" > "$INGEST_COUNTS/$(basename "$(dirname "$TARGET_WORKDIR")")";
  exit $rc'

# Checks the imageserver runs of one harness invocation and prints their
# figures: a rate only for a run whose counts are right. Returns 1 otherwise.
verify() {
  local samples=$1 counts=$2 record=$3 expected_metric=$4
  python3 - "$samples" "$counts" "$record" "$expected_metric" "$IMAGESERVER_BIN" "$BIN_SHA256" "$TARGET_NAME" <<'PY'
import json, os, statistics, sys
samples, counts, record, metric, binary, sha, name = sys.argv[1:]
runs, ok = [], True
for line in open(samples):
    p = line.rstrip("\n").split("\t")
    if p[0] != "target" or p[1] != metric:
        continue
    run, seconds, index, expected = int(p[2]), float(p[3]), int(p[4]), int(p[5])
    path = os.path.join(counts, f"run{run}")
    files, temps = map(int, open(path).read().split()) if os.path.exists(path) else (-1, -1)
    # index is -1 when the harness found instances before the ingest.
    good = index == expected and files == expected and temps == 0 and seconds > 0
    ok &= good
    runs.append({"run": run, "seconds": seconds, "index_count": index, "files": files,
                 "temporary_files": temps, "expected": expected, "verified": good,
                 "instances_per_s": expected / seconds if good else None})
if not runs:
    ok = False
print(f"\n{name} {metric}, checked (binary {binary}, sha256 {sha}):")
print(f"{'run':>4}{'seconds':>10}{'index':>8}{'files':>8}{'.tmp':>6}{'expected':>10}{'inst/s':>10}")
for r in runs:
    rate = f"{r['instances_per_s']:.1f}" if r["verified"] else "-"
    print(f"{r['run']:>4}{r['seconds']:>10.2f}{r['index_count']:>8}{r['files']:>8}"
          f"{r['temporary_files']:>6}{r['expected']:>10}{rate:>10}")
if ok:
    print(f"median {statistics.median(r['instances_per_s'] for r in runs):.1f} instances/s over {len(runs)} runs")
else:
    print("NO RATE: a run did not start empty or does not hold exactly the corpus (see above)")
json.dump({"binary": binary, "sha256": sha, "target": name, "metric": metric,
           "verified": ok, "runs": runs}, open(record, "w"), indent=1)
print(f"recorded in {record}")
sys.exit(0 if ok else 1)
PY
}


source "$ROOT/benches/support/quiet_inodes.sh"
failed=0
for corpus in "${corpora[@]}"; do
  for n in $ASSOCS; do
    # Files deleted in the last minutes make every create dear on ext4
    # without a journal: wait until they have aged (see quiet_inodes.sh).
    wait_for_quiet_inodes "$TMP"
    echo "=== $(basename "$corpus"), $n association(s), $RUNS runs: $PEERS"
    out=$TMP/ingest_$(basename "$corpus")_a${n}_$(date +%Y%m%d_%H%M%S)
    INGEST_COUNTS=$(mktemp -d "$TMP/imageserver-ingest-counts.XXXXXX")
    export INGEST_COUNTS
    rc=0
    # The harness's table without its imageserver ingest rows: verify()
    # prints those, with a rate only where the counts are right.
    "$BENCH/peer_bench.sh" -p "$PEERS" -r "$RUNS" -a "$n" -o "$out.json" ${PEER_BENCH_ARGS:-} "$corpus" \
      | awk '!($1 == "target" && $2 ~ /^ingest/)' || rc=$?
    ((rc == 0)) || { echo "peer_bench.sh exited with $rc"; failed=1; }
    if [[ " ${PEERS//,/ } " == *" target "* ]]; then
      metric=ingest; ((n == 1)) || metric=ingest_a$n
      verify "$out.samples.tsv" "$INGEST_COUNTS" "$out.imageserver.json" "$metric" || failed=1
    fi
    rm -rf "$INGEST_COUNTS"
  done
done
exit $failed
