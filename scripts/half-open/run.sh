#!/usr/bin/env bash
# Measures how long the server takes to find peers that vanished (docs/RELIABILITY.md §4): in a
# network namespace of its own (so that nothing else on the machine is touched), starts the
# server on 127.0.0.1:9313, connects a WebSocket and an SSE client, and after each one's first
# keep-alive drops every packet of its connection with an nftables rule; prints when the server
# stops counting each connection (/metrics). Takes about 90 s. Run by hand, as root, with nft
# (Debian `nftables`) and python3; not in CI.
#
#   scripts/half-open/run.sh target/release/tidings tokio [--set KEY=VALUE ...]
set -euo pipefail
if [[ "${HALF_OPEN_IN_NETNS:-}" != 1 ]]; then
    command -v nft >/dev/null || { echo "half-open: nft is needed (apt-get install nftables)" >&2; exit 2; }
    exec env HALF_OPEN_IN_NETNS=1 unshare -n "$0" "$@"
fi
bin=$1 runtime=$2
shift 2
here=$(dirname "$0")
log=$(mktemp /tmp/half-open-server.XXXXXX)
ip link set lo up
RUST_LOG=info,tidings_adapter::server=debug "$bin" serve --listen 127.0.0.1:9313 \
    --runtime "$runtime" --memory "$@" >/dev/null 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/9313) 2>/dev/null && break
    sleep 0.1
done
python3 "$here/measure.py" 9313
echo "server log: $log"
