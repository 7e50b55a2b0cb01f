#!/usr/bin/env bash
# The test command: make sure DCMTK is installed, then check formatting and
# lints, build every target and run every test of the workspace.
#
# In CI (CI=true) a missing tool fails the run; nothing is ever skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

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
DCMTK_TOOLS=(/usr/bin/echoscu /usr/bin/storescu /usr/bin/dcmdump)

missing_dcmtk() {
    local tool
    for tool in "${DCMTK_TOOLS[@]}"; do
        [ -x "$tool" ] || return 0
    done
    return 1
}

if missing_dcmtk; then
    step "installing DCMTK: apt-get update && apt-get install -y dcmtk"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y dcmtk
fi
if missing_dcmtk; then
    fail "DCMTK is still missing after apt-get install (need ${DCMTK_TOOLS[*]})"
fi
step "DCMTK: $(/usr/bin/storescu --version 2>&1 | head -n 1)"

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

step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

step "cargo test --workspace"
cargo test --workspace

step "all checks passed"
