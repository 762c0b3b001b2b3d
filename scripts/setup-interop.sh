#!/usr/bin/env bash
# Installs the third-party clients the interop tests use: npm packages from the lockfile.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup-interop: node and npm are needed; installing them from Debian" >&2
    apt-get update -qq && apt-get install -y -qq nodejs npm
fi
(cd tests/interop && npm ci --no-audit --no-fund)
