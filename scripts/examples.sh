#!/usr/bin/env bash
# Runs the embedding examples for real, as part of the test command:
#
# - custom_processor: registers its own work item type, runs three items
#   and checks they completed (the example exits non-zero otherwise);
# - custom_storage: runs the storage conformance suite on a backend of its
#   own, then stores an instance into an archive on that backend with
#   storescu and checks the backend's counters (the example exits non-zero
#   otherwise);
# - small: the small deployment (SQLite index, local disk) in a temporary
#   data directory; DCMTK's storescu stores one instance (made with
#   dump2dcm), findscu finds it, and SIGTERM stops the example cleanly;
# - medium: the medium deployment against a fresh database of the
#   PostgreSQL server at $1 and a temporary "NAS" folder; storescu stores
#   the same instance, findscu finds it, psql sees its row, and SIGTERM
#   stops the example cleanly;
# - large: one node of the large deployment against another fresh
#   database and a temporary "shared" folder; storescu stores, findscu
#   finds, psql sees the node registered active, and SIGTERM drains it
#   (exit 0, the node stopped in the index).
#
# usage: scripts/examples.sh POSTGRES_SERVER_URL
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() { printf 'examples: %s\n' "$*" >&2; exit 1; }
[ $# -eq 1 ] || fail "usage: scripts/examples.sh POSTGRES_SERVER_URL"
SERVER_URL=$1
export PGOPTIONS="--client-min-messages=warning"

cargo run --quiet --example custom_processor
cargo run --quiet --example custom_storage

WORK=$(mktemp -d /tmp/imageserver-examples.XXXXXX)
EXAMPLE_PID=
cleanup() {
    if [ -n "$EXAMPLE_PID" ] && kill -0 "$EXAMPLE_PID" 2>/dev/null; then
        kill -KILL "$EXAMPLE_PID" 2>/dev/null || true
    fi
    psql -q "$SERVER_URL" -c "DROP DATABASE IF EXISTS example_medium" >/dev/null 2>&1 || true
    psql -q "$SERVER_URL" -c "DROP DATABASE IF EXISTS example_large" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The instance the examples store (custom_storage includes the same file).
/usr/bin/dump2dcm -q -g +te examples/instance.dump "$WORK/sc.dcm"

cargo build --quiet --example small --example medium --example large

# start_example NAME PORT ARGS...: runs the example in the background on
# PORT (its log in $WORK/NAME.log) and waits for its "NAME deployment ready"
# line; sets EXAMPLE_PID, and AE to the title it answers to.
start_example() {
    local name=$1 port=$2
    shift 2
    : > "$WORK/$name.log"
    IMAGESERVER_LOG=warn "${CARGO_TARGET_DIR:-target}/debug/examples/$name" "$@" --port "$port" > "$WORK/$name.log" 2>&1 &
    EXAMPLE_PID=$!
    for _ in $(seq 1 150); do
        grep -q "$name deployment ready" "$WORK/$name.log" && break
        kill -0 "$EXAMPLE_PID" 2>/dev/null || { cat "$WORK/$name.log" >&2; fail "$name exited early"; }
        sleep 0.2
    done
    grep -q "$name deployment ready" "$WORK/$name.log" || { cat "$WORK/$name.log" >&2; fail "$name did not start in 30 s"; }
    AE=$(sed -n 's/.*ready: AE \([^ ]*\) on.*/\1/p' "$WORK/$name.log")
}

# store_and_find NAME PORT: storescu stores the instance (an unknown
# caller may store), findscu as the known device WORKSTATION (unknown
# callers may not query) must find its study.
store_and_find() {
    local name=$1 port=$2 found
    TCP_NODELAY=1 timeout 60 /usr/bin/storescu -aec "$AE" 127.0.0.1 "$port" "$WORK/sc.dcm" \
        || { cat "$WORK/$name.log" >&2; fail "storescu to the $name example failed"; }
    found=$(TCP_NODELAY=1 timeout 60 /usr/bin/findscu -S -aet WORKSTATION -aec "$AE" -k QueryRetrieveLevel=STUDY \
        -k PatientID=EX-INSTANCE-1 -k StudyInstanceUID 127.0.0.1 "$port" 2>&1) \
        || fail "findscu against the $name example failed: $found"
    grep -q "1.2.826.0.1.3680043.9.7433.1\]" <<<"$found" \
        || fail "findscu did not find the study stored in the $name example: $found"
}

# stop_example NAME: SIGTERM; the example must exit with status 0.
stop_example() {
    local name=$1 status=0
    kill -TERM "$EXAMPLE_PID"
    wait "$EXAMPLE_PID" || status=$?
    EXAMPLE_PID=
    [ "$status" = 0 ] || { cat "$WORK/$name.log" >&2; fail "$name exited with $status after SIGTERM"; }
}

PORT=$(free_port)
start_example small "$PORT" --data "$WORK/small" --device WORKSTATION=127.0.0.1:11113
store_and_find small "$PORT"
find "$WORK/small" -name '*.dcm' | grep -q . || fail "no instance file in the small example's data directory"
stop_example small

psql -q "$SERVER_URL" -c "DROP DATABASE IF EXISTS example_medium" >/dev/null
psql -q "$SERVER_URL" -c "CREATE DATABASE example_medium" >/dev/null
# The server URL's database swapped for example_medium, its query (TLS
# settings) kept.
SERVER_BASE=${SERVER_URL%%\?*}
DB_URL="${SERVER_BASE%/*}/example_medium${SERVER_URL#"$SERVER_BASE"}"
PORT=$(free_port)
start_example medium "$PORT" --config deploy/medium.toml --db "$DB_URL" --nas "$WORK/nas" \
    --device WORKSTATION=127.0.0.1:11113
store_and_find medium "$PORT"
ROWS=$(psql -qtA "$DB_URL" -c "SELECT COUNT(*) FROM instance")
[ "$ROWS" = 1 ] || fail "the PostgreSQL index holds $ROWS instance rows, expected 1"
find "$WORK/nas" -name '*.dcm' | grep -q . || fail "no instance file on the NAS path"
stop_example medium

psql -q "$SERVER_URL" -c "DROP DATABASE IF EXISTS example_large" >/dev/null
psql -q "$SERVER_URL" -c "CREATE DATABASE example_large" >/dev/null
DB_URL="${SERVER_BASE%/*}/example_large${SERVER_URL#"$SERVER_BASE"}"
PORT=$(free_port)
start_example large "$PORT" --config deploy/large/node.toml --db "$DB_URL" --shared "$WORK/shared" \
    --bind 127.0.0.1 --node-id example-large --device WORKSTATION=127.0.0.1:11113
store_and_find large "$PORT"
STATE=$(psql -qtA "$DB_URL" -c "SELECT state FROM node WHERE id = 'example-large'")
[ "$STATE" = active ] || fail "the large example's node is '$STATE' in the index, expected active"
find "$WORK/shared" -name '*.dcm' | grep -q . || fail "no instance file on the shared path"
stop_example large
STATE=$(psql -qtA "$DB_URL" -c "SELECT state FROM node WHERE id = 'example-large'")
[ "$STATE" = stopped ] || fail "the large example's node is '$STATE' after SIGTERM, expected stopped"

echo "examples: custom_processor ran its items; custom_storage passed the storage conformance suite and counted a stored instance; small (SQLite), medium (PostgreSQL) and large (a cluster node) each stored and found an instance and stopped cleanly"
