#!/usr/bin/env bash
# A CPU profile of ingest (issue: ingest at the physical limit): the release
# server on SQLite and local disk, one storescu per association over a
# corpus, `perf record` (software clock, frame pointers off, so the report
# is flat; add --call-graph dwarf via PERF_CALLGRAPH for callers on a small
# corpus), then the split by DSO, by thread and the top symbols.
#
# usage: benches/profile_ingest.sh CORPUS_DIR ASSOCIATIONS LABEL
#   IMAGESERVER_BIN (default target/release/imageserver, built if absent)
#   PERF_CALLGRAPH (default "-g"; e.g. "--call-graph dwarf,16384")
# Writes $BENCH_TMPDIR/perf-LABEL.data (default /tmp) and prints the tables.
# Needs: perf (Debian linux-perf), DCMTK.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 3 ] || { sed -n '2,13p' "$0"; exit 2; }
CORPUS=$1 ASSOCS=$2 LABEL=$3
TMP=${BENCH_TMPDIR:-/tmp}
BIN=${IMAGESERVER_BIN:-$ROOT/target/release/imageserver}
if [ ! -x "$BIN" ]; then
    (cd "$ROOT" && cargo build --release --bin imageserver)
fi
D=$(mktemp -d "$TMP/profile-ingest.XXXXXX")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
IMAGESERVER_LOG=warn "$BIN" serve --data "$D/data" --aet IMAGESERVER --bind 127.0.0.1 --port "$PORT" > "$D/log" 2>&1 &
SERVER=$!
PERF=
cleanup() {
    [ -n "$PERF" ] && kill -INT "$PERF" 2>/dev/null || true
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT
for _ in $(seq 100); do
    /usr/bin/echoscu -aec IMAGESERVER 127.0.0.1 "$PORT" 2>/dev/null && break
    sleep 0.1
done
# shellcheck disable=SC2086
perf record -F 997 ${PERF_CALLGRAPH:--g} -o "$TMP/perf-$LABEL.data" -p "$SERVER" > /dev/null 2>&1 &
PERF=$!
sleep 0.5
mapfile -t FILES < <(find "$CORPUS" -name '*.dcm' | sort)
START=$(date +%s.%N)
pids=()
for ((a = 0; a < ASSOCS; a++)); do
    chunk=()
    for ((i = a; i < ${#FILES[@]}; i += ASSOCS)); do chunk+=("${FILES[$i]}"); done
    TCP_NODELAY=1 /usr/bin/storescu -aec IMAGESERVER 127.0.0.1 "$PORT" "${chunk[@]}" > /dev/null 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
END=$(date +%s.%N)
kill -INT "$PERF"; wait "$PERF" || true; PERF=
echo "$LABEL: ${#FILES[@]} instances over $ASSOCS association(s) in $(python3 -c "print(round($END - $START, 2))") s"
report() { perf report -i "$TMP/perf-$LABEL.data" -g none --no-children --stdio "$@" 2>/dev/null | grep '%' | head -"${TOP:-15}"; }
echo "-- by DSO"; TOP=6 report --sort dso
echo "-- by thread"; TOP=6 report --sort comm
echo "-- top symbols"; TOP=25 report --sort dso,symbol
