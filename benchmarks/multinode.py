#!/usr/bin/env python3
"""One model across two test hosts against one host: time to ready and `orch bench`, shape by shape.

Run as root from the repository root: `.venv/bin/python benchmarks/multinode.py`. Takes the test bed's
lock, brings up th1 and th2, and for each shape (the tiny model of the test bed, vLLM CPU build):

    tp2-one-host   tensor parallelism 2 on th1 (VLLM_CPU_OMP_THREADS_BIND 0|1)
    pp2-one-host   pipeline parallelism 2 on th1 (0|1): the cost of PP without a network
    pp2-two-hosts  pipeline parallelism 2 across th1 and th2 (rank 0 on core 0, rank 1 on core 1)
    pp2-two-auto   the same with vLLM's own CPU binding on each node (both ranks on core 0)

applies it (a first start: torch's compile cache may be cold for the shape), applies a change that
restarts it (a warm start), benches it twice, and destroys it. Both test hosts share the machine's
CPU cores, so the two-host figures measure the distributed runtime and its network hop, not more
hardware. Writes a Markdown table to stdout; docs/multinode.md keeps the recorded run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from testbed.hosts import Testbed, exclusive  # noqa: E402

BENCH = ["-n", "48", "-c", "4", "--input-len", "32", "--output-len", "16"]
COMMON = """\
    model: /srv/models/tiny
    served_model_name: tiny
    accelerator: cpu
    max_model_len: 512
    dtype: bfloat16
    launcher: {kind: api_server, venv: /opt/vllm}
    readiness: {timeout_s: 900, interval_s: 1}
"""
SHAPES = {
    "tp2-one-host": "    hosts: [th1]\n    tensor_parallel_size: 2\n    env: {BIND}\n",
    "pp2-one-host": "    hosts: [th1]\n    pipeline_parallel_size: 2\n    env: {BIND}\n",
    "pp2-two-hosts": (
        "    nodes:\n"
        "      - {host: th1, env: {VLLM_CPU_OMP_THREADS_BIND: '0'}}\n"
        "      - {host: th2, env: {VLLM_CPU_OMP_THREADS_BIND: '1'}}\n"
        "    env: {REV}\n"
    ),
    "pp2-two-auto": "    nodes: [{host: th1}, {host: th2}]\n    env: {REV}\n",
}


def orch(*args: str | Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *map(str, args)], capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"orch {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc


def playbook(d: Path, shape: str, revision: int) -> Path:
    env = f'VLLM_CPU_KVCACHE_SPACE: "1", REVISION: "r{revision}"'
    body = SHAPES[shape].replace("{BIND}", f'{{{env}, VLLM_CPU_OMP_THREADS_BIND: "0|1"}}')
    body = body.replace("{REV}", f"{{{env}}}")
    path = d / f"{shape}-{revision}.yml"
    path.write_text(f"inventory: inventory.yml\ndeployments:\n  - name: {shape}\n{body}{COMMON}")
    return path


def ready_after(proc: subprocess.CompletedProcess[str]) -> float:
    found = re.findall(r"ready after ([0-9.]+)s", proc.stderr)
    return float(found[-1]) if found else float("nan")


def bench(d: Path, pb: Path, shape: str, n: int) -> dict[str, float]:
    saved = d / f"{shape}-bench{n}.json"
    orch("bench", pb, "-d", shape, *BENCH, "--save", saved)
    data = json.loads(saved.read_text())
    return {
        "requests/s": data["request_throughput"],
        "output tok/s": data["output_throughput"],
        "TTFT median ms": data["ttft"]["median"],
        "TPOT median ms": data["tpot"]["median"],
        "failed": data["failed"],
    }


def measure(d: Path, shape: str) -> dict[str, float]:
    first_s, first = orch("apply", "-y", playbook(d, shape, 0))
    warm_s, warm = orch("apply", "-y", playbook(d, shape, 1))
    runs = [bench(d, playbook(d, shape, 1), shape, n) for n in (1, 2)]
    orch("destroy", "-y", playbook(d, shape, 1))
    best = max(runs, key=lambda r: r["requests/s"])
    return {
        "first apply s": first_s,
        "first ready s": ready_after(first),
        "warm apply s": warm_s,
        "warm ready s": ready_after(warm),
        **best,
        "failed": sum(r["failed"] for r in runs),
    }


def main() -> None:
    tb = Testbed()
    with exclusive(wait=7200):
        tb.down()
        tb.build()
        try:
            hosts = tb.up(2)
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                (d / "inventory.yml").write_text(
                    f"known_hosts: {tb.known_hosts_path}\ndefaults:\n  ssh_key: {tb.key_path}\n"
                    "  interface: eth0\nhosts:\n"
                    + "".join(f"  th{h.index}:\n    address: {h.address}\n" for h in hosts)
                )
                rows = {shape: measure(d, shape) for shape in (sys.argv[1:] or list(SHAPES))}
        finally:
            tb.down()
    keys = list(next(iter(rows.values())))
    print("| shape | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for shape, r in rows.items():
        print(
            f"| {shape} | "
            + " | ".join(f"{r[k]:.1f}" if k != "failed" else str(int(r[k])) for k in keys)
            + " |"
        )


if __name__ == "__main__":
    main()
