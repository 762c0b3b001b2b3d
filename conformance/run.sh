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
# (everything but the etp-handlers, which need application code). JSON reports go to target/conformance/<runtime>[-tls].json. Four runs of about 40 s.
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
stop() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi; }
trap stop EXIT

failed=0
reports=()
# The table's columns, in this order: plain HTTP on each runtime, then TLS on each runtime.
for run in tokio async-std tokio-tls async-std-tls; do
    runtime="${run%-tls}"
    server_tls=()
    runner_tls=()
    label="$runtime"
    if [ "$run" != "$runtime" ]; then
        server_tls=(--tls-cert "$out/tls/server.pem" --tls-key "$out/tls/server.key")
        runner_tls=(--ca "$out/tls/ca.pem")
        label="$runtime TLS"
    fi
    log="$out/$run.server.log"
    # The durable log, the server's default, in a fresh directory per run.
    data="$out/$run.data"
    rm -rf "$data"
    "$bin/tidings" serve --runtime "$runtime" --config conformance/server.toml --listen 127.0.0.1:0 \
        --data-dir "$data" ${server_tls[@]+"${server_tls[@]}"} >"$out/$run.stdout" 2>"$log" &
    pid=$!
    base=""
    for _ in $(seq 1 100); do
        base="$(sed -n 's/^listening on //p' "$out/$run.stdout" | head -1)"
        [ -n "$base" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$base" ] || { echo "the $label server did not start" >&2; exit 1; }
    echo "== conformance: tidings serve --runtime $runtime ($base)"
    if ! "$bin/tidings-conformance" --base "$base" ${runner_tls[@]+"${runner_tls[@]}"} --label "$label" --profile conformance/profiles/tidings-serve.toml --format json >"$out/$run.json"; then
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
