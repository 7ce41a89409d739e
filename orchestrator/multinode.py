"""One model across hosts, carried out: the nodes of a deployment planned, started, gated and restored as one.

    plan     a node that restarts makes every node restart (vLLM's ranks start together), and a node that
             records a revision makes every node record one, so the nodes' revision numbers move together
    apply    the other nodes first (in parallel), the head last; the head's readiness gate (a real completion)
             speaks for all, then each other node must still run the process it started; only then is the
             revision made current on every node
             a failure on any node: every node goes back to what ran before (the others first, the head last,
             whose return is gated); with --no-rollback every node keeps its revision pending
    destroy  every node, the head first
    preflight  the same vLLM and the same model files on every node; each node reaches the others

Plain values in, results out; each node's own steps are converge.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from .converge import advance, execute, make_current, restore, unit_state
from .core import nodes
from .core.load import Target
from .core.model import Deployment
from .errors import GateError, OrchError
from .facts import UnitState
from .hostrun import HostRun, Reporter, Result, Timeline, as_error, parallel
from .observe.gpu import Check
from .observe.preflight import DeploymentProbe, HostProbe
from .plan import RecordRevision, Restart, TargetPlan
from .waves import Key, groups


def found_version(run: HostRun, dep: Deployment) -> str:
    """The vLLM the host will run the deployment with: the pinned one, else what preflight read there."""
    if dep.vllm is not None:
        return dep.vllm.version
    own = run.probe.deployments.get(dep.name) if run.probe else None
    return own.vllm_version if own else ""


def waits_on_version(t: Target) -> bool:
    """Whether planning ``t`` needs what preflight reads (``found_version``): a node whose backend is
    ``auto`` and whose vLLM is not pinned."""
    return t.node is not None and t.node.backend == "auto" and t.deployment.vllm is None


def align(plans: list[TargetPlan]) -> list[TargetPlan]:
    """The plans with every node of a deployment restarting, and recording, when one of them does."""
    out = list(plans)
    for group in groups(plans).values():
        restarting = [p.host for p in group if p.restarts]
        record = next((c for p in group for c in p.changes if isinstance(c, RecordRevision)), None)
        for p in group:
            extra: list[Restart | RecordRevision] = []
            if restarting and not p.restarts and p.desired.present:
                why = f"{', '.join(restarting)} restarts: the nodes start together"
                extra.append(Restart(p.desired.unit_name, why))
            records = any(isinstance(c, RecordRevision) for c in p.changes)
            if record is not None and not records and p.desired.files is not None:
                extra.append(
                    RecordRevision(p.desired.files, p.desired.origin, record.meta, p.facts.current_revision)
                )
            if extra:
                out[out.index(p)] = replace(p, changes=(*p.changes, *extra))
    return out


def together(plans: list[TargetPlan], targets: Sequence[Target]) -> tuple[list[TargetPlan], list[Result]]:
    """The plans of the deployments that can go on, and an error for each node of those that cannot."""
    nodes_of = {t.deployment.name: t.node.hosts for t in targets if t.node}
    apart = disagreements(plans, nodes_of)
    failed = [
        Result(p.host, p.deployment, "error", apart[p.deployment]) for p in plans if p.deployment in apart
    ]
    return [p for p in plans if p.deployment not in apart], failed


def disagreements(plans: Sequence[TargetPlan], nodes_of: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """Multi-node deployments that cannot go on: a node could not be planned (it failed alone), or the nodes
    would end on different revisions (a rollback); and why."""
    out = {}
    for name, group in groups(plans).items():
        origins = {p.host: p.desired.origin for p in group if p.desired.present}
        missing = [h for h in nodes_of.get(name, ()) if h not in {p.host for p in group}]
        if missing:
            out[name] = f"{name}: not planned on {', '.join(missing)} (see there); its nodes change together"
        elif len(set(origins.values())) > 1:
            said = ", ".join(f"{h}: {o}" for h, o in origins.items())
            out[name] = f"the nodes of {name} would go to different revisions ({said}); name one with --to"
    return out


def run_group(
    runs: Mapping[str, HostRun], group: list[TargetPlan], reporter: Reporter, *, gate: bool, restore_all: bool
) -> dict[Key, Result]:
    """One multi-node deployment's plans carried out together; a result for each node."""
    if not any(p.changed for p in group) or not group[0].desired.present:  # nothing, or destroy: head first
        return {
            (p.host, p.deployment): execute(runs[p.host], p, reporter, gate=gate, restore=False)
            for p in group
        }
    head, others = group[0], group[1:]
    pending: dict[str, list[int]] = {p.host: [] for p in group}
    ready_after: dict[str, Timeline | None] = {}

    def start(p: TargetPlan) -> UnitState:
        ready_after[p.host] = advance(runs[p.host], p, reporter, gate=gate, pending=pending[p.host]).timeline
        return unit_state(runs[p.host], p)

    changing = [p for p in others if p.changed]
    started = parallel(changing, start)
    failure = next(
        (
            (p.host, as_error(p.host, s))
            for p, s in zip(changing, started, strict=True)
            if isinstance(s, BaseException)
        ),
        None,
    )
    if failure is None:
        try:
            if head.changed:
                start(head)
            failure = _still_running(runs, changing, started)
        except Exception as exc:  # the head's failure, whatever it is
            failure = (head.host, as_error(head.host, exc))
    if failure is None:
        return {
            (p.host, p.deployment): _commit(
                runs[p.host], p, pending[p.host], reporter, ready_after.get(p.host)
            )
            for p in group
        }
    return _restore_all(runs, group, failure, pending, reporter, restore_all=restore_all)


def _still_running(
    runs: Mapping[str, HostRun], others: list[TargetPlan], started: list[UnitState | BaseException]
) -> tuple[str, OrchError] | None:
    """The first other node whose process died or restarted while the head started, if any."""
    for p, before in zip(others, started, strict=True):
        now = unit_state(runs[p.host], p)
        if not isinstance(before, UnitState):
            continue
        if not now.running:
            what = f"stopped (unit {now.describe()})"
        elif now.n_restarts != before.n_restarts or now.main_pid != before.main_pid:
            what = f"restarted (main PID {before.main_pid} → {now.main_pid}, restarts {now.n_restarts})"
        else:
            continue
        return p.host, GateError(p.host, f"{p.deployment}: {p.host} {what} while the head started")
    return None


def _commit(
    run: HostRun, p: TargetPlan, pending: list[int], reporter: Reporter, timeline: Timeline | None
) -> Result:
    if pending:
        return make_current(run, p, pending[0], reporter, timeline=timeline)
    status = "applied" if p.changed else "unchanged"
    return Result(run.name, p.deployment, status, revision=p.facts.current_revision, timeline=timeline)


def _restore_all(
    runs: Mapping[str, HostRun],
    group: list[TargetPlan],
    failure: tuple[str, OrchError],
    pending: dict[str, list[int]],
    reporter: Reporter,
    *,
    restore_all: bool,
) -> dict[Key, Result]:
    """Every node back to what ran before: the others first (in parallel), the head last."""
    where, error = failure
    journal = error.journal if isinstance(error, GateError) else ""

    def cause(p: TargetPlan) -> GateError:
        if p.host == where and isinstance(error, GateError):
            return error
        said = str(error).removeprefix(f"{where}: ")
        return GateError(p.host, f"{p.deployment}: failed on {where}: {said}", journal=journal)

    if not restore_all:
        return {
            (p.host, p.deployment): Result(
                p.host, p.deployment, "failed", f"{cause(p)}{_kept(pending[p.host])}", journal=journal
            )
            for p in group
        }

    def back(p: TargetPlan) -> Result:
        number = pending[p.host][0] if pending[p.host] else None
        return restore(runs[p.host], p, cause(p), reporter, pending=number)

    out: dict[Key, Result] = {}
    for p, r in zip(group[1:], parallel(group[1:], back), strict=True):
        out[(p.host, p.deployment)] = (
            r if isinstance(r, Result) else Result(p.host, p.deployment, "failed", str(r))
        )
    out[(group[0].host, group[0].deployment)] = back(group[0])
    return out


def _kept(pending: list[int]) -> str:
    return f"; revision {pending[0]} stays pending (--no-rollback)" if pending else ""


def checks(runs: Mapping[str, HostRun], deployments: Sequence[Deployment]) -> dict[Key, list[Check]]:
    """Preflight across the nodes of each multi-node deployment: one vLLM, one model, every node reachable."""
    out: dict[Key, list[Check]] = {}
    for dep in deployments:
        probes = {n.host: p for n in dep.nodes if n.host in runs and (p := runs[n.host].probe) is not None}
        if len(probes) < 2:
            continue
        same = [
            _same(dep, probes, "vLLM", lambda d: d.vllm_version),
            _same(dep, probes, "model files", lambda d: d.model_files),
        ]
        for host, probe in probes.items():
            out[(host, dep.name)] = [*same, *_reach(runs[host], dep, probe)]
    return out


def _same(
    dep: Deployment, probes: Mapping[str, HostProbe], what: str, read: Callable[[DeploymentProbe], str]
) -> Check:
    seen = {h: read(p.deployments[dep.name]) for h, p in probes.items() if dep.name in p.deployments}
    if len({v for v in seen.values() if v}) <= 1:
        return Check("nodes", True, "ok", f"the same {what} on every node")
    listed = ", ".join(f"{h} {str(v)[:16] or 'none'}" for h, v in seen.items())
    return Check("nodes", False, "error", f"not the same {what} on every node: {listed}")


def _reach(run: HostRun, dep: Deployment, probe: HostProbe) -> list[Check]:
    target = next((t for t in run.targets if t.deployment.name == dep.name), None)
    if target is None or target.node is None:
        return []
    out = []
    for address, port in nodes.peers(target.node):
        said = probe.peers.get(f"{address}:{port}", "not tried")
        if said.startswith("not tried"):
            out.append(Check("reach", True, "warn", f"{address}:{port} {said}"))
            continue
        ok = said in ("open", "refused")
        verdict = "reached" if ok else f"cannot reach it ({said}): the nodes must reach each other"
        out.append(Check("reach", ok, "ok" if ok else "error", f"{address}:{port} {verdict}"))
    return out
