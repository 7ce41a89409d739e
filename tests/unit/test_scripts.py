"""scripts/demo and scripts/test go on as root (no sudo needed) and re-run themselves through sudo otherwise.

Nothing here boots the test bed: ``id`` and ``sudo`` are stand-ins on PATH. A stand-in ``sudo``
prints what it was asked to run and exits, so a script that reaches it stops there; the root
path is tried on the sourced prologue itself, which the scripts run before anything else.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROLOGUE = ROOT / "scripts" / "as-root.sh"


def stand_ins(folder: Path, *, uid: int, sudo: bool) -> Path:
    """A folder with an ``id`` that answers ``uid`` and, if asked, a ``sudo`` that only reports."""
    folder.mkdir()
    (folder / "id").write_text(f'#!/bin/sh\n[ "$1" = -u ] && echo {uid}\n')
    if sudo:
        (folder / "sudo").write_text('#!/bin/sh\necho "sudo $*"\n')
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return folder


def run(argv: list[str], path: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, cwd=ROOT, env={"PATH": path, **env}, check=False, timeout=30
    )


def prologue(tmp_path: Path, *, uid: int, sudo: bool) -> subprocess.CompletedProcess[str]:
    """The prologue as scripts/demo runs it, then a line that says the script went on.

    PATH holds only the stand-ins: the prologue needs nothing else, and no real sudo is found.
    """
    bin_dir = stand_ins(tmp_path / "bin", uid=uid, sudo=sudo)
    script = f'. {PROLOGUE}; as_root "$@"; echo "went on as $(id -u): $*"'
    return run(["/bin/bash", "-c", script, "scripts/demo", "up", "a b"], str(bin_dir))


def test_root_goes_on_without_sudo(tmp_path: Path) -> None:
    proc = prologue(tmp_path, uid=0, sudo=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "went on as 0: up a b\n", "")


def test_a_user_runs_it_again_through_sudo(tmp_path: Path) -> None:
    proc = prologue(tmp_path, uid=1000, sudo=True)
    assert proc.returncode == 0
    assert proc.stdout == f"sudo -- {ROOT}/scripts/demo up a b\n"  # the arguments kept, "a b" as one
    assert proc.stderr == "demo: not root: running it again with sudo\n"


def test_a_user_without_sudo_is_told_to_be_root(tmp_path: Path) -> None:
    proc = prologue(tmp_path, uid=1000, sudo=False)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == "demo: needs root, and sudo is not installed: run it as root\n"


@pytest.mark.parametrize("script", ["demo", "test"])
def test_the_scripts_ask_sudo_before_doing_anything(tmp_path: Path, script: str) -> None:
    # The real scripts, as a user: they must reach sudo (which only reports) and do nothing else.
    bin_dir = stand_ins(tmp_path / "bin", uid=1000, sudo=True)
    proc = run([f"scripts/{script}", "down"], f"{bin_dir}:{os.defpath}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"sudo -- {ROOT}/scripts/{script} down\n"


def test_scripts_parse() -> None:
    for name in ("demo", "test", "as-root.sh"):
        assert run(["/bin/bash", "-n", f"scripts/{name}"], os.defpath).returncode == 0, name
