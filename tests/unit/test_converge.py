"""One deployment's apply on one host, run on a FakeTransport: the exact commands, in order, and the result.

``converge.execute`` is called on a ``HostRun`` built here around the fake (the seam a
``HostRun`` already has: its ``transport``), so nothing is patched but the HTTP readiness
gate, which ``fakehost.gates`` answers ready or not ready (the gate itself: test_health.py).
The host's answers are rendered by ``fakehost`` in the formats the real scripts print.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fakehost import (
    FAILED,
    RUNNING,
    after,
    deployment,
    desired,
    desired_of,
    facts_output,
    files_of,
    gates,
    holding,
    manifest_of,
    ok,
    playbook,
    recorded,
    restart_output,
    revision_output,
)

from orchestrator import converge, session
from orchestrator.core.load import Loaded
from orchestrator.facts import DeploymentFacts, UnitState
from orchestrator.host import state
from orchestrator.host.commands import Command
from orchestrator.host.procs import REAPED_MARK, Owner, Proc
from orchestrator.hostrun import HostRun, QuietReporter, Result
from orchestrator.plan import TargetPlan
from orchestrator.transport.base import Result as CommandResult
from orchestrator.transport.fake import FakeTransport

STATE = "/var/lib/orch/x"
UNIT = "/etc/systemd/system/orch-x.service"
ENV = "/etc/orch/x.env"
META = {"by": "alice@laptop", "verb": "apply", "created": "2026-12-01T14:02:00+00:00"}
FIRST_APPLY = [
    "gather facts",
    f"record pending revision in {STATE}",
    f"write {ENV}",
    f"write {UNIT}",
    "reload the runner's view of orch-x.service",
    "enable orch-x.service",
    "restart orch-x.service",
    f"make revision 1 current in {STATE}",
]


def old(tmp: Path) -> Loaded:
    return playbook(tmp, deployment("x"), name="old.yml")


def new(tmp: Path, *, gate: bool = True) -> Loaded:
    """The playbook being applied: both files differ from ``old``'s (port → unit, env → env file)."""
    return playbook(tmp, deployment("x", port=8001, gate=gate, env='{A: "2"}'), name="new.yml")


def host(loaded: Loaded, fake: FakeTransport) -> HostRun:
    targets = loaded.targets(limit={fake.name})
    return HostRun(fake.name, targets[0].host, targets, fake)


def plan(loaded: Loaded, run: HostRun) -> TargetPlan:
    """Gather (through the fake) and plan, as a session does."""
    run.facts, _, _ = converge.gather_host(run)
    [target] = run.targets
    return session.plan_one(run, target, desired_of(loaded), meta=META)


def apply(loaded: Loaded, fake: FakeTransport, *, restore: bool = True) -> Result:
    run = host(loaded, fake)
    return converge.execute(run, plan(loaded, run), QuietReporter(), gate=True, restore=restore)


def fresh(fake: FakeTransport, *, times: int | None = None, **facts: DeploymentFacts) -> FakeTransport:
    return fake.on("gather facts", ok(facts_output(facts)), times=times)


def test_a_first_apply_records_writes_restarts_then_makes_the_revision_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = new(tmp_path)
    want = desired(loaded)
    fake = fresh(FakeTransport("alpha"), x=DeploymentFacts())
    fake.on("record pending", ok("1\n")).on("restart", ok(restart_output(RUNNING)))
    gate = gates(monkeypatch, True, host=fake)

    result = apply(loaded, fake)

    assert (result.status, result.revision, result.elapsed_s) == ("applied", 1, 4.0)
    assert fake.labels == FIRST_APPLY
    # The record and every live change go to the host as one script, in order.
    assert [len(c.parts) for c in fake.execs] == [0, 6, 0]
    assert [p.label for p in fake.execs[1].parts] == FIRST_APPLY[1:-1]
    # "ready after" counts from the restart command: the gate is told when it was sent.
    [since] = gate.since
    assert since is not None and since <= time.monotonic()
    assert result.timeline is not None
    assert (result.timeline.up_s, result.timeline.answer_s) == (3.5, 4.0)
    assert 0 <= result.timeline.started_s < 4.0
    assert gate.calls == [
        FIRST_APPLY.index("restart orch-x.service") + 1
    ]  # once: after the restart, before the commit
    sent = {c.label: c for c in fake.sent}
    assert sent[f"write {ENV}"].stdin == want.file("env").content.encode()  # type: ignore[union-attr]
    assert sent[f"write {UNIT}"].stdin == want.file("unit").content.encode()  # type: ignore[union-attr]
    restart = sent["restart orch-x.service"].script
    assert restart.startswith(state.restarting(STATE) + "; ")
    revision = recorded(sent[f"record pending revision in {STATE}"])
    assert revision["vllm.service"] == want.file("unit").content  # type: ignore[union-attr]
    assert json.loads(revision["manifest.json"])["files"] == manifest_of(want)["files"]


def test_with_the_gate_off_a_first_apply_sends_the_same_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = new(tmp_path, gate=False)
    fake = fresh(FakeTransport("alpha"), x=DeploymentFacts())
    fake.on("record pending", ok("1\n"))
    gates(monkeypatch)  # any call of the gate would fail: none is due

    result = apply(loaded, fake)

    assert (result.status, result.revision, result.elapsed_s) == ("applied", 1, None)
    assert fake.labels == FIRST_APPLY


def test_a_converged_host_gets_no_command_after_its_facts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = new(tmp_path)
    fake = fresh(FakeTransport("alpha"), x=holding(desired(loaded), current_revision=4))
    gates(monkeypatch)

    assert apply(loaded, fake) == Result("alpha", "x", "unchanged", revision=4)
    assert fake.labels == ["gather facts"]


def test_a_failed_gate_restores_the_current_revision_and_marks_the_new_one_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, loaded = desired(old(tmp_path)), new(tmp_path)
    after_apply = DeploymentFacts(
        files=files_of(desired(loaded)),
        unit=FAILED,
        current_revision=2,
        manifest=manifest_of(before),
        pending=state.Pending(3, True, "alice@laptop", "apply", "now", previous=2),
        never_current=frozenset({1}),
    )
    fake = fresh(
        FakeTransport("alpha"), times=1, x=holding(before, current_revision=2, never_current=frozenset({1}))
    )
    fresh(fake, x=after_apply)
    fake.on("record pending", ok("3\n")).on("restart", ok(restart_output(RUNNING)))
    fake.on("logs of orch-x.service", ok("RuntimeError: engine core died\n"))
    fake.on("read revision 2", ok(revision_output(files_of(before), manifest_of(before))))
    gate = gates(monkeypatch, False, True, host=fake)

    result = apply(loaded, fake)

    assert gate.calls == [6, 13]  # after each restart
    assert fake.labels == [
        "gather facts",
        f"record pending revision in {STATE}",
        f"write {ENV}",
        f"write {UNIT}",
        "reload the runner's view of orch-x.service",
        "restart orch-x.service",
        "logs of orch-x.service",
        "read revision 2",
        "gather facts",
        f"write {ENV}",
        f"write {UNIT}",
        "reload the runner's view of orch-x.service",
        "restart orch-x.service",
        f"mark revision 3 failed in {STATE}",
    ]
    writes = [c.stdin for c in fake.sent if c.label.startswith("write ")]
    assert writes[2:] == [before.file("env").content.encode(), before.file("unit").content.encode()]  # type: ignore[union-attr]
    assert result.status == "rolled-back" and result.revision == 2
    assert result.message == "alpha: x: /health answered 500 for 4s; rolled back to revision 2"
    assert result.journal == "RuntimeError: engine core died\n"
    assert "'failed: alpha: x: /health answered 500 for 4s'" in fake.sent[-1].script


def test_no_rollback_keeps_the_failed_revision_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = new(tmp_path)
    fake = fresh(FakeTransport("alpha"), x=DeploymentFacts())
    fake.on("record pending", ok("1\n"))
    gates(monkeypatch, False)

    result = apply(loaded, fake, restore=False)

    assert result.status == "failed" and result.message.endswith("revision 1 stays pending (--no-rollback)")
    assert after(fake.sent, "restart") == ["logs of orch-x.service"]


def test_a_failed_first_apply_removes_what_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = new(tmp_path)
    crash_looping = UnitState("loaded", "activating", "auto-restart", "enabled", n_restarts=2)
    created = DeploymentFacts(
        files=files_of(desired(loaded)),
        unit=crash_looping,
        pending=state.Pending(1, True, "alice@laptop", "apply", "now"),
    )
    fake = fresh(FakeTransport("alpha"), times=1, x=DeploymentFacts())
    fresh(fake, x=created)
    fake.on("record pending", ok("1\n"))
    gates(monkeypatch, False)  # a restore to nothing has no gate

    result = apply(loaded, fake)

    assert after(fake.sent, "logs of") == [
        "gather facts",
        "stop orch-x.service",
        "disable orch-x.service",
        f"remove {ENV}",
        f"remove {UNIT}",
        "reload the runner's view of orch-x.service",
        f"mark revision 1 failed in {STATE}",
    ]
    assert result.status == "rolled-back" and result.revision is None
    assert result.message.endswith("rolled back to no deployment (this verb created it)")


def test_a_failed_first_apply_writes_back_the_unrecorded_files_it_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hand, loaded = desired(old(tmp_path)), new(tmp_path)
    found = DeploymentFacts(files=files_of(hand), unit=RUNNING)  # put there by hand: no revision
    overwritten = DeploymentFacts(
        files=files_of(desired(loaded)),
        unit=FAILED,
        pending=state.Pending(1, True, "alice@laptop", "apply", "now"),
    )
    fake = fresh(FakeTransport("alpha"), times=1, x=found)
    fresh(fake, x=overwritten)
    fake.on("record pending", ok("1\n"), times=1)
    fake.on("restart", ok(restart_output(RUNNING)))
    gates(monkeypatch, False, True)

    result = apply(loaded, fake)

    # Nothing is removed and nothing is recorded: the files found are written back, revision 1 marked failed.
    assert after(fake.sent, "logs of") == [
        "gather facts",
        f"write {ENV}",
        f"write {UNIT}",
        "reload the runner's view of orch-x.service",
        "restart orch-x.service",
        f"mark revision 1 failed in {STATE}",
    ]
    assert [c.stdin for c in fake.sent if c.label.startswith("write ")][2:] == [
        hand.file("env").content.encode(),  # type: ignore[union-attr]
        hand.file("unit").content.encode(),  # type: ignore[union-attr]
    ]
    assert result.status == "rolled-back"
    assert result.message.endswith("rolled back to the files that were there before (no revision recorded)")


def test_a_failed_first_apply_over_a_lone_unit_file_leaves_no_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit file put there by hand and no env file cannot run: the restore removes what this apply wrote."""
    hand, loaded = desired(old(tmp_path)), new(tmp_path)
    found = DeploymentFacts(files={"unit": files_of(hand)["unit"]}, unit=RUNNING)
    overwritten = DeploymentFacts(
        files=files_of(desired(loaded)),
        unit=FAILED,
        pending=state.Pending(1, True, "alice@laptop", "apply", "now"),
    )
    fake = fresh(FakeTransport("alpha"), times=1, x=found)
    fresh(fake, x=overwritten)
    fake.on("record pending", ok("1\n"), times=1).on("record pending", ok("2\n"))
    fake.on("restart", ok(restart_output(RUNNING)))
    gates(monkeypatch, False, True)

    result = apply(loaded, fake)

    assert (
        result.status == "rolled-back" and "only its unit file was there, which cannot run" in result.message
    )
    restore = after(fake.sent, "logs of")
    assert (
        f"remove {ENV}" in restore and f"remove {UNIT}" in restore and not any("write" in c for c in restore)
    )


class Events(QuietReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def event(self, host: str, deployment: str, text: str) -> None:
        self.lines.append(text)


def test_reap_on_a_running_deployment_ends_only_its_leftovers_and_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = new(tmp_path)
    left = Proc(501, 1, "VLLM::EngineCor", Owner("system", "x"))
    running = replace(RUNNING, main_pid=400)
    fake = fresh(
        FakeTransport("alpha"),
        x=holding(desired(loaded), unit=running, current_revision=4, processes=(left,)),
    )
    fake.on("end leftover processes", ok(f"{REAPED_MARK} 501:VLLM::EngineCor\n"))
    gates(monkeypatch)  # no restart: no gate
    run, events = host(loaded, fake), Events()
    run.facts, _, _ = converge.gather_host(run)
    p = session.plan_one(run, run.targets[0], desired_of(loaded), meta=META, reap=True)

    result = converge.execute(run, p, events, gate=True, restore=True)

    assert result == Result("alpha", "x", "applied", revision=4)
    assert fake.labels == ["gather facts", "end leftover processes of orch-x.service"]
    assert events.lines[-1] == "--reap: ended the deployment's leftover processes: 501:VLLM::EngineCor"
    reap = fake.sent[-1].script
    assert "SUPERVISOR_PROCESS_NAME" in reap and "-v k=system -v n=x " in reap  # its own mark, nothing else


class StampingHost(FakeTransport):
    """A fake whose steps scripts print the host's uptime as the real script does: the restart began 0.5 s
    and ended 1.25 s after the script started."""

    def run(self, command: Command, *, timeout: float | None = None, check: bool = True) -> CommandResult:
        result = super().run(command, timeout=timeout, check=check)
        if not command.parts:
            return result
        stamps = iter(["100.00", *(f"{100.5 + 0.75 * i:.2f}" for i in range(len(command.parts)))])
        lines = [
            line.rsplit(" ", 1)[0] + " " + next(stamps) if line.startswith("@@orchstep") else line
            for line in result.stdout.split("\n")
        ]
        return replace(result, stdout="\n".join(lines))


def test_ready_after_counts_from_the_restart_inside_the_script_by_the_hosts_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = new(tmp_path)
    fake = StampingHost("alpha").on("gather facts", ok(facts_output({"x": holding(desired(old(tmp_path)))})))
    fake.on("record pending", ok("2\n")).on("restart", ok(restart_output(RUNNING)))
    gate = gates(monkeypatch, True, host=fake)
    t0 = time.monotonic()
    result = apply(loaded, fake)
    t1 = time.monotonic()
    assert result.status == "applied", result.message
    [script] = [c for c in fake.execs if c.parts]
    labels = [p.label for p in script.parts]
    assert labels[0].startswith("record") and labels[-1] == "restart orch-x.service"
    # The restart began when the step before it ended, on the host's clock: 0.5 s after the script
    # started, plus 0.75 s for each step before that one.
    offset = 0.5 + 0.75 * (len(labels) - 2)
    [since] = gate.since
    assert since is not None and t0 + offset <= since <= t1 + offset
    assert result.timeline is not None and result.timeline.started_s == pytest.approx(0.75, abs=1e-3)
