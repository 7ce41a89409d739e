"""Carry out plans over fleets: a deployment's hosts in batches, each gated before the next, and vLLM's
router told before a replica stops and after it serves again.

    wave k = the k-th batch of every deployment's changing targets (one batch of all of them unless
             ``rollout.batch`` says otherwise); a router deployment comes after every wave of its fleet;
             the nodes of a multi-node deployment are one replica: one batch, carried out by multinode.py
    in a wave: hosts in parallel, a host's targets in order; per target:
             router: take the replica out, drain it → converge.execute → router: put it back once it serves
    after a wave: a deployment with more failed targets than ``rollout.max_failed`` stops; the targets it
             did not reach are skipped and keep the revision they run

Apply, rollback and destroy all come through here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import multinode
from .converge import api_address, execute
from .core.fleet import worker_url
from .core.model import Deployment, Host
from .errors import AnswerError
from .hostrun import HostRun, Reporter, Result, as_error, parallel
from .plan import Restart, Stop, TargetPlan
from .waves import Key, batch_of, fleet_of, groups, waves

if TYPE_CHECKING:
    from .observe.router import Router


@dataclass(frozen=True)
class Fence:
    """What stands between a replica and its users: the router, and the replica's name there."""

    router: Router
    worker: str
    drain_timeout_s: float


def fences(
    plans: Sequence[TargetPlan], deployments: Mapping[str, Deployment], hosts: Mapping[str, Host]
) -> dict[Key, Fence]:
    """The router in front of each replica that has one."""
    out: dict[Key, Fence] = {}
    for p in plans:
        dep = deployments[p.deployment]
        if dep.router is None:
            continue
        # Imported here: only a fleet behind a router needs it (and prometheus_client with it).
        from .observe.router import Router

        front = Router(f"http://{api_address(hosts[dep.router.host])}:{dep.router.port}")
        address = api_address(hosts[p.host])
        out[(p.host, p.deployment)] = Fence(
            front,
            worker_url(address, dep.port),
            dep.rollout.drain_timeout_s,
        )
    return out


def run(
    runs: Mapping[str, HostRun],
    plans: Sequence[TargetPlan],
    *,
    deployments: Mapping[str, Deployment],
    hosts: Mapping[str, Host],
    reporter: Reporter,
    gate: bool,
    restore: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Result]:
    """Every plan carried out (or skipped), wave by wave; results in the plans' order."""
    rank, fence_of, routers = (
        batch_of(plans, deployments),
        fences(plans, deployments, hosts),
        fleet_of(deployments),
    )
    done: dict[Key, Result] = {}
    stopped: dict[str, str] = {}  # deployment → why its later targets are skipped
    failed: dict[str, int] = {}
    all_waves = waves(plans, deployments)
    for i, wave in enumerate(all_waves):
        todo = []
        for p in wave:
            why = stopped.get(p.deployment) or stopped.get(routers.get(p.deployment, ""))
            if why:
                done[(p.host, p.deployment)] = Result(
                    p.host, p.deployment, "skipped", why, revision=p.facts.current_revision
                )
            else:
                todo.append(p)
        grouped = groups(todo)
        alone = [p for p in todo if p.deployment not in grouped]
        done.update(_wave(runs, alone, fence_of, reporter, gate=gate, restore=restore))
        for group in grouped.values():
            done.update(multinode.run_group(runs, group, reporter, gate=gate, restore_all=restore))
        for p in todo:
            failed[p.deployment] = failed.get(p.deployment, 0) + (not done[(p.host, p.deployment)].ok)
        for name in dict.fromkeys(p.deployment for p in todo):
            n = sum(1 for p in plans if p.deployment == name and p.changed)
            if name not in stopped and failed[name] > deployments[name].rollout.allowed_failures(n):
                batch = rank[next((p.host, p.deployment) for p in todo if p.deployment == name)] + 1
                stopped[name] = f"not reached: the rollout of {name} stopped after batch {batch} failed"
        going_on = {p.deployment for w in all_waves[i + 1 :] for p in w} - set(stopped)
        pause = max(
            (deployments[p.deployment].rollout.pause_s for p in todo if p.deployment in going_on), default=0
        )
        if pause > 0:
            sleep(pause)
    return [done[(p.host, p.deployment)] for p in plans]


def _wave(
    runs: Mapping[str, HostRun],
    plans: list[TargetPlan],
    fence_of: Mapping[Key, Fence],
    reporter: Reporter,
    *,
    gate: bool,
    restore: bool,
) -> dict[Key, Result]:
    """One wave: hosts in parallel, a host's targets in order; every outcome a value."""
    hosts = list(dict.fromkeys(p.host for p in plans))

    def one(host: str) -> list[Result]:
        mine = [p for p in plans if p.host == host]
        return [
            step(runs[host], p, fence_of.get((p.host, p.deployment)), reporter, gate=gate, restore=restore)
            for p in mine
        ]

    done: dict[Key, Result] = {}
    for host, outcome in zip(hosts, parallel(hosts, one), strict=True):
        if isinstance(outcome, BaseException):
            error = str(as_error(host, outcome))
            outcome = [Result(host, p.deployment, "failed", error) for p in plans if p.host == host]
        done.update({(r.host, r.deployment): r for r in outcome})
    return done


def step(
    run: HostRun, p: TargetPlan, fence: Fence | None, reporter: Reporter, *, gate: bool, restore: bool
) -> Result:
    """One target: out of its router and drained before it stops, back in once it serves."""

    def say(text: str) -> None:
        reporter.event(p.host, p.deployment, text)

    listed: list[str] | None = None
    if fence is not None:
        try:
            listed = fence.router.workers()
        except AnswerError as exc:
            if _disrupts(p):  # a first apply finds no router yet: nothing to say then
                say(f"router {fence.router.base_url} not reachable ({exc}); going on without it")
    if fence is not None and listed is not None and fence.worker in listed and _disrupts(p):
        _take_out(fence, say)
        listed.remove(fence.worker)
    result = execute(run, p, reporter, gate=gate, restore=restore)
    if fence is None or listed is None or fence.worker in listed:
        return result
    if p.desired.present and result.status in ("applied", "unchanged", "rolled-back"):
        try:
            fence.router.add(fence.worker)
            say(f"back in the router {fence.router.base_url}")
        except AnswerError as exc:
            say(f"WARNING: could not put it back in the router: {exc}")
    elif p.desired.present:
        say("left out of the router: it does not serve")
    return result


def _take_out(fence: Fence, say: Callable[[str], None]) -> None:
    from .observe.router import drain  # httpx with it: only a fleet behind a router needs it

    try:
        fence.router.remove(fence.worker)
    except AnswerError as exc:
        say(f"WARNING: could not take it out of the router: {exc}")
        return
    say(f"taken out of the router {fence.router.base_url}")
    d = drain(fence.worker, timeout_s=fence.drain_timeout_s)
    left = f"; {d.left} request(s) still in flight" if not d.done else ""
    say(f"drained in {d.waited_s:.1f}s{left}")


def _disrupts(p: TargetPlan) -> bool:
    return any(isinstance(c, Restart | Stop) for c in p.changes)
