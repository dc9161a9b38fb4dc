#!/usr/bin/env python3
"""Prints a Markdown table of criterion medians for the groups under a prefix.

    cargo bench -p perfkit-benches --bench dedup
    python3 benches/criterion_table.py dedup perfkit-dedup

Reads target/criterion/<group>/<function>/new/estimates.json (the run just
made) and gives, per group, each function's median with its 95% confidence
interval, and the ratio of the perfkit function's median (the one whose name
starts with the second argument) to each peer's.
"""
import json
import pathlib
import sys


def fmt(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    prefix, ours = sys.argv[1], sys.argv[2]
    root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
    groups = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
    if not groups:
        print(f"no criterion results under {root} for {prefix!r}: run the benchmark first", file=sys.stderr)
        return 1
    print("| benchmark | implementation | median | 95% CI of the median | perfkit ÷ this |")
    print("|---|---|---|---|---|")
    for group in groups:
        medians = {}
        for function in sorted(p for p in group.iterdir() if (p / "new" / "estimates.json").exists()):
            estimate = json.loads((function / "new" / "estimates.json").read_text())["median"]
            meta = json.loads((function / "new" / "benchmark.json").read_text())
            name = meta.get("value_str") or meta.get("function_id") or function.name
            medians[name] = (estimate["point_estimate"], estimate["confidence_interval"])
        mine = next((m for n, (m, _) in medians.items() if n.startswith(ours)), None)
        for name, (median, ci) in medians.items():
            ratio = "—" if name.startswith(ours) or mine is None else f"{mine / median:.2f}"
            interval = f"{fmt(ci['lower_bound'])} – {fmt(ci['upper_bound'])}"
            print(f"| {group.name} | {name} | {fmt(median)} | {interval} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
