#!/usr/bin/env python3
"""Prints the median of every criterion benchmark under a target directory's `criterion/`.

Usage: benches/scripts/medians.py [TARGET_DIR]   (default: target)

For each benchmark: the median time per iteration with its 95% confidence interval, and the
median throughput (elements/s or bytes/s) when the benchmark declared one.
"""
import json
import pathlib
import sys


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}" if ns / scale < 100 else f"{ns / scale:.0f} {unit}"
    return f"{ns:.3g} ns"


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target") / "criterion"
    rows = []
    for est in sorted(root.glob("**/new/estimates.json")):
        bench = json.loads((est.parent / "benchmark.json").read_text())
        median = json.loads(est.read_text())["median"]
        ns = median["point_estimate"]
        lo, hi = (median["confidence_interval"][k] for k in ("lower_bound", "upper_bound"))
        thrpt = ""
        tp = bench.get("throughput") or {}
        if "Elements" in tp:
            n = tp["Elements"]
            thrpt = f"{n / ns * 1e3:.1f} Melem/s ({ns / n:.1f} ns/elem)"
        elif "Bytes" in tp:
            thrpt = f"{tp['Bytes'] / ns:.2f} GB/s"
        rows.append((bench["full_id"], fmt_time(ns), f"[{fmt_time(lo)}, {fmt_time(hi)}]", thrpt))
    width = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>10}  {r[2]:>22}  {r[3]}")


if __name__ == "__main__":
    main()
