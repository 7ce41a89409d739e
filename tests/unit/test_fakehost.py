"""The fake host's answers are what real hosts print: the real scripts run here, and their output is compared.

A user-scope host's state is made by orch's own scripts (write_file, begin, abandon, commit, the restart
mark) under a temporary $HOME, with a stand-in ``systemctl`` that prints ``fakehost.show``; then the
real ``facts.gather`` script reads it. Parsed, it must equal the facts that ``fakehost.facts_output``
renders, and the two texts must match line for line.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fakehost import FAILED, RUNNING, busy_output, facts_output, restart_output, revision_output, show

from orchestrator import apply, converge, facts
from orchestrator.core.layout import Layout, Role
from orchestrator.core.model import Deployment, Host
from orchestrator.core.render import DesiredFile
from orchestrator.facts import DeploymentFacts
from orchestrator.host import commands, state
from orchestrator.host.commands import Command
from orchestrator.host.runners import Systemd
from orchestrator.plan import RecordRevision

HOST = Host(address="127.0.0.1", scope="user", connection="local")
DEP = Deployment(name="x", hosts=("h",), model="/models/x", accelerator="cpu")
LAYOUT = Layout.of(HOST, "x")
META = {"by": "alice@laptop", "verb": "apply", "created": "2026-12-01T14:02:00+00:00"}


def sh(home: Path, command: Command) -> str:
    env = {**os.environ, "HOME": str(home), "PATH": f"{home}/bin:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["/bin/bash", "-c", command.script],
        input=command.stdin or b"",
        env=env,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def record(home: Path, n: int, unit: str, env: str, *, previous: int | None) -> RecordRevision:
    files = (
        DesiredFile("env", LAYOUT.env_path, env, 0o600),
        DesiredFile("unit", LAYOUT.unit_path, unit, 0o644),
    )
    change = RecordRevision(files, "apply", META, previous)
    assert sh(home, apply.command_for(change, layout=LAYOUT, sudo=False)).strip() == str(n)
    return change


def test_real_gather_output_is_what_the_fake_renders(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    stand_in = tmp_path / "bin" / "systemctl"
    stand_in.write_text(f"#!/bin/sh\ncat <<'EOF'\n{show(RUNNING)}EOF\n")
    stand_in.chmod(0o755)
    d = LAYOUT.state_dir
    record(tmp_path, 1, "[Service]\nExecStart=/one\n", "A=1\n", previous=None)
    sh(tmp_path, state.abandon(d, 1, "failed: /health answered 500", sudo=False))
    two = record(tmp_path, 2, "[Service]\nExecStart=/two\n", "A=2\n", previous=None)
    sh(tmp_path, state.commit(d, 2, sudo=False))
    three = record(tmp_path, 3, "[Service]\nExecStart=/three\n", "A=3\n", previous=2)
    for f in three.files:
        sh(tmp_path, commands.write_file(f.path, mode=f.mode, sudo=False, content=f.content.encode()))
    sh(tmp_path, Command(state.restarting(d)))

    gather = facts.gather([converge.fact_query(HOST, DEP)], sudo=False)
    real = sh(tmp_path, gather)

    expected = DeploymentFacts(
        files={"unit": "[Service]\nExecStart=/three\n", "env": "A=3\n"},
        unit=RUNNING,
        current_revision=2,
        manifest={**META, "source": "apply", "files": {f.role: f.sha256 for f in two.files}},
        pending=state.Pending(3, True, "alice@laptop", "apply", "2026-12-01T14:02:00+00:00", previous=2),
        never_current=frozenset({1}),
    )
    assert facts.parse(real, Systemd("user")) == {"x": expected}
    assert facts_output({"x": expected}, kind=f"user-{os.getuid()}").splitlines() == real.splitlines()


def test_a_fresh_host_reads_as_the_fake_renders_it(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    stand_in = tmp_path / "bin" / "systemctl"
    stand_in.write_text("#!/bin/sh\nexit 1\n")  # no user manager: systemctl prints nothing
    stand_in.chmod(0o755)
    real = sh(tmp_path, facts.gather([converge.fact_query(HOST, DEP)], sudo=False))
    assert facts.parse(real, Systemd("user")) == {"x": DeploymentFacts()}
    assert facts.parse(facts_output({"x": DeploymentFacts()}), Systemd("user")) == {"x": DeploymentFacts()}


def test_the_other_renderers_read_back() -> None:
    """Each renderer asserts its own round trip; here, what the code that reads them gets."""
    text = restart_output(FAILED, ("301:python3", "302:VLLM::Worker"))
    assert apply._leftovers(text) == ["301:python3", "302:VLLM::Worker"]
    assert facts.parse_state(text.split("\n", 1)[1], Systemd("system")) == FAILED
    contents: dict[Role, str] = {"unit": "[Service]\n", "env": "A=1\n"}
    assert state.parse_revision(revision_output(contents, {"files": {}}))["vllm.service"] == "[Service]\n"
    holder = state.Holder("bob@desk", 7, "apply", "now")
    assert state.parse_busy(busy_output({"/var/lib/orch/x": holder}).stdout) == [("/var/lib/orch/x", holder)]
