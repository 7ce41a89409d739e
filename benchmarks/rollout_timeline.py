"""docs/rollout.md's timelines from the record tests/integration/test_rollout.py writes (ORCH_ROLLOUT_RECORD).

python benchmarks/rollout_timeline.py docs/rollout/record.json   # markdown on stdout
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BUCKET_S = 10.0


def timeline(run: dict[str, Any]) -> list[str]:
    """Per 10 s: requests sent through the router (completed, failed) and the replicas out of it."""
    members = run["members"]
    everyone = set(members[0][1])
    end = max(r["start"] + r["duration_s"] for r in run["rounds"])
    lines = ["| time | requests completed | failed | replicas out of the router |", "|---|---|---|---|"]
    t = 0.0
    while t < end:
        rounds = [r for r in run["rounds"] if t <= r["start"] < t + BUCKET_S]
        before = [urls for at, urls in members if at <= t][-1:]
        during = [urls for at, urls in members if t < at < t + BUCKET_S]
        out = {u for urls in before + during for u in everyone - set(urls)}
        state = ", ".join(sorted(u.split("//")[1] for u in out)) or "none"
        done, failed = sum(r["completed"] for r in rounds), sum(r["failed"] for r in rounds)
        lines.append(f"| {t:4.0f}–{t + BUCKET_S:.0f} s | {done} | {failed} | {state} |")
        t += BUCKET_S
    return lines


def changes(run: dict[str, Any]) -> list[str]:
    everyone = set(run["members"][0][1])
    return [
        f"- {at:6.1f} s: out of the router: {', '.join(sorted(u.split('//')[1] for u in everyone - set(urls))) or 'none'}"
        for at, urls in run["members"]
    ]


def main() -> None:
    record = json.loads(Path(sys.argv[1]).read_text())
    for name, run in record.items():
        total = sum(r["completed"] for r in run["rounds"])
        failed = sum(r["failed"] for r in run["rounds"])
        print(f"### {name}: {total} requests completed, {failed} failed\n")
        print("\n".join(changes(run)) + "\n")
        print("\n".join(timeline(run)) + "\n")


if __name__ == "__main__":
    main()
