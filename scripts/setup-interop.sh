#!/usr/bin/env bash
# Installs the third-party clients and servers the interop tests use: npm packages from the
# lockfile; curl (with HTTP/2) for the HTTP and TLS tests, pebble, the ACME test server, for
# tests/acme.rs, and nats-server (JetStream) for tests/cluster.rs, from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
have_nats() { command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ]; }
if ! command -v curl >/dev/null || ! command -v pebble >/dev/null || ! have_nats; then
    echo "setup-interop: installing curl, pebble and nats-server from Debian" >&2
    apt-get update -qq && apt-get install -y -qq curl pebble nats-server
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup-interop: node and npm are needed; installing them from Debian" >&2
    apt-get update -qq && apt-get install -y -qq nodejs npm
fi
(cd tests/interop && npm ci --no-audit --no-fund)
