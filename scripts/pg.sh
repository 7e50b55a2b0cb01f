#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster on a free loopback port, for the tests
# and for trying the medium deployment on one machine.
#
#   scripts/pg.sh start DIR   initdb in DIR (created, owned by the postgres
#                             user), start it, print its URL on stdout:
#                             postgres://postgres@127.0.0.1:PORT/postgres
#   scripts/pg.sh start DIR --ssl
#                             the same with TLS only (ssl = on; pg_hba
#                             refuses connections without TLS): a CA and a
#                             server certificate for 127.0.0.1 are made in
#                             DIR/tls with openssl, and the URL asks for
#                             sslmode=verify-full against DIR/tls/ca.crt
#   scripts/pg.sh start DIR --no-fsync
#                             (with or without --ssl) fsync = off and
#                             full_page_writes = off: for the test command,
#                             whose tests kill our server and stop or kill
#                             PostgreSQL's processes but never the machine,
#                             and a crashed process loses nothing written
#                             (commits still write the WAL before they
#                             return). Never for benchmarks or real data:
#                             a power cut can corrupt such a cluster.
#   scripts/pg.sh down DIR    stop it (fast shutdown), keep its files
#   scripts/pg.sh up DIR      start a stopped cluster again on the same port
#   scripts/pg.sh stop DIR    stop it and remove DIR
#
# Trust authentication on 127.0.0.1 only: never expose such a cluster.
# PostgreSQL refuses to run as root, so as root the server runs as the
# unprivileged `postgres` user (runuser). When the binaries are missing they
# are installed with apt-get (package postgresql); in CI (CI=true) a cluster
# that cannot be started fails the run.
set -euo pipefail

PG_VERSION=15
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin

fail() { printf 'pg.sh: %s\n' "$*" >&2; exit 1; }
note() { printf 'pg.sh: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        fail "need root or sudo to run: $*"
    fi
}

ensure_binaries() {
    [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] && return 0
    note "PostgreSQL $PG_VERSION is missing: apt-get install -y postgresql"
    as_root apt-get update >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
    [ -x "$PG_BIN/initdb" ] || fail "PostgreSQL $PG_VERSION is still missing ($PG_BIN/initdb)"
}

# Runs a PostgreSQL binary as the cluster's owner.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ready() {
    local port=$1 dir=$2 tries=0
    until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port"; do
        tries=$((tries + 1))
        if [ "$tries" -gt 100 ]; then
            cat "$dir/log" >&2 || true
            fail "the cluster in $dir did not accept connections"
        fi
        sleep 0.1
    done
}

# A certificate authority and a server certificate for 127.0.0.1 in $1/tls
# (made for this cluster, never committed): the server's key readable by its
# owner alone, the CA certificate by everyone.
make_certificates() {
    local tls=$1/tls
    command -v openssl >/dev/null 2>&1 || {
        note "openssl is missing: apt-get install -y openssl"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y openssl >&2
    }
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=imageserver test CA" \
        -keyout "$tls/ca.key" -out "$tls/ca.crt" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        >"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; fail "cannot make the test CA"; }
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$tls/server.key" -out "$tls/server.csr" >>"$tls/openssl.log" 2>&1 \
        || { cat "$tls/openssl.log" >&2; fail "cannot make the server key"; }
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
        -CAcreateserial -days 2 -extfile "$tls/server.ext" -out "$tls/server.crt" \
        >>"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; fail "cannot sign the server certificate"; }
    chmod 755 "$tls"
    chmod 644 "$tls/ca.crt" "$tls/server.crt"
    chmod 600 "$tls/server.key" "$tls/ca.key"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$tls/server.key" "$tls/server.crt"
    fi
}

cmd=${1:-}
dir=${2:-}
ssl=no
fsync=yes
for option in "${@:3}"; do
    case "$option" in
    --ssl) ssl=yes ;;
    --no-fsync) fsync=no ;;
    *) fail "unknown option $option (--ssl, --no-fsync)" ;;
    esac
done
[ -n "$cmd" ] && [ -n "$dir" ] || fail "usage: pg.sh start|down|up|stop DIR [--ssl] [--no-fsync]"

case "$cmd" in
start)
    ensure_binaries
    id postgres >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ] || fail "no postgres user to run the cluster as"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$dir"
        chmod 700 "$dir"
        as_owner test -w "$dir" || fail "the postgres user cannot reach $dir (check its parents' permissions)"
    fi
    port=$(free_port)
    as_owner "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
        --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; fail "initdb failed"; }
    cat >>"$dir/data/postgresql.conf" <<EOF
# scripts/pg.sh: a throwaway cluster on loopback only.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 300
shared_buffers = 128MB
log_min_messages = warning
EOF
    if [ "$fsync" = no ]; then
        cat >>"$dir/data/postgresql.conf" <<EOF
# --no-fsync: for tests only (see scripts/pg.sh).
fsync = off
full_page_writes = off
EOF
    fi
    if [ "$ssl" = yes ]; then
        make_certificates "$dir"
        cat >>"$dir/data/postgresql.conf" <<EOF
ssl = on
ssl_cert_file = '$dir/tls/server.crt'
ssl_key_file = '$dir/tls/server.key'
ssl_min_protocol_version = 'TLSv1.2'
EOF
        # TLS or nothing: a connection without it is refused.
        cat >"$dir/data/pg_hba.conf" <<EOF
local     all all                trust
hostssl   all all 127.0.0.1/32   trust
hostnossl all all 127.0.0.1/32   reject
EOF
        chmod 755 "$dir"
    fi
    as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start >&2 \
        || { cat "$dir/log" >&2; fail "pg_ctl start failed"; }
    wait_ready "$port" "$dir"
    if [ "$ssl" = yes ]; then
        echo "postgres://postgres@127.0.0.1:$port/postgres?sslmode=verify-full&sslrootcert=$dir/tls/ca.crt"
    else
        echo "postgres://postgres@127.0.0.1:$port/postgres"
    fi
    ;;
down)
    [ -d "$dir/data" ] || fail "no cluster in $dir"
    as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2
    ;;
up)
    [ -d "$dir/data" ] || fail "no cluster in $dir"
    port=$(sed -n 's/^port = \([0-9]*\)$/\1/p' "$dir/data/postgresql.conf" | tail -n 1)
    as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start >&2 \
        || { cat "$dir/log" >&2; fail "pg_ctl start failed"; }
    wait_ready "$port" "$dir"
    ;;
stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 || true
    fi
    rm -rf "$dir"
    ;;
*)
    fail "unknown command $cmd: expected start, down, up or stop"
    ;;
esac
