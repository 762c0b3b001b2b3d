#!/usr/bin/env bash
# Cluster mode over NATS JetStream (issue 14), measured side by side in one script: the section
# "Cluster mode over NATS JetStream (issue 14)" of docs/BENCHMARKS.md.
#
# usage: benches/scripts/cluster.sh            (needs the release builds and nats-server)
#   cargo build --release -p tidings -p tidings-bench
#   benches/scripts/cluster.sh --table FILE.jsonl   re-prints the tables of an earlier run
#
# It starts everything itself on free 127.0.0.1 ports in a temporary directory and stops it by
# pid (SIGTERM, SIGKILL after 5 s) when it ends, however it ends:
#   - one nats-server with JetStream (N1), and a cluster of three routed to each other (C1-C3);
#   - `standalone`: `tidings serve` without NATS (the default file log), the yardstick;
#   - `one`: one node on N1, stream `one` (replicas 1);
#   - `three`: three nodes on N1, stream `three` (replicas 1);
#   - `r3`: three nodes on C1-C3 (each given all three URLs), stream `r3`, `cluster.replicas = 3`.
# Each system has a stream of its own, so nodes of the other systems have nothing to read
# while one is measured. What it measures, ROUNDS times, systems in a rotated order per round:
#   1. fan-out: N subscribers of one topic (spread evenly over the nodes of `three`), one
#      publisher on the first node (window 32, FANOUT_MSGS messages of 128 B): deliveries/s,
#      the CPU time of all tidings nodes per delivery (/proc/<pid>/stat utime + stime, first
#      publish to last delivery), nats-server's apart, publish-to-delivery p50/p99;
#   2. latency: LAT_SUBS subscribers spread over the three nodes, publishes paced at each rate
#      of LAT_RATES for LAT_SECS s on the first node: publish-to-answer (the `ok` of a WebSocket
#      publish with an id) and publish-to-delivery p50/p99, replicas 1 (`three`) and 3 (`r3`);
#   3. receive cost: RECV_EVENTS events published through the first node of `three` (one
#      subscriber there); CPU of the two other nodes (no subscriber) per event, minus what they
#      use idle over as long (measured just before);
# then, once: 4. warm start: a stream `warm` filled with WARM_EVENTS events of 128 B through a
# node that is then stopped; a new node on it is started WARM_RUNS times: time from its start
# to its `listening on` line (polled every 10 ms) and the `took_ms` it logs for joining.
# Every run of the load generator is one `tidings-bench fanout --url ... --json` bounded by
# `timeout`; every result is a JSON line in OUT; the tables at the end are medians.
#
# Environment (defaults in brackets):
#   ROUNDS [3]   N [1000]   FANOUT_MSGS [2000]   LAT_RATES ["1000 10000"]   LAT_SECS [5]
#   LAT_SUBS [3]   RECV_EVENTS [50000]   WARM_EVENTS [100000]   WARM_RUNS [3]
#   TIDINGS [$CARGO_TARGET_DIR or target]/release/tidings   BENCH [same dir]/tidings-bench
#   NATS_BIN [nats-server on PATH or /usr/sbin/nats-server]
#   QUIET [10]   before each run wait up to this many s for a second >= 70 % idle (0: no wait)
#   RUN_TIMEOUT [90]   seconds one load-generator run may take (then killed)
#   OUT [/tmp/bench-cluster-<time>.jsonl]
set -euo pipefail

table() {
    python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None
def rng(v, f):
    v = [x for x in v if x is not None]
    return f" ({f(min(v))}–{f(max(v))})" if len(v) > 1 else ""
def rate(v):
    return "-" if v is None else (f"{v/1e6:.2f} M" if v >= 1e6 else f"{v/1e3:.1f} k")
def num(v, d=0):
    return "-" if v is None else f"{v:,.{d}f}"
def ms(v):
    return "-" if v is None else f"{v/1e3:.2f}"
def ok(r):
    return r.get("rc") == 0 and not r.get("timed_out")
def cell(rs, key, f, scale=1.0):
    v = [r.get(key) for r in rs]
    v = [x * scale for x in v if x is not None]
    return f"{f(med(v))}{rng(v, f)}", med(v)

fan = [r for r in rows if r.get("kind") == "fanout"]
if fan:
    print()
    print("Fan-out: N subscribers of one topic, 128 B, window 32; medians (range) of the runs that succeeded")
    print()
    print("| system | nodes | runs ok | deliveries/s | tidings CPU ns/delivery (all nodes) | nats-server CPU ns/delivery | p50 ms | p99 ms | lost/reordered/gaps | idle % before |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    cpu = {}
    for sys_ in ["standalone", "one", "three"]:
        rs = [r for r in fan if r["system"] == sys_]
        if not rs:
            continue
        good = [r for r in rs if ok(r)]
        d, _ = cell(good, "deliveries_per_sec", rate)
        c, cpu[sys_] = cell(good, "server_cpu_ns_per_delivery", num)
        n, _ = cell(good, "nats_cpu_ns_per_delivery", num)
        p50, _ = cell(good, "p50_us", ms)
        p99, _ = cell(good, "p99_us", ms)
        lrg = "/".join(str(sum(r.get(k) or 0 for r in rs)) for k in ("lost", "reordered", "gaps"))
        idle = [r.get("idle_pct") for r in rs if r.get("idle_pct") is not None]
        print(f"| {sys_} | {rs[0].get('nodes', 1)} | {len(good)}/{len(rs)} | {d} | {c} | {n if sys_ != 'standalone' else '-'} | {p50} | {p99} | {lrg} | {'-' if not idle else f'{min(idle)}–{max(idle)}'} |")
    print()
    def ratio(a, b):
        return "-" if a is None or b is None or b == 0 else f"{a/b:.2f}×"
    print(f"CPU per delivery, ratios of medians: three ÷ one = {ratio(cpu.get('three'), cpu.get('one'))}; "
          f"one ÷ standalone = {ratio(cpu.get('one'), cpu.get('standalone'))}; "
          f"three ÷ standalone = {ratio(cpu.get('three'), cpu.get('standalone'))}")
    # The same ratio round by round (systems of one round ran back to back).
    per_round = []
    for rd in sorted({r["round"] for r in fan}):
        a = [r for r in fan if r["round"] == rd and r["system"] == "three" and ok(r)]
        b = [r for r in fan if r["round"] == rd and r["system"] == "one" and ok(r)]
        if a and b and b[0].get("server_cpu_ns_per_delivery"):
            per_round.append(a[0]["server_cpu_ns_per_delivery"] / b[0]["server_cpu_ns_per_delivery"])
    if per_round:
        print("three ÷ one per round: " + ", ".join(f"{x:.2f}×" for x in per_round))

lat = [r for r in rows if r.get("kind") == "latency"]
if lat:
    print()
    print("Latency: publishes paced on node 1, subscribers spread over 3 nodes; ms, medians (range) of the runs")
    print()
    print("| replicas | rate msgs/s | subscribers | runs ok | publish-to-answer p50 | p99 | publish-to-delivery p50 | p99 | p99.9 | tidings CPU µs/publish (3 nodes) | nats CPU µs/publish | lost/reordered/gaps |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for sys_, reps in (("three", 1), ("r3", 3)):
        for rt in sorted({r["rate"] for r in lat}):
            rs = [r for r in lat if r["system"] == sys_ and r["rate"] == rt]
            if not rs:
                continue
            good = [r for r in rs if ok(r)]
            for r in good:
                pubs = r.get("publish_acked") or 0
                r["_tcpu"] = r["server_cpu_s"] * 1e6 / pubs if pubs and r.get("server_cpu_s") is not None else None
                r["_ncpu"] = r["nats_cpu_s"] * 1e6 / pubs if pubs and r.get("nats_cpu_s") is not None else None
            cols = [cell(good, k, ms)[0] for k in ("answer_p50_us", "answer_p99_us", "p50_us", "p99_us", "p999_us")]
            tc, _ = cell(good, "_tcpu", lambda v: num(v, 1))
            nc, _ = cell(good, "_ncpu", lambda v: num(v, 1))
            lrg = "/".join(str(sum(r.get(k) or 0 for r in rs)) for k in ("lost", "reordered", "gaps"))
            print(f"| {reps} | {rt:,.0f} | {rs[0].get('subscribers')} | {len(good)}/{len(rs)} | " + " | ".join(cols) + f" | {tc} | {nc} | {lrg} |")

rec = [r for r in rows if r.get("kind") == "receive"]
if rec:
    print()
    print("Receive cost: events published through node 1 of `three` (1 subscriber there); nodes 2 and 3 have no subscriber")
    print()
    print("| runs | events | publish rate | idle node CPU µs/event (raw) | idle node CPU µs/event (minus idle baseline) | publishing node CPU µs/event | nats-server CPU µs/event |")
    print("|---|---|---|---|---|---|---|")
    good = [r for r in rec if r.get("events")]
    raw = [x for r in good for x in r["idle_us_per_event"]]
    net = [x for r in good for x in r["idle_net_us_per_event"]]
    f = lambda v: num(v, 2)
    print(f"| {len(good)}/{len(rec)} | {num(med([r['events'] for r in good]))} | {rate(med([r.get('publishes_per_sec') for r in good]))}/s | "
          f"{f(med(raw))}{rng(raw, f)} | {f(med(net))}{rng(net, f)} | "
          f"{cell(good, 'pub_us_per_event', f)[0]} | {cell(good, 'nats_us_per_event', f)[0]} |")

warm = [r for r in rows if r.get("kind") == "warm"]
if warm:
    print()
    print("Warm start: a node joining a stream of retained events (the hot window read back before it serves)")
    print()
    print("| events in the stream | warmed | runs | start to `listening on` s | `took_ms` logged s |")
    print("|---|---|---|---|---|")
    good = [r for r in warm if r.get("listening_ms") is not None]
    f = lambda v: "-" if v is None else f"{v/1e3:.2f}"
    print(f"| {num(med([r.get('messages') for r in good]))} | {num(med([r.get('warmed') for r in good]))} | {len(good)}/{len(warm)} | "
          f"{cell(good, 'listening_ms', f)[0]} | {cell(good, 'took_ms', f)[0]} |")
    fill = [r for r in rows if r.get("kind") == "fill"]
    for r in fill:
        print(f"\n(filled with {r.get('publish_acked')} publishes at {rate(r.get('publishes_per_sec'))}/s, window {r.get('window')})")
PY
}

if [ "${1:-}" = "--table" ]; then
    table "$2"
    exit 0
fi
if [ $# -ne 0 ]; then
    sed -n '2,45p' "$0" >&2
    exit 2
fi

ROUNDS=${ROUNDS:-3}
N=${N:-1000}
FANOUT_MSGS=${FANOUT_MSGS:-2000}
LAT_RATES=${LAT_RATES:-"1000 10000"}
LAT_SECS=${LAT_SECS:-5}
LAT_SUBS=${LAT_SUBS:-3}
RECV_EVENTS=${RECV_EVENTS:-50000}
WARM_EVENTS=${WARM_EVENTS:-100000}
WARM_RUNS=${WARM_RUNS:-3}
BUILD=${CARGO_TARGET_DIR:-target}/release
TIDINGS=${TIDINGS:-$BUILD/tidings}
BENCH=${BENCH:-$BUILD/tidings-bench}
QUIET=${QUIET:-10}
RUN_TIMEOUT=${RUN_TIMEOUT:-90}
OUT=${OUT:-/tmp/bench-cluster-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
NATS_BIN=${NATS_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}

for f in "$TIDINGS" "$BENCH" "$NATS_BIN"; do
    [ -x "$f" ] || { echo "not an executable: $f (cargo build --release -p tidings -p tidings-bench; apt-get install nats-server)" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((N + 500)) ]; then
    echo "open-file limit $(ulimit -n) is too low for N = $N" >&2
    exit 2
fi

DIR=$(mktemp -d /tmp/bench-cluster.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Pin the binaries: copies, so that a rebuild during the run changes nothing.
cp "$TIDINGS" "$DIR/tidings"
cp "$BENCH" "$DIR/tidings-bench"
: >"$OUT"
START=$(date +%s)

echo "== bench-cluster: $(date -u +%FT%TZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "   tidings = $TIDINGS (sha256 $(sha256sum "$TIDINGS" | cut -c1-12)), $("$NATS_BIN" --version)" >&2
echo "   rounds $ROUNDS; fan-out N = $N x $FANOUT_MSGS; latency ${LAT_RATES} msgs/s x ${LAT_SECS} s, $LAT_SUBS subscribers; receive $RECV_EVENTS; warm $WARM_EVENTS x $WARM_RUNS; JSON lines -> $OUT" >&2

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU time (utime + stime) of a process, in clock ticks (USER_HZ = 100).
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# Percent of CPU time idle over one second.
idle_pct() {
    local u n s i w x y z t1 i1
    read -r _ u n s i w x y z _ </proc/stat
    t1=$((u + n + s + i + w + x + y + z)) i1=$((i + w))
    sleep 1
    read -r _ u n s i w x y z _ </proc/stat
    echo $((100 * (i + w - i1) / (u + n + s + i + w + x + y + z - t1)))
}

# Waits up to QUIET s for a second >= 70 % idle; sets IDLE.
quiet() {
    local waited=0
    IDLE=$(idle_pct)
    while [ "$IDLE" -lt 70 ] && [ "$waited" -lt "$QUIET" ]; do
        IDLE=$(idle_pct)
        waited=$((waited + 1))
    done
}

wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    return 1
}

declare -A URL PID
# nats NAME PORT [flags...]: a JetStream nats-server on 127.0.0.1:PORT, store in DIR/NAME.
nats() {
    local name=$1 port=$2
    shift 2
    "$NATS_BIN" -js -a 127.0.0.1 -p "$port" -sd "$DIR/$name" -l "$DIR/$name.log" "$@" \
        </dev/null >/dev/null 2>&1 &
    PID[$name]=$!
    PIDS+=("$!")
    wait_port "$port"
}

RETENTION=(--retention-events 10000000 --retention-bytes 1000000000 --retention-age 1h
    --max-connections 100000)
# node NAME [serve flags...]: a tidings node on a free port; sets URL[NAME], PID[NAME].
node() {
    local name=$1 url= first
    shift
    : >"$DIR/$name.out"
    RUST_LOG=${TIDINGS_LOG:-warn} "$DIR/tidings" serve --listen 127.0.0.1:0 "${RETENTION[@]}" "$@" \
        </dev/null >"$DIR/$name.out" 2>"$DIR/$name.err" &
    PID[$name]=$!
    PIDS+=("$!")
    # Polled every 10 ms without forking (the warm start is timed by this loop).
    for _ in $(seq 6000); do
        first=
        IFS= read -r first <"$DIR/$name.out" || true
        case $first in "listening on http://"*)
            url=${first#listening on }
            url=${url%% *}
            break ;;
        esac
        kill -0 "${PID[$name]}" 2>/dev/null || break
        sleep 0.01
    done
    if [ -z "$url" ]; then
        echo "node $name did not start; its log:" >&2
        tail -n 5 "$DIR/$name.err" >&2
        exit 1
    fi
    URL[$name]=$url
}

# stop NAME: SIGTERM, SIGKILL after 10 s.
stop() {
    local pid=${PID[$1]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# bench KIND SYSTEM ROUND KEY=VALUE... -- tidings-bench fanout flags: one run, its JSON line
# (with kind, system, round, rc, idle, load and the extra keys) appended to OUT.
bench() {
    local kind=$1 system=$2 round=$3 extra=() rc=0 line
    shift 3
    while [ "$1" != -- ]; do
        extra+=("$1")
        shift
    done
    shift
    quiet
    echo "+ [$kind $system round $round, idle $IDLE %, load $(cut -d' ' -f1-3 /proc/loadavg)] tidings-bench fanout $*" >&2
    timeout -k 10 "$RUN_TIMEOUT" "$DIR/tidings-bench" fanout --json --timeout $((RUN_TIMEOUT - 10)) "$@" \
        >"$DIR/bench.out" 2>"$DIR/bench.err" || rc=$?
    line=$(tail -n 1 "$DIR/bench.out")
    case $line in "{"*) ;; *) line='{}'; tail -n 3 "$DIR/bench.err" | sed 's/^/    /' >&2 ;; esac
    LAST=$(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
r.update(kind=sys.argv[2], system=sys.argv[3], round=int(sys.argv[4]), rc=int(sys.argv[5]),
         idle_pct=int(sys.argv[6]), loadavg=sys.argv[7])
for kv in sys.argv[8:]:
    k, v = kv.split("=", 1)
    r[k] = json.loads(v)
print(json.dumps(r))' "$line" "$kind" "$system" "$round" "$rc" "$IDLE" "$(cut -d' ' -f1-3 /proc/loadavg)" "${extra[@]}")
    echo "$LAST" >>"$OUT"
    echo "$LAST" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); g = r.get
print("    rc %s: %s deliveries/s, p50 %s us, p99 %s us, answer p50 %s us p99 %s us, tidings CPU %s s (%s ns/delivery), nats CPU %s s, lost %s reordered %s gaps %s" % (
    g("rc"), g("deliveries_per_sec"), g("p50_us"), g("p99_us"), g("answer_p50_us"), g("answer_p99_us"),
    g("server_cpu_s"), g("server_cpu_ns_per_delivery"), g("nats_cpu_s"), g("lost"), g("reordered"), g("gaps")), file=sys.stderr)'
}

# --url/--server-pid flags of nodes.
targets() {
    local n
    for n in "$@"; do
        printf -- '--url\n%s\n--server-pid\n%s\n' "${URL[$n]}" "${PID[$n]}"
    done
}

# --- start everything
P1=$(free_port)
nats n1 "$P1"
NATS1=nats://127.0.0.1:$P1
CP=() RP=()
for i in 1 2 3; do CP+=("$(free_port)"); RP+=("$(free_port)"); done
ROUTES=nats://127.0.0.1:${RP[0]},nats://127.0.0.1:${RP[1]},nats://127.0.0.1:${RP[2]}
for i in 0 1 2; do
    nats "c$((i + 1))" "${CP[$i]}" --server_name "c$((i + 1))" --cluster_name bench \
        --cluster "nats://127.0.0.1:${RP[$i]}" --routes "$ROUTES"
done
NATS3=nats://127.0.0.1:${CP[0]},nats://127.0.0.1:${CP[1]},nats://127.0.0.1:${CP[2]}
NATS_PIDS3=("${PID[c1]}" "${PID[c2]}" "${PID[c3]}")

node standalone --data-dir "$DIR/standalone.data"
node one --nats "$NATS1" --node one --set cluster.stream=one
for i in 1 2 3; do
    node "t$i" --nats "$NATS1" --node "t$i" --set cluster.stream=three
done
for i in 1 2 3; do
    # The first node creates the stream with 3 replicas (it waits for the NATS cluster's
    # JetStream to elect its leader).
    node "r$i" --nats "$NATS3" --node "r$i" --set cluster.stream=r3 --set cluster.replicas=3
done
echo "   up after $(($(date +%s) - START)) s: nats-server n1 (pid ${PID[n1]}), c1-c3 (pids ${NATS_PIDS3[*]}); nodes standalone ${URL[standalone]}, one ${URL[one]}, t1-t3 ${URL[t1]} ${URL[t2]} ${URL[t3]}, r1-r3 ${URL[r1]} ${URL[r2]} ${URL[r3]}" >&2

mapfile -t T_STANDALONE < <(targets standalone)
mapfile -t T_ONE < <(targets one)
mapfile -t T_THREE < <(targets t1 t2 t3)
mapfile -t T_R3 < <(targets r1 r2 r3)
FAN=(--subscribers "$N" --size 128 --messages "$FANOUT_MSGS" --window 32)

fanout_run() {
    case $1 in
        standalone) bench fanout standalone "$2" nodes=1 -- "${T_STANDALONE[@]}" "${FAN[@]}" ;;
        one) bench fanout one "$2" -- "${T_ONE[@]}" --nats-pid "${PID[n1]}" "${FAN[@]}" ;;
        three) bench fanout three "$2" -- "${T_THREE[@]}" --nats-pid "${PID[n1]}" "${FAN[@]}" ;;
    esac
}

latency_run() {
    local system=$1 rate=$2 round=$3 msgs
    msgs=$((rate * LAT_SECS))
    local lat=(--subscribers "$LAT_SUBS" --size 128 --messages "$msgs" --rate "$rate" --window 1024)
    if [ "$system" = three ]; then
        bench latency three "$round" rate="$rate" -- "${T_THREE[@]}" --nats-pid "${PID[n1]}" "${lat[@]}"
    else
        bench latency r3 "$round" rate="$rate" -- "${T_R3[@]}" \
            --nats-pid "${NATS_PIDS3[0]}" --nats-pid "${NATS_PIDS3[1]}" --nats-pid "${NATS_PIDS3[2]}" "${lat[@]}"
    fi
}

receive_run() {
    local round=$1 i0 i1 t0 t1 base0 base1 w0 w1 p0 p1 n0 n1 b0 b1 idle
    quiet
    idle=$IDLE
    # What the two idle nodes use with nothing to read, over 3 s.
    base0=$(($(cpu_ticks "${PID[t2]}") + $(cpu_ticks "${PID[t3]}")))
    b0=$(date +%s%N)
    sleep 3
    base1=$(($(cpu_ticks "${PID[t2]}") + $(cpu_ticks "${PID[t3]}")))
    b1=$(date +%s%N)
    i0=$(cpu_ticks "${PID[t2]}") i1=$(cpu_ticks "${PID[t3]}")
    p0=$(cpu_ticks "${PID[t1]}") n0=$(cpu_ticks "${PID[n1]}")
    w0=$(date +%s%N)
    QUIET=0 bench receive three "$round" -- --url "${URL[t1]}" --server-pid "${PID[t1]}" --nats-pid "${PID[n1]}" \
        --subscribers 1 --size 128 --messages "$RECV_EVENTS" --window 64
    sleep 1 # the idle nodes read the tail
    t0=$(cpu_ticks "${PID[t2]}") t1=$(cpu_ticks "${PID[t3]}")
    p1=$(cpu_ticks "${PID[t1]}") n1=$(cpu_ticks "${PID[n1]}")
    w1=$(date +%s%N)
    # Replace the load generator's line with one that adds the idle nodes' figures.
    LAST=$(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
i0, i1, t0, t1, p0, p1, n0, n1, base0, base1, b0, b1, w0, w1 = map(int, sys.argv[2:16])
ev = r.get("publish_acked") or 0
r["events"] = ev
if ev:
    idle_rate = (base1 - base0) / 2 / ((b1 - b0) / 1e9)   # ticks/s of one idle node, idle
    wall = (w1 - w0) / 1e9
    r["idle_baseline_ticks_per_s"] = round(idle_rate, 3)
    r["idle_us_per_event"] = [(t0 - i0) * 1e4 / ev, (t1 - i1) * 1e4 / ev]
    r["idle_net_us_per_event"] = [((t0 - i0) - idle_rate * wall) * 1e4 / ev, ((t1 - i1) - idle_rate * wall) * 1e4 / ev]
    r["pub_us_per_event"] = (p1 - p0) * 1e4 / ev
    r["nats_us_per_event"] = (n1 - n0) * 1e4 / ev
r["idle_pct"] = int(sys.argv[16])
print(json.dumps(r))' "$LAST" "$i0" "$i1" "$t0" "$t1" "$p0" "$p1" "$n0" "$n1" "$base0" "$base1" "$b0" "$b1" "$w0" "$w1" "$idle")
    sed -i '$d' "$OUT"
    echo "$LAST" >>"$OUT"
    echo "    idle nodes: $(echo "$LAST" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%s us/event raw, %s net of idle (%s ticks/s idle)" % (r.get("idle_us_per_event"), r.get("idle_net_us_per_event"), r.get("idle_baseline_ticks_per_s")))')" >&2
}

for round in $(seq "$ROUNDS"); do
    echo "=== round $round of $ROUNDS ($(($(date +%s) - START)) s)" >&2
    systems=(standalone one three)
    for j in 0 1 2; do
        fanout_run "${systems[$(((j + round - 1) % 3))]}" "$round"
    done
    for rate in $LAT_RATES; do
        if [ $((round % 2)) = 1 ]; then order=(three r3); else order=(r3 three); fi
        for s in "${order[@]}"; do
            latency_run "$s" "$rate" "$round"
        done
    done
    receive_run "$round"
done

# --- warm start
echo "=== warm start ($(($(date +%s) - START)) s)" >&2
node fill --nats "$NATS1" --node fill --set cluster.stream=warm
bench fill warm 0 -- --url "${URL[fill]}" --subscribers 1 --size 128 --messages "$WARM_EVENTS" --window 256
stop fill
for k in $(seq "$WARM_RUNS"); do
    quiet
    t0=$(date +%s%N)
    TIDINGS_LOG=info node "warm$k" --nats "$NATS1" --node "warm$k" --set cluster.stream=warm
    t1=$(date +%s%N)
    stop "warm$k"
    LAST=$(python3 -c '
import json, re, sys
log = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[4], errors="replace").read())
m = re.search(r"joined the cluster.s stream.*", log)
line = m.group(0) if m else ""
def field(k):
    f = re.search(k + r"=([0-9.]+)", line)
    return float(f.group(1)) if f else None
print(json.dumps(dict(kind="warm", system="warm", round=int(sys.argv[1]), idle_pct=int(sys.argv[5]),
    listening_ms=(int(sys.argv[3]) - int(sys.argv[2])) / 1e6, took_ms=field("took_ms"),
    warmed=field("warmed"), messages=field("messages"))))' "$k" "$t0" "$t1" "$DIR/warm$k.err" "$IDLE")
    echo "$LAST" >>"$OUT"
    echo "    warm start $k: $LAST" >&2
done

echo "== done in $(($(date +%s) - START)) s; load $(cut -d' ' -f1-3 /proc/loadavg); JSON lines in $OUT" >&2
table "$OUT"
