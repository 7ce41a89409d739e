"""Facts: what a host holds now. Each fact is a command plus a pure parser.

All deployments of one host are read in one command, so gathering facts costs
one round trip per host.
"""

from __future__ import annotations

import base64
import binascii
import json
import shlex
from dataclasses import dataclass, field, replace
from typing import Any

from . import commands, upload
from .commands import MARK, Command
from .hub import Listing
from .model import VllmInstall
from .render import ROLES, Layout, Role
from .runners import Runner, UnitState
from .upload import RemoteFiles

__all__ = ["DeploymentFacts", "UnitState", "gather", "parse"]


@dataclass(frozen=True)
class DeploymentFacts:
    files: dict[Role, str] = field(default_factory=dict)
    unit: UnitState = field(default_factory=UnitState)
    current_revision: int | None = None
    manifest: dict[str, Any] | None = None
    # The version of the pinned vLLM package in its venv: "" when absent, None when not asked.
    vllm_version: str | None = None
    # What the model folder holds, when orch puts the model there (upload or hub download).
    model_files: RemoteFiles | None = None
    # What the hub holds, asked only when a download is due (a second round trip, at plan time).
    hub_listing: Listing | None = None


@dataclass(frozen=True)
class FactQuery:
    """What to read for one deployment: its files and unit; vLLM and the model folder where orch owns them."""

    layout: Layout
    unit: str
    vllm: VllmInstall | None = None
    model_dir: str | None = None
    model_record: str = upload.MANIFEST  # the record orch keeps in the model folder


def gather(queries: list[FactQuery], *, sudo: bool) -> Command:
    """One script reading files, unit state, revision, vLLM version and model folder per deployment."""
    return Command("; ".join(_section(q) for q in queries), sudo=sudo, label="gather facts")


def _section(q: FactQuery) -> str:
    layout, state = q.layout, commands.qpath(q.layout.state_dir)
    installed = [f'echo "{MARK}vllm"', commands.installed_version(q.vllm)] if q.vllm else []
    installed += [upload.remote_script(q.model_dir, q.model_record)] if q.model_dir else []
    return "; ".join(
        [
            f"echo {shlex.quote(f'{MARK}dep {layout.name}')}",
            commands.read_files({"unit": layout.unit_path, "env": layout.env_path}),
            f'echo "{MARK}show"',
            layout.runner.state(q.unit),
            f'echo "{MARK}current"',
            f"cat {state}/current 2>/dev/null",
            f'echo "{MARK}manifest"',
            f'c=$(cat {state}/current 2>/dev/null) && base64 -w0 {state}/revisions/"$c"/manifest.json '
            "2>/dev/null; echo",
            *installed,
        ]
    )


def parse(output: str, runner: Runner) -> dict[str, DeploymentFacts]:
    """Parse ``gather``'s output into facts per deployment name."""
    return {name: _parse_deployment(body, runner) for name, body in _blocks(output, "dep")}


def _blocks(text: str, kind: str) -> list[tuple[str, str]]:
    """Split on ``@@orch<kind> <name>`` lines into (name, body)."""
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith(f"{MARK}{kind} "):
            blocks.append((line.split(" ", 1)[1], []))
        elif blocks:
            blocks[-1][1].append(line)
    return [(name, "\n".join(body)) for name, body in blocks]


def _sections(body: str) -> dict[str, list[str]]:
    """Split a block on ``@@orch<word>`` lines (and ``@@orchfile <role>``)."""
    out: dict[str, list[str]] = {"": []}
    key = ""
    for line in body.splitlines():
        if line.startswith(MARK):
            key = line[len(MARK) :].strip()
            out[key] = []
        else:
            out[key].append(line)
    return out


def _parse_deployment(body: str, runner: Runner) -> DeploymentFacts:
    sec = _sections(body)
    files: dict[Role, str] = {}
    for role in ROLES:
        if f"file {role}" in sec:
            files[role] = decode("".join(sec[f"file {role}"]))
    current = "".join(sec.get("current", [])).strip()
    manifest_raw = "".join(sec.get("manifest", [])).strip()
    return DeploymentFacts(
        files=files,
        unit=parse_state("\n".join(sec.get("show", [])), runner),
        current_revision=int(current) if current.isdigit() else None,
        manifest=_json(decode(manifest_raw)) if manifest_raw else None,
        vllm_version="".join(sec["vllm"]).strip() if "vllm" in sec else None,
        model_files=upload.parse_remote(sec["files"], sec.get("recorded", [])) if "files" in sec else None,
    )


def decode(b64: str) -> str:
    try:
        return base64.b64decode(b64.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""


def _json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def parse_state(text: str, runner: Runner, journal: str = "") -> UnitState:
    """Parse a runner's state output (KEY=value lines) into a UnitState."""
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return replace(runner.parse_state(props), journal_tail=journal)


def parse_unit_state(output: str, runner: Runner) -> UnitState:
    """Parse ``commands.unit_state``'s output: the state, then log lines."""
    show, _, journal = output.partition(f"{MARK}journal\n")
    return parse_state(show, runner, journal.strip())


def parse_revision(output: str) -> dict[str, str]:
    """Parse ``commands.read_revision``'s output into file name → content."""
    sec = _sections(output)
    return {key.split(" ", 1)[1]: decode("".join(v)) for key, v in sec.items() if key.startswith("file ")}


@dataclass(frozen=True)
class RevisionInfo:
    number: int
    manifest: dict[str, Any]


def parse_revisions(output: str) -> tuple[list[RevisionInfo], int | None]:
    """Parse ``commands.list_revisions``: the revisions and the current one."""
    body, _, current = output.partition(f"{MARK}current")
    revs = [
        RevisionInfo(int(num), _json(decode(text)) or {})
        for num, text in _blocks(body, "rev")
        if num.isdigit()
    ]
    cur = current.strip()
    return revs, int(cur) if cur.isdigit() else None
