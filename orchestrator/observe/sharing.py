"""Whose is each process on a host, and what that means for a deployment's GPUs: pure.

From one deployment's point of view every process is one of: its own live tree (released by its own
restart), its orphans (its marked processes outside that tree: they outlived a stop), another orch
deployment's (named as ``deployment tiny-a (orch, revision 1)``), or foreign (nothing marks it).
On that ground: free memory (what vLLM checks when it starts), the share of each GPU that orch's
deployments are given (``gpu_memory_utilization`` adds up to at most 1 per GPU), the orphans, and
the memory each deployment holds per GPU for ``status``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.load import SHARE_EPSILON
from ..core.model import Deployment
from ..host.procs import Owner, Proc
from ..host.siblings import Sibling
from . import gpu
from .gpu import Check, Gpu, GpuProcess

Kind = Literal["own", "orphan", "sibling", "foreign"]


@dataclass(frozen=True)
class Holder:
    """A process holding memory on one GPU, as the deployment sees it."""

    gpu: int
    pid: int
    process: str
    mib: int
    kind: Kind
    who: str  # "this deployment", "deployment tiny-a (orch, revision 1)", "pid 464 python3"

    def describe(self) -> str:
        if self.kind == "foreign":
            return f"{self.who} {self.mib} MiB"
        return f"{self.who} {self.mib} MiB (pid {self.pid} {self.process})"


@dataclass(frozen=True)
class View:
    """The host's processes sorted out for one deployment."""

    own: Owner
    live: frozenset[int]
    orphans: tuple[Proc, ...] = ()
    marked: Mapping[int, Owner] = field(default_factory=dict)
    siblings: Mapping[Owner, Sibling] = field(default_factory=dict)

    def kind(self, pid: int) -> Kind:
        if pid in self.live:
            return "own"
        if any(p.pid == pid for p in self.orphans):
            return "orphan"
        return "sibling" if pid in self.marked else "foreign"

    def who(self, pid: int, process: str = "") -> str:
        kind = self.kind(pid)
        if kind == "own":
            return "this deployment"
        if kind == "orphan":
            return "this deployment's leftover"
        if kind == "sibling":
            return describe_owner(self.marked[pid], self.siblings)
        return f"pid {pid}{' ' + process if process else ''}"


def describe_owner(owner: Owner, siblings: Mapping[Owner, Sibling]) -> str:
    known = siblings.get(owner)
    if known is not None:
        return known.describe()
    user = f"user {owner.kind.removeprefix('user-')}, " if owner.kind.startswith("user-") else ""
    return f"deployment {owner.name} (orch, {user}no files found)"


def view(own: Owner, live: frozenset[int], marked: Sequence[Proc], siblings: Sequence[Sibling]) -> View:
    """Sort ``marked`` (every marked process of the host) for the deployment ``own``.

    ``live``: the tree under its runner's main process (its whole tree carries its mark, so any of
    its marked processes outside that tree outlived an earlier start).
    """
    return View(
        own=own,
        live=live,
        orphans=tuple(p for p in marked if p.owner == own and p.pid not in live),
        marked={p.pid: p.owner for p in marked if p.owner != own},
        siblings={s.owner: s for s in siblings if s.owner != own},
    )


def holders(gpus: Sequence[Gpu], processes: Sequence[GpuProcess], v: View) -> list[Holder]:
    """Every process on the host's GPUs, with who it is."""
    index_of = {g.uuid: g.index for g in gpus}
    return [
        Holder(
            index_of[p.gpu_uuid], p.pid, p.name, p.used_memory_mib or 0, v.kind(p.pid), v.who(p.pid, p.name)
        )
        for p in processes
        if p.gpu_uuid in index_of
    ]


def free_memory_checks(
    dep: Deployment, gpus: Sequence[Gpu], found: Sequence[Holder], *, reap: bool
) -> list[Check]:
    """vLLM's start-up check, per GPU: free memory ≥ gpu_memory_utilization × total.

    The deployment's own live processes are freed by its restart (and its orphans with ``--reap``);
    everything else that holds memory is named.
    """
    released = ("own", "orphan") if reap else ("own",)
    out = []
    for g in gpus:
        if g.index not in dep.gpus:
            continue
        freed = sum(h.mib for h in found if h.gpu == g.index and h.kind in released)
        others = [h.describe() for h in found if h.gpu == g.index and h.kind not in released]
        [check] = gpu.check_free_memory(
            [_released(g, freed)], [g.index], gpu_memory_utilization=dep.gpu_memory_utilization
        )
        out.append(_with_holders(check, others) if others else check)
    return out


def _with_holders(check: Check, others: list[str]) -> Check:
    """``GPU 0: … needs … MiB; in use by …; vLLM will refuse to start``."""
    head, sep, tail = check.message.partition("; ")
    used = f"; in use by {', '.join(others)}"
    return Check(check.name, check.ok, check.severity, f"{head}{used}{sep}{tail}")


def _released(g: Gpu, mib: int) -> Gpu:
    if g.memory_free_mib is None or g.memory_used_mib is None:
        return g
    return Gpu(
        g.index, g.uuid, g.name, g.memory_total_mib, g.memory_used_mib - mib, g.memory_free_mib + mib,
        g.utilization_pct, g.pci_bus_id,
    )  # fmt: skip


def share_checks(
    dep: Deployment,
    gpus: Sequence[Gpu],
    found: Sequence[Holder],
    v: View,
    *,
    peers: Sequence[Deployment],
    reap: bool,
) -> list[Check]:
    """Per GPU the deployment shares: its share + the other orch deployments' + what others hold, ≤ 1.

    The other deployments are those whose files are on the host (their share as their unit gives it)
    and this verb's other deployments on the host (their share as the playbook gives it). A share
    is what vLLM may take of the card whether or not it runs now; what a foreign process or a
    leftover holds now is counted as a share of the card's memory.
    """
    out = []
    for g in gpus:
        if g.index not in dep.gpus or not g.cuda_total_mib:
            continue
        parts = [(dep.gpu_memory_utilization, "this deployment")]
        parts += _orch_shares(g.index, v, peers)
        held = [
            h
            for h in found
            if h.gpu == g.index and (h.kind == "foreign" or (h.kind == "orphan" and not reap))
        ]
        parts += [(h.mib / g.cuda_total_mib, h.describe()) for h in held]
        if len(parts) == 1:
            continue
        total = sum(share for share, _ in parts)
        listed = " + ".join(f"{share:.2f} {who}" for share, who in parts)
        message = f"GPU {g.index}: {listed} = {total:.2f} of the card"
        if total > 1 + SHARE_EPSILON:
            out.append(
                Check(f"gpu-share-gpu{g.index}", False, "error", f"{message}: over-committed (at most 1)")
            )
        else:
            out.append(Check(f"gpu-share-gpu{g.index}", True, "ok", message))
    return out


def _orch_shares(index: int, v: View, peers: Sequence[Deployment]) -> list[tuple[float, str]]:
    planned = {p.name: p for p in peers if p.name != v.own.name}
    out = [
        (s.utilization, s.describe())
        for s in v.siblings.values()
        if index in s.gpus and not (s.owner.kind == v.own.kind and s.owner.name in planned)
    ]
    for p in planned.values():
        if p.accelerator == "cuda" and index in p.gpus:
            on_host = v.siblings.get(Owner(v.own.kind, p.name))
            out.append(
                (
                    p.gpu_memory_utilization,
                    on_host.describe() if on_host else f"deployment {p.name} (orch, new)",
                )
            )
    return out


def orphan_check(v: View, found: Sequence[Holder], *, reap: bool) -> list[Check]:
    """The deployment's processes that outlived a stop (none: no check)."""
    if not v.orphans:
        return []
    memory = {h.pid: h for h in found if h.kind == "orphan"}
    listed = ", ".join(
        f"pid {p.pid} {p.comm}"
        + (f" (GPU {memory[p.pid].gpu}: {memory[p.pid].mib} MiB)" if p.pid in memory else "")
        for p in v.orphans
    )
    if reap:
        return [Check("orphans", True, "ok", f"leftovers of an earlier start: {listed}; --reap ends them")]
    hint = "`orch apply --reap` or `orch destroy --reap` ends them"
    return [Check("orphans", True, "warn", f"processes of this deployment outlived a stop: {listed}; {hint}")]


def foreign_check(found: Sequence[Holder], wanted: Sequence[int]) -> Check:
    """Processes on the deployment's GPUs that no orch deployment owns."""
    foreign = [h for h in found if h.kind == "foreign" and h.gpu in wanted]
    if not foreign:
        return Check("foreign-processes", True, "ok", "no foreign processes on the deployment's GPUs")
    described = "; ".join(
        f"GPU {h.gpu}: pid {h.pid} {h.process} {h.mib} MiB"
        + (" (a leftover vLLM?)" if "vllm" in h.process.lower() else "")
        for h in foreign
    )
    return Check("foreign-processes", True, "warn", f"foreign processes: {described}")


def gpu_status(dep: Deployment, gpus: Sequence[Gpu], found: Sequence[Holder]) -> dict[str, Any]:
    """Per GPU of the deployment: the card's totals, the deployment's own memory, who else holds memory."""
    rows = []
    own: dict[int, int] = {}
    for g in gpus:
        if g.index not in dep.gpus:
            continue
        mine = [h for h in found if h.gpu == g.index and h.kind == "own"]
        own[g.index] = sum(h.mib for h in mine)
        rows.append(
            {
                "index": g.index,
                "used_mib": g.memory_used_mib,
                "total_mib": g.memory_total_mib,
                "utilization_pct": g.utilization_pct,
                "deployment_mib": own[g.index],
                "others": [
                    {"who": h.who, "kind": h.kind, "pid": h.pid, "process": h.process, "mib": h.mib}
                    for h in found
                    if h.gpu == g.index and h.kind != "own"
                ],
            }
        )
    out: dict[str, Any] = {"gpus": rows}
    if len(dep.gpus) > 1 and any(own.values()):
        bal = gpu.tp_balance(own.get(i, 0) for i in dep.gpus)
        out["tp_balance"] = {
            "max_mib": bal.max_mib,
            "min_mib": bal.min_mib,
            "spread_pct": bal.spread_pct,
            "balanced": bal.balanced,
        }
    return out
