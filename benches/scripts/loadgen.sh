#!/usr/bin/env bash
# The load-generator runs of docs/BENCHMARKS.md ("Server load: fan-out, latency and memory"):
# every scenario RUNS times, each result's JSON line appended to OUT. Then:
#   benches/scripts/loadgen_medians.py OUT
# Needs the release server: cargo build --release -p tidings (and the bench: -p tidings-bench).
# Environment: RUNS (3), OUT (loadgen.jsonl), RUNTIMES ("tokio"; add async-std once it exists),
# TARGET_DIR (target), EXTRA (more flags for every run, e.g. --server-arg=...), QUIET (1: before
# each run, wait up to ~5 min for a second in which the CPUs are at least 85 % idle, so that
# other work on a shared machine disturbs fewer runs; the idle share is logged either way).
set -euo pipefail
RUNS=${RUNS:-3}
OUT=${OUT:-loadgen.jsonl}
RUNTIMES=${RUNTIMES:-tokio}
TARGET_DIR=${TARGET_DIR:-target}
BENCH="$TARGET_DIR/release/tidings-bench"
SERVER="$TARGET_DIR/release/tidings"
# Percent of CPU time idle over one second.
idle_pct() {
    local u n s i w x y z t1 i1
    read -r _ u n s i w x y z _ </proc/stat
    t1=$((u + n + s + i + w + x + y + z)) i1=$((i + w))
    sleep 1
    read -r _ u n s i w x y z _ </proc/stat
    echo $((100 * (i + w - i1) / (u + n + s + i + w + x + y + z - t1)))
}
run() {
    local idle
    idle=$(idle_pct)
    if [ "${QUIET:-0}" = 1 ]; then
        for _ in $(seq 60); do
            [ "$idle" -ge 85 ] && break
            sleep 4
            idle=$(idle_pct)
        done
    fi
    echo "+ tidings-bench $*   [idle ${idle} %, load $(cut -d' ' -f1-3 /proc/loadavg)]" >&2
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
