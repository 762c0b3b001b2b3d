#!/usr/bin/env bash
# Installs what the real-browser tests (tests/browser.rs) need: Debian's Chromium at
# /usr/bin/chromium, node and npm, and playwright-core from tests/browser/package-lock.json
# (playwright-core downloads no browser; the tests launch Debian's).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
    echo "setup-browser: installing Debian's chromium" >&2
    apt-get update && apt-get install -y chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup-browser: node and npm are needed; installing them from Debian" >&2
    apt-get update -qq && apt-get install -y -qq nodejs npm
fi
(cd tests/browser && npm ci --no-audit --no-fund)
