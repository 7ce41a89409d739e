"""Controller peak RSS on a no-op over N hosts: orch, pyinfra, and what orch's required libraries alone take.

    python benchmarks/control_path/rss_floor.py ROUNDS [N]      # the perf harness's hosts, up, converged

The floor is a minimal program run with orch's interpreter: it imports what a no-op apply cannot do
without (Fabric with Paramiko, Pydantic, PyYAML, Jinja2), validates one YAML document against one
Pydantic model, renders one Jinja2 template, then opens a Fabric connection to each of the N hosts in a
thread of its own (known_hosts checked, key login) and runs one command there, as a no-op must. A
second floor loads and validates the harness's playbook with orch's own schema (``core.load``) in place
of the one-field model: what the libraries take with the part of orch no verb can do without.
Rounds alternate the three commands; each is a fresh process whose peak RSS (``ru_maxrss``) is read by
``wait4``. Prints a Markdown table of the medians and ranges, in MiB (1,024 KiB).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

TH_DIR = Path(os.environ.get("TH_DIR", "/tmp/perfhosts"))
PERF = Path(__file__).resolve().parents[3] / "shared" / "perf"
LIBRARIES = """
import yaml
from pydantic import BaseModel, Field
class M(BaseModel):
    x: int = Field(ge=0)
M.model_validate(yaml.safe_load("x: 1"))
"""
SCHEMA = """
from pathlib import Path
from orchestrator.core.load import load
load(Path(sys.argv[2]) / "orch" / f"pb{sys.argv[1]}.yml")
"""
CONNECT = """
import threading
import paramiko, jinja2
from fabric import Config, Connection
jinja2.Environment().from_string("{{ x }}").render(x=1)
n, th = int(sys.argv[1]), sys.argv[2]
def one(i):
    conn = Connection(f"10.77.{i // 250 + 1}.{i % 250 + 1}", user="root", config=Config(ssh_config=paramiko.SSHConfig()),
                      connect_kwargs={"key_filename": f"{th}/keys/id_ed25519", "allow_agent": False, "look_for_keys": False})
    conn.client.load_host_keys(f"{th}/orch/known_hosts")
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.run("true", hide=True, in_stream=False)
    conn.close()
threads = [threading.Thread(target=one, args=(i,)) for i in range(1, n + 1)]
[t.start() for t in threads]; [t.join() for t in threads]
"""


def main(rounds: int, n: int) -> None:
    orch_py = str(TH_DIR / "venv-orch" / "bin" / "python")
    env = {**os.environ, "TH_N": str(n), "PYINFRA_YES": "1"}
    cmds: dict[str, tuple[list[str], str]] = {
        "pyinfra no-op": (
            [
                str(TH_DIR / "venv-pyinfra" / "bin" / "pyinfra"),
                "-y",
                "inventory.py",
                "deploy.py",
                "--data",
                "demo_revision=1",
            ],
            str(PERF / "pyinfra"),
        ),
        "orch apply, no-op": (
            [orch_py, "-m", "orchestrator", "apply", "-y", f"pb{n}.yml"],
            str(TH_DIR / "orch"),
        ),
        "floor: the required libraries, one command per host": (
            [orch_py, "-c", "import sys" + LIBRARIES + CONNECT, str(n), str(TH_DIR)],
            "/",
        ),
        "the same with orch's playbook schema (core.load) for the one-field model": (
            [orch_py, "-c", "import sys" + SCHEMA + CONNECT, str(n), str(TH_DIR)],
            "/",
        ),
    }
    peak: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(rounds):
        for name, (argv, cwd) in cmds.items():
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, env=env)
            assert proc.stderr is not None
            err = proc.stderr.read()
            _, status, usage = os.wait4(proc.pid, 0)
            if status != 0:
                raise SystemExit(f"{name}: exit status {status}: {err.decode(errors='replace')[-500:]}")
            peak[name].append(usage.ru_maxrss / 1024)
    print(f"{n} hosts, {rounds} rounds\n\n| | peak RSS median | range |\n|---|---|---|")
    for name, values in peak.items():
        print(f"| {name} | {statistics.median(values):.1f} MiB | {min(values):.1f}–{max(values):.1f} MiB |")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 16)
