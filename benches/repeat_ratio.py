#!/usr/bin/env python3
"""Runs a criterion benchmark several times and prints, per group, the ratio
of our median to each peer's median in every run, and the median of those
ratios.

    python3 benches/repeat_ratio.py RUNS BENCH FILTER OURS

    python3 benches/repeat_ratio.py 8 tiered_cache \\
        'cache/(l1_hit/(perfkit|moka-sync, per)|l2_hit/(perfkit|redis-rs))' perfkit

Why: on a shared VM the speed of the whole machine drifts by 10-40% over
minutes, and criterion measures one function after the other, so a single
run's ratio can be off by that much. Short runs repeated back to back put
ours and the peer in nearly the same conditions each time; the median of the
per-run ratios is what a results table should quote. Each run uses criterion's
`--measurement-time 2 --warm-up-time 1`; the bench binary is built once.
"""
import json
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRITERION = ROOT / "target" / "criterion"


def medians(since):
    """{group: {function: median ns}} of the functions measured after `since`."""
    found = {}
    for group in CRITERION.iterdir():
        if not group.is_dir():
            continue
        for function in group.iterdir():
            estimates = function / "new" / "estimates.json"
            if not estimates.exists() or estimates.stat().st_mtime < since:
                continue
            meta = json.loads((function / "new" / "benchmark.json").read_text())
            name = meta.get("value_str") or meta.get("function_id") or function.name
            median = json.loads(estimates.read_text())["median"]["point_estimate"]
            found.setdefault(meta.get("group_id", group.name), {})[name] = median
    return found


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__)
        return 2
    runs, bench, pattern, ours = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    command = ["cargo", "bench", "-q", "-p", "perfkit-benches", "--bench", bench, "--",
               "--measurement-time", "2", "--warm-up-time", "1", pattern]
    ratios = {}
    for run in range(runs):
        started = time.time()
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        for group, functions in medians(started).items():
            mine = next((m for n, m in functions.items() if n.startswith(ours)), None)
            for name, median in functions.items():
                if name.startswith(ours) or mine is None:
                    continue
                ratios.setdefault((group, name), []).append(mine / median)
        print(f"run {run + 1}/{runs} done", file=sys.stderr)
    print(f"| benchmark | peer | ours ÷ peer, each of {runs} runs | median ratio |")
    print("|---|---|---|---|")
    for (group, name), values in sorted(ratios.items()):
        each = " ".join(f"{v:.2f}" for v in values)
        print(f"| {group} | {name} | {each} | **{statistics.median(values):.2f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
