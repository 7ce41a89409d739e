"""The scaling plot of benchmarks/control_path.md: plan and no-op apply, orch against pyinfra, by host count.

python benchmarks/scaling_plot.py NOOP_CSV PLAN_CSV OUT_SVG

NOOP_CSV rows: tool,hosts,noop,run,rc,wall_s,maxrss_kb,user_s,sys_s,host_cpu_ms (sidebyside-1202-noop.sh);
PLAN_CSV rows: tool,hosts,plan,run,rc,wall_s,maxrss_kb (sidebyside-1202-run.sh). The median of each
cell's runs is drawn; the standard library only (no plotting package on the machines that run it).
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from pathlib import Path

W, H, PAD = 640, 400, 60
SERIES = {  # (tool, scenario) → colour, dashed
    ("orch", "noop"): ("#1f77b4", False),
    ("pyinfra", "noop"): ("#d62728", False),
    ("orch", "plan"): ("#1f77b4", True),
    ("pyinfra", "plan"): ("#d62728", True),
}


def medians(paths: list[Path]) -> dict[tuple[str, str], dict[int, float]]:
    cells: dict[tuple[str, str], dict[int, list[float]]] = {}
    for path in paths:
        for row in csv.reader(path.open()):
            tool, hosts, scenario, wall = row[0], int(row[1]), row[2], float(row[5])
            cells.setdefault((tool, scenario), {}).setdefault(hosts, []).append(wall)
    return {k: {n: statistics.median(v) for n, v in by_n.items()} for k, by_n in cells.items()}


def svg(data: dict[tuple[str, str], dict[int, float]]) -> str:
    counts = sorted({n for by_n in data.values() for n in by_n})
    top = math.ceil(max(v for by_n in data.values() for v in by_n.values()))
    lo, hi = math.log2(counts[0]), math.log2(counts[-1])

    def x(n: int) -> float:
        return PAD + (math.log2(n) - lo) / (hi - lo or 1) * (W - 2 * PAD)

    def y(s: float) -> float:
        return H - PAD - s / top * (H - 2 * PAD)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">'
    ]
    out.append(f'<rect width="{W}" height="{H}" fill="white"/>')
    out.append(f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="black"/>')
    out.append(f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="black"/>')
    for n in counts:
        out.append(f'<text x="{x(n):.0f}" y="{H - PAD + 18}" text-anchor="middle">{n}</text>')
    for s in range(0, top + 1, max(1, top // 8)):
        out.append(f'<text x="{PAD - 8}" y="{y(s) + 4:.0f}" text-anchor="end">{s}</text>')
        out.append(f'<line x1="{PAD}" y1="{y(s):.0f}" x2="{W - PAD}" y2="{y(s):.0f}" stroke="#ddd"/>')
    out.append(f'<text x="{W / 2:.0f}" y="{H - 15}" text-anchor="middle">hosts (log scale)</text>')
    out.append(f'<text x="15" y="{H / 2:.0f}" transform="rotate(-90 15 {H / 2:.0f})" text-anchor="middle">'
               "wall seconds, median</text>")  # fmt: skip
    for i, (key, (colour, dashed)) in enumerate(SERIES.items()):
        by_n = data.get(key, {})
        points = " ".join(f"{x(n):.1f},{y(by_n[n]):.1f}" for n in sorted(by_n))
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        label = f"{key[0]} {'plan' if key[1] == 'plan' else 'no-op apply'}"
        ly = PAD + 16 * i
        out.append(
            f'<line x1="{PAD + 10}" y1="{ly}" x2="{PAD + 40}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{PAD + 46}" y="{ly + 4}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    noop, plan, dest = map(Path, sys.argv[1:4])
    dest.write_text(svg(medians([noop, plan])))


if __name__ == "__main__":
    main()
