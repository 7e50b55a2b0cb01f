#!/usr/bin/env bash
# Audit trail cost: ingest with [audit] on (TCP to a local syslog receiver,
# tests/it/py/syslog_receiver.py) against off, same binary, same corpus,
# interleaved runs (off, on, off, on, ...), each on a fresh data directory.
# One storescu association per study (the audit trail sends one message per
# association and study), PARALLEL associations at a time.
#
# usage: benches/audit.sh [-r RUNS] [-j PARALLEL] [CORPUS_DIR]
#   CORPUS_DIR defaults to $BENCH_TMPDIR/imageserver_corpus_audit (generated:
#   200 studies x 1 series x 10 instances of 64x64, 2000 files).
# Prints each run's seconds, the medians and the ratio on/off; checks that
# every instance was indexed and, with audit on, that one message per study
# arrived. Needs: DCMTK, python3 with pydicom + numpy (corpus).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH_DIR:-$ROOT/../shared/bench}
RUNS=3 PARALLEL=8
while getopts "r:j:" opt; do
  case $opt in
    r) RUNS=$OPTARG ;; j) PARALLEL=$OPTARG ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
TMP=${BENCH_TMPDIR:-/tmp}
CORPUS=${1:-$TMP/imageserver_corpus_audit}
[[ -d $CORPUS ]] || python3 "$BENCH/gen_corpus.py" --out "$CORPUS" --tiny \
  --studies 200 --patients 200 --series-per-study 1 --instances-per-series 10 --seed 7
mapfile -t STUDIES < <(find "$CORPUS" -mindepth 2 -maxdepth 2 -type d | sort)
FILES=$(find "$CORPUS" -name '*.dcm' | wc -l)
echo "corpus $CORPUS: ${#STUDIES[@]} studies, $FILES files; $PARALLEL associations at a time"

if [[ -z ${IMAGESERVER_BIN:-} ]]; then
  (cd "$ROOT" && cargo build --release --bin imageserver)
  IMAGESERVER_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/imageserver
fi
echo "imageserver binary $IMAGESERVER_BIN sha256 $(sha256sum "$IMAGESERVER_BIN" | cut -d' ' -f1)"

WORK=$(mktemp -d "$TMP/imageserver_audit_bench.XXXXXX")
SERVER_PID='' RECEIVER_PID=''
cleanup() {
  [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null || true
  [[ -n $RECEIVER_PID ]] && kill "$RECEIVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SYSLOG_TCP=$(free_port) SYSLOG_UDP=$(free_port)
python3 "$ROOT/tests/it/py/syslog_receiver.py" --udp-port "$SYSLOG_UDP" --tcp-port "$SYSLOG_TCP" \
  --out "$WORK/received.jsonl" > "$WORK/receiver.out" &
RECEIVER_PID=$!
for _ in $(seq 100); do grep -q ready "$WORK/receiver.out" 2>/dev/null && break; sleep 0.1; done

# run MODE N: one ingest of the corpus; prints the seconds.
run() {
  local mode=$1 n=$2 dir=$WORK/$1-$2 port
  port=$(free_port)
  mkdir -p "$dir"
  {
    echo "[dicom]"; echo "port = $port"; echo "bind = \"127.0.0.1\""
    if [[ $mode == on ]]; then
      echo "[audit]"; echo "enabled = true"; echo "repository = \"tcp://127.0.0.1:$SYSLOG_TCP\""
    fi
  } > "$dir/imageserver.toml"
  IMAGESERVER_LOG=warn "$IMAGESERVER_BIN" serve --config "$dir/imageserver.toml" --data "$dir/data" \
    2> "$dir/server.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do /usr/bin/echoscu -aec IMAGESERVER 127.0.0.1 "$port" 2>/dev/null && break; sleep 0.1; done
  local before start end
  before=$(wc -l < "$WORK/received.jsonl" 2>/dev/null || echo 0)
  start=$(date +%s.%N)
  printf '%s\n' "${STUDIES[@]}" | xargs -P "$PARALLEL" -I{} \
    /usr/bin/storescu -xe -aet BENCH -aec IMAGESERVER +sd +r 127.0.0.1 "$port" {}
  end=$(date +%s.%N)
  kill "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=''
  local indexed
  indexed=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from instance').fetchone()[0])" "$dir/data/index.db")
  [[ $indexed == "$FILES" ]] || { echo "run $mode-$n: $indexed of $FILES indexed" >&2; exit 1; }
  if [[ $mode == on ]]; then
    local got
    got=$(tail -n +"$((before + 1))" "$WORK/received.jsonl" | grep -c '"event_id": "110104"' || true)
    [[ $got == "${#STUDIES[@]}" ]] || { echo "run on-$n: $got Instances Transferred messages, expected ${#STUDIES[@]}" >&2; exit 1; }
  fi
  rm -rf "$dir/data"
  echo "$end - $start" | bc
}

declare -a OFF ON
for n in $(seq "$RUNS"); do
  OFF+=("$(run off "$n")"); echo "run $n off: ${OFF[-1]} s"
  ON+=("$(run on "$n")"); echo "run $n on:  ${ON[-1]} s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
M_OFF=$(median "${OFF[@]}") M_ON=$(median "${ON[@]}")
echo "median off $M_OFF s ($(echo "$FILES / $M_OFF" | bc) files/s), on $M_ON s ($(echo "$FILES / $M_ON" | bc) files/s)"
echo "ratio on/off $(echo "scale=3; $M_ON / $M_OFF" | bc)"
