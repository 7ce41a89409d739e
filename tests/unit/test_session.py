"""A verb's session across hosts, on FakeTransports: the lock, per-host results, rollback's choice.

``sessions.Session`` builds its connections with ``session.connect``; ``fakehost.on_fake_hosts``
patches that one name to hand out FakeTransports by host name, so the session itself
(lock order, release, parallel execute, per-host results) runs unchanged. The HTTP
readiness gate is off in these playbooks (``readiness: {enabled: false}``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakehost import (
    RUNNING,
    after,
    busy_output,
    deployment,
    desired,
    desired_of,
    facts_output,
    files_of,
    holding,
    manifest_of,
    ok,
    on_fake_hosts,
    playbook,
    recorded,
    revision_output,
)

from orchestrator import session as sessions
from orchestrator.core.load import Loaded
from orchestrator.core.render import Desired
from orchestrator.errors import UnreachableError
from orchestrator.facts import DeploymentFacts
from orchestrator.host import state
from orchestrator.host.commands import Command
from orchestrator.hostrun import Result
from orchestrator.transport.base import Result as CommandResult
from orchestrator.transport.fake import FakeTransport

STATE = "/var/lib/orch/x"
UNIT = "/etc/systemd/system/orch-x.service"
ENV = "/etc/orch/x.env"
META = {"by": "alice@laptop", "verb": "apply", "created": "2026-12-01T14:02:00+00:00"}
BOB = state.Holder("bob@desk", 7, "rollback", "2026-12-01T14:00:00+00:00")


def fresh_host(name: str, **facts: DeploymentFacts) -> FakeTransport:
    """A host with nothing deployed (or ``facts``), whose records take revision 1."""
    fake = FakeTransport(name)
    fake.on("gather facts", ok(facts_output(facts or {"x": DeploymentFacts()})))
    return fake.on("record pending", ok("1\n"))


def run_apply(loaded: Loaded) -> list[Result]:
    """lock → gather → plan → execute, as ``orch apply -y`` does (less preflight and printing)."""
    with sessions.Session(loaded, loaded.targets()) as session:
        session.lock("apply")
        session.gather()
        plans = session.plans(desired_of(loaded), meta=META)
        return session.execute(plans) + session.host_errors()


# ---------------------------------------------------------------- the lock


def test_a_busy_host_refuses_the_verb_naming_the_holder_and_every_lock_taken_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = playbook(tmp_path, deployment("x", hosts="[gamma, beta, alpha]", gate=False))
    journal: list[tuple[str, Command]] = []
    fakes = on_fake_hosts(
        monkeypatch, *(FakeTransport(n, journal=journal) for n in ("gamma", "beta", "alpha"))
    )
    fakes["beta"].on("lock ", busy_output({STATE: BOB}))

    with sessions.Session(loaded, loaded.targets()) as session:
        with pytest.raises(sessions.LockError) as caught:
            session.lock("apply")
        held = fakes["alpha"].holds + fakes["gamma"].holds
        assert len(held) == 2 and all(h.released for h in held)  # by lock() itself, before the session ends

    assert str(caught.value) == (
        "beta: x is locked by bob@desk (pid 7, orch rollback since 2026-12-01T14:00:00+00:00); "
        "wait for it with --lock-timeout DURATION"
    )
    assert journal[0] == ("alpha", fakes["alpha"].sent[0])  # the first host by name, alone, before the others
    assert {host for host, _ in journal} == {"alpha", "beta", "gamma"}
    assert all(c.label == f"lock {STATE}" for _, c in journal)  # nothing read or changed
    assert all(f.closed for f in fakes.values())


def test_a_busy_first_host_stops_the_verb_before_any_other_host_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = playbook(tmp_path, deployment("x", hosts="[beta, alpha]", gate=False))
    fakes = on_fake_hosts(monkeypatch, FakeTransport("alpha"), FakeTransport("beta"))
    fakes["alpha"].on("lock ", busy_output({STATE: BOB}))

    with (
        pytest.raises(sessions.LockError, match=r"^alpha: x is locked by bob@desk"),
        sessions.Session(loaded, loaded.targets()) as session,
    ):
        session.lock("apply")

    assert fakes["beta"].sent == []


def test_the_lock_names_this_verb_and_is_held_until_the_session_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = playbook(tmp_path, deployment("x", hosts="[alpha, beta]", gate=False))
    fakes = on_fake_hosts(monkeypatch, fresh_host("alpha"), fresh_host("beta"))

    with sessions.Session(loaded, loaded.targets()) as session:
        session.lock("rollback")
        [lock] = fakes["alpha"].sent
        assert lock.label == f"lock {STATE}" and '"verb": "rollback"' in lock.script
        assert all(f.holds[0].alive() for f in fakes.values())

    assert all(f.holds[0].released and f.closed for f in fakes.values())


def test_a_lock_lost_before_the_changes_stops_the_deployment_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = playbook(tmp_path, deployment("x", hosts="[alpha, beta]", gate=False))
    alpha = FakeTransport("alpha")
    fakes = on_fake_hosts(monkeypatch, alpha, fresh_host("beta"))

    def connection_drops(command: Command) -> CommandResult:
        alpha.holds[0].die()  # the lock holder's session ended while the facts were read
        return ok(facts_output({"x": DeploymentFacts()}))

    alpha.on("gather facts", connection_drops).on("record pending", ok("1\n"))

    results = run_apply(loaded)

    assert results == [
        Result(
            "alpha", "x", "failed", "alpha: the lock on the host was lost (connection dropped?); stopped here"
        ),
        Result("beta", "x", "applied", revision=1),
    ]
    assert after(fakes["alpha"].sent, "gather facts") == []


def test_a_lock_lost_while_the_changes_run_leaves_the_revision_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The changes go as one script: the lock is checked before it and again before the commit."""
    loaded = playbook(tmp_path, deployment("x", hosts="[alpha]", gate=False))
    fakes = on_fake_hosts(monkeypatch, fresh_host("alpha"))

    def connection_drops(command: Command) -> CommandResult:
        fakes["alpha"].holds[0].die()
        return ok()

    fakes["alpha"].on(f"write {ENV}", connection_drops)

    [result] = run_apply(loaded)

    assert result.status == "failed" and "revision 1 serves but could not be made current" in result.message
    assert "the lock on the host was lost" in result.message
    assert not any(label.startswith("make revision") for label in fakes["alpha"].labels)


# ---------------------------------------------------------------- per-host results


def test_an_apply_with_nothing_to_do_sends_the_lock_and_the_facts_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = playbook(tmp_path, deployment("x", gate=False))
    fake = FakeTransport("alpha").on(
        "gather facts", ok(facts_output({"x": holding(desired(loaded), current_revision=1)}))
    )
    on_fake_hosts(monkeypatch, fake)

    assert run_apply(loaded) == [Result("alpha", "x", "unchanged", revision=1)]
    assert fake.labels == [f"lock {STATE}", "gather facts"]
    assert fake.holds[0].released


def test_a_host_lost_midway_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = playbook(tmp_path, deployment("x", hosts="[alpha, beta]", gate=False))
    fakes = on_fake_hosts(monkeypatch, fresh_host("alpha"), fresh_host("beta"))
    fakes["alpha"].on(f"write {UNIT}", UnreachableError("alpha", "connection lost (No route to host)"))

    results = run_apply(loaded)

    assert results == [
        Result("alpha", "x", "failed", "alpha: connection lost (No route to host)"),
        Result("beta", "x", "applied", revision=1),
    ]
    assert after(fakes["alpha"].sent, f"write {UNIT}") == []  # no restart, no commit
    assert fakes["beta"].labels[-1] == f"make revision 1 current in {STATE}"


def test_an_unexpected_exception_is_that_hosts_failure_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = playbook(tmp_path, deployment("x", hosts="[alpha, beta]", gate=False))
    fakes = on_fake_hosts(monkeypatch, fresh_host("alpha"), fresh_host("beta"))
    fakes["alpha"].on(f"write {UNIT}", RuntimeError("boom"))

    results = run_apply(loaded)

    assert results == [
        Result("alpha", "x", "failed", "alpha: unexpected RuntimeError: boom"),
        Result("beta", "x", "applied", revision=1),
    ]


def test_a_failing_command_names_host_command_exit_code_and_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = playbook(tmp_path, deployment("x", gate=False))
    fakes = on_fake_hosts(monkeypatch, fresh_host("alpha"))
    fakes["alpha"].on(f"write {UNIT}", CommandResult("", "mv: cannot move: Read-only file system\n", 1))

    [result] = run_apply(loaded)

    assert result == Result(
        "alpha", "x", "failed", f"alpha: `write {UNIT}` exited 1: mv: cannot move: Read-only file system"
    )


def test_a_start_that_fails_is_restored_with_the_units_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner refused to start the server (supervisorctl exits 7 and prints nothing on stderr): the
    result quotes the command and carries the unit's last log lines; what the verb created is undone."""
    loaded = playbook(tmp_path, deployment("x", gate=False))
    fakes = on_fake_hosts(monkeypatch, fresh_host("alpha"))
    fakes["alpha"].on("restart", CommandResult("orch-x: ERROR (spawn error)\n", "", 7))
    fakes["alpha"].on("logs of", ok("/bin/sh: 1: exec: /opt/nope/bin/python: not found\n"))

    [result] = run_apply(loaded)

    assert result == Result(
        "alpha",
        "x",
        "rolled-back",
        "alpha: x: the start failed: `restart orch-x.service` exited 7: (no stderr); "
        "rolled back to no deployment (this verb created it)",
        journal="/bin/sh: 1: exec: /opt/nope/bin/python: not found\n",
    )
    assert after(fakes["alpha"].sent, "restart")[:1] == ["logs of orch-x.service"]


def test_an_unreachable_host_is_an_error_before_any_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = playbook(tmp_path, deployment("x", hosts="[alpha, beta]", gate=False))
    down = FakeTransport("alpha").on(
        lambda command: True, UnreachableError("alpha", "cannot connect: timed out")
    )
    on_fake_hosts(monkeypatch, down, fresh_host("beta"))

    assert run_apply(loaded) == [
        Result("beta", "x", "applied", revision=1),
        Result("alpha", "x", "error", "alpha: cannot connect: timed out"),
    ]
    assert down.labels == [f"lock {STATE}"]


def test_an_unexpected_exception_keeps_the_results_of_that_hosts_earlier_deployments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """x is applied and made current before y's write raises: x's result must still say so."""
    loaded = playbook(tmp_path, deployment("x", gate=False) + deployment("y", port=8001, gate=False))
    fake = fresh_host("alpha", x=DeploymentFacts(), y=DeploymentFacts())
    on_fake_hosts(monkeypatch, fake.on("write /etc/orch/y.env", RuntimeError("boom")))

    results = run_apply(loaded)

    assert f"make revision 1 current in {STATE}" in fake.labels
    assert [r.status for r in results] == ["applied", "failed"]


# ---------------------------------------------------------------- rollback


def rollback_host(tmp: Path, facts: DeploymentFacts) -> tuple[FakeTransport, Desired]:
    """A host whose revision 1 holds ``old.yml``'s files; ``facts`` say what is current."""
    one = desired(playbook(tmp, deployment("x", port=7000, gate=False), name="old.yml"))
    fake = FakeTransport("alpha").on("gather facts", ok(facts_output({"x": facts})))
    fake.on("read revision 1", ok(revision_output(files_of(one), manifest_of(one, source="apply"))))
    return fake.on("record pending", ok("4\n")), one


def test_rollback_goes_to_the_last_revision_before_the_current_that_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = playbook(tmp_path, deployment("x", gate=False))
    now = holding(desired(loaded), current_revision=3, never_current=frozenset({2}))  # 2 failed its gate
    fake, one = rollback_host(tmp_path, now)
    on_fake_hosts(monkeypatch, fake)

    with sessions.Session(loaded, loaded.targets()) as session:
        session.gather()
        [plan] = session.plans(sessions.from_revisions(None), meta=META)
        assert plan.desired.origin == "rollback to 1"
        results = session.execute(plans=[plan])

    assert results == [Result("alpha", "x", "applied", revision=4)]
    assert fake.labels == [
        "gather facts",
        "read revision 1",
        f"record pending revision in {STATE}",
        f"write {UNIT}",  # only the unit differs (its port)
        "reload the runner's view of orch-x.service",
        "restart orch-x.service",
        f"make revision 4 current in {STATE}",
    ]
    [write] = [c for c in fake.sent if c.label == f"write {UNIT}"]
    assert write.stdin == files_of(one)["unit"].encode()
    record = fake.sent[2]
    assert json.loads(recorded(record)["manifest.json"])["source"] == "rollback to 1"
    assert '"previous": 3' in record.script  # the pending record names what was current


@pytest.mark.parametrize(
    ("to", "current", "never", "message"),
    [
        (2, 3, {2}, "alpha: x revision 2 never served (failed or interrupted)"),
        (None, 3, {1, 2}, "alpha: x has no revision before 3"),
        (None, 1, set(), "alpha: x has no revision before 1"),
        (None, None, set(), "alpha: x has no recorded revision to roll back from"),
    ],
)
def test_rollback_refuses_what_never_served_or_does_not_exist(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    to: int | None,
    current: int | None,
    never: set[int],
    message: str,
) -> None:
    loaded = playbook(tmp_path, deployment("x", gate=False))
    now = holding(desired(loaded), RUNNING, current_revision=current, never_current=frozenset(never))
    fake, _ = rollback_host(tmp_path, now)
    on_fake_hosts(monkeypatch, fake)

    with sessions.Session(loaded, loaded.targets()) as session:
        session.gather()
        assert session.plans(sessions.from_revisions(to), meta=META) == []
        assert session.host_errors() == [Result("alpha", "x", "error", message)]

    assert fake.labels == ["gather facts"]  # no revision read, nothing changed
