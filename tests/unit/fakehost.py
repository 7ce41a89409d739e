"""What a host prints, rendered from values, for FakeTransport's answers; and playbooks to drive it.

Each renderer writes the format its parser reads (``facts.parse``, ``state.parse_revision``,
``state.parse_busy``, ``run_changes``'s reading of a restart) and asserts the round trip before
it returns, so a fake answer cannot drift from the real format unnoticed: a renderer that
no longer parses back to its input fails the test that uses it. test_fakehost.py also runs
the real gather script on files laid out here and compares.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest

from orchestrator import facts, session
from orchestrator.core.layout import Role
from orchestrator.core.load import Loaded, load
from orchestrator.core.model import Host
from orchestrator.core.render import Desired
from orchestrator.facts import DeploymentFacts, UnitState
from orchestrator.host import commands, runners, state
from orchestrator.host.commands import MARK, Command
from orchestrator.host.state import REVISION_FILES, revision_contents
from orchestrator.observe import health
from orchestrator.observe.health import Outcome
from orchestrator.transport.base import Result
from orchestrator.transport.fake import FakeTransport

SYSTEMD = runners.Systemd("system")
# systemctl show's property names → UnitState fields, in SHOW_PROPS's order (checked below).
PROPERTY_FIELDS = {
    "LoadState": "load_state",
    "ActiveState": "active_state",
    "SubState": "sub_state",
    "UnitFileState": "unit_file_state",
    "NRestarts": "n_restarts",
    "MainPID": "main_pid",
    "ActiveEnterTimestamp": "active_since",
    "Result": "result",
}
assert tuple(PROPERTY_FIELDS) == tuple(runners.SHOW_PROPS.split(","))
# journal_tail is read beside the properties; up_s is supervisord's (systemd's show has no uptime).
assert set(PROPERTY_FIELDS.values()) == {f.name for f in fields(UnitState)} - {"journal_tail", "up_s"}

RUNNING = UnitState(
    "loaded", "active", "running", "enabled", 0, 4242, "Tue 2026-12-01 14:02:00 UTC", "success"
)
FAILED = UnitState("loaded", "failed", "failed", "enabled", 3, 0, "", "exit-code")


def ok(stdout: str = "") -> Result:
    return Result(stdout, "", 0)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ---------------------------------------------------------------- what scripts print


def show(unit: UnitState) -> str:
    """``systemctl show UNIT -p SHOW_PROPS``: KEY=value lines."""
    text = "".join(f"{prop}={getattr(unit, name)}\n" for prop, name in PROPERTY_FIELDS.items())
    assert facts.parse_state(text, SYSTEMD) == unit
    return text


def _deployment(name: str, f: DeploymentFacts, kind: str) -> str:
    """One deployment's part of ``facts.gather``'s output (its sections in the script's order)."""
    assert f.model_files is None and f.hub_listing is None, "not rendered here"
    lines = [f"{MARK}dep {name}"]
    for role in ("unit", "env"):  # read_files's order in facts._section
        if role in f.files:
            lines += [f"{MARK}file {role}", b64(f.files[role])]
    lines += [f"{MARK}show", *show(f.unit).splitlines()]
    lines += [f"{MARK}owner", kind]
    lines += [f"{MARK}current", *([str(f.current_revision)] if f.current_revision is not None else [])]
    lines += [f"{MARK}manifest", b64(manifest_json(f.manifest)) if f.manifest is not None else ""]
    lines += [f"{MARK}pending", *_pending(f.pending)]
    lines += [f"{MARK}outcomes", *(str(n) for n in sorted(f.never_current))]
    lines += [f"{MARK}lock", *([f.locked_by.tojson_object()] if f.locked_by else [])]
    if f.vllm_version is not None:
        lines += [f"{MARK}vllm", *([f.vllm_version] if f.vllm_version else [])]
    return "\n".join(lines) + "\n"


def _pending(p: state.Pending | None) -> list[str]:
    """``cat pending; echo; [ -f pending.restarted ] && echo restarted``."""
    if p is None:
        return [""]
    meta = {"by": p.by, "verb": p.verb, "created": p.started, "previous": p.previous}
    return [str(p.revision), json.dumps(meta, sort_keys=True), "", *(["restarted"] if p.restarted else [])]


def facts_output(deployments: Mapping[str, DeploymentFacts], *, kind: str = "system") -> str:
    """What ``facts.gather`` prints on a systemd host holding ``deployments`` (``kind``: the mark its
    runner leaves on processes, host.procs): the marked processes first, then each deployment."""
    marked = [p for f in deployments.values() for p in f.processes]
    head = [f"{MARK}procs", *(f"T {p.pid} {p.owner.kind} {p.owner.name}" for p in marked)]
    head += [f"P {p.pid} {p.ppid} S {p.comm}" for p in marked]
    text = "\n".join(head) + "\n" + "".join(_deployment(name, f, kind) for name, f in deployments.items())
    assert facts.parse(text, SYSTEMD) == dict(deployments)
    return text


def restart_output(unit: UnitState, leftovers: tuple[str, ...] = ()) -> str:
    """``commands.restart``: the survivors line, then the unit's state after the start."""
    return f"{commands.LEFT_MARK}{''.join(' ' + p for p in leftovers)}\n{show(unit)}"


def revision_output(contents: Mapping[Role, str], manifest: Mapping[str, Any], outcome: str = "") -> str:
    """``state.read_revision``: each file of revisions/N base64-encoded after its marker."""
    named = {REVISION_FILES[role]: text for role, text in contents.items()}
    named["manifest.json"] = manifest_json(manifest)
    if outcome:
        named["outcome"] = outcome
    text = "".join(f"{MARK}file {name}\n{b64(body)}\n" for name, body in named.items())
    assert state.parse_revision(text) == named
    assert revision_contents(state.parse_revision(text)) == dict(contents)
    return text


def busy_output(held: Mapping[str, state.Holder]) -> Result:
    """``state.lock``'s answer when others hold these state dirs: exit 75, ``@@orchbusy DIR`` and holder."""
    text = "".join(f"{state.BUSY} {d}\n{h.tojson_object()}\n" for d, h in held.items())
    assert state.parse_busy(text) == list(held.items())
    return Result(text, "", state.LOCK_CONFLICT)


def manifest_json(manifest: Mapping[str, Any]) -> str:
    """manifest.json's text, as ``state.revision_tar`` writes it."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def manifest_of(want: Desired, **meta: Any) -> dict[str, Any]:
    """A revision's manifest.json as ``state.revision_tar`` writes it (files: role → sha256)."""
    return {
        **meta,
        "files": {f.role: hashlib.sha256(f.content.encode()).hexdigest() for f in want.files or ()},
    }


def recorded(command: Command) -> dict[str, str]:
    """The files a ``record pending revision`` command sends (a tar on its stdin), by name."""
    with tarfile.open(fileobj=io.BytesIO(command.stdin or b"")) as tar:
        return {m.name: _read(tar, m) for m in tar.getmembers()}


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    data = tar.extractfile(member)
    assert data is not None
    return data.read().decode()


def files_of(want: Desired) -> dict[Role, str]:
    return {f.role: f.content for f in want.files or ()}


def holding(want: Desired, unit: UnitState = RUNNING, **kw: Any) -> DeploymentFacts:
    """The facts of a host whose current revision holds ``want``'s files (``kw``: its number, and more)."""
    return DeploymentFacts(files=files_of(want), unit=unit, manifest=manifest_of(want), **kw)


# ---------------------------------------------------------------- playbooks on fake hosts

INVENTORY = """\
hosts:
  alpha: {address: 192.0.2.1}
  beta: {address: 192.0.2.2}
  gamma: {address: 192.0.2.3}
"""


def playbook(tmp: Path, deployments: str, *, name: str = "pb.yml") -> Loaded:
    """A playbook (its deployments as YAML list items) over the three-host INVENTORY."""
    (tmp / "inv.yml").write_text(INVENTORY)
    path = tmp / name
    path.write_text(
        "inventory: inv.yml\ndeployments:\n" + textwrap.indent(textwrap.dedent(deployments), "  ")
    )
    return load(path)


def deployment(
    name: str, *, hosts: str = "[alpha]", port: int = 8000, gate: bool = True, **extra: str
) -> str:
    """One CPU deployment (no GPU checks); ``gate=False`` turns the readiness gate off."""
    lines = [
        f"- name: {name}",
        f"  hosts: {hosts}",
        f"  model: /models/{name}",
        "  accelerator: cpu",
        f"  port: {port}",
        *(["  readiness: {enabled: false}"] if not gate else []),
        *(f"  {k}: {v}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"


def desired_of(loaded: Loaded) -> session.DesiredOf:
    return session.rendered(loaded, {d.name: {} for d in loaded.playbook.deployments})


def desired(loaded: Loaded, host: str = "alpha", name: str | None = None) -> Desired:
    """What ``apply`` would make of the playbook's deployment (the first, or ``name``) on ``host``."""
    [target] = loaded.targets(limit={host}, deployment=name or loaded.playbook.deployments[0].name)
    return desired_of(loaded)(_NO_RUN, target)


_NO_RUN: Any = None  # ``rendered`` never looks at the HostRun


@dataclass
class Hosts:
    """FakeTransports by host name, handed to ``session.Session`` in place of ``connect``."""

    fakes: dict[str, FakeTransport]

    def connect(self, name: str, host: Host, **_: object) -> FakeTransport:
        return self.fakes[name]


def on_fake_hosts(monkeypatch: pytest.MonkeyPatch, *fakes: FakeTransport) -> dict[str, FakeTransport]:
    """Make ``session.Session`` connect to these fakes (by host name) instead of real hosts."""
    hosts = Hosts({f.name: f for f in fakes})
    monkeypatch.setattr(session, "connect", hosts.connect)
    return hosts.fakes


@dataclass
class Gate:
    """The stand-in readiness gate's script (``ready``, used up call by call) and what it saw."""

    ready: list[bool]
    calls: list[int]  # at each call: how many commands the host had been sent
    since: list[float | None] = field(default_factory=list)  # where each call's times count from


def gates(monkeypatch: pytest.MonkeyPatch, *ready: bool, host: FakeTransport | None = None) -> Gate:
    """Replace the HTTP readiness gate (tested in test_health): its n-th call is ready when ``ready[n]``."""
    gate = Gate(list(ready), [])

    def wait_ready(*_: object, since: float | None = None, **__: object) -> Outcome:
        gate.calls.append(len(host.sent) if host else 0)
        gate.since.append(since)
        ok = gate.ready.pop(0)  # IndexError: a gate this test did not expect
        return Outcome(ok, "" if ok else "/health answered 500 for 4s", 4.0, up_s=3.5)

    monkeypatch.setattr(health, "wait_ready", wait_ready)  # converge imports it when it gates
    return gate


def after(sent: list[Command], label: str) -> list[str]:
    """The labels of the commands sent after the first one whose label contains ``label``."""
    labels = [c.label for c in sent]
    first = next(i for i, text in enumerate(labels) if label in text)
    return labels[first + 1 :]
