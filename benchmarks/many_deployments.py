#!/usr/bin/env python3
"""Time `orch validate` and `orch plan --offline` on a playbook of many deployments (default 1,000).

Run from the repository root: `.venv/bin/python benchmarks/many_deployments.py [N] [--runs R] [--keep DIR]`.
Writes a playbook of N deployments spread over N/50 hosts (50 ports a host) and its inventory to a temporary folder, then runs each verb R times (default 5) as a whole `orch`
process, start-up included, and prints min / median / max wall time. The playbook holds no secret, so
`plan --offline` needs no environment. `--keep DIR` writes the files to DIR and leaves them there.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PER_HOST = 50


def inventory(n_hosts: int) -> str:
    lines = ["hosts:"]
    for h in range(n_hosts):
        lines += [f"  h{h}:", f"    address: 10.99.{h // 250}.{h % 250 + 1}", "    groups: [cpu]"]
    return "\n".join(lines) + "\n"


def playbook(n: int) -> str:
    lines = ["inventory: inventory.yml", "deployments:"]
    for i in range(n):
        host, slot = divmod(i, PER_HOST)
        lines += [
            f"  - name: dep{i}",
            f"    hosts: [h{host}]",
            f"    model: /srv/models/m{i % 7}",
            "    accelerator: cpu",
            f"    port: {8000 + slot}",
            "    max_model_len: 512",
            "    launcher: {kind: api_server, venv: /opt/vllm}",
            f"    env: {{VLLM_CPU_KVCACHE_SPACE: '1', SLOT: 's{slot}'}}",
            "    args: {--enforce-eager: true}",
        ]
    return "\n".join(lines) + "\n"


def write(folder: Path, n: int) -> Path:
    n_hosts = max(1, (n + PER_HOST - 1) // PER_HOST)
    (folder / "inventory.yml").write_text(inventory(n_hosts))
    (folder / "pb.yml").write_text(playbook(n))
    return folder / "pb.yml"


def orch(*args: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 2):
        sys.exit(f"orch {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", type=Path)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = opts.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        pb = str(write(folder, opts.n))
        orch("validate", pb)  # warm-up, and a check that the playbook is valid
        print(f"{opts.n} deployments, {opts.runs} runs each, wall time of the whole `orch` process\n")
        print("| verb | min | median | max |")
        print("|---|---|---|---|")
        for verb in (["validate"], ["plan", "--offline"]):
            times = [orch(*verb, pb) for _ in range(opts.runs)]
            cells = " | ".join(f"{t:.2f} s" for t in (min(times), statistics.median(times), max(times)))
            print(f"| `orch {' '.join(verb)}` | {cells} |")


if __name__ == "__main__":
    main()
