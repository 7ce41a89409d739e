"""Marks and leftovers (host.procs) and the other deployments' files (host.siblings): the real scripts, run here.

Processes are marked the way supervisord marks a program's (``SUPERVISOR_PROCESS_NAME`` in their
environment); a systemd unit's mark is its cgroup, which only systemd can give, so its lines are
read from text in the format /proc prints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import facts
from orchestrator.core.layout import Layout
from orchestrator.host import procs, siblings
from orchestrator.host.procs import Owner, Proc
from orchestrator.host.runners import Supervisord
from orchestrator.host.siblings import Sibling


def sh(script: str, **env: str) -> str:
    proc = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:  # each in its own process group, its children with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def marked(
    spawn: list[subprocess.Popen[bytes]], name: str, *, parent: bool = False
) -> subprocess.Popen[bytes]:
    """A process marked as program ``orch-NAME`` (with a child, when ``parent``)."""
    command = "sleep 300 & wait" if parent else "exec sleep 300"
    env = {**os.environ, "SUPERVISOR_PROCESS_NAME": f"orch-{name}"}
    p = subprocess.Popen(["sh", "-c", command], env=env, start_new_session=True)
    spawn.append(p)
    return p


def wait_marked(count: int) -> tuple[Proc, ...]:
    for _ in range(50):
        found = procs.parse(sh(procs.LISTING).splitlines())
        if len([p for p in found if p.owner.name.startswith("tst-")]) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError("marked processes not seen")


def test_the_listing_finds_each_marked_process_with_its_parent(spawn: list[subprocess.Popen[bytes]]) -> None:
    a = marked(spawn, "tst-a", parent=True)
    b = marked(spawn, "tst-ab")
    found = {p.pid: p for p in wait_marked(3) if p.owner.name.startswith("tst-")}
    assert found[a.pid].owner == Owner("supervisord", "tst-a")
    [child] = [p for p in found.values() if p.ppid == a.pid]
    assert child.owner == Owner("supervisord", "tst-a") and child.comm == "sleep"
    assert found[b.pid].owner == Owner("supervisord", "tst-ab")  # a longer name, not tst-a's
    assert procs.live_tree(found.values(), a.pid) == {a.pid, child.pid}
    assert procs.orphans([found[a.pid], child], 0) == (found[a.pid], child)


def test_a_supervisord_stop_watches_every_process_of_the_program(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    """What a stop on supervisord waits for, read by the real script: the program's processes and their
    children, found by the mark alone (no supervisorctl), not another program's with a longer name."""
    a = marked(spawn, "tst-a", parent=True)
    left = marked(spawn, "tst-a")
    marked(spawn, "tst-ab")
    wait_marked(4)
    child = next(p.pid for p in procs.parse(sh(procs.LISTING).splitlines()) if p.ppid == a.pid)
    pids = {int(x) for x in sh(Supervisord().processes("orch-tst-a.service")).split()}
    assert pids == {a.pid, child, left.pid}


def test_reap_ends_the_deployments_leftovers_only(spawn: list[subprocess.Popen[bytes]]) -> None:
    live = marked(spawn, "tst-a")
    left = marked(spawn, "tst-a")
    other = marked(spawn, "tst-ab")
    wait_marked(3)
    layout = Layout("system", "tst-a", "supervisord")
    out = sh(f"tree={live.pid}; {procs.reap_script(layout, keep='tree')}")
    assert procs.reaped(out) == [f"{left.pid}:sleep"]
    assert left.wait(timeout=10) is not None
    assert live.poll() is None and other.poll() is None
    assert procs.reaped(sh(procs.reap_script(layout))) == [f"{live.pid}:sleep"]  # after a stop: all of them
    assert other.poll() is None


def test_a_deployments_facts_hold_its_marked_processes(spawn: list[subprocess.Popen[bytes]]) -> None:
    """The real gather script on a supervisord layout: the program is not running, so its processes
    outlived it (the missing supervisorctl answers nothing)."""
    p = marked(spawn, "tst-a")
    wait_marked(1)
    query = facts.FactQuery(Layout("system", "tst-a", "supervisord", "/nonexistent"), "orch-tst-a.service")
    got = facts.parse(sh(facts.gather([query], sudo=False).script), Supervisord("/nonexistent"))["tst-a"]
    assert [(q.pid, q.owner) for q in got.processes] == [(p.pid, Owner("supervisord", "tst-a"))]
    assert got.orphans == got.processes


def test_cgroup_lines_name_system_and_user_units() -> None:
    """The sed expressions of the listing on /proc/PID/cgroup lines (cgroup v2, v1, a user unit with and
    without app.slice; a container's unit seen from its host is not the host's)."""
    lines = (
        "/proc/12/cgroup:0::/system.slice/orch-tiny-a.service\n"
        "/proc/13/cgroup:1:name=systemd:/system.slice/orch-tp2.service\n"
        "/proc/14/cgroup:0::/user.slice/user-1000.slice/user@1000.service/app.slice/orch-solo.service\n"
        "/proc/15/cgroup:0::/user.slice/user-1000.slice/user@1000.service/orch-old.service\n"
        "/proc/16/cgroup:0::/machine.slice/machine-th1.scope/payload/system.slice/orch-inside.service\n"
        "/proc/17/environ:SUPERVISOR_PROCESS_NAME=orch-sup\n"
    )
    out = subprocess.run(
        ["sh", "-c", f"sed -n {procs._SED}"], input=lines, capture_output=True, text=True
    ).stdout
    assert out.splitlines() == [
        "T 12 system tiny-a",
        "T 13 system tp2",
        "T 14 user-1000 solo",
        "T 15 user-1000 old",
        "T 17 supervisord sup",
    ]
    parsed = procs.parse(
        [*out.splitlines(), "P 12 1 Sl python3", "P 13 12 Z python3", "P 17 1 S VLLM::EngineCor"]
    )
    assert [(p.pid, p.owner.kind) for p in parsed] == [(12, "system"), (17, "supervisord")]  # 13 is a zombie


def test_the_other_deployments_files_are_read_without_their_secrets(tmp_path: Path) -> None:
    """A user's deployments as orch lays them out under $HOME; the script prints GPUs, share, revision."""
    home = tmp_path / "home"
    (home / ".config" / "orch").mkdir(parents=True)
    (home / ".config" / "systemd" / "user").mkdir(parents=True)
    (home / ".local" / "state" / "orch" / "a").mkdir(parents=True)
    (home / ".config" / "orch" / "a.env").write_text(
        "# Managed by orch\nCUDA_DEVICE_ORDER=PCI_BUS_ID\nCUDA_VISIBLE_DEVICES=0,1\nHF_TOKEN=hf_secret\n"
    )
    (home / ".config" / "systemd" / "user" / "orch-a.service").write_text(
        "[Service]\nExecStart=/opt/vllm/bin/vllm serve /m --tensor-parallel-size 2 --gpu-memory-utilization 0.45\n"
    )
    (home / ".local" / "state" / "orch" / "a" / "current").write_text("3\n")
    (home / ".config" / "orch" / "cpu.env").write_text("VLLM_CPU_KVCACHE_SPACE=1\n")
    out = sh(siblings.script(), HOME=str(home))
    assert "hf_secret" not in out
    found = {s.owner.name: s for s in siblings.parse(out) if s.owner.kind == f"user-{os.getuid()}"}
    assert found["a"] == Sibling(Owner(f"user-{os.getuid()}", "a"), (0, 1), 0.45, 3)
    assert found["cpu"] == Sibling(
        Owner(f"user-{os.getuid()}", "cpu"), (), siblings.VLLM_DEFAULT_UTILIZATION, None
    )
    assert found["a"].describe() == f"deployment a (orch, user {os.getuid()}, revision 3)"


def test_a_siblings_share_comes_from_its_unit_and_its_owner_from_the_file(tmp_path: Path) -> None:
    """The env file's own --gpu-memory-utilization text is no share (only the unit's first one is); another
    user's file is named by its owner's uid."""
    home = tmp_path / "home"
    (home / ".config" / "orch").mkdir(parents=True)
    (home / ".config" / "systemd" / "user").mkdir(parents=True)
    env = home / ".config" / "orch" / "b.env"
    env.write_text("EXTRA=--gpu-memory-utilization 0.1\nCUDA_VISIBLE_DEVICES=2\n")
    (home / ".config" / "systemd" / "user" / "orch-b.service").write_text(
        "ExecStart=x --gpu-memory-utilization=0.3 --gpu-memory-utilization 0.7\n"
    )
    other = 4321 if os.geteuid() == 0 else os.getuid()
    if os.geteuid() == 0:
        os.chown(env, other, -1)
    found = [s for s in siblings.parse(sh(siblings.script(), HOME=str(home))) if s.owner.name == "b"]
    assert found == [Sibling(Owner(f"user-{other}", "b"), (2,), 0.3, None)]


def test_sibling_lines_as_a_supervisord_host_prints_them() -> None:
    text = (
        "@@orchsib supervisord tiny-a\nCUDA_VISIBLE_DEVICES='0'\n--gpu-memory-utilization 0.3\nrev=1\n"
        "@@orchsib system cpu-one\nrev=\n"
        "@@orchsib system Bad Name\nrev=1\n"
    )
    assert siblings.parse(text) == (
        Sibling(Owner("supervisord", "tiny-a"), (0,), 0.3, 1),
        Sibling(Owner("system", "cpu-one"), (), 0.9, None),
    )
    assert siblings.parse(text)[0].describe() == "deployment tiny-a (orch, revision 1)"


@pytest.mark.parametrize(
    ("status", "calls", "pid"),
    [
        ("orch-tiny   RUNNING   pid 4242, uptime 0:03:07", ["status orch-tiny"], 4242),
        ("orch-tiny   STARTING", ["status orch-tiny", "pid orch-tiny"], 977),
    ],
)
def test_a_supervisord_state_asks_for_the_pid_only_while_status_shows_none(
    tmp_path: Path, status: str, calls: list[str], pid: int
) -> None:
    """Each supervisorctl is a Python process: the state read runs one when status names the pid."""
    log = tmp_path / "calls"
    fake = tmp_path / "supervisorctl"
    fake.write_text(
        f'#!/bin/sh\necho "$*" >>{log}\ncase "$1" in status) echo "{status}";; pid) echo 977;; esac\n'
    )
    fake.chmod(0o755)
    sup = Supervisord(str(tmp_path))
    Path(sup.conf_path("orch-tiny.service")).write_text("[program:orch-tiny]\n")
    out = sh(sup.state("orch-tiny.service"), PATH=f"{tmp_path}:{os.environ['PATH']}")
    state = sup.parse_state(dict(line.split("=", 1) for line in out.splitlines()))
    assert log.read_text().splitlines() == calls
    assert (state.running or state.active == "activating", state.main_pid) == (True, pid)
