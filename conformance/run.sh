#!/usr/bin/env bash
# Runs the conformance suite against `tidings serve` on each runtime, over plain HTTP and over
# TLS, the way CI does:
#
#   conformance/run.sh            # run, print one line per case, fail on any failure
#   conformance/run.sh --write    # also regenerate the results table in docs/CONFORMANCE.md
#   conformance/run.sh --check    # also fail if docs/CONFORMANCE.md's table is out of date
#
# Each server is started with the conformance configuration (conformance/server.toml) on a free
# loopback port and stopped by its pid; the TLS runs serve a certificate for 127.0.0.1 signed by
# a test CA that the runner makes (`--make-test-cert`, in target/conformance/tls/) and trusts
# (`--ca`). The runner is told what `tidings serve` has with conformance/profiles/tidings-serve.toml
# (everything but the etp-handlers, which need application code). JSON reports go to
# target/conformance/<run>.json. Four runs of about 40 s, then a fifth against the second node of
# a three-node cluster (tokio, async-std, tokio) over one nats-server with JetStream, started here
# on a free port and stopped by its pid: every event that node delivers came back through the
# stream, and the cluster cases use the third node as --peer. Without nats-server (scripts/setup-interop.sh installs it) that run is skipped with a
# message, or fails under TIDINGS_REQUIRE_INTEROP=1 as in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"

cargo build -q -p tidings -p tidings-conformance
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
out=target/conformance
mkdir -p "$out"
# A new test CA and server certificate every run (nothing to keep or to expire).
"$bin/tidings-conformance" --make-test-cert "$out/tls" >/dev/null

pid=""
extra=()
stop() {
    for p in $pid ${extra[@]+"${extra[@]}"}; do kill "$p" 2>/dev/null || true; done
    for p in $pid ${extra[@]+"${extra[@]}"}; do wait "$p" 2>/dev/null || true; done
    pid=""
    extra=()
}
trap stop EXIT

# Starts `tidings serve` with the conformance configuration and extra arguments in the
# background; sets `started` to its pid and `base` to its address.
serve() {
    local run="$1"
    shift
    # Emptied first: the background redirection may not have truncated it when it is read.
    : >"$out/$run.stdout"
    "$bin/tidings" serve --config conformance/server.toml --listen 127.0.0.1:0 "$@" \
        >"$out/$run.stdout" 2>"$out/$run.server.log" &
    started=$!
    base=""
    for _ in $(seq 1 150); do
        base="$(sed -n 's/^listening on //p' "$out/$run.stdout" | head -1)"
        [ -n "$base" ] && return 0
        kill -0 "$started" 2>/dev/null || { cat "$out/$run.server.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "the $run server did not start" >&2
    exit 1
}

# Runs the suite against `$base` (label `$label`, extra runner options `runner_args`: TLS,
# skips), prints one line per case that did not pass and the summary, and records the report.
run_suite() {
    if ! "$bin/tidings-conformance" --base "$base" ${runner_args[@]+"${runner_args[@]}"} --label "$label" --profile conformance/profiles/tidings-serve.toml --format json >"$out/$run.json"; then
        failed=1
    fi
    # One line per case that did not pass, and the summary.
    python3 - "$out/$run.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for c in r["results"]:
    if c["status"] == "fail":
        print(f"FAIL  {c['id']}: step {c['step']}: {c['message']}")
    elif c["status"] == "skip":
        print(f"n/a   {c['id']}: {c['reason']}")
k = r["by_kind"]
print("; ".join(f"{kind}: {k[kind]['passed']} passed, {k[kind]['failed']} failed, {k[kind]['not_applicable']} not applicable" for kind in ("spec", "extension")))
print(f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} not applicable")
PY
    reports+=("$out/$run.json")
}

failed=0
reports=()
# The table's columns, in this order: plain HTTP on each runtime, TLS on each runtime, a cluster node.
runs=(tokio async-std tokio-tls async-std-tls)
nats_bin="$(command -v nats-server || true)"
[ -z "$nats_bin" ] && [ -x /usr/sbin/nats-server ] && nats_bin=/usr/sbin/nats-server
if [ -n "$nats_bin" ]; then
    runs+=(cluster)
elif [ "${TIDINGS_REQUIRE_INTEROP:-}" = 1 ]; then
    echo "nats-server is missing (scripts/setup-interop.sh installs it)" >&2
    exit 1
else
    echo "== conformance: no cluster run: nats-server is missing (scripts/setup-interop.sh installs it)"
fi

for run in "${runs[@]}"; do
    if [ "$run" = cluster ]; then
        # One nats-server on a free port, then three nodes; the runner talks to the second.
        rm -rf "$out/nats"
        mkdir -p "$out/nats"
        "$nats_bin" -js -a 127.0.0.1 -p -1 -sd "$out/nats" -l "$out/nats/nats.log" &
        extra+=($!)
        nats=""
        for _ in $(seq 1 150); do
            nats="$(sed -n 's/.*Listening for client connections on \(.*\)$/\1/p' "$out/nats/nats.log" 2>/dev/null | head -1 || true)"
            [ -n "$nats" ] && break
            sleep 0.1
        done
        [ -n "$nats" ] || { cat "$out/nats/nats.log" >&2; echo "nats-server did not start" >&2; exit 1; }
        nodes=(tokio async-std tokio)
        for i in 0 1 2; do
            serve "cluster-$i" --runtime "${nodes[$i]}" --nats "nats://$nats" --node "node-$i" \
                --data-dir "$out/cluster-$i.data"
            extra+=("$started")
            if [ "$i" = 1 ]; then node_base="$base"; fi
            if [ "$i" = 2 ]; then peer_base="$base"; fi
        done
        base="$node_base"
        # Two cases assume that every event is stored before the subscriber reads: in a cluster
        # a burst reaches a node through its consumer while the subscriber reads (so a slow one
        # can fall behind twice), and a burst larger than the retention can be evicted before a
        # node's consumer read it (its subscribers then get a gap for it, docs/CLUSTER.md).
        # The cluster cases talk to the third node as well (--peer).
        runner_args=(--skip native/flow/slow-consumer-catches-up-with-gap
            --skip native/replay/no-gap-when-other-topics-evicted --peer "$peer_base")
        label="cluster"
        echo "== conformance: node 2 of 3 (async-std), node 3 as its peer, over nats-server $nats ($base)"
        run_suite
        stop
        continue
    fi
    runtime="${run%-tls}"
    server_tls=()
    runner_args=()
    label="$runtime"
    if [ "$run" != "$runtime" ]; then
        server_tls=(--tls-cert "$out/tls/server.pem" --tls-key "$out/tls/server.key")
        runner_args=(--ca "$out/tls/ca.pem")
        label="$runtime TLS"
    fi
    # The durable log, the server's default, in a fresh directory per run.
    data="$out/$run.data"
    rm -rf "$data"
    serve "$run" --runtime "$runtime" --data-dir "$data" ${server_tls[@]+"${server_tls[@]}"}
    pid=$started
    echo "== conformance: tidings serve --runtime $runtime ($base)"
    run_suite
    stop
done

if [ "$mode" = "--write" ] || [ "$mode" = "--check" ]; then
    table="$("$bin/tidings-conformance" --table "${reports[@]}")"
    python3 - "$mode" docs/CONFORMANCE.md "$table" <<'PY'
import sys
mode, path, table = sys.argv[1], sys.argv[2], sys.argv[3]
begin, end = "<!-- results:begin -->", "<!-- results:end -->"
doc = open(path).read()
head, rest = doc.split(begin, 1)
_, tail = rest.split(end, 1)
new = f"{head}{begin}\n{table}\n{end}{tail}"
if mode == "--write":
    open(path, "w").write(new)
    print(f"wrote the results table to {path}")
elif new != doc:
    sys.exit(f"{path}: the results table is out of date; run conformance/run.sh --write")
PY
fi
exit "$failed"
