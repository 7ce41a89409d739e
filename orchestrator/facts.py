"""Facts: what a host holds now. Each fact is a command plus a pure parser.

All deployments of one host are read in one command, so gathering facts costs
one round trip per host.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from typing import Any

from .core.layout import ROLES, Layout, Role
from .core.model import VllmInstall
from .host import commands, procs, pyreads, runners
from .host import state as state_dir
from .host.commands import MARK, Command
from .host.markers import blocks, decode, sections
from .host.procs import Owner, Proc
from .host.pyreads import Ask
from .host.runners import Runner, UnitState
from .host.state import Holder, Pending
from .provision import upload
from .provision.hub import Listing
from .provision.upload import RemoteFiles

__all__ = ["DeploymentFacts", "UnitState", "gather", "parse"]


@dataclass(frozen=True)
class DeploymentFacts:
    files: dict[Role, str] = field(default_factory=dict)
    unit: UnitState = field(default_factory=UnitState)
    current_revision: int | None = None
    manifest: dict[str, Any] | None = None
    # The version of the pinned vLLM package in its venv: "" when absent, None when not asked.
    vllm_version: str | None = None
    # The version of the Ray pinned beside it: "" when absent, None when not asked.
    ray_version: str | None = None
    # What the model folder holds, when orch puts the model there (upload or hub download).
    model_files: RemoteFiles | None = None
    # What the hub holds, asked only when a download is due (a second round trip, at plan time).
    hub_listing: Listing | None = None
    # A revision whose verb began and did not finish (see state.py); revisions that never became current.
    pending: Pending | None = None
    never_current: frozenset[int] = frozenset()
    locked_by: Holder | None = None  # another verb holding the deployment's lock right now
    # The processes its runner marked as this deployment's (host.procs), live or left over.
    processes: tuple[Proc, ...] = ()

    @property
    def orphans(self) -> tuple[Proc, ...]:
        """Its processes outside the tree of the unit's main process: they outlived a stop."""
        return procs.orphans(self.processes, self.unit.main_pid)


@dataclass(frozen=True)
class FactQuery:
    """What to read for one deployment: its files and unit; vLLM and the model folder where orch owns them."""

    layout: Layout
    unit: str
    vllm: VllmInstall | None = None
    model_dir: str | None = None
    model_record: str = upload.MANIFEST  # the record orch keeps in the model folder
    held: bool = False  # this verb holds the deployment's lock: no one else does, so it is not asked


def gather(queries: list[FactQuery], *, sudo: bool) -> Command:
    """One script reading files, unit state, revision, vLLM version and model folder per deployment,
    after the host's marked processes (read once); the versions last, in one Python process per venv."""
    text = "; ".join(filter(None, [script(queries), pyreads.script(asks(queries))]))
    return Command(text, sudo=sudo, label="gather facts")


def script(queries: list[FactQuery]) -> str:
    """Every fact but those only Python can read (``asks``), which a caller runs after its own parts."""
    return "; ".join([f'echo "{MARK}procs"', procs.LISTING, *(_section(q) for q in queries)])


def asks(queries: list[FactQuery]) -> list[Ask]:
    """The installed version of each pinned vLLM (and of the Ray pinned beside it), asked of its venv's
    Python (without the deployment's env: the version pip manages there)."""
    out = []
    for q in queries:
        if q.vllm:
            python = shlex.quote(f"{q.vllm.venv}/bin/python")
            out.append(Ask(q.layout.name, "vllm", python, q.vllm.package))
            out += [Ask(q.layout.name, "ray", python, "ray")] if q.vllm.ray else []
    return out


def _section(q: FactQuery) -> str:
    layout = q.layout
    installed = [upload.remote_script(q.model_dir, q.model_record)] if q.model_dir else []
    return "; ".join(
        [
            f"echo {shlex.quote(f'{MARK}dep {layout.name}')}",
            commands.read_files({"unit": layout.unit_path, "env": layout.env_path}),
            f'echo "{MARK}show"',
            runners.of(layout).state(q.unit),
            f'echo "{MARK}owner"',
            f"echo {procs.owner_kind(layout)}",
            state_dir.facts_section(layout.state_dir, lock=not q.held),
            *installed,
        ]
    )


def parse(output: str, runner: Runner) -> dict[str, DeploymentFacts]:
    """Parse ``gather``'s output into facts per deployment name (a name's blocks read as one)."""
    bodies: dict[str, list[str]] = {}
    for name, body in blocks(output, "dep"):
        bodies.setdefault(name, []).append(body)
    found = marked(output)
    return {name: _parse_deployment(name, "\n".join(b), runner, found) for name, b in bodies.items()}


def marked(output: str) -> tuple[Proc, ...]:
    """Every process a runner marked as an orch deployment's, from ``gather``'s output."""
    return procs.parse(sections(output.split(f"{MARK}dep ", 1)[0]).get("procs", []))


def _parse_deployment(name: str, body: str, runner: Runner, marked: tuple[Proc, ...]) -> DeploymentFacts:
    sec = sections(body)
    kind = "".join(sec.get("owner", [])).strip()
    files: dict[Role, str] = {}
    for role in ROLES:
        if f"file {role}" in sec:
            files[role] = decode("".join(sec[f"file {role}"]))
    st = state_dir.parse_section(sec)
    return DeploymentFacts(
        files=files,
        unit=parse_state("\n".join(sec.get("show", [])), runner),
        current_revision=st.current,
        manifest=st.manifest,
        pending=st.pending,
        never_current=st.never_current,
        locked_by=st.locked_by,
        vllm_version="".join(sec["vllm"]).strip() if "vllm" in sec else None,
        ray_version="".join(sec["ray"]).strip() if "ray" in sec else None,
        model_files=upload.parse_remote(sec["files"], sec.get("recorded", [])) if "files" in sec else None,
        processes=tuple(p for p in marked if p.owner == Owner(kind, name)),
    )


def parse_state(text: str, runner: Runner, journal: str = "") -> UnitState:
    """Parse a runner's state output (KEY=value lines) into a UnitState."""
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return replace(runner.parse_state(props), journal_tail=journal)


def parse_unit_state(output: str, runner: Runner) -> UnitState:
    """Parse ``commands.unit_state``'s output: the state, then log lines."""
    show, _, journal = output.partition(f"{MARK}journal\n")
    return parse_state(show, runner, journal.strip())
