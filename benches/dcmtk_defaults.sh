#!/bin/bash
# DCMTK's storescu at its defaults (Nagle's algorithm on, as a modality or
# workstation built on DCMTK sends) against TCP_NODELAY=1, which every other
# benchmark here sets: one association of N small instances, each server
# binary in turn, R rounds interleaved. Shows what the server's quick ACKs
# are worth to such peers (without them a data set waits for the delayed ACK
# of its command, ~40 ms an instance).
#
#   bash benches/dcmtk_defaults.sh [-n N] [-r R] BIN [BIN...]
#
# Corpus: $TMPDIR/imageserver_corpus_tiny2000 (made by gen_corpus.py as
# ingest.sh makes it). Loopback only; each server is started and stopped here.
set -euo pipefail
N=300; R=2
while getopts n:r: o; do case $o in n) N=$OPTARG;; r) R=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND - 1))
[[ $# -ge 1 ]] || { sed -n 2,12p "$0"; exit 2; }
TMP=${TMPDIR:-/tmp}
BENCH=$(cd "$(dirname "$0")/../.." && pwd)/shared/bench
CORPUS=$TMP/imageserver_corpus_tiny2000
[[ -d $CORPUS ]] || python3 "$BENCH/gen_corpus.py" --out "$CORPUS" --count 2000 --rows 64 --cols 64 >/dev/null
mapfile -t FILES < <(find "$CORPUS" -name '*.dcm' | sort | head -n "$N")
PORT=$((20000 + RANDOM % 20000))

run() { # BIN NODELAY -> seconds
  local bin=$1 nd=$2 w pid s e n
  w=$(mktemp -d "$TMP/dcmtk-defaults.XXXXXX"); mkdir -p "$w/s"
  printf 'data_dir = "%s"\n[dicom]\nunknown_devices_query_retrieve = true\n[[filesystems]]\npath = "%s"\n' "$w" "$w/s" > "$w/c.toml"
  IMAGESERVER_LOG=warn "$bin" serve --config "$w/c.toml" --aet DEFAULTS --bind 127.0.0.1 --port "$PORT" > "$w/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 150); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  s=$(date +%s.%N)
  if [[ $nd == 1 ]]; then TCP_NODELAY=1 timeout 600 /usr/bin/storescu -aec DEFAULTS 127.0.0.1 "$PORT" "${FILES[@]}" >/dev/null 2>&1
  else env -u TCP_NODELAY timeout 600 /usr/bin/storescu -aec DEFAULTS 127.0.0.1 "$PORT" "${FILES[@]}" >/dev/null 2>&1; fi
  e=$(date +%s.%N)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  n=$(find "$w/s" -name '*.dcm' -not -path '*/.tmp/*' | wc -l)
  rm -rf "$w"
  [[ $n -eq ${#FILES[@]} ]] || { echo "only $n of ${#FILES[@]} stored by $bin" >&2; exit 1; }
  echo "$e - $s" | bc
}

printf '%-8s %-40s %-10s %10s %10s\n' round binary nagle seconds inst/s
for r in $(seq 1 "$R"); do
  for bin in "$@"; do
    for nd in 0 1; do
      t=$(run "$bin" "$nd")
      printf '%-8s %-40s %-10s %10.2f %10.1f\n' "$r" "$(basename "$bin")" "$([[ $nd == 1 ]] && echo off || echo on)" "$t" "$(echo "${#FILES[@]} / $t" | bc -l)"
    done
  done
done
