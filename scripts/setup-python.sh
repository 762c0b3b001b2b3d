#!/usr/bin/env bash
# Installs the Python clients the interop tests use (PyPI ksbus, sseclient-py, requests, httpx
# and h2, pinned in tests/interop/python-requirements.txt) into a virtual environment at
# tests/interop/.venv, which tests/ksbus_interop.rs and tests/http.rs use.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v python3 >/dev/null; then
    echo "setup-python: python3 is needed; installing it from Debian" >&2
    apt-get update -qq && apt-get install -y -qq python3 python3-venv
fi
if [[ ! -x tests/interop/.venv/bin/python ]]; then
    python3 -m venv tests/interop/.venv
fi
tests/interop/.venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -r tests/interop/python-requirements.txt
