#!/usr/bin/env bash
# The project's one test command: Rust unit and integration tests, then the
# Python and browser interop tests against the built server inside a private
# network namespace (needs root, iproute2, python3 with venv, and for the
# browser tests node/npm and Debian's chromium; see tests/interop/README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== cargo test --workspace"
cargo test --workspace

echo "== cargo build"
cargo build

echo "== python venv (.venv)"
PYTHON="${PYTHON:-python3}"
if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    rm -rf .venv
    "$PYTHON" -m venv .venv
fi
# Reinstall only when the requirements changed since the last install.
stamp=.venv/.interop-requirements.sha256
want="$(sha256sum tests/interop/requirements.txt | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check \
        -r tests/interop/requirements.txt
    echo "$want" >"$stamp"
fi

echo "== npm packages (tests/browser)"
# livekit-client and playwright-core for the browser interop tests
# (tests/interop/test_browser.py); `npm ci` again only when package-lock.json
# changed since the last install. Chromium itself comes from Debian (.ci/run).
if command -v npm >/dev/null 2>&1; then
    stamp=tests/browser/node_modules/.aviary-package-lock.sha256
    want="$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
        echo "$want" >"$stamp"
    fi
else
    echo "npm not found: the browser tests will fail (install nodejs and npm)" >&2
fi

echo "== interop tests"
export AVIARY_BIN="${AVIARY_BIN:-$PWD/target/debug/aviary}"
scripts/testnet.sh run -- .venv/bin/python -m pytest tests/interop -v "$@"
