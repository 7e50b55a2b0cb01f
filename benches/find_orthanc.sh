#!/usr/bin/env bash
# C-FIND benchmark against Orthanc/SQLite (issue 3): Orthanc 1.10 (Debian)
# and imageserver are loaded with the same tiny corpus by DCMTK storescu (one
# association each, one server after the other), then benches/find.rs runs the
# same study-level queries against both in one run, one association per
# server, each query sent to both in turn (the order alternates): PatientID,
# AccessionNumber, StudyDate month, PatientName prefix, ModalitiesInStudy +
# month. It prints p50/p90/p99 per shape and server and the Orthanc/imageserver
# ratios.
#
# Nothing is timed on a wrong answer: a load counts only if storescu got
# Success for every instance of the manifest (else no rate, exit 1); each
# server must then answer as many studies as the manifest lists, and every
# query's match count must equal what the manifest holds (find.rs fails the
# run on any difference, so a server answering nothing cannot look fast).
#
# usage: benches/find_orthanc.sh [-s STUDIES] [-i INSTANCES_PER_SERIES] [-q QUERIES] [-k] [CORPUS_DIR]
#   -s  studies of the generated corpus (default 4000; 2 series each, ~2 studies/patient)
#   -i  instances per series (default 10): 4000 x 2 x 10 = 80,000 64x64 instances
#   -q  recorded queries per shape (default 200, after 10 warm-up)
#   -k  keep the work directory (server logs, storage, indexes)
#   CORPUS_DIR  an existing gen_corpus.py corpus instead (its manifest.json is used)
# The corpus is generated once into $BENCH_TMPDIR (default /tmp) and reused.
# Needs: DCMTK, orthanc (Debian), python3 with pydicom + numpy, ../shared/bench.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH_DIR:-$ROOT/../shared/bench}
STUDIES=4000 PER_SERIES=10 QUERIES=200 KEEP=0
while getopts "s:i:q:k" opt; do
  case $opt in
    s) STUDIES=$OPTARG ;; i) PER_SERIES=$OPTARG ;; q) QUERIES=$OPTARG ;; k) KEEP=1 ;;
    *) sed -n '2,19p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
# shellcheck source=/dev/null
source "$BENCH/common.sh"
TMP=${BENCH_TMPDIR:-/tmp}
STORE_TIMEOUT=${STORE_TIMEOUT:-3600}

CORPUS=${1:-$TMP/imageserver_find_corpus_s${STUDIES}_i${PER_SERIES}}
if [[ ! -f $CORPUS/manifest.json ]]; then
  log "generating $CORPUS: $STUDIES studies x 2 series x $PER_SERIES instances, 64x64"
  rm -rf "$CORPUS"
  "$PYTHON" "$BENCH/gen_corpus.py" --out "$CORPUS" --tiny --studies "$STUDIES" \
    --series-per-study 2 --instances-per-series "$PER_SERIES" --seed 5 >&2
fi
INSTANCES=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["totals"]["instances"])' \
  "$CORPUS/manifest.json")

# Both binaries are built up front (others may edit the tree meanwhile).
(cd "$ROOT" && cargo build --release --bin imageserver) >&2
FIND_BIN=$(cd "$ROOT" && cargo bench --bench find --no-run 2>&1 | tee /dev/stderr |
  sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[[ -x $ROOT/$FIND_BIN ]] && FIND_BIN=$ROOT/$FIND_BIN
[[ -x $FIND_BIN ]] || die "cannot find the find bench executable"
IMAGESERVER_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/imageserver
[[ -x $IMAGESERVER_BIN ]] || die "no imageserver binary at $IMAGESERVER_BIN"
echo "imageserver binary $IMAGESERVER_BIN sha256 $(sha256sum "$IMAGESERVER_BIN" | cut -d' ' -f1)"

WORK=$(mktemp -d "$TMP/imageserver-find-orthanc-XXXXXX")
cleanup() {
  stop_all
  if ((KEEP)); then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

start_peer orthanc "$WORK/orthanc" || die "Orthanc did not start"
ORTHANC_PORT=$TARGET_PORT
export TARGET_NAME=imageserver TARGET_AET=IMAGESERVER TARGET_CAPS="echo store find"
export IMAGESERVER_BIN
export TARGET_CMD='printf "data_dir = \"%s\"\n[[filesystems]]\npath = \"%s\"\n" \
    "$TARGET_WORKDIR" "$TARGET_STORAGE" > "$TARGET_WORKDIR/imageserver.toml";
  IMAGESERVER_LOG=warn exec "$IMAGESERVER_BIN" serve --config "$TARGET_WORKDIR/imageserver.toml" \
    --aet "$TARGET_AET" --bind "$TARGET_HOST" --port "$TARGET_PORT"'
start_peer imageserver "$WORK/imageserver" || die "imageserver did not start"
IMAGESERVER_PORT=$TARGET_PORT

load() {  # load NAME AET PORT: one storescu association with the whole corpus
  local name=$1 aet=$2 port=$3 t0 t1 rc=0 acknowledged
  sync; sleep 1
  t0=$(date +%s.%N)
  timeout "$STORE_TIMEOUT" "$DCMTK_BIN/storescu" -v +sd +r +sp '*.dcm' -aet "$BENCH_AET" -aec "$aet" \
    "$BENCH_HOST" "$port" "$CORPUS" >"$WORK/storescu_$name.log" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  ((rc == 0)) || die "storescu to $name failed (exit $rc), see $WORK/storescu_$name.log"
  acknowledged=$(grep -c 'Received Store Response (Success)' "$WORK/storescu_$name.log" || true)
  ((acknowledged == INSTANCES)) \
    || die "$name acknowledged $acknowledged of $INSTANCES instances: no rate (see $WORK/storescu_$name.log)"
  awk -v n="$name" -v i="$INSTANCES" -v a="$t0" -v b="$t1" -v l="$(cut -d' ' -f1-3 /proc/loadavg)" \
    'BEGIN { printf "load %-12s %d instances in %.1f s: %.0f instances/s (all acknowledged; load %s)\n", n, i, b-a, i/(b-a), l }'
}

echo "corpus $CORPUS: $INSTANCES instances; $(/usr/sbin/Orthanc --version 2>/dev/null | head -1); $("$DCMTK_BIN/storescu" --version 2>/dev/null | head -1)"
load orthanc ORTHANC "$ORTHANC_PORT"
load imageserver IMAGESERVER "$IMAGESERVER_PORT"
sync; sleep 2

echo "$FIND_BIN --bench --manifest $CORPUS/manifest.json --queries $QUERIES --peer orthanc=... --peer imageserver=..."
"$FIND_BIN" --bench --manifest "$CORPUS/manifest.json" --queries "$QUERIES" \
  --peer "orthanc=ORTHANC@127.0.0.1:$ORTHANC_PORT" \
  --peer "imageserver=IMAGESERVER@127.0.0.1:$IMAGESERVER_PORT"
