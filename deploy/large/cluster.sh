#!/usr/bin/env bash
# The large deployment on one machine: a throwaway PostgreSQL, three
# imageserver nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (one AE title,
# one port, one shared data path), and Debian's HAProxy in front.
#
#   deploy/large/cluster.sh start DIR    start everything, state under DIR;
#                                        returns once every node and the
#                                        balancer answer C-ECHO
#   deploy/large/cluster.sh status DIR   what runs (exit 1 if a part is down)
#   deploy/large/cluster.sh stop DIR     stop what start started (by the
#                                        pids under DIR) and the database;
#                                        nodes drain (SIGTERM), DIR keeps the
#                                        logs and nodeN.exit statuses
#
# `start` and `status` print KEY=VALUE lines for scripts:
#   AE=  BALANCER=host:port  NODES=host:port,...  NODE_PIDS=pid,...
#   HTTP=host:port,... (each node's admin API and DICOMweb, same order)
#   HAPROXY_PID=  DB=postgres://...  DATA=shared filesystem path
#
# Environment: IMAGESERVER_BIN (default: cargo build, then the debug
# binary), AE (default IMAGESERVER), CLUSTER_EXTRA (a TOML file appended to
# every node's configuration, e.g. [[devices]] for C-MOVE destinations),
# CLUSTER_NODES (how many nodes, 1 to 3, default 3: the benchmark compares
# one node with three), CLUSTER_LEASE_SECS (work item lease, default 10),
# CLUSTER_STUDY_PROCESS_DELAY_SECS (default 60). HAProxy is installed
# with apt-get when missing; in CI (CI=true) a failed install fails.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

fail() { printf 'cluster.sh: %s\n' "$*" >&2; exit 1; }
note() { printf 'cluster.sh: %s\n' "$*" >&2; }

[ $# -eq 2 ] || fail "usage: deploy/large/cluster.sh start|status|stop DIR"
ACTION=$1
DIR=$2
ENV_FILE=$DIR/cluster.env
ALL_HOSTS=(127.0.0.1 127.0.0.2 127.0.0.3)
NODE_COUNT=${CLUSTER_NODES:-3}
case "$NODE_COUNT" in
    1 | 2 | 3) ;;
    *) fail "CLUSTER_NODES must be 1, 2 or 3 (got $NODE_COUNT)" ;;
esac
HOSTS=("${ALL_HOSTS[@]:0:$NODE_COUNT}")

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        fail "need root or sudo to run: $*"
    fi
}

HAPROXY=/usr/sbin/haproxy
ensure_haproxy() {
    [ -x "$HAPROXY" ] && return 0
    note "HAProxy is missing: apt-get install -y haproxy"
    as_root apt-get update >&2 || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >&2 \
        || fail "cannot install haproxy"
    [ -x "$HAPROXY" ] || fail "haproxy is still missing after apt-get install ($HAPROXY)"
}

# A port free on every node address (the nodes share it), another for their
# HTTP servers, and one for the balancer.
free_ports() {
    python3 - "${HOSTS[@]}" <<'EOF'
import socket, sys
hosts = sys.argv[1:]
def free_on_all():
    for _ in range(100):
        s = socket.socket(); s.bind((hosts[0], 0)); port = s.getsockname()[1]
        held = [s]
        try:
            for h in hosts[1:]:
                t = socket.socket(); t.bind((h, port)); held.append(t)
            return port
        except OSError:
            continue
        finally:
            for t in held: t.close()
    sys.exit("no port free on every address")
node = free_on_all()
http = free_on_all()
while http == node:
    http = free_on_all()
s = socket.socket(); s.bind(("127.0.0.1", 0)); balancer = s.getsockname()[1]; s.close()
print(node, http, balancer)
EOF
}

# health_check_hex CALLED CALLING: the A-ASSOCIATE-RQ (Verification,
# Implicit VR Little Endian, max PDU 16384) the HAProxy check sends.
health_check_hex() {
    python3 - "$1" "$2" <<'EOF'
import struct, sys
def item(t, body): return bytes([t, 0]) + struct.pack(">H", len(body)) + body
called = sys.argv[1].encode().ljust(16); calling = sys.argv[2].encode().ljust(16)
pc = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
ui = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9.7433.1.1"))
body = struct.pack(">HH", 1, 0) + called + calling + bytes(32) + item(0x10, b"1.2.840.10008.3.1.1.1") + pc + ui
print((bytes([1, 0]) + struct.pack(">I", len(body)) + body).hex())
EOF
}

echo_ok() { # HOST PORT
    timeout 10 /usr/bin/echoscu -to 5 -aet CLUSTERCHECK -aec "$AE" "$1" "$2" >/dev/null 2>&1
}

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

print_status() {
    # shellcheck disable=SC1090
    . "$ENV_FILE"
    printf 'AE=%s\nBALANCER=%s\nNODES=%s\nNODE_PIDS=%s\nHTTP=%s\nHAPROXY_PID=%s\nDB=%s\nDATA=%s\n' \
        "$AE" "$BALANCER" "$NODES" "$NODE_PIDS" "${HTTP:-}" "$HAPROXY_PID" "$DB" "$DATA"
}

start() {
    [ -e "$ENV_FILE" ] && fail "$DIR already holds a cluster: stop it first"
    command -v python3 >/dev/null || fail "python3 is needed"
    [ -x /usr/bin/echoscu ] || fail "DCMTK's echoscu is needed (apt-get install dcmtk)"
    ensure_haproxy
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    ENV_FILE=$DIR/cluster.env
    AE=${AE:-IMAGESERVER}
    local bin=${IMAGESERVER_BIN:-}
    if [ -z "$bin" ]; then
        (cd "$ROOT" && cargo build --quiet --bin imageserver) || fail "cargo build failed"
        bin=${CARGO_TARGET_DIR:-$ROOT/target}/debug/imageserver
    fi
    [ -x "$bin" ] || fail "no imageserver binary at $bin"

    local url
    url=$(bash "$ROOT/scripts/pg.sh" start "$DIR/pg") || fail "cannot start PostgreSQL"
    PGOPTIONS="--client-min-messages=warning" psql -q "$url" -c "CREATE DATABASE imageserver" >/dev/null \
        || fail "cannot create the database"
    DB="${url%/*}/imageserver"
    DATA=$DIR/data
    mkdir -p "$DATA"

    local ports port http_port balancer_port
    ports=$(free_ports) || fail "no free ports"
    read -r port http_port balancer_port <<<"$ports"
    BALANCER=127.0.0.1:$balancer_port
    local pids=() nodes=() https=() n=0 host
    # Record what runs as it starts, so that `stop` finds it even if start fails.
    write_env() {
        local IFS=,
        cat > "$ENV_FILE" <<EOF
AE='$AE'
BALANCER='$BALANCER'
NODES='${nodes[*]}'
NODE_PIDS='${pids[*]}'
HTTP='${https[*]}'
HAPROXY_PID='${HAPROXY_PID:-}'
DB='$DB'
DATA='$DATA'
EOF
    }
    HAPROXY_PID=
    write_env
    for host in "${HOSTS[@]}"; do
        n=$((n + 1))
        local config=$DIR/node$n.toml
        cat > "$config" <<EOF
data_dir = "$DIR/node$n"
db = "$DB"

[dicom]
ae_title = "$AE"
bind = "$host"
port = $port
max_pending_per_address = 0

[[filesystems]]
path = "$DATA"
tier = 1

[node]
id = "node$n"
heartbeat_secs = 1
dead_after_secs = 4
drain_grace_secs = 3
drain_timeout_secs = 60

# The admin API and DICOMweb, on every node (no users: loopback callers).
[http]
enabled = true
bind = "$host"
port = $http_port

[workqueue]
lease_secs = ${CLUSTER_LEASE_SECS:-10}
poll_secs = 1
study_process_delay_secs = ${CLUSTER_STUDY_PROCESS_DELAY_SECS:-60}
EOF
        if [ -n "${CLUSTER_EXTRA:-}" ]; then
            cat "$CLUSTER_EXTRA" >> "$config"
        fi
        # A small keeper per node records the server's pid and, when it
        # ends, its exit status (nodeN.exit): a drained node must exit 0.
        # Both files appear whole (written aside, then renamed): a reader
        # that sees the file must never read it empty.
        rm -f "$DIR/node$n.pid" "$DIR/node$n.exit"
        IMAGESERVER_LOG=${IMAGESERVER_LOG:-info} setsid bash -c \
            '"$0" serve --config "$1" > "$2" 2>&1 < /dev/null & echo $! > "$3.tmp"; mv "$3.tmp" "$3"; wait $!; echo $? > "$4.tmp"; mv "$4.tmp" "$4"' \
            "$bin" "$config" "$DIR/node$n.log" "$DIR/node$n.pid" "$DIR/node$n.exit" < /dev/null > /dev/null 2>&1 &
        local tries=0
        until [ -s "$DIR/node$n.pid" ]; do
            tries=$((tries + 1))
            [ "$tries" -le 100 ] || fail "node$n did not start"
            sleep 0.05
        done
        pids+=("$(cat "$DIR/node$n.pid")")
        nodes+=("$host:$port")
        https+=("$host:$http_port")
        write_env
    done
    local i
    for i in "${!HOSTS[@]}"; do
        local tries=0
        until echo_ok "${HOSTS[$i]}" "$port"; do
            alive "${pids[$i]}" || { tail -20 "$DIR/node$((i + 1)).log" >&2; fail "node$((i + 1)) exited"; }
            tries=$((tries + 1))
            [ "$tries" -le 150 ] || fail "node$((i + 1)) does not answer C-ECHO after 30 s"
            sleep 0.2
        done
    done

    local hex
    hex=$(health_check_hex "$AE" HEALTHCHECK)
    {
        sed -e "s|^    bind 127.0.0.1:11112$|    bind $BALANCER|" \
            -e "s|^    tcp-check send-binary 0100.*|    tcp-check send-binary $hex|" \
            -e '/^    server node/d' "$ROOT/deploy/large/haproxy.cfg"
        n=0
        for host in "${HOSTS[@]}"; do
            n=$((n + 1))
            printf '    server node%s %s:%s check\n' "$n" "$host" "$port"
        done
    } > "$DIR/haproxy.cfg"
    "$HAPROXY" -c -q -f "$DIR/haproxy.cfg" || fail "haproxy refuses $DIR/haproxy.cfg"
    setsid "$HAPROXY" -db -f "$DIR/haproxy.cfg" > "$DIR/haproxy.log" 2>&1 < /dev/null &
    HAPROXY_PID=$!
    write_env
    local tries=0
    # Up once every node passed its health checks (rise 2).
    sleep 1.5
    until echo_ok 127.0.0.1 "$balancer_port"; do
        alive "$HAPROXY_PID" || { cat "$DIR/haproxy.log" >&2; fail "haproxy exited"; }
        tries=$((tries + 1))
        [ "$tries" -le 100 ] || fail "the balancer does not answer C-ECHO after 20 s"
        sleep 0.2
    done
    print_status
}

status() {
    [ -e "$ENV_FILE" ] || fail "no cluster in $DIR"
    print_status
    local down=0 pid
    IFS=, read -ra pids <<<"$NODE_PIDS"
    for pid in "${pids[@]}"; do
        alive "$pid" || { note "node pid $pid is not running"; down=1; }
    done
    alive "$HAPROXY_PID" || { note "haproxy is not running"; down=1; }
    return $down
}

stop() {
    [ -e "$ENV_FILE" ] || { note "no cluster in $DIR"; return 0; }
    # shellcheck disable=SC1090
    . "$ENV_FILE"
    local pid pids=()
    IFS=, read -ra pids <<<"$NODE_PIDS"
    [ -n "$HAPROXY_PID" ] && pids+=("$HAPROXY_PID")
    for pid in "${pids[@]}"; do
        alive "$pid" && kill -TERM "$pid" 2>/dev/null || true
    done
    local tries
    for pid in "${pids[@]}"; do
        tries=0
        while alive "$pid" && [ "$tries" -lt 150 ]; do
            sleep 0.2
            tries=$((tries + 1))
        done
        if alive "$pid"; then
            note "pid $pid did not stop in 30 s: killed"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    bash "$ROOT/scripts/pg.sh" stop "$DIR/pg" >/dev/null 2>&1 || true
    rm -f "$ENV_FILE"
}

case "$ACTION" in
    start) start ;;
    status) status ;;
    stop) stop ;;
    *) fail "usage: deploy/large/cluster.sh start|status|stop DIR" ;;
esac
