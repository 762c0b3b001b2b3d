#!/usr/bin/env bash
# POST /publish over keep-alive connections (docs/BENCHMARKS.md, "The HTTP server on hyper
# (issue 15)"): publishes/s that `wrk` gets out of
#   ceiling       a trivial hyper server answering 200 to anything (benches/src/bin/http_ceiling.rs)
#   current       `tidings serve --memory`, the server under test
#   current-file  the same binary with its default store (the file log, a fresh --data-dir per run)
#   before        `tidings serve --memory` of the commit before the change (one request per
#                 connection, `Connection: close`: wrk reconnects after every answer)
#   before-file   the same binary with its default store
# all started here on a free 127.0.0.1 port and stopped by pid after each run, taking turns in
# a rotated order within each round, so that the drifts of a shared machine spread over all of
# them. Nothing is built: the binaries are the arguments.
#
# usage: benches/scripts/publish.sh CEILING_BIN CURRENT_BIN BEFORE_BIN
#   e.g. benches/scripts/publish.sh target/release/http_ceiling target/release/tidings \
#            ../before/target/release/tidings
# Re-print the tables of an earlier OUT without measuring: benches/scripts/publish.sh --table FILE.jsonl
#
# Each run: the server is started (`serve --listen 127.0.0.1:0 --runtime $RUNTIME`, stdout's
# `listening on http://ADDR` gives the port), one publish with curl checks the answer's status,
# then (mode `sub`) one SSE subscriber of the topic connects (`curl -sN /sse?topic=bench.a`, its
# events counted afterwards), then
#   wrk -t$THREADS -c$CONNS -d$DURATION -s benches/scripts/publish.lua URL
# POSTs $BYTES bytes of text to /publish?topic=bench.a as fast as the answers come. The server's
# CPU time (utime + stime) over the wrk run and its peak RSS (VmHWM) come from /proc/<pid>.
# Mode `nosub` (no subscriber) is the cheapest publish: no delivery. The ceiling has no `sub`
# runs (it has no streams); its `nosub` median is the ceiling of both modes.
#
# Environment (defaults in brackets):
#   ROUNDS [3]             rounds (every target once per round and mode)
#   MODES ["nosub sub"]    without / with one SSE subscriber on the topic
#   TARGETS ["ceiling current current-file before before-file"]
#   DURATION [10s], THREADS [2], CONNS [8], BYTES [100]   wrk's -d, -t, -c and the body length
#   RUNTIME [tokio]        tidings serve --runtime
#   WRK [wrk], LUA [the publish.lua next to this script]
#   QUIET [30]             before each run wait up to this many s for a second >= 70 % idle (0: no wait)
#   OUT [/tmp/bench-publish-<time>.jsonl]   every run's JSON line
set -euo pipefail

table() {
    python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
labels = []
for r in rows:
    if r["label"] not in labels:
        labels.append(r["label"])
modes = []
for r in rows:
    if r["mode"] not in modes:
        modes.append(r["mode"])
def med(v):
    return statistics.median(v) if v else None
def k(v):
    return "-" if v is None else (f"{v/1e3:.1f} k" if v >= 1e4 else f"{v:,.0f}")
def rng(v, f):
    return f" ({f(min(v))}–{f(max(v))})" if len(v) > 1 else ""
cells = {}
print()
print("| subscriber | target | runs | publishes/s median (range) | latency p50 / p99 µs (medians) | server CPU µs per publish | server peak RSS | socket errors (connect/read/write/timeout) | answers ≥ 400 | events the subscriber got / publishes | idle % before runs |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for mode in modes:
    for lab in labels:
        rs = [r for r in rows if r["mode"] == mode and r["label"] == lab]
        if not rs:
            continue
        good = [r for r in rs if r.get("rps")]
        rps = [r["rps"] for r in good]
        cells[(mode, lab)] = med(rps)
        cpu = [r["server_cpu_us_per_publish"] for r in good if r.get("server_cpu_us_per_publish") is not None]
        rss = [r["server_hwm_kb"] for r in good if r.get("server_hwm_kb")]
        p50 = med([r["lat_p50_us"] for r in good]); p99 = med([r["lat_p99_us"] for r in good])
        errs = "/".join(str(sum(r.get(f"err_{e}", 0) for r in good)) for e in ("connect", "read", "write", "timeout"))
        st = sum(r.get("err_status", 0) for r in good)
        chk = sorted({r.get("check_status") for r in rs})
        if mode == "sub":
            got = sum(r.get("sse_events") or 0 for r in good); pub = sum(r.get("requests", 0) - r.get("err_status", 0) for r in good)
            sub = f"{got:,} / {pub:,}"
        else:
            sub = "-"
        idle = [r["idle_pct"] for r in rs if r.get("idle_pct") is not None]
        print(f"| {mode} | {lab} | {len(good)}/{len(rs)} | {k(med(rps))}{rng(rps, k)} | "
              f"{'-' if p50 is None else f'{p50:,.0f} / {p99:,.0f}'} | "
              f"{'-' if not cpu else f'{med(cpu):.1f}'}{rng(cpu, lambda x: f'{x:.1f}')} | "
              f"{'-' if not rss else f'{med(rss)/1024:.0f} MB'} | {errs} | {st} (check: {', '.join(map(str, chk))}) | {sub} | "
              f"{'-' if not idle else f'{min(idle)}–{max(idle)}'} |")
print()
def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a/b:.2f}×"
ceil = cells.get(("nosub", "ceiling"))
pairs = [("current", "ceiling"), ("current-file", "ceiling"), ("current", "before"),
         ("current-file", "before-file"), ("current-file", "current")]
print("| subscriber | " + " | ".join(f"{a} ÷ {b}" for a, b in pairs) + " |")
print("|---|" + "---|" * len(pairs))
for mode in modes:
    out = []
    for a, b in pairs:
        bv = ceil if b == "ceiling" else cells.get((mode, b))
        out.append(ratio(cells.get((mode, a)), bv))
    print(f"| {mode} | " + " | ".join(out) + " |")
print()
print("Ratios of medians; the ceiling is its `nosub` median in both rows.")
PY
}

if [ "${1:-}" = "--table" ]; then
    table "$2"
    exit 0
fi
if [ $# -ne 3 ]; then
    sed -n '2,37p' "$0" >&2
    exit 2
fi

HERE=$(cd "$(dirname "$0")" && pwd)
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-"nosub sub"}
TARGETS=${TARGETS:-"ceiling current current-file before before-file"}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-8}
BYTES=${BYTES:-100}
RUNTIME=${RUNTIME:-tokio}
WRK=${WRK:-wrk}
LUA=${LUA:-$HERE/publish.lua}
QUIET=${QUIET:-30}
OUT=${OUT:-/tmp/bench-publish-$(date -u +%Y%m%dT%H%M%SZ).jsonl}

command -v "$WRK" >/dev/null || { echo "no $WRK (apt-get install wrk)" >&2; exit 2; }
command -v curl >/dev/null || { echo "no curl" >&2; exit 2; }
for f in "$1" "$2" "$3"; do
    [ -x "$f" ] || { echo "not an executable: $f" >&2; exit 2; }
done

# Pin the binaries: copies, so that a rebuild during the run changes nothing.
DIR=$(mktemp -d /tmp/bench-publish.XXXXXX)
SERVER_PID=
SUB_PID=
cleanup() {
    [ -n "$SUB_PID" ] && kill "$SUB_PID" 2>/dev/null || true
    [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
cp "$1" "$DIR/ceiling"
cp "$2" "$DIR/tidings.current"
cp "$3" "$DIR/tidings.before"
: >"$OUT"

echo "== bench-publish: $(date -u +%FT%TZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $($WRK -v 2>&1 | head -n 1)" >&2
echo "   ceiling = $1 (sha256 $(sha256sum "$1" | cut -c1-12))" >&2
echo "   current = $2 (sha256 $(sha256sum "$2" | cut -c1-12))" >&2
echo "   before  = $3 (sha256 $(sha256sum "$3" | cut -c1-12))" >&2
echo "   rounds $ROUNDS; modes $MODES; wrk -t$THREADS -c$CONNS -d$DURATION, $BYTES B bodies; runtime $RUNTIME; JSON lines -> $OUT" >&2

# Percent of CPU time idle over one second.
idle_pct() {
    local u n s i w x y z t1 i1
    read -r _ u n s i w x y z _ </proc/stat
    t1=$((u + n + s + i + w + x + y + z)) i1=$((i + w))
    sleep 1
    read -r _ u n s i w x y z _ </proc/stat
    echo $((100 * (i + w - i1) / (u + n + s + i + w + x + y + z - t1)))
}

# CPU time (utime + stime) of a process, in clock ticks.
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# start TARGET: starts the server in the background; sets SERVER_PID and URL.
start() {
    local target=$1 data="$DIR/data"
    rm -rf "$data"
    : >"$DIR/srv.out"
    case $target in
        ceiling) "$DIR/ceiling" 127.0.0.1:0 >"$DIR/srv.out" 2>"$DIR/srv.err" & ;;
        current) RUST_LOG=warn "$DIR/tidings.current" serve --listen 127.0.0.1:0 --runtime "$RUNTIME" --memory >"$DIR/srv.out" 2>"$DIR/srv.err" & ;;
        current-file) RUST_LOG=warn "$DIR/tidings.current" serve --listen 127.0.0.1:0 --runtime "$RUNTIME" --data-dir "$data" >"$DIR/srv.out" 2>"$DIR/srv.err" & ;;
        before) RUST_LOG=warn "$DIR/tidings.before" serve --listen 127.0.0.1:0 --runtime "$RUNTIME" --memory >"$DIR/srv.out" 2>"$DIR/srv.err" & ;;
        before-file) RUST_LOG=warn "$DIR/tidings.before" serve --listen 127.0.0.1:0 --runtime "$RUNTIME" --data-dir "$data" >"$DIR/srv.out" 2>"$DIR/srv.err" & ;;
        *) echo "unknown target $target" >&2; exit 2 ;;
    esac
    SERVER_PID=$!
    URL=
    for _ in $(seq 100); do
        URL=$(sed -n 's/^listening on \(http:\/\/[^ ]*\).*/\1/p' "$DIR/srv.out" | head -n 1)
        [ -n "$URL" ] && return 0
        sleep 0.1
    done
    echo "    $target did not announce its address; stderr:" >&2
    tail -n 5 "$DIR/srv.err" >&2
    return 1
}

stop() {
    [ -n "$SERVER_PID" ] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# run TARGET MODE ROUND: one wrk run, its JSON line appended to OUT.
run() {
    local target=$1 mode=$2 round=$3 idle waited=0 check cpu0 cpu1 hwm events=null line
    idle=$(idle_pct)
    while [ "$idle" -lt 70 ] && [ "$waited" -lt "$QUIET" ]; do
        idle=$(idle_pct)
        waited=$((waited + 1))
    done
    start "$target" || { stop; return 0; }
    # One publish on another topic: the status every answer should have.
    check=$(curl -s -o /dev/null -w '%{http_code}' -m 5 -H 'Content-Type: text/plain' \
        --data-binary check "$URL/publish?topic=bench.check" || true)
    if [ "$mode" = sub ]; then
        : >"$DIR/sse.out"
        curl -sN -m 600 "$URL/sse?topic=bench.a" -o "$DIR/sse.out" &
        SUB_PID=$!
        # Subscribed once the stream's opening (`retry:`) has arrived.
        for _ in $(seq 50); do
            [ -s "$DIR/sse.out" ] && break
            sleep 0.1
        done
        [ -s "$DIR/sse.out" ] || echo "    (the SSE subscriber got nothing within 5 s)" >&2
    fi
    cpu0=$(cpu_ticks "$SERVER_PID")
    PUBLISH_BYTES=$BYTES "$WRK" -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$LUA" "$URL" \
        >"$DIR/wrk.out" 2>&1 || true
    cpu1=$(cpu_ticks "$SERVER_PID")
    hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$SERVER_PID/status")
    if [ "$mode" = sub ]; then
        sleep 1 # the last events reach the subscriber
        kill "$SUB_PID" 2>/dev/null || true
        wait "$SUB_PID" 2>/dev/null || true
        SUB_PID=
        events=$(grep -c '^id:' "$DIR/sse.out" || true)
    fi
    stop
    line=$(sed -n 's/^WRKJSON //p' "$DIR/wrk.out" | tail -n 1)
    [ -n "$line" ] || { line='{}'; echo "    (no result from wrk:)" >&2; tail -n 5 "$DIR/wrk.out" | sed 's/^/    /' >&2; }
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])
a = sys.argv
ticks = (int(a[8]) - int(a[7])) / 100.0   # USER_HZ = 100
r.update(label=a[2], mode=a[3], round=int(a[4]), idle_pct=int(a[5]), check_status=a[6],
         server_cpu_s=ticks, server_hwm_kb=int(a[9] or 0), loadavg=a[11])
if a[10] != "null": r["sse_events"] = int(a[10])
if r.get("requests"):
    r["server_cpu_us_per_publish"] = ticks * 1e6 / r["requests"]
print(json.dumps(r))' "$line" "$target" "$mode" "$round" "$idle" "$check" "$cpu0" "$cpu1" "$hwm" \
        "$events" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT"
    python3 -c '
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
g = r.get
res = "%.0f publishes/s, p50 %s us, p99 %s us, CPU %.1f us/publish" % (g("rps"), g("lat_p50_us"), g("lat_p99_us"), g("server_cpu_us_per_publish") or 0) if g("rps") else "no result"
print("  %12s %5s round %d: %s; errors c/r/w/t %s/%s/%s/%s, >=400 %s, check %s%s; idle %d %%, load %s" % (
    r["label"], r["mode"], r["round"], res, g("err_connect"), g("err_read"), g("err_write"),
    g("err_timeout"), g("err_status"), g("check_status"),
    (", subscriber got %s events" % g("sse_events")) if "sse_events" in r else "",
    r["idle_pct"], r["loadavg"]), file=sys.stderr)' "$OUT"
}

read -r -a ALL <<<"$TARGETS"
START=$(date +%s)
for round in $(seq "$ROUNDS"); do
    echo "=== round $round of $ROUNDS" >&2
    for mode in $MODES; do
        list=()
        for t in "${ALL[@]}"; do
            [ "$mode" = sub ] && [ "$t" = ceiling ] && continue
            list+=("$t")
        done
        k=${#list[@]}
        for j in $(seq 0 $((k - 1))); do
            run "${list[$(((j + round - 1) % k))]}" "$mode" "$round"
        done
    done
done
echo "== done in $(($(date +%s) - START)) s; load $(cut -d' ' -f1-3 /proc/loadavg); JSON lines in $OUT" >&2
table "$OUT"
