#!/usr/bin/env python3
"""The CPU a no-op `orch apply` costs on the test hosts, for this checkout and another, run alternately.

Run as root from the repository root: `.venv/bin/python benchmarks/noop_host_cpu.py --vs TREE [--hosts N]
[--runs K]`. Takes the test bed (its lock, waiting for another holder), brings up N hosts (default 2: th1 as
root, th2 as the `deploy` user with a user unit), applies one deployment per host whose unit runs a stand-in
process (benchmarks/templates/idle.service.j2; the launcher is the template's real vLLM CPU venv, which the
facts and preflight read), then runs K no-op applies (default 7) with each tree in turn: `python -m
orchestrator` from that tree. Each run's figure is the CPU the hosts' cgroups used while it ran (every
process on them: sshd and the session, the lock, the facts command, and the hosts' own background), summed
over the hosts and divided by N, as /work/shared/perf/run.sh counts "hosts CPU s". Prints the medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from testbed.hosts import CGROUP_GROUP, Testbed, exclusive  # noqa: E402

CPU_STAT = Path("/sys/fs/cgroup/unified") / CGROUP_GROUP


def host_cpu_us(n: int) -> int:
    """usage_usec summed over th1..thN's cgroups."""
    total = 0
    for i in range(1, n + 1):
        for line in (CPU_STAT / f"th{i}" / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                total += int(value)
    return total


def orch(tree: Path, *args: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=tree, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"orch {' '.join(args)} in {tree} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode


def site(tb: Testbed, n: int, d: Path) -> Path:
    hosts = tb.up(n)
    lines = [f"known_hosts: {tb.known_hosts_path}", f"defaults:\n  ssh_key: {tb.key_path}", "hosts:"]
    for h in hosts:
        user = "    user: deploy\n    scope: user\n" if h.index % 2 == 0 else ""
        lines += [f"  th{h.index}:\n    address: {h.address}\n{user}    groups: [bench]"]
    (d / "inventory.yml").write_text("\n".join(lines) + "\n")
    (d / "idle.service.j2").write_text((ROOT / "benchmarks/templates/idle.service.j2").read_text())
    (d / "pb.yml").write_text(
        f"inventory: {d / 'inventory.yml'}\n"
        "deployments:\n"
        "  - name: bench\n"
        "    hosts: [bench]\n"
        "    model: /srv/models/tiny\n"
        "    accelerator: cpu\n"
        "    launcher: {kind: api_server, venv: /opt/vllm}\n"
        "    readiness: {enabled: false}\n"
        "    templates: {unit: idle.service.j2}\n"
        "    env: {VLLM_CPU_KVCACHE_SPACE: '1'}\n"
    )
    return d / "pb.yml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vs", type=Path, required=True, help="another checkout (run alternately with this one)")
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    trees = {"this": ROOT, "vs": args.vs.resolve()}
    runs: dict[str, list[float]] = {name: [] for name in trees}
    tb = Testbed()
    with exclusive(wait=3600), tempfile.TemporaryDirectory() as tmp:
        tb.build()
        try:
            pb = str(site(tb, args.hosts, Path(tmp)))
            orch(ROOT, "apply", "-y", pb)
            for _ in range(args.runs):
                for name, tree in trees.items():
                    before = host_cpu_us(args.hosts)
                    orch(tree, "apply", "-y", pb)
                    runs[name].append((host_cpu_us(args.hosts) - before) / 1e6 / args.hosts)
            orch(ROOT, "destroy", "-y", pb)
        finally:
            tb.down()
    print(f"no-op apply, {args.hosts} test host(s), {args.runs} runs each: host CPU per host (user+sys)")
    for name, values in runs.items():
        s = sorted(values)
        print(
            f"  {name:5} ({trees[name]}): median {statistics.median(s):.3f} s (min {s[0]:.3f}, max {s[-1]:.3f})"
        )


if __name__ == "__main__":
    main()
