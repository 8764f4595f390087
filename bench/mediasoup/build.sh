#!/bin/bash
# Offline build of the mediasoup 3.19.3 worker against Debian 12 system libraries, for the
# side-by-side benchmark (bench/load.py, tests/interop/test_mediasoup.py look in
# bench/mediasoup/build unless MEDIASOUP_DIR says otherwise). The recipe and the patch are
# the project's shared peer recipe (shared/peers/mediasoup), kept here so a clone has them.
# (npm's postinstall wants a GitHub prebuilt, else meson subprojects from GitHub/openssl.org: both unreachable here.)
# usage: bench/mediasoup/build.sh DIR   (as root; about 8 minutes on 2 cores)   -> DIR/node_modules/mediasoup/worker/out/Release/build/mediasoup-worker
set -euo pipefail
DIR=${1:?usage: build_worker.sh DIR}
PATCH=$(dirname "$(readlink -f "$0")")/mediasoup-3.19.3-system-libs.patch
export DEBIAN_FRONTEND=noninteractive
apt-get install -y libssl-dev libuv1-dev libsrtp2-dev libusrsctp-dev libabsl-dev \
  libflatbuffers-dev flatbuffers-compiler pkg-config g++ make >/dev/null
mkdir -p "$DIR" && cd "$DIR"
[ -f package.json ] || npm init -y >/dev/null
# node 20 => npm resolves mediasoup@3 to 3.19.3 (3.2x needs node >= 22); pin it so the patch applies
npm install --ignore-scripts mediasoup@3.19.3 ws@8 >/dev/null
python3 -m venv "$DIR/msvenv" && "$DIR/msvenv/bin/pip" install -q meson==1.5.0 ninja
cd node_modules/mediasoup/worker
patch -p1 -N < "$PATCH" || true          # -N: skip if already applied
export PATH="$DIR/msvenv/bin:$PATH"
[ -d out/Release/build ] || meson setup --wrap-mode=nodownload --buildtype release -Db_ndebug=true \
     -Dms_disable_liburing=true out/Release/build
ninja -C out/Release/build fbs/FBS        # generated FlatBuffers headers first (no dep edge to them)
ninja -C out/Release/build -j"$(nproc)" mediasoup-worker
ls -la out/Release/build/mediasoup-worker
