"""Saved plans: what a plan relied on, kept as digests without secret values, and the check that it holds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator import planfile
from orchestrator.core.layout import Layout
from orchestrator.core.load import Loaded
from orchestrator.core.render import Desired, DesiredFile
from orchestrator.errors import ConfigError
from orchestrator.facts import DeploymentFacts, UnitState
from orchestrator.host.state import Pending
from orchestrator.plan import TargetPlan, plan_target

LAYOUT = Layout("system", "tiny")
UNIT = DesiredFile("unit", LAYOUT.unit_path, "[Service]\nExecStart=/bin/vllm --port 8000\n", 0o644)
SECRET, HOST_SECRET = "hf_plan_secret_value_1234", "hf_host_secret_value_5678"
ENV = DesiredFile("env", LAYOUT.env_path, f'A="1"\nHF_TOKEN="{SECRET}"\n', 0o600)
DESIRED = Desired(LAYOUT, "orch-tiny.service", (ENV, UNIT), frozenset({"HF_TOKEN"}), secret_values=(SECRET,))
RUNNING = UnitState(
    "loaded", "active", "running", "enabled", 0, 4242, "Tue 2026-12-01 14:02:00 UTC", "success"
)
FACTS = DeploymentFacts(
    files={
        "unit": "[Service]\nExecStart=/bin/vllm --port 8001\n",
        "env": f'A="1"\nHF_TOKEN="{HOST_SECRET}"\n',
    },
    unit=RUNNING,
    current_revision=3,
    manifest={"files": {"unit": "x", "env": "y"}},
)


def plan(facts: DeploymentFacts = FACTS, desired: Desired = DESIRED, host: str = "th1") -> TargetPlan:
    return plan_target(host=host, deployment="tiny", desired=desired, facts=facts)


LOADED = Loaded(Path("/p/play.yml"), None, Path("/p/hosts.yml"), None, "abc")  # type: ignore[arg-type]
META = {"created": "2026-12-01T18:00:00+00:00", "by": "me@ctl", "orch_version": "0.1.0"}


def saved(*plans: TargetPlan) -> planfile.SavedPlan:
    return planfile.save(list(plans or [plan()]), LOADED, META)


def test_a_saved_plan_reads_back_as_it_was_written() -> None:
    s = saved(plan(), plan(host="th2"))
    assert planfile.SavedPlan.from_json(s.to_json(), file="p.json") == s
    assert planfile.looks_like_plan(s.to_json().encode()[:4096])
    assert not planfile.looks_like_plan(b"deployments:\n  - name: tiny\n")


def test_a_saved_plan_holds_no_secret_value_of_the_playbook_or_the_host() -> None:
    text = saved().to_json()
    assert SECRET not in text and HOST_SECRET not in text
    assert [c["type"] for c in saved().targets[0].changes] == [
        "WriteFile",
        "WriteFile",
        "DaemonReload",
        "Restart",
        "RecordRevision",
    ]


def test_the_same_facts_files_and_changes_let_the_plan_go_on() -> None:
    assert planfile.refusals(saved(), [plan()]) == []


@pytest.mark.parametrize(
    ("facts", "why"),
    [
        (
            replace(FACTS, files={**FACTS.files, "env": 'A="2"\n'}),
            "the env file changed since the plan was made",
        ),
        (replace(FACTS, files={"env": FACTS.files["env"]}), "the unit file changed since the plan was made"),
        (
            replace(FACTS, unit=replace(RUNNING, main_pid=5151)),
            "the unit's state changed since the plan was made",
        ),
        (replace(FACTS, unit=UnitState()), "the unit's state changed since the plan was made"),
        (replace(FACTS, current_revision=4), "the current revision changed since the plan was made"),
        (replace(FACTS, pending=Pending(4, False)), "the pending revision changed since the plan was made"),
        (replace(FACTS, vllm_version="0.9.0"), "the installed vLLM changed since the plan was made"),
    ],
)
def test_a_changed_fact_refuses_the_plan_naming_host_deployment_and_fact(
    facts: DeploymentFacts, why: str
) -> None:
    assert planfile.refusals(saved(), [plan(facts)]) == [f"th1 tiny: {why}"]


def test_a_host_secret_that_changed_is_seen_without_the_plan_holding_it() -> None:
    facts = replace(FACTS, files={**FACTS.files, "env": ENV.content})  # the host now holds the desired env
    assert planfile.refusals(saved(), [plan(facts)]) == [
        "th1 tiny: its changes differ from the plan's: now also restart orch-tiny.service (changed: unit); "
        "no longer write /etc/orch/tiny.env (mode 0600), restart orch-tiny.service (changed: env, unit)"
    ]


def test_a_secret_whose_value_changed_since_the_plan_refuses_it() -> None:
    other = "hf_rotated_secret_value_999"
    env = DesiredFile("env", LAYOUT.env_path, f'A="1"\nHF_TOKEN="{other}"\n', 0o600)
    now = replace(DESIRED, files=(env, UNIT), secret_values=(other,))
    host_has_it = replace(FACTS, files={**FACTS.files, "env": ENV.content})
    before = saved(plan(host_has_it))
    assert planfile.refusals(before, [plan(host_has_it, now)]) == [
        "th1 tiny: its changes differ from the plan's: now also write /etc/orch/tiny.env (mode 0600), "
        "restart orch-tiny.service (changed: env, unit); no longer restart orch-tiny.service (changed: unit)"
    ]


def test_a_rendered_file_that_differs_refuses_the_plan() -> None:
    unit = replace(UNIT, content="[Service]\nExecStart=/bin/vllm --port 8002\n")
    now = replace(DESIRED, files=(ENV, unit))
    assert planfile.refusals(saved(), [plan(desired=now)]) == [
        "th1 tiny: the unit file orch renders now differs from the plan's (a secret or a source changed)"
    ]


def test_a_target_that_could_not_be_planned_refuses_the_plan() -> None:
    assert planfile.refusals(saved(plan(), plan(host="th2")), [plan()]) == [
        "th2 tiny: it could not be planned"
    ]


@pytest.mark.parametrize(
    "text",
    [
        '{"format": "orch-plan/1"}',
        '{"format": "orch-plan/0", "targets": []}',
        "[1, 2]",
        "{not json",
        '{"format": "orch-plan/1", "targets": [{"host": 1}], "playbook": "p", "inventory": "i", '
        '"sources": "s", "made": "m", "by": "b", "orch": "o"}',
    ],
)
def test_a_damaged_plan_file_is_one_error_naming_the_file(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^plan\.json: not a valid saved plan: "):
        planfile.SavedPlan.from_json(text, file="plan.json")
