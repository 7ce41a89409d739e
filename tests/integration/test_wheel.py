"""orch built as a wheel and installed outside the repository works: templates and py.typed ship as
package data, read through importlib.resources (no test bed; pip needs the package index for the
build backend)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    print(f"$ {' '.join(map(str, args))}  → {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel; its dependencies are those of the running venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy, so the build leaves no build/ or egg-info in the repository
    shutil.copytree(ROOT / "orchestrator", src / "orchestrator", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    built = run(*pip, "wheel", "--no-deps", "-q", "-w", tmp / "dist", src, cwd=tmp)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp / "dist").glob("orch-*.whl")
    venv = tmp / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp).returncode == 0
    python = venv / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp)
    # A plain path line: the running venv's .pth files (orch's editable install among them) stay unread.
    (Path(site.stdout.strip()) / "orch-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = run(*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp)
    assert done.returncode == 0, done.stderr
    return venv


def test_wheel_carries_package_data(installed: Path) -> None:
    code = (
        "import orchestrator, importlib.resources as r; print(orchestrator.__file__); "
        "root = r.files('orchestrator'); "
        "print(sorted(p.name for p in root.joinpath('templates').iterdir())); "
        "print(root.joinpath('py.typed').is_file()); "
        "from orchestrator.provision import hub; s = hub.script(); "
        "print(all(f'def {f}(' in s for f in ('main', 'read_request', 'import_library')))"
    )
    proc = run(installed / "bin" / "python", "-c", code, cwd=installed.parent)
    where, templates, typed, hubfetch = proc.stdout.splitlines()
    assert Path(where).is_relative_to(installed), "the repository's package was imported, not the wheel's"
    assert templates == str(["vllm.env.j2", "vllm.service.j2", "vllm.supervisor.j2"])
    assert typed == hubfetch == "True"  # py.typed, and the host-side fetch's three modules read as text


@pytest.mark.parametrize("playbook", sorted(p.name for p in (ROOT / "playbooks").glob("*.yml")))
def test_installed_orch_validates_and_plans(installed: Path, playbook: str, tmp_path: Path) -> None:
    for folder in ("playbooks", "inventory"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    path = tmp_path / "playbooks" / playbook
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= dict.fromkeys(re.findall(r"\{env: (\w+)\}", path.read_text()), "dummy-secret-value")
    env["COLUMNS"] = "200"
    orch = installed / "bin" / "orch"
    valid = run(orch, "validate", path, cwd=tmp_path, env=env)
    assert valid.returncode == 0 and "ok" in valid.stdout, valid.stderr
    plan = run(orch, "plan", "--offline", path, cwd=tmp_path, env=env)
    assert plan.returncode == 2, plan.stderr
    assert "(desired)" in plan.stdout and "dummy-secret-value" not in plan.stdout
    assert "ExecStart=" in plan.stdout or "[program:" in plan.stdout  # the shipped unit template rendered
