"""The order of a rollout, from plans alone (pure): a deployment's changing hosts in batches, a router
after its fleet, a multi-node deployment's nodes as one group. ``rollout.py`` carries it out; ``plan``
(offline too) prints it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .core.model import Deployment
from .plan import TargetPlan

Key = tuple[str, str]  # (host, deployment)


def fleet_of(deployments: Mapping[str, Deployment]) -> dict[str, str]:
    """Router deployment → the deployment whose replicas it fronts."""
    return {f"{d.name}-router": d.name for d in deployments.values() if d.router is not None}


def batch_of(plans: Sequence[TargetPlan], deployments: Mapping[str, Deployment]) -> dict[Key, int]:
    """Each target's batch: 0 for a target with nothing to do; a router one past its fleet's last batch."""
    out: dict[Key, int] = {}
    changing: dict[str, list[str]] = {}
    for p in plans:
        if p.changed:
            changing.setdefault(p.deployment, []).append(p.host)
        else:
            out[(p.host, p.deployment)] = 0
    routers = fleet_of(deployments)
    for name, hosts in changing.items():
        if name not in routers:
            dep = deployments[name]  # a multi-node deployment's nodes go together (multinode.py)
            for k, batch in enumerate([hosts] if dep.nodes else dep.rollout.batches(hosts)):
                out.update({(h, name): k for h in batch})
    for name, hosts in changing.items():
        if name in routers:
            fleet = [k for (h, d), k in out.items() if d == routers[name]]
            out.update({(h, name): max(fleet, default=-1) + 1 for h in hosts})
    return out


def waves(plans: Sequence[TargetPlan], deployments: Mapping[str, Deployment]) -> list[list[TargetPlan]]:
    """The plans in the order a rollout takes them, wave by wave (each wave in the plans' order)."""
    rank = batch_of(plans, deployments)
    count = max(rank.values(), default=-1) + 1
    return [[p for p in plans if rank[(p.host, p.deployment)] == k] for k in range(count)]


def describe(plans: Sequence[TargetPlan], deployments: Mapping[str, Deployment]) -> list[str]:
    """What a rollout will do: a line per deployment taken in more than one batch or behind a router, and
    what happens to each multi-node deployment."""
    lines = []
    for name, dep in deployments.items():
        hosts = [p.host for p in plans if p.deployment == name and p.changed]
        batches = dep.rollout.batches(hosts) if hosts else []
        if (len(batches) < 2 and dep.router is None) or dep.nodes:  # nodes: describe_nodes
            continue
        order = " → ".join(f"[{', '.join(b)}]" for b in batches) or "nothing to change"
        stop = f"stops after {dep.rollout.allowed_failures(len(hosts)) + 1} failed host(s)"
        front = (
            f"; behind {name}-router: each replica leaves it and drains before it stops" if dep.router else ""
        )
        lines.append(
            f"rollout of {name}: {len(batches)} batch(es) {order}, each gated before the next, {stop}{front}"
        )
    return lines + describe_nodes(plans)


def groups(plans: Sequence[TargetPlan]) -> dict[str, list[TargetPlan]]:
    """Each multi-node deployment's plans, head first."""
    out: dict[str, list[TargetPlan]] = {}
    for p in plans:
        if p.desired.node is not None:
            out.setdefault(p.deployment, []).append(p)
    return {
        name: sorted(g, key=lambda p: p.desired.node.rank if p.desired.node else 0) for name, g in out.items()
    }


def describe_nodes(plans: Sequence[TargetPlan]) -> list[str]:
    """What a plan does with each multi-node deployment: where each rank runs, and the backend and why."""
    lines = []
    for name, group in groups(plans).items():
        head = group[0].desired.node
        if head is None or not group[0].desired.present:
            continue
        where = "; ".join(f"{p.host}: {p.desired.node.describe()}" for p in group if p.desired.node)
        order = "the others first, the head last, gated on the head" if any(p.changed for p in group) else ""
        backend = f"; backend {head.backend} ({head.why})" if head.why else ""
        lines.append(f"{name} across {head.nnodes} nodes ({where}){backend}")
        if order:
            lines.append(
                f"{name}: one revision on every node; started {order}; a failure restores every node"
            )
    return lines
