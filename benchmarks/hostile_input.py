#!/usr/bin/env python3
"""Run tests/hostile.py's generator of hostile playbooks and inventories N times (default 10,000).

Run from the repository root: `.venv/bin/python benchmarks/hostile_input.py [N]`.
Each case goes through the real CLI in-process, `orch validate` and `orch plan --offline`, as
tests/unit/test_hostile.py's property test does with 500; this reports the outcomes by class,
the time per run (max, p99, median) and every case that broke the contract (exit 0 or 1, 2 for
plan; on failure one stderr line naming the file; under a second; never a traceback).
Writes Markdown to stdout; benchmarks/hostile_input.md keeps the recorded run.
"""

from __future__ import annotations

import collections
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from hostile import TOKEN_ENV, Outcome, cases, problems, run_case  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

SEED = 20260101
# The first matching pattern names an error's class; the message itself varies with the case.
CLASSES = [
    ("not UTF-8", r"not UTF-8 text"),
    ("character not allowed in YAML", r"is not allowed in YAML"),
    ("file over the size cap", r"the file is [\d,]+ bytes"),
    ("too many nodes", r"keys and values: orch reads no more"),
    ("alias bomb", r"alias bomb"),
    ("alias: undefined or recursive", r"alias \*"),
    ("nested too deep", r"nested deeper|maximum nesting depth"),
    ("unsupported tag", r"unsupported tag"),
    ("invalid scalar (date, !!int, …)", r"is not a valid !!"),
    ("number too long", r"characters is too long"),
    ("key not text / not plain", r"is not text: quote it|a key must be a plain value"),
    ("duplicate key or anchor", r"duplicate key|defined twice"),
    ("merge of a non-mapping", r"\(merge\) takes"),
    ("several documents", r"one file holds one document"),
    ("invalid YAML (syntax)", r"invalid YAML"),
    ("string with a control character", r"one line of printable text expected"),
    ("value that looks like a flag", r"looks like a flag"),
    ("wrong type (no coercion)", r"Input should be a valid (integer|number|boolean|string)"),
    ("not finite / out of range", r"finite number|less than|greater than|does not fit"),
    ("unknown field", r"unknown field"),
    ("required field missing", r"required field missing"),
    ("secret", r" secret "),
    ("inventory file", r"inventory: (no such|not a regular)"),
    ("template", r"/templates/|template"),
    ("other schema error", r"."),
]


def classify(outcome: Outcome) -> str:
    if outcome.rc in (0, 2):
        return "succeeded"
    line = outcome.stderr.strip()
    return next(name for name, pattern in CLASSES if re.search(pattern, line))


def main(n: int) -> None:
    os.environ.setdefault(TOKEN_ENV, "sk-test")
    outcomes: list[tuple[Outcome, str]] = []
    broken: list[tuple[Any, list[str]]] = []
    mutations: collections.Counter[str] = collections.Counter()
    slowest: list[tuple[Outcome, str, Any, float]] = []

    @seed(SEED)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],  # counts, not a minimal failing example
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases())
    def one(case: Any) -> None:
        mutations.update(set(case.mutations))
        with tempfile.TemporaryDirectory() as folder:
            for i, outcome in enumerate(run_case(case, Path(folder))):
                found = problems(outcome, Path(folder))
                outcomes.append((outcome, classify(outcome) if not found else "BROKEN"))
                if outcome.seconds > 0.1:  # run it again: the case's cost, or the machine's?
                    again = run_case(case, Path(folder))[i].seconds
                    slowest.append((outcome, outcomes[-1][1], case, again))
                if found:
                    broken.append((case, found))

    start = time.perf_counter()
    one()
    wall = time.perf_counter() - start
    report(n, outcomes, broken, mutations, slowest, wall)


def report(
    n: int,
    outcomes: list[tuple[Outcome, str]],
    broken: list[tuple[Any, list[str]]],
    mutations: collections.Counter[str],
    slowest: list[tuple[Outcome, str, Any, float]],
    wall: float,
) -> None:
    cases_run = len(outcomes) // 2
    print(f"# Hostile input: {cases_run:,} generated cases × (validate, plan --offline)\n")
    print(f"`.venv/bin/python benchmarks/hostile_input.py {n}` (hypothesis seed {SEED}), ", end="")
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {wall:.0f} s in all.\n")
    print(f"**Contract broken: {len(broken)} time(s).**\n")
    for case, found in broken[:20]:
        print(f"- mutations {case.mutations}: {found[0][:500]!r}")
    print("\n## Outcomes\n\n| outcome | validate | plan --offline |\n|---|---:|---:|")
    by_verb = {
        verb: collections.Counter(c for o, c in outcomes if o.verb == verb) for verb in ("validate", "plan")
    }
    names = ["succeeded", *(name for name, _ in CLASSES), "BROKEN"]
    for name in names:
        if by_verb["validate"][name] or by_verb["plan"][name]:
            print(f"| {name} | {by_verb['validate'][name]:,} | {by_verb['plan'][name]:,} |")
    print("\n## Time per run (in-process, seconds)\n\n| verb | median | p99 | max |\n|---|---:|---:|---:|")
    for verb in ("validate", "plan"):
        times = sorted(o.seconds for o, _ in outcomes if o.verb == verb)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"| {verb} | {statistics.median(times):.4f} | {p99:.4f} | {times[-1]:.4f} |")
    print("\n## The slowest runs, and the same case run again\n")
    print("| seconds | again | verb | mutations | outcome |\n|---:|---:|---|---|---|")
    for o, c, case, again in sorted(slowest, key=lambda x: -x[0].seconds)[:10]:
        print(f"| {o.seconds:.3f} | {again:.3f} | {o.verb} | {', '.join(case.mutations)} | {c} |")
    if not slowest:
        print("| | | | (no run took over 0.1 s) | |")
    print("\n## Mutation classes drawn (cases with at least one)\n\n| mutation | cases |\n|---|---:|")
    for kind, count in sorted(mutations.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {count:,} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
