"""``orch validate`` against what its libraries alone take: alternating rounds, each a fresh process.

    python benchmarks/control_path/validate_floor.py 31 [BASE_TREE]

The floor rows: Python alone; importing Pydantic's BaseModel, PyYAML and Jinja2; and a minimal program
that uses each the way validate must (one Pydantic model with a constrained field validating a YAML
document, one Jinja2 template rendered). BASE_TREE (a checkout of an earlier commit) adds a row run
from there. Prints a Markdown table (wall median and min, the child's CPU) and the medians of the pairs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOOR = (
    "from pydantic import BaseModel, Field\n"
    "import yaml, jinja2\n"
    "class M(BaseModel):\n"
    "    x: int = Field(ge=0)\n"
    "M.model_validate(yaml.safe_load('x: 1'))\n"
    "jinja2.Environment().from_string('{{ x }}').render(x=1)\n"
)
PLAYBOOK = "playbooks/local-cpu.yml"


def main(rounds: int, base: str | None) -> None:
    py = sys.executable
    cmds: dict[str, tuple[list[str], str]] = {
        "python -c pass": ([py, "-c", "pass"], "/"),
        "import pydantic BaseModel, yaml, jinja2": (
            [py, "-c", "from pydantic import BaseModel; import yaml, jinja2"],
            "/",
        ),
        "one Pydantic model validating YAML, one Jinja2 template": ([py, "-c", FLOOR], "/"),
    }
    if base:
        cmds["orch validate, before"] = (
            ["env", f"PYTHONPATH={base}", py, "-m", "orchestrator", "validate", PLAYBOOK],
            base,
        )
    cmds["orch validate"] = ([py, "-m", "orchestrator", "validate", PLAYBOOK], str(ROOT))
    cmds["orch --version"] = ([py, "-m", "orchestrator", "--version"], str(ROOT))
    wall: dict[str, list[float]] = {k: [] for k in cmds}
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(rounds):
        for name, (argv, cwd) in cmds.items():
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
            _, status, usage = os.wait4(proc.pid, 0)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(usage.ru_utime + usage.ru_stime)
            if status != 0:
                raise SystemExit(f"{name}: exit status {status}")
    print("| | wall median | wall min | CPU median |\n|---|---|---|---|")
    for name in cmds:
        print(
            f"| `{name}` | {statistics.median(wall[name]):.3f} s | {min(wall[name]):.3f} s "
            f"| {statistics.median(cpu[name]):.3f} s |"
        )
    ours, floor = wall["orch validate"], wall["one Pydantic model validating YAML, one Jinja2 template"]
    print(
        "orch validate / floor, pairs median:",
        round(statistics.median(a / b for a, b in zip(ours, floor, strict=True)), 3),
    )
    if base:
        before = wall["orch validate, before"]
        print(
            "orch validate after / before, pairs median:",
            round(statistics.median(a / b for a, b in zip(ours, before, strict=True)), 3),
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 21, sys.argv[2] if len(sys.argv) > 2 else None)
