#!/usr/bin/env bash
# DICOM TLS cost: ingest over the TLS listener against the plain one, same
# server binary, same corpus, interleaved runs (plain, tls, plain, tls, ...),
# each on a fresh data directory. One storescu association per study
# (each TLS association pays its own handshake), PARALLEL at a time. TLS
# runs authenticate the server only (storescu +tla with the CA); the
# certificates are made here with openssl (ECDSA P-256).
#
# usage: benches/tls.sh [-r RUNS] [-j PARALLEL] [CORPUS_DIR]
#   CORPUS_DIR defaults to $BENCH_TMPDIR/imageserver_corpus_audit (generated:
#   200 studies x 1 series x 10 instances of 64x64, 2000 files).
# Prints each run's seconds, the medians and the ratio tls/plain; checks
# that every instance was indexed. Needs: DCMTK (built with OpenSSL),
# openssl, python3 with pydicom + numpy (corpus).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH_DIR:-$ROOT/../shared/bench}
RUNS=3 PARALLEL=8
while getopts "r:j:" opt; do
  case $opt in
    r) RUNS=$OPTARG ;; j) PARALLEL=$OPTARG ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
TMP=${BENCH_TMPDIR:-/tmp}
CORPUS=${1:-$TMP/imageserver_corpus_audit}
[[ -d $CORPUS ]] || python3 "$BENCH/gen_corpus.py" --out "$CORPUS" --tiny \
  --studies 200 --patients 200 --series-per-study 1 --instances-per-series 10 --seed 7
mapfile -t STUDIES < <(find "$CORPUS" -mindepth 2 -maxdepth 2 -type d | sort)
FILES=$(find "$CORPUS" -name '*.dcm' | wc -l)
BYTES=$(du -sb "$CORPUS" | cut -f1)
echo "corpus $CORPUS: ${#STUDIES[@]} studies, $FILES files, $BYTES bytes; $PARALLEL associations at a time"

if [[ -z ${IMAGESERVER_BIN:-} ]]; then
  (cd "$ROOT" && cargo build --release --bin imageserver)
  IMAGESERVER_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/imageserver
fi
echo "imageserver binary $IMAGESERVER_BIN sha256 $(sha256sum "$IMAGESERVER_BIN" | cut -d' ' -f1)"

WORK=$(mktemp -d "$TMP/imageserver_tls_bench.XXXXXX")
SERVER_PID=''
cleanup() {
  [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The certificates.
(
  cd "$WORK"
  EC=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 -days 2 -subj "/CN=bench CA" "${EC[@]}" -keyout ca.key -out ca.pem \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -subj "/CN=bench server" "${EC[@]}" -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -out server.pem -extfile server.ext 2>/dev/null
)

# run MODE N: one ingest of the corpus; prints the seconds.
run() {
  local mode=$1 n=$2 dir=$WORK/$1-$2 port tls_port target
  port=$(free_port) tls_port=$(free_port)
  mkdir -p "$dir"
  {
    echo "[dicom]"; echo "port = $port"; echo "bind = \"127.0.0.1\""
    echo "[dicom.tls]"; echo "port = $tls_port"
    echo "certificate = \"$WORK/server.pem\""; echo "private_key = \"$WORK/server.key\""
  } > "$dir/imageserver.toml"
  IMAGESERVER_LOG=warn "$IMAGESERVER_BIN" serve --config "$dir/imageserver.toml" --data "$dir/data" \
    2> "$dir/server.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do /usr/bin/echoscu -aec IMAGESERVER 127.0.0.1 "$port" 2>/dev/null && break; sleep 0.1; done
  local tls_args=()
  target=$port
  if [[ $mode == tls ]]; then tls_args=(+tla +cf "$WORK/ca.pem"); target=$tls_port; fi
  local start end
  start=$(date +%s.%N)
  printf '%s\n' "${STUDIES[@]}" | xargs -P "$PARALLEL" -I{} \
    /usr/bin/storescu -xe -aet BENCH -aec IMAGESERVER "${tls_args[@]}" +sd +r 127.0.0.1 "$target" {}
  end=$(date +%s.%N)
  kill "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=''
  local indexed
  indexed=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from instance').fetchone()[0])" "$dir/data/index.db")
  [[ $indexed == "$FILES" ]] || { echo "run $mode-$n: $indexed of $FILES indexed" >&2; exit 1; }
  rm -rf "$dir/data"
  echo "$end - $start" | bc
}

declare -a PLAIN TLS
for n in $(seq "$RUNS"); do
  PLAIN+=("$(run plain "$n")"); echo "run $n plain: ${PLAIN[-1]} s"
  TLS+=("$(run tls "$n")"); echo "run $n tls:   ${TLS[-1]} s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
M_PLAIN=$(median "${PLAIN[@]}") M_TLS=$(median "${TLS[@]}")
echo "median plain $M_PLAIN s ($(echo "$FILES / $M_PLAIN" | bc) files/s), tls $M_TLS s ($(echo "$FILES / $M_TLS" | bc) files/s)"
echo "ratio tls/plain $(echo "scale=3; $M_TLS / $M_PLAIN" | bc)"
