#!/usr/bin/env bash
# CPU per instance of ingest (the ingest issue's eight-association aim is a
# CPU budget on a two-core machine): each binary, and DCMTK's storescp with
# -s, receives a corpus from N storescu associations (whole studies per
# association, as benches/ingest.sh splits them), and this prints, per run,
# the rate and the CPU it cost per instance, read from /proc:
#   server  the receiver's user + system time (storescp: with its forked
#           children, one per association);
#   pg      the PostgreSQL cluster's processes (-d postgres);
#   clients the storescu processes (GNU time);
#   machine every core's busy time (not iowait), and the share of the
#           cores busy.
# On this shared machine rates swing ±15-50 % between rounds while CPU per
# instance repeats far better: compare CPU here, rates in ingest_compare.sh.
# The binaries' order turns every round. A run counts only when exactly the
# corpus was stored (*.dcm outside .tmp; storescp: every file); another
# run prints no figure.
#
# usage: benches/ingest_cpu.sh [-r ROUNDS] [-a "1 8"] [-d sqlite|postgres] [-s] BIN... CORPUS_DIR
# Received files are kept until the end (ext4 without a journal makes
# creates dear right after deletions), under $BENCH_TMPDIR (default /tmp).
# Needs: DCMTK, GNU time (/usr/bin/time); PostgreSQL 15 for -d postgres.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=3 ASSOCS="1 8" BACKEND=sqlite SCP=0
while getopts "r:a:d:s" opt; do
  case $opt in
    r) ROUNDS=$OPTARG ;; a) ASSOCS=$OPTARG ;; d) BACKEND=$OPTARG ;; s) SCP=1 ;;
    *) sed -n '2,19p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
(($# >= 2)) || { sed -n '2,19p' "$0"; exit 2; }
CORPUS=$(realpath "${!#}")
BINS=()
for bin in "${@:1:$#-1}"; do
  [[ -x $bin ]] || { echo "no executable at $bin" >&2; exit 2; }
  BINS+=("$(realpath "$bin")")
done
[[ -x /usr/bin/time ]] || { echo "GNU time (/usr/bin/time) is missing" >&2; exit 2; }
TMP=${BENCH_TMPDIR:-/tmp}
WORK=$(mktemp -d "$TMP/imageserver-cpu.XXXXXX")
chmod 755 "$WORK"  # a PostgreSQL cluster below it runs as the postgres user
TICK=$(getconf CLK_TCK)
TOTAL=$(find "$CORPUS" -name '*.dcm' | wc -l)
mapfile -t STUDIES < <(find "$CORPUS" -mindepth 1 -maxdepth 1 -type d | sort)
((TOTAL > 0 && ${#STUDIES[@]} > 0)) || { echo "no study folders of .dcm files in $CORPUS" >&2; exit 2; }
PG_URL= PG_DIR=
cleanup() {
  [[ -n $PG_DIR ]] && "$ROOT/scripts/pg.sh" stop "$PG_DIR" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
if [[ $BACKEND == postgres ]]; then
  PG_DIR=$WORK/pg
  PG_URL=$("$ROOT/scripts/pg.sh" start "$PG_DIR" | tail -n 1)
fi
source "$ROOT/benches/support/quiet_inodes.sh"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Summed user + system ticks of the given PIDs (those gone count nothing).
ticks() { for p in "$@"; do awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || true; done | awk '{s += $1} END {print s + 0}'; }
pg_pids() { local pm; pm=$(head -n 1 "$PG_DIR/data/postmaster.pid"); echo "$pm" $(pgrep -P "$pm"); }
# Busy and all ticks of every core (iowait counts as idle).
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }

# One run: $1 label, $2 binary ("storescp" for the reference), $3 associations.
run() {
  local label=$1 bin=$2 n=$3 dir port server db= pgs=() k j
  dir=$(mktemp -d "$WORK/run.XXXXXX") port=$(free_port)
  # Files deleted in the last minutes (a previous benchmark's) make every
  # create dear on ext4 without a journal: wait until they have aged.
  wait_for_quiet_inodes "$dir" >&2
  mkdir -p "$dir/storage"
  if [[ $bin == storescp ]]; then
    TCP_NODELAY=1 /usr/bin/storescp --fork -od "$dir/storage" -aet TARGET "$port" > "$dir/log" 2>&1 &
  else
    local flag=()
    if [[ -n $PG_URL ]]; then
      db=cpu_$(basename "$dir" | tr -cd 'a-zA-Z0-9' | tr 'A-Z' 'a-z')
      psql -q "$PG_URL" -c "CREATE DATABASE $db" > /dev/null
      flag=(--db "${PG_URL%/postgres}/$db")
    fi
    printf 'data_dir = "%s"\n[dicom]\nmax_associations = 64\n[[filesystems]]\npath = "%s"\n' \
      "$dir" "$dir/storage" > "$dir/imageserver.toml"
    IMAGESERVER_LOG=warn "$bin" serve --config "$dir/imageserver.toml" --aet TARGET \
      --bind 127.0.0.1 --port "$port" "${flag[@]}" > "$dir/log" 2>&1 &
  fi
  server=$!
  for _ in $(seq 100); do
    /usr/bin/echoscu -aec TARGET 127.0.0.1 "$port" > /dev/null 2>&1 && break
    sleep 0.1
  done
  # The cluster's processes are listed again at the end: the server opens
  # its connections as it needs them, so most backends start during the run.
  [[ -n $PG_URL ]] && pgs=($(pg_pids))
  local s0 p0 m0 t0 s1 p1 m1 t1 clients=()
  s0=$(ticks "$server") p0=$(ticks "${pgs[@]}") m0=$(busy) t0=$(date +%s.%N)
  for ((k = 0; k < n; k++)); do
    local files=()
    for ((j = k; j < ${#STUDIES[@]}; j += n)); do
      mapfile -t -O "${#files[@]}" files < <(find "${STUDIES[j]}" -name '*.dcm' | sort)
    done
    TCP_NODELAY=1 /usr/bin/time -f '%U %S' -o "$dir/time.$k" \
      /usr/bin/storescu -aec TARGET 127.0.0.1 "$port" "${files[@]}" > /dev/null 2>&1 &
    clients+=($!)
  done
  wait "${clients[@]}" || true
  t1=$(date +%s.%N) m1=$(busy)
  [[ -n $PG_URL ]] && pgs=($(pg_pids))
  p1=$(ticks "${pgs[@]}")
  # storescp's last children are reaped (their time added to its own) once
  # they have written their file.
  [[ $bin == storescp ]] && sleep 0.5
  s1=$(ticks "$server")
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  local stored
  if [[ $bin == storescp ]]; then
    stored=$(find "$dir/storage" -type f | wc -l)
  else
    stored=$(find "$dir/storage" -name '*.dcm' -not -path '*/.tmp/*' | wc -l)
  fi
  [[ -n $db ]] && psql -q "$PG_URL" -c "DROP DATABASE $db" > /dev/null
  python3 - "$label" "$n" "$TOTAL" "$stored" "$TICK" "$t0" "$t1" "$s0" "$s1" "$p0" "$p1" \
    "$m0" "$m1" "$BACKEND" "$(cat "$dir"/time.* | awk '{s += $1 + $2} END {print s + 0}')" <<'PY'
import sys
label, n, total, stored, tick = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
t0, t1, s0, s1, p0, p1 = map(float, sys.argv[6:12])
(mb0, mt0), (mb1, mt1) = (map(int, a.split()) for a in sys.argv[12:14])
backend, clients = sys.argv[14], float(sys.argv[15])
us = 1e6 / tick / total
# A run that did not store exactly the corpus gives no figure at all.
ok = stored == total
figures = [f"{total / (t1 - t0):.0f}", f"{(s1 - s0) * us:.0f}",
           f"{(p1 - p0) * us:.0f}" if label != "storescp" and backend == "postgres" else "-",
           f"{clients * 1e6 / total:.0f}", f"{(mb1 - mb0) * us:.0f}",
           f"{100 * (mb1 - mb0) / max(1, mt1 - mt0):.0f}"]
print("\t".join([label, str(n)] + (figures if ok else ["-"] * len(figures))
                + ["ok" if ok else f"stored {stored} of {total}"]))
PY
}

targets=("${BINS[@]}")
((SCP)) && targets+=(storescp)
echo "backend $BACKEND, $ROUNDS rounds, associations: $ASSOCS, corpus $CORPUS ($TOTAL instances)"
for i in "${!BINS[@]}"; do echo "bin$((i + 1)): ${BINS[i]} sha256 $(sha256sum "${BINS[i]}" | cut -c1-16)"; done
RESULTS=$WORK/results.tsv
for ((r = 1; r <= ROUNDS; r++)); do
  # Turn the order every round.
  order=("${targets[@]:$(((r - 1) % ${#targets[@]}))}" "${targets[@]:0:$(((r - 1) % ${#targets[@]}))}")
  for n in $ASSOCS; do
    for t in "${order[@]}"; do
      label=storescp
      for i in "${!BINS[@]}"; do [[ ${BINS[i]} == "$t" ]] && label=bin$((i + 1)); done
      run "$label" "$t" "$n" | tee -a "$RESULTS" | sed "s/^/round $r\t/"
    done
  done
done
echo
echo "medians over $ROUNDS rounds, µs of CPU per instance (rate: instances/s; busy: % of all cores)"
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
print(f"{'target':<9}{'assoc':>6}{'rate':>8}{'server':>8}{'pg':>7}{'clients':>9}{'machine':>9}{'busy':>6}  runs")
for key in sorted({(r[0], int(r[1])) for r in rows}, key=lambda k: (k[1], k[0])):
    sel = [r for r in rows if (r[0], int(r[1])) == key]
    def med(i):
        vals = [float(r[i]) for r in sel if r[i] != "-"]
        return f"{statistics.median(vals):.0f}" if vals else "-"
    bad = sum(r[8] != "ok" for r in sel)
    print(f"{key[0]:<9}{key[1]:>6}{med(2):>8}{med(3):>8}{med(4):>7}{med(5):>9}{med(6):>9}{med(7):>6}  "
          f"{len(sel)}" + (f" ({bad} not verified)" if bad else ""))
PY
