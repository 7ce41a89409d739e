"""Pure planning: desired files + facts → typed changes and masked diffs.

A plan holds only the changes still needed; an empty plan means "no change".
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .core.layout import ROLES, Role
from .core.masking import MASK as MASK
from .core.masking import SECRET_NAME as SECRET_NAME
from .core.masking import Masker
from .core.model import ModelSource, VllmInstall
from .core.render import Desired, DesiredFile, FileSum, UploadSpec, digest
from .facts import DeploymentFacts
from .provision import hub, upload
from .provision.hub import Listing


@dataclass(frozen=True)
class WriteFile:
    role: Role
    path: str
    content: str
    mode: int

    def summary(self) -> str:
        return f"write {self.path} (mode {self.mode:04o})"


@dataclass(frozen=True)
class InstallVllm:
    spec: VllmInstall
    found: str
    found_ray: str = ""

    def summary(self) -> str:
        found = self.found or "none"
        ray = f", ray {self.found_ray or 'none'}" if self.spec.ray else ""
        return f"install {' '.join(self.spec.pins())} into {self.spec.venv} (found {found}{ray})"


@dataclass(frozen=True)
class UploadModel:
    spec: UploadSpec
    files: tuple[FileSum, ...]

    def summary(self) -> str:
        size = sum(f.size for f in self.files)
        return f"upload {len(self.files)} model file(s), {size / 2**20:.1f} MiB, to {self.spec.dest}"


@dataclass(frozen=True)
class FetchModel:
    """Download the model on the host from its hub (``listing``: what plan learnt of its size)."""

    spec: ModelSource
    reason: str
    listing: Listing | None

    def summary(self) -> str:
        size = (
            f"{len(self.listing.files)} file(s), {self.listing.total / 2**20:.1f} MiB"
            if self.listing
            else "size not known yet"
        )
        return f"fetch {self.spec.describe()} into {self.spec.dest} ({size}; {self.reason})"


@dataclass(frozen=True)
class RemoveFile:
    role: Role
    path: str

    def summary(self) -> str:
        return f"remove {self.path}"


@dataclass(frozen=True)
class UnitChange:
    """A runner command on the deployment's unit; each kind below is its own type, told apart by apply."""

    unit: str
    verb: ClassVar[str]

    def summary(self) -> str:
        return f"{self.verb} {self.unit}"


class DaemonReload(UnitChange):
    """Make the runner read the changed unit (systemd: daemon-reload; supervisord: reread + update)."""

    verb = "daemon-reload"

    def summary(self) -> str:
        return self.verb


class Enable(UnitChange):
    verb = "enable"


class Disable(UnitChange):
    verb = "disable"


_REAP_NOTE = "; end what of it outlives the stop (--reap)"


@dataclass(frozen=True)
class Restart:
    unit: str
    reason: str
    reap: bool = False  # end the unit's processes that outlive the stop before starting it again

    def summary(self) -> str:
        return f"restart {self.unit} ({self.reason}){_REAP_NOTE if self.reap else ''}"


@dataclass(frozen=True)
class Stop:
    unit: str
    reap: bool = False

    def summary(self) -> str:
        return f"stop {self.unit}{_REAP_NOTE if self.reap else ''}"


@dataclass(frozen=True)
class Reap:
    """End the deployment's processes that outlived an earlier stop (``--reap``); its live ones stay."""

    unit: str
    orphans: tuple[str, ...]  # as seen when planning, "PID:COMM"; the host reads them again when reaping

    def summary(self) -> str:
        return f"end processes of {self.unit} that outlived a stop: {' '.join(self.orphans)} (--reap)"


@dataclass(frozen=True)
class RecordRevision:
    """Record the desired files as a new revision: pending before anything changes, current after the gate."""

    files: tuple[DesiredFile, ...]
    source: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    previous: int | None = None  # the revision current when the plan was made

    def summary(self) -> str:
        return f"record a new revision ({self.source})"


@dataclass(frozen=True)
class Abandon:
    """Forget a pending revision that an interrupted verb left; it is marked as never current."""

    revision: int
    outcome: str

    def summary(self) -> str:
        return f"mark revision {self.revision} as {self.outcome} (it never became current)"


Change = (
    InstallVllm
    | UploadModel
    | FetchModel
    | WriteFile
    | RemoveFile
    | DaemonReload
    | Enable
    | Disable
    | Restart
    | Stop
    | Reap
    | RecordRevision
    | Abandon
)


# What a deployment needs on the host before its files: vLLM itself and the model.
Provision = InstallVllm | UploadModel | FetchModel


@dataclass(frozen=True)
class FileDiff:
    role: Role
    path: str
    text: str
    secret_only: bool = False


@dataclass(frozen=True)
class TargetPlan:
    """The changes for one deployment on one host."""

    host: str
    deployment: str
    desired: Desired
    facts: DeploymentFacts
    changes: tuple[Change, ...]
    diffs: tuple[FileDiff, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    @property
    def restarts(self) -> bool:
        return any(isinstance(c, Restart) for c in self.changes)


def plan_target(
    *,
    host: str,
    deployment: str,
    desired: Desired,
    facts: DeploymentFacts,
    meta: dict[str, Any] | None = None,
    reap: bool = False,
) -> TargetPlan:
    """The changes that bring ``facts`` to ``desired``; ``reap``: also end the deployment's leftovers."""
    changes = _present(desired, facts, meta or {}, reap) if desired.present else _absent(desired, facts, reap)
    diffs = tuple(_diffs(host, desired, facts))
    return TargetPlan(host, deployment, desired, facts, tuple(changes), diffs)


def _present(desired: Desired, facts: DeploymentFacts, meta: dict[str, Any], reap: bool) -> list[Change]:
    files = desired.files or ()
    install: list[Provision] = [*_install(desired, facts), *_upload(desired, facts), *_fetch(desired, facts)]
    writes = [
        WriteFile(f.role, f.path, f.content, f.mode) for f in files if facts.files.get(f.role) != f.content
    ]
    changes: list[Change] = [*_stale(facts), *install, *writes]
    if any(w.role == "unit" for w in writes):
        changes.append(DaemonReload(desired.unit_name))
    if not facts.unit.enabled:
        changes.append(Enable(desired.unit_name))
    reason = _restart_reason([*install, *writes], facts) or _interrupted(facts)
    if reason:
        changes.append(Restart(desired.unit_name, reason, reap))
    elif reap and facts.orphans:
        changes.append(Reap(desired.unit_name, tuple(p.describe() for p in facts.orphans)))
    if _revision_differs(files, facts):
        changes.append(RecordRevision(files, desired.origin, meta, facts.current_revision))
    return changes


def _stale(facts: DeploymentFacts) -> list[Abandon]:
    """A pending revision left by an interrupted verb is forgotten first (this plan decides anew)."""
    return [Abandon(facts.pending.revision, "interrupted")] if facts.pending else []


def _interrupted(facts: DeploymentFacts) -> str:
    """Why the server must restart though its files match: an interrupted verb changed them, or restarted it,
    and no readiness gate has seen what runs since."""
    p = facts.pending
    if p is None:
        return ""
    recorded = (facts.manifest or {}).get("files", {})
    live = {role: digest(text) for role, text in facts.files.items()}
    if p.restarted or any(recorded.get(role) != digest for role, digest in live.items()):
        return f"interrupted {p.verb} of revision {p.revision}"
    return ""


def _install(desired: Desired, facts: DeploymentFacts) -> list[InstallVllm]:
    spec = desired.vllm
    if spec is None or (facts.vllm_version == spec.version and spec.ray in (None, facts.ray_version)):
        return []
    return [InstallVllm(spec, facts.vllm_version or "", facts.ray_version or "")]


def _upload(desired: Desired, facts: DeploymentFacts) -> list[UploadModel]:
    spec = desired.upload
    if spec is None:
        return []
    needed = upload.missing(spec, facts.model_files or upload.RemoteFiles({}, {}))
    return [UploadModel(spec, needed)] if needed else []


def _fetch(desired: Desired, facts: DeploymentFacts) -> list[FetchModel]:
    spec = desired.fetch
    if spec is None or not hub.is_hub(spec):
        return []
    reason = hub.needs_fetch(spec, facts.model_files)
    return [FetchModel(spec, reason, facts.hub_listing)] if reason else []


def _restart_reason(changed: list[Provision | WriteFile], facts: DeploymentFacts) -> str:
    if changed:
        return "changed: " + ", ".join(_what(c) for c in changed)
    if not facts.unit.running or facts.unit.crashed:
        return f"unit is {facts.unit.describe()}"
    return ""


def _what(change: Provision | WriteFile) -> str:
    if isinstance(change, InstallVllm):
        return "vllm"
    return change.role if isinstance(change, WriteFile) else "model"


def _revision_differs(files: tuple[DesiredFile, ...], facts: DeploymentFacts) -> bool:
    recorded = (facts.manifest or {}).get("files", {})
    return any(recorded.get(f.role) != f.sha256 for f in files)


def _absent(desired: Desired, facts: DeploymentFacts, reap: bool) -> list[Change]:
    changes: list[Change] = [*_stale(facts)]
    if facts.unit.active_state not in ("inactive", "failed") or facts.unit.sub_state == "auto-restart":
        changes.append(Stop(desired.unit_name, reap))
    elif reap and facts.orphans:
        changes.append(Reap(desired.unit_name, tuple(p.describe() for p in facts.orphans)))
    if facts.unit.enabled:
        changes.append(Disable(desired.unit_name))
    for role in ROLES:
        if role in facts.files:
            changes.append(RemoveFile(role, desired.layout.path(role)))
    if "unit" in facts.files:
        changes.append(DaemonReload(desired.unit_name))
    return changes


def _diffs(host: str, desired: Desired, facts: DeploymentFacts) -> list[FileDiff]:
    out: list[FileDiff] = []
    hide = masker(desired, facts)
    for role in ROLES:
        want = desired.file(role)
        old = facts.files.get(role)
        new = want.content if want else None
        if old == new:
            continue
        path = want.path if want else desired.layout.path(role)
        out.append(_diff(host, role, path, old, new, hide))
    return out


def masker(desired: Desired, facts: DeploymentFacts) -> Masker:
    """What hides secrets in a target's diffs: the desired secret values, and the secret values
    that both env files (the host's and the desired one) hold."""
    want = desired.file("env")
    return Masker.build(
        desired.secret_values,
        env_texts=(facts.files.get("env"), want.content if want else None),
        secret_keys=desired.secret_keys,
        plain_keys=desired.plain_keys,
    )


def _diff(host: str, role: Role, path: str, old: str | None, new: str | None, hide: Masker) -> FileDiff:
    show = hide.env if role == "env" else hide.text
    lines = difflib.unified_diff(
        _lines(show(old or "")),
        _lines(show(new or "")),
        fromfile=f"{host}:{path}" if old is not None else "/dev/null",
        tofile=f"{host}:{path} (desired)" if new is not None else "/dev/null",
    )
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return FileDiff(role, path, text, secret_only=not text)


def _lines(text: str) -> list[str]:
    """Lines as the host reads them: ended by \\n alone (\\r or U+2028 stay inside a line)."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def mask(env_text: str, secret_keys: frozenset[str]) -> str:
    """Replace the values of secret variables in env-file text with ***."""
    return Masker(secret_keys=secret_keys).env(env_text)
