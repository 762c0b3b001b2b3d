#!/usr/bin/env bash
# Before/after fan-out of two tidings server binaries, with nats-server as a fixed yardstick,
# measured by the project's own load generator (`tidings-bench fanout`, the method of
# docs/BENCHMARKS.md "The optimisation work: before and after each change" and of `compare`'s
# 128 B fan-out rows: 128 B payloads, window 32, N = 1,000 x 2,000 messages and
# N = 10,000 x 200 messages, i.e. 2 M deliveries per run).
#
# usage: benches/scripts/pair.sh BEFORE_BIN AFTER_BIN
#   e.g. benches/scripts/pair.sh ../base/target/release/tidings target/release/tidings
#   (../base: a worktree of the commit before, built with cargo build --release -p tidings -p tidings-bench)
#
# Every run is one `tidings-bench fanout ... --json` child process, which starts its server
# itself on a free 127.0.0.1 port (tidings: `--server-bin`, `serve --listen 127.0.0.1:0` with
# retention raised; nats: generated config with free ports) and stops it by pid (SIGTERM,
# SIGKILL after 10 s). Each run is also bounded from outside by `timeout`, which signals the
# run's whole process group (load generator + the server it started) if it hangs.
# Systems take turns inside each repeat, in a rotated order (repeat 1: before after nats,
# repeat 2: after nats before, repeat 3: nats before after), so drifts of a shared machine's
# load spread over all of them. Cells are medians of the repeats that did not fail or time out.
#
# Environment (defaults in brackets):
#   RUNS [3]            repeats
#   NS ["1000 10000"]   subscriber counts
#   MSGS_1000 [2000]    messages at N = 1,000;  MSGS_10000 [200] at N = 10,000 (other N: 2e6/N)
#   NATS [1]            0: leave nats-server out
#   BENCH [target/release/tidings-bench]  the load generator (the same for all runs)
#   NATS_BIN [nats-server on PATH or /usr/sbin]
#   TIMEOUT [120]       seconds one run may take (tidings-bench --timeout); hard kill at +45 s
#   QUIET [30]          before each run wait up to this many s for a second >= 70 % idle (0: no wait)
#   OUT [/tmp/bench-pair-<time>.jsonl]   every run's JSON line (+ label, repeat, idle, load)
#   BEFORE_LABEL [before], AFTER_LABEL [after]
#   TARGET [tidings]    the tidings protocol of both sides: tidings (native /ws) or tidings-sse
#   RUNTIME [tokio]     tidings serve --runtime of both sides: tokio or async-std
#   BEFORE_ARGS, AFTER_ARGS [none]   extra `tidings serve` flags for one side, space-separated
#                       (e.g. one binary twice: BEFORE_ARGS=--memory AFTER_ARGS='--durability strict')
# Re-print the table of an earlier OUT without measuring: benches/scripts/pair.sh --table FILE.jsonl
set -euo pipefail

table() {
    python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
labels = []
for r in rows:
    if r["label"] not in labels:
        labels.append(r["label"])
ns = sorted({r["subscribers"] for r in rows})
def ok(r):
    return r.get("rc") == 0 and not r.get("timed_out") and r.get("deliveries_per_sec")
def med(vals):
    return statistics.median(vals) if vals else None
def fmt_rate(v):
    return "-" if v is None else (f"{v/1e6:.2f} M" if v >= 1e6 else f"{v/1e3:.0f} k")
def fmt_num(v, d=0):
    return "-" if v is None else f"{v:,.{d}f}"
cells = {}
print()
print("| N | system | runs ok | deliveries/s median (range) | server CPU ns/delivery median (range) | server cycles/delivery | peak RSS | lost/reordered | idle % before runs |")
print("|---|---|---|---|---|---|---|---|---|")
for n in ns:
    for lab in labels:
        rs = [r for r in rows if r["subscribers"] == n and r["label"] == lab]
        good = [r for r in rs if ok(r)]
        d = [r["deliveries_per_sec"] for r in good]
        ns_ = [r["server_cpu_ns_per_delivery"] for r in good if r.get("server_cpu_ns_per_delivery") is not None]
        cy = [r["server_cycles_per_delivery"] for r in good if r.get("server_cycles_per_delivery") is not None]
        rss = [r["server_rss_bytes"] for r in good if r.get("server_rss_bytes")]
        lost = sum(r.get("lost", 0) or 0 for r in rs)
        reo = sum(r.get("reordered", 0) or 0 for r in rs)
        idle = [r.get("idle_pct") for r in rs if r.get("idle_pct") is not None]
        cells[(n, lab)] = (med(d), med(ns_), med(cy))
        rng = lambda v, f: f" ({f(min(v))}–{f(max(v))})" if len(v) > 1 else ""
        print(f"| {n:,} | {lab} | {len(good)}/{len(rs)} | {fmt_rate(med(d))}{rng(d, fmt_rate)} | "
              f"{fmt_num(med(ns_))}{rng(ns_, fmt_num)} | {fmt_num(med(cy))} | "
              f"{'-' if not rss else f'{med(rss)/1e6:.0f} MB'} | {lost}/{reo} | "
              f"{'-' if not idle else f'{min(idle):.0f}–{max(idle):.0f}'} |")
tid = [l for l in labels if l != "nats"]
print()
def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a/b:.3f}×"
if len(tid) >= 2:
    b, a = tid[0], tid[1]
    print(f"| N | {a} ÷ {b}: deliveries/s (higher is better) | {a} ÷ {b}: CPU per delivery (lower is better) | {a} ÷ {b}: cycles per delivery |")
    print("|---|---|---|---|")
    for n in ns:
        (db, nb, cb), (da, na, ca) = cells.get((n, b), (None,)*3), cells.get((n, a), (None,)*3)
        print(f"| {n:,} | {ratio(da, db)} | {ratio(na, nb)} | {ratio(ca, cb)} |")
    print()
if "nats" in labels:
    print("| N | " + " | ".join(f"{l} ÷ nats: deliveries/s" for l in tid) + " | " +
          " | ".join(f"{l} ÷ nats: CPU/delivery" for l in tid) + " |")
    print("|---|" + "---|" * (2 * len(tid)))
    for n in ns:
        dn, nn, _ = cells.get((n, "nats"), (None,)*3)
        print(f"| {n:,} | " + " | ".join(ratio(cells[(n, l)][0], dn) for l in tid) + " | " +
              " | ".join(ratio(cells[(n, l)][1], nn) for l in tid) + " |")
PY
}

if [ "${1:-}" = "--table" ]; then
    table "$2"
    exit 0
fi
if [ $# -ne 2 ]; then
    sed -n '2,36p' "$0" >&2
    exit 2
fi

RUNS=${RUNS:-3}
NS=${NS:-"1000 10000"}
NATS=${NATS:-1}
BENCH=${BENCH:-target/release/tidings-bench}
TIMEOUT=${TIMEOUT:-120}
QUIET=${QUIET:-30}
OUT=${OUT:-/tmp/bench-pair-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
BEFORE_LABEL=${BEFORE_LABEL:-before}
AFTER_LABEL=${AFTER_LABEL:-after}
TARGET=${TARGET:-tidings}
RUNTIME=${RUNTIME:-tokio}

for f in "$1" "$2" "$BENCH"; do
    [ -x "$f" ] || { echo "not an executable: $f" >&2; exit 2; }
done
if [ "$NATS" = 1 ] && ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ] &&
    [ -z "${NATS_BIN:-}" ]; then
    echo "nats-server not installed (apt-get install nats-server), or run with NATS=0" >&2
    exit 2
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10200 ]; then
    echo "open-file limit $(ulimit -n) is too low for N = 10,000" >&2
    exit 2
fi

# Pin the binaries: copies, so that a rebuild during the run changes nothing.
DIR=$(mktemp -d /tmp/bench-pair.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
cp "$1" "$DIR/tidings.before"
cp "$2" "$DIR/tidings.after"
cp "$BENCH" "$DIR/tidings-bench"
: >"$OUT"

echo "== bench-pair: $(date -u +%FT%TZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "   $BEFORE_LABEL = $1 (sha256 $(sha256sum "$1" | cut -c1-12)) ${BEFORE_ARGS:-}" >&2
echo "   $AFTER_LABEL = $2 (sha256 $(sha256sum "$2" | cut -c1-12)) ${AFTER_ARGS:-}" >&2
echo "   load generator $BENCH; target $TARGET, runtime $RUNTIME; runs $RUNS; N = $NS; nats $NATS; JSON lines -> $OUT" >&2

# Percent of CPU time idle over one second.
idle_pct() {
    local u n s i w x y z t1 i1
    read -r _ u n s i w x y z _ </proc/stat
    t1=$((u + n + s + i + w + x + y + z)) i1=$((i + w))
    sleep 1
    read -r _ u n s i w x y z _ </proc/stat
    echo $((100 * (i + w - i1) / (u + n + s + i + w + x + y + z - t1)))
}

# run LABEL REPEAT N ARGS...: one fan-out, its JSON line (+ our fields) appended to OUT.
run() {
    local label=$1 rep=$2 n=$3
    shift 3
    local idle waited=0 rc=0 t0 t1 line
    idle=$(idle_pct)
    while [ "$idle" -lt 70 ] && [ "$waited" -lt "$QUIET" ]; do
        idle=$(idle_pct)
        waited=$((waited + 1))
    done
    t0=$(date +%s.%N)
    # timeout signals the whole process group it runs in (not --foreground): the load
    # generator and the server it started.
    timeout -k 10 $((TIMEOUT + 45)) "$DIR/tidings-bench" fanout "$@" \
        --subscribers "$n" --size 128 --messages "$(msgs "$n")" --window 32 \
        --timeout "$TIMEOUT" --json >"$DIR/run.out" 2>"$DIR/run.err" || rc=$?
    t1=$(date +%s.%N)
    line=$(tail -n 1 "$DIR/run.out")
    case $line in \{*) ;; *) line='{}' ;; esac
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])
if "subscribers" not in r: r["subscribers"] = int(sys.argv[4])
r.update(label=sys.argv[2], repeat=int(sys.argv[3]), rc=int(sys.argv[5]),
         idle_pct=int(sys.argv[6]), loadavg=sys.argv[7], wall_s=round(float(sys.argv[8]), 1))
print(json.dumps(r))' "$line" "$label" "$rep" "$n" "$rc" "$idle" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" >>"$OUT"
    python3 -c '
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
g = r.get
d, c, ns = g("deliveries_per_sec"), g("server_cycles_per_delivery"), g("server_cpu_ns_per_delivery")
res = "%.2f M deliveries/s, %.0f ns / %.0f cycles per delivery, " % (d / 1e6, ns or 0, c or 0) if d else "no result, "
print("  %12s N=%6d rep %d: rc %d, %slost %s, reordered %s, idle %d %%, load %s, %s s" % (
    r["label"], r["subscribers"], r["repeat"], r["rc"], res, g("lost"), g("reordered"),
    r["idle_pct"], r["loadavg"], r["wall_s"]), file=sys.stderr)' "$OUT"
    if [ "$rc" -ne 0 ]; then
        echo "    (failed, rc $rc; stderr tail:)" >&2
        tail -n 5 "$DIR/run.err" | sed 's/^/    /' >&2
    fi
}

msgs() {
    case $1 in
        1000) echo "${MSGS_1000:-2000}" ;;
        10000) echo "${MSGS_10000:-200}" ;;
        *) echo $((2000000 / $1)) ;;
    esac
}

read -r -a BEFORE_SERVER <<<"${BEFORE_ARGS:-}"
read -r -a AFTER_SERVER <<<"${AFTER_ARGS:-}"
server_args() { for a in "$@"; do printf -- '--server-arg=%s\n' "$a"; done; }
mapfile -t BEFORE_SERVER < <(server_args "${BEFORE_SERVER[@]}")
mapfile -t AFTER_SERVER < <(server_args "${AFTER_SERVER[@]}")
SYSTEMS=(before after)
[ "$NATS" = 1 ] && SYSTEMS+=(nats)
NATS_ARGS=()
[ -n "${NATS_BIN:-}" ] && NATS_ARGS=(--nats-bin "$NATS_BIN")
START=$(date +%s)
for rep in $(seq "$RUNS"); do
    echo "=== repeat $rep of $RUNS" >&2
    for n in $NS; do
        k=${#SYSTEMS[@]}
        for j in $(seq 0 $((k - 1))); do
            sys=${SYSTEMS[$(((j + rep - 1) % k))]}
            case $sys in
                before) run "$BEFORE_LABEL" "$rep" "$n" --target "$TARGET" --runtime "$RUNTIME" --server-bin "$DIR/tidings.before" "${BEFORE_SERVER[@]}" ;;
                after) run "$AFTER_LABEL" "$rep" "$n" --target "$TARGET" --runtime "$RUNTIME" --server-bin "$DIR/tidings.after" "${AFTER_SERVER[@]}" ;;
                nats) run nats "$rep" "$n" --target nats "${NATS_ARGS[@]}" ;;
            esac
        done
    done
done
echo "== done in $(($(date +%s) - START)) s; load $(cut -d' ' -f1-3 /proc/loadavg); JSON lines in $OUT" >&2
table "$OUT"
