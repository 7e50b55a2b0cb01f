#!/usr/bin/env bash
# The test command: make sure DCMTK and PostgreSQL are installed, then check
# formatting, lints and docs, build every target and run every test of the
# workspace: once on SQLite, and the integration binary once more with the
# index on PostgreSQL (a throwaway cluster this script starts and removes);
# then the benchmarks' smoke runs and the library checked with each index
# backend alone (cargo features); last, run the examples for real
# (scripts/examples.sh).
#
# In CI (CI=true) a missing tool fails the run; nothing is ever skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each step prints the minutes and seconds since the script started, so a
# run's log shows where the suite's time goes (it must stay under 20 min).
step() { printf '\n==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

# IMAGESERVER_SKIP_PG=1 turns the library's PostgreSQL tests green without
# running them. This script starts PostgreSQL itself, so it never needs it:
# CI refuses it outright, a developer's shell gets it unset.
if [ -n "${IMAGESERVER_SKIP_PG:-}" ]; then
    if [ "${CI:-}" = "true" ]; then
        fail "IMAGESERVER_SKIP_PG is set in CI: the PostgreSQL tests must run, not be skipped"
    fi
    printf 'note: IMAGESERVER_SKIP_PG is ignored: this script runs PostgreSQL for the tests\n' >&2
    unset IMAGESERVER_SKIP_PG
fi

# Root runs apt-get directly; anyone else goes through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        fail "need root or sudo to run: $*"
    fi
}

# The DCMTK tools the integration tests call by full path.
DCMTK_TOOLS=(/usr/bin/echoscu /usr/bin/storescu /usr/bin/storescp /usr/bin/findscu /usr/bin/movescu /usr/bin/getscu /usr/bin/dcmdump /usr/bin/dump2dcm)

missing_dcmtk() {
    local tool
    for tool in "${DCMTK_TOOLS[@]}"; do
        [ -x "$tool" ] || return 0
    done
    return 1
}

# Orthanc is the peer PACS of the interoperability test (it queries and
# retrieves from us); curl drives its REST API.
ORTHANC=/usr/sbin/Orthanc

# PostgreSQL 15 for the PostgreSQL backend's tests (scripts/pg.sh runs it).
PG_INITDB=/usr/lib/postgresql/15/bin/initdb

# HAProxy, the large deployment's balancer (deploy/large/cluster.sh, the
# cluster test).
HAPROXY=/usr/sbin/haproxy

# Chromium (headless) renders the admin pages in the web_admin test; Node
# runs playwright-core, which drives it.
CHROMIUM=/usr/bin/chromium

# The Debian packages of the tools that are missing, one per tool: a
# machine that already has a tool (Node.js and npm from elsewhere, say) is
# not asked to install Debian's, which may conflict with it (Debian's npm
# conflicts with a nodejs not of its own).
missing_packages() {
    missing_dcmtk && echo dcmtk
    [ -x "$ORTHANC" ] || echo orthanc
    command -v curl >/dev/null 2>&1 || echo curl
    [ -x "$PG_INITDB" ] || echo postgresql
    command -v sqlite3 >/dev/null 2>&1 || echo sqlite3
    [ -x "$HAPROXY" ] || echo haproxy
    [ -x "$CHROMIUM" ] || echo chromium
    command -v node >/dev/null 2>&1 || echo nodejs
    command -v npm >/dev/null 2>&1 || echo npm
    command -v openssl >/dev/null 2>&1 || echo openssl
    return 0
}

mapfile -t PACKAGES < <(missing_packages)
if [ "${#PACKAGES[@]}" -gt 0 ]; then
    step "installing what is missing: apt-get update && apt-get install -y ${PACKAGES[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${PACKAGES[@]}"
fi
[ -x "$CHROMIUM" ] || fail "Chromium is still missing after apt-get install ($CHROMIUM)"
command -v npm >/dev/null 2>&1 || fail "npm is still missing after apt-get install"
command -v openssl >/dev/null 2>&1 || fail "openssl is still missing after apt-get install (the TLS tests make their certificates with it)"
[ -x "$HAPROXY" ] || fail "HAProxy is still missing after apt-get install ($HAPROXY)"
[ -x "$PG_INITDB" ] || fail "PostgreSQL 15 is still missing after apt-get install ($PG_INITDB)"
command -v sqlite3 >/dev/null 2>&1 || fail "sqlite3 is still missing after apt-get install (the tests read index rows with it)"

if missing_dcmtk; then
    fail "DCMTK is still missing after apt-get install (need ${DCMTK_TOOLS[*]})"
fi
[ -x "$ORTHANC" ] || fail "Orthanc is still missing after apt-get install ($ORTHANC)"
step "DCMTK: $(/usr/bin/storescu --version 2>&1 | head -n 1)"

# pynetdicom drives the finer query/retrieve semantics (cancel, pending
# counts, role selection) in the integration tests.
if ! python3 -c 'import pynetdicom, pydicom' >/dev/null 2>&1; then
    step "installing pynetdicom: python3 -m pip install pynetdicom pydicom"
    python3 -m pip install --quiet pynetdicom pydicom \
        || fail "cannot install pynetdicom with pip"
fi
python3 -c 'import pynetdicom, pydicom' || fail "pynetdicom is still missing"
step "pynetdicom $(python3 -c 'import pynetdicom; print(pynetdicom.__version__)')"

# dicomweb-client drives the DICOMweb tests; prometheus_client parses /metrics.
if ! python3 -c 'import dicomweb_client, prometheus_client, requests' >/dev/null 2>&1; then
    step "installing DICOMweb clients: python3 -m pip install dicomweb-client prometheus_client requests"
    python3 -m pip install --quiet dicomweb-client prometheus_client requests \
        || fail "cannot install dicomweb-client with pip"
fi
python3 -c 'import dicomweb_client, prometheus_client, requests' || fail "dicomweb-client is still missing"

# The admin API test checks the server against its OpenAPI description.
if ! python3 -c 'import openapi_spec_validator, jsonschema' >/dev/null 2>&1; then
    step "installing OpenAPI checkers: python3 -m pip install openapi-spec-validator jsonschema"
    python3 -m pip install --quiet openapi-spec-validator jsonschema \
        || fail "cannot install openapi-spec-validator with pip"
fi
python3 -c 'import openapi_spec_validator, jsonschema' || fail "openapi-spec-validator is still missing"

# playwright-core drives Chromium in the admin pages test (its own browser
# download is not used); installed beside the build, never committed.
if [ ! -d target/node/node_modules/playwright-core ]; then
    step "installing playwright-core: npm install --prefix target/node playwright-core@1"
    mkdir -p target/node
    npm install --no-audit --no-fund --prefix target/node playwright-core@1 \
        || fail "cannot install playwright-core with npm"
fi
[ -d target/node/node_modules/playwright-core ] || fail "playwright-core is still missing"
export IMAGESERVER_NODE_MODULES="$PWD/target/node/node_modules"

# The OHIF test: scripts/ohif.sh fetches the viewer (npm's @ohif/app) and
# playwright-core into a cache outside git, once.
command -v node >/dev/null 2>&1 || fail "Node.js is still missing after apt-get install (package nodejs)"
step "fetching the OHIF viewer and playwright-core: scripts/ohif.sh"
IMAGESERVER_OHIF_CACHE=$(bash scripts/ohif.sh) || fail "cannot fetch the OHIF viewer (npm)"
export IMAGESERVER_OHIF_CACHE
step "OHIF viewer cached in $IMAGESERVER_OHIF_CACHE"

for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null 2>&1 \
            || fail "cargo ${component/rustfmt/fmt} is missing and rustup is not available"
        step "installing the $component component: rustup component add $component"
        rustup component add "$component"
    fi
done

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc --workspace --no-deps (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

# A throwaway PostgreSQL cluster for the tests, removed on exit (also when
# a test fails). Tests create and drop their own databases in it.
PG_DIR=$(mktemp -d /tmp/imageserver-test-pg.XXXXXX)
trap 'bash scripts/pg.sh stop "$PG_DIR" >/dev/null 2>&1 || true' EXIT
# No fsync in it: the tests kill processes, never the machine (scripts/pg.sh).
step "starting a throwaway PostgreSQL cluster, TLS only: scripts/pg.sh start $PG_DIR --ssl --no-fsync"
IMAGESERVER_PG_URL=$(bash scripts/pg.sh start "$PG_DIR" --ssl --no-fsync) || fail "cannot start PostgreSQL"
export IMAGESERVER_PG_URL
step "PostgreSQL at $IMAGESERVER_PG_URL"

# The PostgreSQL-only integration tests (postgres::pg_*, and the cluster
# test, which runs a PostgreSQL of its own) run in the second pass.
step "cargo test --workspace (index on SQLite)"
cargo test --workspace -- --skip postgres::pg_ --skip cluster::pg_

step "IMAGESERVER_IT_BACKEND=postgres cargo test --test it (index on PostgreSQL)"
IMAGESERVER_IT_BACKEND=postgres cargo test --test it

# The benchmarks' smoke runs (without --bench: tiny sizes, every answer
# checked), so that a benchmark that could report a wrong figure fails here.
step "cargo test -p imageserver --benches (the benchmarks' smoke runs)"
cargo test -p imageserver --benches

# An embedder may build the library with one index backend alone: every
# target of the library must compile and be lint-clean that way. Its tests
# are a subset of those the full build ran above, so they are not run again
# (that cost two more builds of the library and its tests).
step "cargo clippy -p imageserver-core --no-default-features --features sqlite --all-targets (SQLite alone)"
cargo clippy -p imageserver-core --no-default-features --features sqlite --all-targets -- -D warnings
step "cargo clippy -p imageserver-core --no-default-features --features postgres --all-targets (PostgreSQL alone)"
cargo clippy -p imageserver-core --no-default-features --features postgres --all-targets -- -D warnings

step "examples: custom_processor, custom_storage, small, and medium and large on PostgreSQL (scripts/examples.sh)"
bash scripts/examples.sh "$IMAGESERVER_PG_URL"

step "all checks passed"
