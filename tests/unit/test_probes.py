"""Preflight's probes in plan and apply: read in a second round trip, only on the hosts where a plan changes
something; a no-op sends each host the facts command alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakehost import deployment, desired, facts_output, holding, ok, on_fake_hosts, playbook

from orchestrator import session
from orchestrator.cli.main import main
from orchestrator.core.load import Target
from orchestrator.errors import OrchError, UnreachableError
from orchestrator.facts import DeploymentFacts
from orchestrator.hostrun import HostRun
from orchestrator.plan import TargetPlan
from orchestrator.transport.fake import FakeTransport

RUNNER = "[ -d /run/systemd/system ]"  # a line of preflight's script


def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, FakeTransport]]:
    """alpha runs the playbook's deployment as it is; beta has nothing yet."""
    loaded = playbook(tmp_path, deployment("x", hosts="[alpha, beta]", gate=False))
    there = holding(desired(loaded), current_revision=1)
    fakes = on_fake_hosts(
        monkeypatch,
        FakeTransport("alpha").on("gather facts", ok(facts_output({"x": there}))),
        FakeTransport("beta").on("gather facts", ok(facts_output({"x": DeploymentFacts()}))),
    )
    return loaded.path, fakes


@pytest.mark.parametrize("verb", [["plan"], ["apply", "-y"]])
def test_a_converged_host_gets_the_facts_command_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], verb: list[str]
) -> None:
    path, fakes = hosts(tmp_path, monkeypatch)
    assert main([*verb, str(path), "--limit", "alpha"]) == 0
    assert [c.label for c in fakes["alpha"].sent if not c.label.startswith("lock ")] == ["gather facts"]
    assert RUNNER not in fakes["alpha"].sent[-1].script
    assert "preflight" not in capsys.readouterr().out


def test_the_probes_follow_the_facts_where_the_plan_changes_and_judge_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, fakes = hosts(tmp_path, monkeypatch)
    fakes["beta"].on("preflight probes", ok("@@orchrunners\nsupervisord\n"))  # no systemd there
    assert main(["apply", "-y", str(path)]) == 1  # beta's plan starts x where its runner is missing
    assert [c.label for c in fakes["alpha"].sent[1:]] == ["gather facts"]
    assert [c.label for c in fakes["beta"].sent[1:]] == ["gather facts", "preflight probes"]
    [probes] = [c for c in fakes["beta"].sent if c.label == "preflight probes"]
    assert RUNNER in probes.script and "@@orchshow" not in probes.script  # the facts are not read again
    seen = capsys.readouterr()
    assert "preflight runner: systemd is not PID 1 on this host" in seen.out
    assert "preflight failed" in seen.err


def test_a_host_whose_probes_fail_is_left_out_of_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, fakes = hosts(tmp_path, monkeypatch)
    fakes["beta"].on("preflight probes", UnreachableError("beta", "cannot connect: gone"))
    assert main(["plan", str(path)]) == 1
    out = capsys.readouterr().out
    assert "alpha · x" in out and "beta · x" not in out
    assert "✗ beta x: beta: cannot connect: gone" in out  # as a failed gather says it


def test_a_target_that_failed_its_own_plan_is_listed_once_when_its_hosts_probes_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = playbook(tmp_path, deployment("x", hosts="[beta]") + deployment("y", hosts="[beta]", port=8001))
    on_fake_hosts(
        monkeypatch,
        FakeTransport("beta")
        .on("gather facts", ok(facts_output({"x": DeploymentFacts(), "y": DeploymentFacts()})))
        .on("preflight probes", UnreachableError("beta", "cannot connect: gone")),
    )
    plan_one = session.plan_one

    def failing(run: HostRun, t: Target, *args: Any, **kw: Any) -> TargetPlan:
        if t.deployment.name == "y":
            raise OrchError("y cannot be planned")
        return plan_one(run, t, *args, **kw)

    monkeypatch.setattr(session, "plan_one", failing)
    assert main(["plan", str(loaded.path)]) == 1
    out = capsys.readouterr().out
    assert "✗ beta x: beta: cannot connect: gone" in out
    assert out.count("✗ beta y:") == 1 and "✗ beta y: y cannot be planned" in out
