#!/usr/bin/env bash
# Runs the embedding examples for real, as part of the test command:
#
# - custom_processor: registers its own work item type, runs three items
#   and checks they completed (the example exits non-zero otherwise);
# - medium: the medium deployment against a fresh database of the
#   PostgreSQL server at $1 and a temporary "NAS" folder; DCMTK's storescu
#   stores one instance (made with dump2dcm), findscu finds it, psql sees
#   its row, and SIGTERM stops the example cleanly.
#
# usage: scripts/examples.sh POSTGRES_SERVER_URL
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() { printf 'examples: %s\n' "$*" >&2; exit 1; }
[ $# -eq 1 ] || fail "usage: scripts/examples.sh POSTGRES_SERVER_URL"
SERVER_URL=$1
export PGOPTIONS="--client-min-messages=warning"

cargo run --quiet --example custom_processor

WORK=$(mktemp -d /tmp/imageserver-example-medium.XXXXXX)
EXAMPLE_PID=
cleanup() {
    if [ -n "$EXAMPLE_PID" ] && kill -0 "$EXAMPLE_PID" 2>/dev/null; then
        kill -KILL "$EXAMPLE_PID" 2>/dev/null || true
    fi
    psql -q "$SERVER_URL" -c "DROP DATABASE IF EXISTS example_medium" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

psql -q "$SERVER_URL" -c "DROP DATABASE IF EXISTS example_medium" >/dev/null
psql -q "$SERVER_URL" -c "CREATE DATABASE example_medium" >/dev/null
DB_URL="${SERVER_URL%/*}/example_medium"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cat > "$WORK/sc.dump" <<'EOF'
(0008,0016) UI =SecondaryCaptureImageStorage
(0008,0018) UI [1.2.826.0.1.3680043.9.7433.1.1]
(0008,0020) DA [20261128]
(0008,0060) CS [OT]
(0010,0010) PN [EXAMPLE^MEDIUM]
(0010,0020) LO [EX-MEDIUM-1]
(0020,000d) UI [1.2.826.0.1.3680043.9.7433.1]
(0020,000e) UI [1.2.826.0.1.3680043.9.7433.1.0]
(0020,0013) IS [1]
(0028,0002) US 1
(0028,0004) CS [MONOCHROME2]
(0028,0010) US 2
(0028,0011) US 2
(0028,0100) US 8
(0028,0101) US 8
(0028,0102) US 7
(0028,0103) US 0
(7fe0,0010) OB 00\01\02\03
EOF
/usr/bin/dump2dcm -q -g +te "$WORK/sc.dump" "$WORK/sc.dcm"

cargo build --quiet --example medium
IMAGESERVER_LOG=warn target/debug/examples/medium --config deploy/medium.toml \
    --db "$DB_URL" --nas "$WORK/nas" --port "$PORT" > "$WORK/medium.log" 2>&1 &
EXAMPLE_PID=$!

for _ in $(seq 1 150); do
    grep -q "medium deployment ready" "$WORK/medium.log" && break
    kill -0 "$EXAMPLE_PID" 2>/dev/null || { cat "$WORK/medium.log" >&2; fail "medium exited early"; }
    sleep 0.2
done
grep -q "medium deployment ready" "$WORK/medium.log" || { cat "$WORK/medium.log" >&2; fail "medium did not start in 30 s"; }
AE=$(sed -n 's/.*ready: AE \([^ ]*\) on.*/\1/p' "$WORK/medium.log")

TCP_NODELAY=1 timeout 60 /usr/bin/storescu -aec "$AE" 127.0.0.1 "$PORT" "$WORK/sc.dcm" \
    || { cat "$WORK/medium.log" >&2; fail "storescu to the medium example failed"; }
FOUND=$(TCP_NODELAY=1 timeout 60 /usr/bin/findscu -S -aec "$AE" -k QueryRetrieveLevel=STUDY \
    -k PatientID=EX-MEDIUM-1 -k StudyInstanceUID 127.0.0.1 "$PORT" 2>&1) \
    || fail "findscu against the medium example failed: $FOUND"
grep -q "1.2.826.0.1.3680043.9.7433.1\]" <<<"$FOUND" || fail "findscu did not find the stored study: $FOUND"
ROWS=$(psql -qtA "$DB_URL" -c "SELECT COUNT(*) FROM instance")
[ "$ROWS" = 1 ] || fail "the PostgreSQL index holds $ROWS instance rows, expected 1"
find "$WORK/nas" -name '*.dcm' | grep -q . || fail "no instance file on the NAS path"

kill -TERM "$EXAMPLE_PID"
STATUS=0
wait "$EXAMPLE_PID" || STATUS=$?
EXAMPLE_PID=
[ "$STATUS" = 0 ] || { cat "$WORK/medium.log" >&2; fail "medium exited with $STATUS after SIGTERM"; }
echo "examples: custom_processor ran its items; medium stored, found and indexed an instance on PostgreSQL and stopped cleanly"
