#!/usr/bin/env bash
# The load-generator runs of docs/BENCHMARKS.md ("Server load: fan-out, latency and memory"):
# every scenario RUNS times, each result's JSON line appended to OUT. Then:
#   benches/scripts/loadgen_medians.py OUT
# Needs the release server: cargo build --release -p tidings (and the bench: -p tidings-bench).
# Environment: RUNS (3), OUT (loadgen.jsonl), RUNTIMES ("tokio"; add async-std once it exists),
# TARGET_DIR (target), EXTRA (more flags for every run, e.g. --server-arg=...).
set -euo pipefail
RUNS=${RUNS:-3}
OUT=${OUT:-loadgen.jsonl}
RUNTIMES=${RUNTIMES:-tokio}
TARGET_DIR=${TARGET_DIR:-target}
BENCH="$TARGET_DIR/release/tidings-bench"
SERVER="$TARGET_DIR/release/tidings"
run() {
    echo "+ tidings-bench $*   [load $(cut -d' ' -f1-3 /proc/loadavg)]" >&2
    "$BENCH" "$@" --server-bin "$SERVER" ${EXTRA:-} --json | tail -n 1 >>"$OUT" || echo "  (failed)" >&2
}
for i in $(seq "$RUNS"); do
    echo "=== run $i of $RUNS" >&2
    for rt in $RUNTIMES; do
        for target in tidings tidings-sse; do
            run fanout --runtime "$rt" --target "$target" --subscribers 1000 --size 128 --messages 10000
            run fanout --runtime "$rt" --target "$target" --subscribers 10000 --size 128 --messages 1000
            run fanout --runtime "$rt" --target "$target" --subscribers 1000 --size 128 --messages 2000 --rate 100
            run idle --runtime "$rt" --target "$target" --connections 10000
        done
    done
done
