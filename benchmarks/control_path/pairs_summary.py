"""Medians of sidebyside-*-pairs.sh's CSV: per scenario, each tool's wall and host CPU, and orch/pyinfra
taken pair by pair.

    python benchmarks/control_path/pairs_summary.py benchmarks/control_path/sidebyside-1202e-pairs.csv
"""

from __future__ import annotations

import csv
import statistics
import sys


def main(path: str) -> None:
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    with open(path) as f:
        for tool, _hosts, scenario, pair, code, wall, rss, user, system, host_ms in csv.reader(f):
            if scenario == "warm" or code != "0":
                continue
            rows[(scenario, pair, tool)] = {
                "wall": float(wall),
                "rss": int(rss) / 1024,
                "cpu": float(user) + float(system),
                "host": int(host_ms) / 1000,
            }
    print(
        "| 16 hosts | pairs | pyinfra: wall, host CPU | orch: wall, host CPU | orch / pyinfra, wall (pairs) |"
    )
    print("|---|---|---|---|---|")
    for scenario in ("first", "change", "noop"):
        pairs = sorted({p for s, p, _ in rows if s == scenario}, key=int)
        both = [p for p in pairs if (scenario, p, "orch") in rows and (scenario, p, "pyinfra") in rows]
        if not both:
            continue
        o = [rows[(scenario, p, "orch")] for p in both]
        y = [rows[(scenario, p, "pyinfra")] for p in both]
        ratios = [a["wall"] / b["wall"] for a, b in zip(o, y, strict=True)]

        def med(runs: list[dict[str, float]], key: str) -> float:
            return statistics.median(r[key] for r in runs)

        print(
            f"| {scenario} | {len(both)} | {med(y, 'wall'):.2f} s, {med(y, 'host'):.2f} s "
            f"| {med(o, 'wall'):.2f} s, {med(o, 'host'):.2f} s "
            f"| **{statistics.median(ratios):.2f}×** ({', '.join(f'{r:.2f}' for r in ratios)}) |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
