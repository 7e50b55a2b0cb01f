#!/usr/bin/env bash
# Before/after ingest table (the ingest issue's four-by-two table): two
# imageserver binaries against DCMTK's storescp (no fsync, no index) and
# Orthanc, on one backend, in one interleaved run.
#
# usage: benches/ingest_compare.sh [-r ROUNDS] [-a "1 8"] [-d sqlite|postgres] [-n] BEFORE_BIN AFTER_BIN [CORPUS_DIR...]
#   -n: no reference peers (storescp, Orthanc), only the two binaries: a
#   quicker A/B of two builds; the ratios to the references print as "-".
#
# Each round runs benches/ingest.sh once with each binary (-r 1, the peers
# storescp, orthanc or orthanc-pg, and target), the binaries' order swapped
# every round, so both binaries and both references see the same machine
# state. storescp and Orthanc are measured in every invocation; their
# medians are over all of them. imageserver's rate counts only when
# ingest.sh verified its run (empty at start, exactly the corpus in the
# index and in storage, nothing in .tmp); otherwise the cell says so.
# CORPUS_DIR defaults to ingest.sh's two corpora (1000 x 0.5 MB CT,
# 2000 x 64x64) in $BENCH_TMPDIR (default /tmp), generated when missing.
# Prints one table per backend: medians in instances/s and the ratios of
# each binary to storescp and to Orthanc, measured in the same run.
# Beside them, the durable ceiling (benches/durable_ceiling.rs, run once
# per round on the same disk with each corpus's mean file size and each
# association count as threads): the group commit's write recipe
# ("placed") without the network and the index, and the ratio of the
# "after" binary to it.
#
# Received files are kept until the end of the whole comparison (the peer
# harness's -k), then removed, when the disk has room for all of them
# (rounds x 2 binaries x peers x association counts x corpus size, with a
# margin):
# ext4 without a journal (the development machine's root filesystem: no
# jbd2 thread) skips inodes freed in the last 60 s (360 s while their inode
# table block is dirty) when it allocates new ones, so a run that starts
# after a deletion pays that scan on every create (100-450 µs of CPU
# instead of ~20), and every peer pays it by turns. The durable ceiling
# keeps its files too (--keep), and each ingest.sh run first waits until a
# create costs what it does on a quiet filesystem
# (benches/support/quiet_inodes.sh). A journaled ext4 does not scan so.
# BENCH_TMPDIR on another filesystem (a loop-mounted journaled image, say)
# moves the runs' storage and index there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=3 ASSOCS="1 8" BACKEND=sqlite PEERS=1
while getopts "r:a:d:n" opt; do
  case $opt in
    r) ROUNDS=$OPTARG ;; a) ASSOCS=$OPTARG ;; d) BACKEND=$OPTARG ;; n) PEERS=0 ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
(($# >= 2)) || { sed -n '2,20p' "$0"; exit 2; }
BEFORE=$(realpath "$1") AFTER=$(realpath "$2")
shift 2
for bin in "$BEFORE" "$AFTER"; do
  [[ -x $bin ]] || { echo "no executable at $bin" >&2; exit 2; }
done
TMP=${BENCH_TMPDIR:-/tmp}
BENCH=${BENCH_DIR:-$ROOT/../shared/bench}
corpora=("$@")
if ((${#corpora[@]} == 0)); then
  [[ -d $TMP/imageserver_corpus_ct512 ]] || python3 "$BENCH/gen_corpus.py" --out "$TMP/imageserver_corpus_ct512" \
    --studies 20 --series-per-study 2 --instances-per-series 25 --seed 1
  [[ -d $TMP/imageserver_corpus_tiny2000 ]] || python3 "$BENCH/gen_corpus.py" --out "$TMP/imageserver_corpus_tiny2000" \
    --tiny --studies 40 --series-per-study 2 --instances-per-series 25 --seed 2
  corpora=("$TMP/imageserver_corpus_ct512" "$TMP/imageserver_corpus_tiny2000")
fi
orthanc=orthanc
[[ $BACKEND == postgres ]] && orthanc=orthanc-pg
peers="storescp,$orthanc,target"
((PEERS)) || peers=target

WORK=$(mktemp -d "$TMP/imageserver-compare.XXXXXX")
# ingest.sh -d postgres runs its cluster below it, as the postgres user.
chmod 755 "$WORK"
corpus_bytes=$(du -sbc "${corpora[@]}" | tail -n 1 | cut -f1)
npeers=$(tr ',' '\n' <<<"$peers" | wc -l)
nassoc=$(wc -w <<<"$ASSOCS")
# The durable ceiling keeps its files too (one corpus's worth per round and
# association count at most), removed at the end as well.
needed=$((ROUNDS * (2 * npeers + 1) * nassoc * corpus_bytes * 11 / 10))
trap 'rm -rf "$WORK/ceiling"' EXIT
free=$(($(df --output=avail -B1 "$TMP" | tail -n 1)))
# Beside the received files: the corpus copied into groups for several
# associations, the databases and their WAL, Orthanc's storage. A
# comparison that filled the disk with only the files' estimate free
# failed its second round; half again and 4 GB more leave room for them.
if ((needed * 3 / 2 + 4000000000 < free)); then
  export PEER_BENCH_ARGS="${PEER_BENCH_ARGS:-} -k"
  trap 'rm -rf "$WORK"/round*/peer_bench.* "$WORK/ceiling"' EXIT
  echo "received files kept until the end: $((needed / 1000000)) MB of $((free / 1000000)) MB free"
else
  echo "WARNING: $((needed / 1000000)) MB of received files do not fit in $((free / 1000000)) MB:" \
    "each run's are deleted before the next (ext4's recently-freed inode scan will add noise)"
fi
# Each corpus's mean file size, for the durable ceiling.
sizes=()
for corpus in "${corpora[@]}"; do
  files=$(find "$corpus" -name '*.dcm' | wc -l)
  bytes=$(find "$corpus" -name '*.dcm' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  size=$((bytes / (files > 0 ? files : 1)))
  sizes+=("$size")
  echo "$(basename "$corpus") $size $files" >>"$WORK/corpora.txt"
done
(cd "$ROOT" && cargo bench --quiet --bench durable_ceiling --no-run) >/dev/null 2>&1 \
  || { echo "cannot build benches/durable_ceiling.rs" >&2; exit 1; }
echo "before: $BEFORE sha256 $(sha256sum "$BEFORE" | cut -c1-16)"
echo "after:  $AFTER sha256 $(sha256sum "$AFTER" | cut -c1-16)"
echo "backend $BACKEND, $ROUNDS rounds, associations: $ASSOCS; results under $WORK"
# Only ingest matters here: one C-ECHO and one C-FIND repetition per peer.
export ECHO_REPS=1 FIND_REPS=1 FIND_INASSOC=1 FIND_INASSOC_TARGET_MS=1 FIND_INASSOC_MAX=1
failed=0
for round in $(seq 1 "$ROUNDS"); do
  order=(before after)
  ((round % 2 == 0)) && order=(after before)
  for label in "${order[@]}"; do
    bin=$BEFORE
    [[ $label == after ]] && bin=$AFTER
    dir=$WORK/round${round}_$label
    mkdir -p "$dir"
    echo "=== round $round: $label"
    BENCH_TMPDIR=$dir IMAGESERVER_BIN=$bin "$ROOT/benches/ingest.sh" -r 1 -a "$ASSOCS" -d "$BACKEND" \
      -p "$peers" "${corpora[@]}" >"$dir/ingest.log" 2>&1 || {
      echo "round $round ($label): ingest.sh failed; see $dir/ingest.log"
      failed=1
    }
  done
  mkdir -p "$WORK/ceiling"
  echo "=== round $round: durable ceiling"
  (cd "$ROOT" && cargo bench --quiet --bench durable_ceiling -- --count 1000 --threads "$ASSOCS" \
    --sizes "${sizes[*]}" --modes placed --dir "$WORK/ceiling" --keep) >"$WORK/round${round}_ceiling.txt" 2>&1 || {
    echo "round $round: the durable ceiling failed; see $WORK/round${round}_ceiling.txt"
    failed=1
  }
done

python3 - "$WORK" "$BACKEND" "$orthanc" <<'PY'
import glob, json, os, re, statistics, sys
work, backend, orthanc = sys.argv[1:]
rates = {}  # (corpus, assoc, peer) -> [instances/s]
for tsv in glob.glob(os.path.join(work, "round*_*", "ingest_*.samples.tsv")):
    label = os.path.basename(os.path.dirname(tsv)).split("_", 1)[1]
    m = re.match(r"ingest_(.+)_a(\d+)_\d{8}_\d{6}\.samples\.tsv$", os.path.basename(tsv))
    corpus, assoc = m.group(1), int(m.group(2))
    record = tsv.replace(".samples.tsv", ".imageserver.json")
    verified = os.path.exists(record) and json.load(open(record))["verified"]
    for line in open(tsv):
        p = line.rstrip("\n").split("\t")
        if p[0] == "peer" or not p[1].startswith("ingest"):
            continue
        seconds, count, expected = float(p[3]), int(p[4]), int(p[5])
        peer = label if p[0] == "target" else p[0]
        if p[0] == "target" and not verified:
            rates.setdefault((corpus, assoc, peer + " (unverified)"), []).append(0.0)
            continue
        if count != expected or seconds <= 0:
            continue
        rates.setdefault((corpus, assoc, peer), []).append(expected / seconds)
# The durable ceiling: the group commit's recipe ("placed") per corpus and
# thread count, from each round's run.
size_of = {}
for line in open(os.path.join(work, "corpora.txt")):
    name, size, _ = line.split()
    size_of.setdefault(int(size), []).append(name)
for path in glob.glob(os.path.join(work, "round*_ceiling.txt")):
    for line in open(path):
        p = line.split()
        if len(p) == 5 and p[2] == "placed" and p[0].isdigit():
            for corpus in size_of.get(int(p[0]), []):
                rates.setdefault((corpus, int(p[1]), "ceiling"), []).append(float(p[3]))
med = {k: statistics.median(v) for k, v in rates.items()}
print(f"\nbackend {backend}: medians in instances/s (samples), ratios from the same run")
print(f"{'load':<34}{'storescp':>14}{orthanc:>14}{'before':>14}{'after':>14}"
      f"{'bef/scp':>9}{'aft/scp':>9}{'bef/orth':>9}{'aft/orth':>9}{'aft/bef':>9}"
      f"{'ceiling':>14}{'aft/ceil':>9}")
for corpus, assoc in sorted({(c, a) for c, a, p in rates if p != "ceiling"}):
    def cell(peer):
        v = rates.get((corpus, assoc, peer))
        return f"{med[(corpus, assoc, peer)]:.0f} ({len(v)})" if v else "-"
    def ratio(a, b):
        x, y = med.get((corpus, assoc, a)), med.get((corpus, assoc, b))
        return f"{x / y:.2f}x" if x and y else "-"
    print(f"{corpus + ', ' + str(assoc) + ' assoc':<34}{cell('storescp'):>14}{cell(orthanc):>14}"
          f"{cell('before'):>14}{cell('after'):>14}{ratio('before', 'storescp'):>9}{ratio('after', 'storescp'):>9}"
          f"{ratio('before', orthanc):>9}{ratio('after', orthanc):>9}{ratio('after', 'before'):>9}"
          f"{cell('ceiling'):>14}{ratio('after', 'ceiling'):>9}")
bad = [k for k in rates if k[2].endswith("(unverified)")]
if bad:
    print("unverified imageserver runs (no rate):", bad)
PY
exit $failed
