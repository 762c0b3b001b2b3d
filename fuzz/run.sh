#!/usr/bin/env bash
# Runs the fuzz targets on the stable toolchain (no sanitizer): `fuzz/run.sh [TARGET|all] [SECONDS]`.
# Installs cargo-fuzz if missing. Exits non-zero when a target crashes (the input is saved under
# fuzz/artifacts/<target>/). New corpus entries go to a scratch directory, not fuzz/corpus.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:-all}"
seconds="${2:-60}"
targets=(native_decode sse_decode sse_roundtrip broker_ops http_head ksbus_decode etp_decode log_decode)
if [[ "$target" != all ]]; then
    targets=("$target")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes `-Z` flags to rustc; on a stable toolchain cargo-fuzz 0.13 sets
# RUSTC_BOOTSTRAP=1 itself (checked with 0.13.2). Exported here too for older cargo-fuzz versions.
export RUSTC_BOOTSTRAP=1

for t in "${targets[@]}"; do
    printf '\n== fuzz %s for %ss\n' "$t" "$seconds"
    scratch="$(mktemp -d)"
    # The first corpus directory receives new inputs; the checked-in seeds are read only.
    cargo fuzz run -s none --fuzz-dir fuzz "$t" "$scratch" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1
    rm -rf "$scratch"
done
