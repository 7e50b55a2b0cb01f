#!/usr/bin/env bash
# Fetches what the OHIF integration test (tests/it/ohif.rs) needs into a
# cache outside git, once: npm's @ohif/app (its prebuilt dist/) and
# playwright-core (driving Debian's /usr/bin/chromium; Playwright's own
# browser download is never used). Prints the cache directory.
#
#   scripts/ohif.sh [CACHE_DIR]
#
# CACHE_DIR defaults to $IMAGESERVER_OHIF_CACHE, else
# ${XDG_CACHE_HOME:-$HOME/.cache}/imageserver-ohif.
set -euo pipefail

OHIF_VERSION=3.13.2
PLAYWRIGHT_VERSION=1
CACHE=${1:-${IMAGESERVER_OHIF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imageserver-ohif}}

fail() { printf 'error: %s\n' "$*" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || fail "npm is missing (apt-get install -y npm)"

mkdir -p "$CACHE"
APP="$CACHE/ohif-app-$OHIF_VERSION"
if [ ! -f "$APP/dist/index.html" ]; then
    tmp=$(mktemp -d "$CACHE/fetch.XXXXXX")
    (cd "$tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null) \
        || fail "npm pack @ohif/app@$OHIF_VERSION failed"
    tar -xzf "$tmp"/ohif-app-*.tgz -C "$tmp"
    [ -f "$tmp/package/dist/index.html" ] || fail "@ohif/app@$OHIF_VERSION has no prebuilt dist/"
    rm -rf "$APP"
    mv "$tmp/package" "$APP"
    rm -rf "$tmp"
fi
if [ ! -f "$CACHE/node_modules/playwright-core/package.json" ]; then
    (cd "$CACHE" && npm install --silent --no-audit --no-fund --no-save \
        "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null) \
        || fail "npm install playwright-core failed"
fi
echo "$CACHE"
