#!/usr/bin/env bash
# Installs the peers that `tidings-bench compare` measures tidings against, pinned:
#   - nats-server from Debian (apt; 2.9.x on bookworm), WebSocket listener configured by the harness
#   - socket.io 4.x from npm (benches/peers/socketio, `npm ci` from its package-lock.json)
#   - fonts-dejavu-core (apt) for the text of `compare --plot`, if no DejaVu/Liberation font is there
#   - socketioxide from crates.io (benches/peers/socketioxide, its own cargo workspace with its
#     own Cargo.lock), release build into the workspace's target dir
# Each step is skipped when its tool (apt-get, npm, cargo) is missing; the harness then reports
# "skipped: <peer> not installed (run benches/scripts/setup-peers.sh)".
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

PATH="$PATH:/usr/sbin"
APT=()
command -v nats-server >/dev/null || APT+=(nats-server)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] ||
    [ -f /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf ] || APT+=(fonts-dejavu-core)
if [ ${#APT[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null; then
        echo "== apt: ${APT[*]}" >&2
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT[@]}"
    else
        echo "no apt-get: install ${APT[*]} by hand (nats-server >= 2.2, for WebSocket)" >&2
    fi
fi
if command -v nats-server >/dev/null; then nats-server --version >&2; fi

if command -v npm >/dev/null; then
    echo "== socket.io (npm ci)" >&2
    (cd "$ROOT/benches/peers/socketio" && npm ci --no-audit --no-fund --omit=dev)
else
    echo "no npm: the socket.io peer is skipped" >&2
fi

if command -v cargo >/dev/null; then
    echo "== socketioxide (cargo build --release, target dir $TARGET_DIR)" >&2
    cargo build --release --locked --manifest-path "$ROOT/benches/peers/socketioxide/Cargo.toml" \
        --target-dir "$TARGET_DIR"
fi
echo "peers ready" >&2
