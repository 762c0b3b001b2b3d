#!/usr/bin/env python3
"""Medians (and ranges) of load-generator JSON lines (benches/scripts/loadgen.sh), as Markdown.

Usage: loadgen_medians.py loadgen.jsonl
"""
import json
import statistics
import sys

FANOUT = ["deliveries_per_sec", "p50_us", "p99_us", "p999_us", "lost", "reordered",
          "server_rss_bytes", "server_cpu_ns_per_delivery", "client_cpu_ns_per_delivery"]
IDLE = ["rss_per_conn_bytes", "rss_per_conn_marginal_bytes", "server_rss_bytes"]


def fmt(v):
    if isinstance(v, float) and v >= 100 or isinstance(v, int):
        return f"{round(v):,}"
    return f"{v:,.1f}"


def table(rows, keys, group):
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in group), []).append(r)
    print("| " + " | ".join(group + ["runs"] + keys) + " |")
    print("|" + "---|" * (len(group) + 1 + len(keys)))
    for g, rs in groups.items():
        cells = [str(x) for x in g] + [str(len(rs))]
        for k in keys:
            vals = [r[k] for r in rs if r.get(k) is not None]
            if not vals:
                cells.append("")
                continue
            med = statistics.median(vals)
            lo, hi = min(vals), max(vals)
            cells.append(fmt(med) + ("" if lo == hi else f" ({fmt(lo)}–{fmt(hi)})"))
        print("| " + " | ".join(cells) + " |")
    print()


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
    fan = [r for r in rows if r.get("scenario") == "fanout"]
    idle = [r for r in rows if r.get("scenario") == "idle"]
    table(fan, FANOUT, ["target", "runtime", "subscribers", "messages", "rate"])
    table(idle, IDLE, ["target", "runtime", "connections"])


main()
