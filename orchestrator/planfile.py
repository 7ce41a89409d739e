"""Saved plans (``orch plan --out FILE``, ``orch apply FILE``): what a plan relied on, and the check
that it still holds.

A saved plan names its playbook and inventory (with their digest), and for every target the facts
the plan read (as digests: the host's env file is hashed with its secret values masked), the digests
of the files it would write (masked the same way) and its typed changes. It holds no secret value.
``apply FILE`` loads the same playbook, takes the lock, reads the facts again, plans again, and goes
on only when every target's facts, files and changes are the ones saved. Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .core.layout import ROLES
from .core.load import Loaded
from .core.render import digest
from .errors import ConfigError
from .facts import DeploymentFacts
from .plan import TargetPlan, masker

FORMAT = "orch-plan/1"

# What each fact is called in a refusal: "th1 tiny: the env file changed since the plan was made".
FACT_NAMES = {
    "unit": "unit file",
    "env": "env file",
    "state": "unit's state",
    "revision": "current revision",
    "pending": "pending revision",
    "vllm": "installed vLLM",
    "model": "model folder",
}


@dataclass(frozen=True)
class SavedTarget:
    host: str
    deployment: str
    facts: dict[str, str]
    files: dict[str, str]
    changes: tuple[dict[str, str], ...]

    @property
    def key(self) -> tuple[str, str]:
        return self.host, self.deployment


@dataclass(frozen=True)
class SavedPlan:
    playbook: str
    inventory: str
    sources: str  # the digest of the playbook and inventory texts (Loaded.digest)
    made: str
    by: str
    orch: str
    targets: tuple[SavedTarget, ...]

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            "made": self.made,
            "by": self.by,
            "orch": self.orch,
            "playbook": self.playbook,
            "inventory": self.inventory,
            "sources": self.sources,
            "targets": [
                {
                    "host": t.host,
                    "deployment": t.deployment,
                    "facts": t.facts,
                    "files": t.files,
                    "changes": list(t.changes),
                }
                for t in self.targets
            ],
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, file: str) -> SavedPlan:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a saved plan ({FORMAT})")
            targets = tuple(
                SavedTarget(
                    host=_str(t["host"]),
                    deployment=_str(t["deployment"]),
                    facts=_strings(t["facts"]),
                    files=_strings(t["files"]),
                    changes=tuple(_strings(c) for c in t["changes"]),
                )
                for t in data["targets"]
            )
            fields = ("playbook", "inventory", "sources", "made", "by", "orch")
            return cls(**{k: _str(data[k]) for k in fields}, targets=targets)
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ConfigError(f"not a valid saved plan: {reason}", file=file) from None


def looks_like_plan(head: bytes) -> bool:
    """Whether a file's first bytes are a saved plan's (JSON naming the format), not a playbook's."""
    return head.lstrip().startswith(b"{") and FORMAT.encode() in head


def save(plans: list[TargetPlan], loaded: Loaded, meta: dict[str, Any]) -> SavedPlan:
    """The saved form of ``plans`` made from ``loaded``; ``meta``: when, by whom (session.manifest_meta)."""
    return SavedPlan(
        str(loaded.path.resolve()),
        str(loaded.inventory_path.resolve()),
        loaded.digest,
        meta["created"],
        meta["by"],
        meta["orch_version"],
        tuple(_target(p) for p in plans),
    )


def _target(p: TargetPlan) -> SavedTarget:
    return SavedTarget(p.host, p.deployment, fingerprint(p), file_digests(p), changes(p))


def fingerprint(p: TargetPlan) -> dict[str, str]:
    """The facts a plan relied on, each as a digest (the env file's secret values masked first)."""
    f: DeploymentFacts = p.facts
    hide = masker(p.desired, f)
    u = f.unit
    steady_pid = u.main_pid if u.running and not u.crashed else 0
    parts: dict[str, object] = {
        "unit": f.files.get("unit"),
        "env": hide.env(f.files["env"]) if "env" in f.files else None,
        "state": [u.load_state, u.unit_file_state, u.running, u.crashed, steady_pid],
        "revision": f.current_revision,
        "pending": [f.pending.revision, f.pending.restarted] if f.pending else None,
        "vllm": f.vllm_version,
        "model": [f.model_files.sizes, f.model_files.record] if f.model_files else None,
    }
    return {k: digest(json.dumps(v, sort_keys=True, default=str)) for k, v in parts.items()}


def file_digests(p: TargetPlan) -> dict[str, str]:
    """The files the plan would write, as digests (the env file's secret values masked first)."""
    hide = masker(p.desired, p.facts)
    out: dict[str, str] = {}
    for role in ROLES:
        want = p.desired.file(role)
        if want is not None:
            out[role] = digest(hide.env(want.content) if role == "env" else want.content)
    return out


def changes(p: TargetPlan) -> tuple[dict[str, str], ...]:
    return tuple({"type": type(c).__name__, "summary": c.summary()} for c in p.changes)


def refusals(saved: SavedPlan, plans: list[TargetPlan]) -> list[str]:
    """One line per target whose facts, files or changes are no longer the saved plan's; [] to go on."""
    now = {(p.host, p.deployment): p for p in plans}
    out: list[str] = []
    for t in saved.targets:
        p = now.get(t.key)
        why = "it could not be planned" if p is None else _differs(t, p)
        if why:
            out.append(f"{t.host} {t.deployment}: {why}")
    return out


def _differs(saved: SavedTarget, p: TargetPlan) -> str:
    facts = fingerprint(p)
    for key, name in FACT_NAMES.items():
        if saved.facts.get(key) != facts.get(key):
            return f"the {name} changed since the plan was made"
    if saved.files != file_digests(p):
        role = next(r for r in ROLES if saved.files.get(r) != file_digests(p).get(r))
        return f"the {role} file orch renders now differs from the plan's (a secret or a source changed)"
    now = changes(p)
    if saved.changes != now:
        added = [c["summary"] for c in now if c not in saved.changes]
        gone = [c["summary"] for c in saved.changes if c not in now]
        parts = [f"now also {', '.join(added)}"] * bool(added) + [f"no longer {', '.join(gone)}"] * bool(gone)
        return f"its changes differ from the plan's: {'; '.join(parts) or 'in another order'}"
    return ""


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return {_str(k): _str(v) for k, v in value.items()}
