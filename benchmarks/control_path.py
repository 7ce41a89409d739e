#!/usr/bin/env python3
"""Time orch's control path — plan, a first apply, a no-op apply and a change — on 1, 4 and 16 test hosts.

Run as root from the repository root: `.venv/bin/python benchmarks/control_path.py [N ...]`.
Each host gets one deployment whose unit runs a stand-in process (benchmarks/templates/idle.service.j2),
so the figures are orch's own cost: one SSH connection per host, facts, diff, push, systemd.
Writes a Markdown table to stdout; benchmarks/control_path.md keeps the recorded run.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from testbed.hosts import Testbed  # noqa: E402

REPEAT = 3


def orch(*args: str) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 2):
        sys.exit(f"orch {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.returncode


def site(tb: Testbed, n: int, d: Path) -> Path:
    hosts = tb.up(n)
    lines = [f"known_hosts: {tb.known_hosts_path}", f"defaults:\n  ssh_key: {tb.key_path}", "hosts:"]
    lines += [f"  th{h.index}:\n    address: {h.address}\n    groups: [bench]" for h in hosts]
    (d / "inventory.yml").write_text("\n".join(lines) + "\n")
    # Template overrides are files below the playbook's folder: the stand-in unit is copied there.
    (d / "idle.service.j2").write_text((ROOT / "benchmarks/templates/idle.service.j2").read_text())
    (d / "pb.yml").write_text(
        "inventory: inventory.yml\n"
        "deployments:\n"
        "  - name: bench\n"
        "    hosts: [bench]\n"
        "    model: /srv/models/tiny\n"
        "    accelerator: cpu\n"
        "    launcher: {kind: api_server, venv: /opt/vllm}\n"
        "    readiness: {enabled: false}\n"
        "    templates: {unit: idle.service.j2}\n"
        "    env: {REVISION: r0}\n"
    )
    return d / "pb.yml"


def change(pb: str, i: int) -> str:
    """The same playbook with another value in the env file: a change that restarts every host."""
    path = Path(pb)
    path.write_text(path.read_text().replace(f"REVISION: r{i}", f"REVISION: r{i + 1}"))
    return pb


def measure(tb: Testbed, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        pb = str(site(tb, n, Path(tmp)))
        first_plan, rc = orch("plan", pb)
        assert rc == 2
        first_apply, _ = orch("apply", "-y", pb)
        plans = [orch("plan", pb) for _ in range(REPEAT)]
        applies = [orch("apply", "-y", pb) for _ in range(REPEAT)]
        changes = [orch("apply", "-y", change(pb, i)) for i in range(REPEAT)]
        assert all(rc == 0 for _, rc in plans + applies + changes)
        orch("destroy", "-y", pb)
    return {
        "plan (changes)": first_plan,
        "first apply": first_apply,
        "plan (no changes)": statistics.median(t for t, _ in plans),
        "no-op apply": statistics.median(t for t, _ in applies),
        "change (restart)": statistics.median(t for t, _ in changes),
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1, 4, 16]
    tb = Testbed()
    tb.build()
    baseline, _ = orch("--version")
    rows = {n: measure(tb, n) for n in sizes}
    keys = list(next(iter(rows.values())))
    print(f"Python start-up of `orch --version`: {baseline:.2f} s (included in every figure)\n")
    print("| hosts | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for n, r in rows.items():
        print(f"| {n} | " + " | ".join(f"{r[k]:.2f} s" for k in keys) + " |")


if __name__ == "__main__":
    main()
