"""Carry out one deployment's plan on one host, under the verb's lock, so that its records never lie.

    (forget a stale pending revision) → record the new revision as pending → provision, write files,
    reload → mark the restart as begun, restart → readiness gate → make the revision current
                                                               ↘ gate failed: restore, mark it failed

The steps up to the restart go to the host as one script where they are plain
commands (``apply.run_changes``); the lock is checked before it and again
before the revision is made current.

A restore returns to what ran before this verb and nothing else: the revision
that was current, or the unrecorded files that were there, or — only when this
verb created the deployment — nothing. Reads of the host that a restore needs
(facts, a revision's files) live here too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from . import facts, failpoints
from .apply import Applied, StepError, in_order, live, run_changes
from .core import nodes, render, secrets
from .core.layout import Layout
from .core.load import Target
from .core.masking import Masker
from .core.model import Deployment, Host
from .core.render import Desired
from .errors import GateError, HostError, OrchError, RevisionError
from .facts import DeploymentFacts, UnitState
from .host import commands, pyreads, runners, state
from .host.commands import Command
from .host.procs import Proc
from .host.state import REVISION_FILES, revision_contents
from .hostrun import HostRun, Reporter, Result, Timeline, as_error
from .observe import preflight
from .observe.probe import Endpoint, Probe
from .plan import Abandon, Change, RecordRevision, Restart, TargetPlan, WriteFile, plan_target
from .provision import hub, upload

PREFLIGHT_MARK = f"{commands.MARK}preflight\n"


def execute(run: HostRun, p: TargetPlan, reporter: Reporter, *, gate: bool, restore: bool) -> Result:
    """One target's plan, start to end; every failure becomes the target's Result."""
    dep = deployment(run, p.deployment)
    if not p.changed:
        return Result(run.name, dep.name, "unchanged", revision=p.facts.current_revision)
    pending: list[int] = []
    try:
        return _converge(run, dep, p, reporter, gate=gate, pending=pending)
    except GateError as exc:
        reporter.event(run.name, dep.name, f"FAILED: {exc}")
        if not restore:
            kept = f"; revision {pending[0]} stays pending (--no-rollback)" if pending else ""
            return Result(run.name, dep.name, "failed", f"{exc}{kept}", journal=exc.journal)
        return _restore(run, dep, p, exc, reporter, pending=pending[0] if pending else None)
    except Exception as exc:  # this target's failure, whatever it is: the host's other targets go on
        return Result(run.name, dep.name, "failed", str(as_error(run.name, exc)))


def advance(run: HostRun, p: TargetPlan, reporter: Reporter, *, gate: bool, pending: list[int]) -> Result:
    """A target's changes and gate, its revision left pending (``pending`` gets its number): the nodes of a
    multi-node deployment are made current together, once every node has come through."""
    return _converge(
        run, deployment(run, p.deployment), p, reporter, gate=gate, pending=pending, commit=False
    )


def _converge(
    run: HostRun,
    dep: Deployment,
    p: TargetPlan,
    reporter: Reporter,
    *,
    gate: bool,
    pending: list[int],
    commit: bool = True,
) -> Result:
    run.check_lock()
    for change in in_order(p.changes):
        reporter.event(run.name, dep.name, change.summary())
    try:
        applied = run_changes(
            run.transport,
            p,
            sudo=run.host.sudo,
            progress=lambda what, done, total: reporter.progress(run.name, dep.name, what, done, total),
            before=_before(run, p),
            cut=lambda change: failpoints.armed(_point(p, change)),
        )
    except StepError as exc:
        _recorded(run, dep, exc.recorded, pending, reporter)
        if not isinstance(exc.change, Restart):
            raise
        # The runner could not start it: what the server printed says why (supervisorctl prints nothing).
        journal = journal_tail(run, dep, p.desired)
        detail = str(exc).removeprefix(f"{run.name}: ")
        raise GateError(run.name, f"{dep.name}: the start failed: {detail}", journal=journal) from None
    _recorded(run, dep, applied.recorded, pending, reporter)
    _warn_leftovers(run, dep, applied, reporter)
    failpoints.reach("after-restart")
    timeline = None
    if gate and not dep.readiness.enabled and applied.restarted:
        reporter.event(run.name, dep.name, "readiness gate disabled (readiness.enabled: false)")
    node = p.desired.node
    if node is not None and not node.serves:  # a headless node: the head's gate speaks for it
        if p.desired.present and applied.restarted:
            reporter.event(run.name, dep.name, f"started: {node.describe()}")
    elif gate and dep.readiness.enabled and p.desired.present and applied.restarted:
        timeline = _gate(run, dep, p.desired, applied, reporter)
    if not commit:
        return Result(run.name, dep.name, "applied", revision=p.facts.current_revision, timeline=timeline)
    failpoints.reach("before-commit")
    if not pending:
        return Result(run.name, dep.name, "applied", revision=p.facts.current_revision, timeline=timeline)
    return make_current(run, p, pending[0], reporter, timeline=timeline)


def make_current(
    run: HostRun, p: TargetPlan, number: int, reporter: Reporter, *, timeline: Timeline | None = None
) -> Result:
    """Make the pending revision ``number`` current, once it serves."""
    try:
        run.check_lock()
        run.run(state.commit(p.desired.layout.state_dir, number, sudo=run.host.sudo))
    except OrchError as exc:
        message = f"revision {number} serves but could not be made current ({exc}); apply again"
        return Result(run.name, p.deployment, "failed", message, timeline=timeline)
    reporter.event(run.name, p.deployment, f"revision {number} is current")
    return Result(run.name, p.deployment, "applied", revision=number, timeline=timeline)


def unit_state(run: HostRun, p: TargetPlan) -> UnitState:
    """The target's unit as its runner reports it now."""
    runner = runners.of(p.desired.layout)
    command = commands.unit_state(runner, p.desired.unit_name, sudo=run.host.sudo)
    return facts.parse_unit_state(run.run(command, timeout=30), runner)


def _recorded(
    run: HostRun, dep: Deployment, number: int | None, pending: list[int], reporter: Reporter
) -> None:
    if number is not None:
        pending.append(number)
        reporter.event(run.name, dep.name, f"revision {number} recorded as pending")


def _point(p: TargetPlan, change: Change) -> str | None:
    """The failpoint reached right before ``change`` runs, if one is."""
    if isinstance(change, Restart):
        return "before-restart"
    if isinstance(change, RecordRevision | Abandon):
        return None
    changes = live(p.changes)
    if change is changes[0] and any(isinstance(c, RecordRevision) for c in p.changes):
        return "after-pending"
    writes = [c for c in changes if isinstance(c, WriteFile)]
    return "between-writes" if len(writes) > 1 and change is writes[1] else None


def _before(run: HostRun, p: TargetPlan) -> Callable[[Change], None]:
    """Ahead of each change: its failpoint, then the lock is still ours."""

    def check(change: Change) -> None:
        point = _point(p, change)
        if point is not None:
            failpoints.reach(point)
        run.check_lock()

    return check


def _warn_leftovers(run: HostRun, dep: Deployment, applied: Applied, reporter: Reporter) -> None:
    if applied.leftovers:
        survivors = " ".join(applied.leftovers)
        reporter.event(run.name, dep.name, f"WARNING: processes outlived the stop: {survivors}")
    if applied.reaped is not None:
        ended = " ".join(applied.reaped) or "none were left"
        reporter.event(run.name, dep.name, f"--reap: ended the deployment's leftover processes: {ended}")


def _gate(run: HostRun, dep: Deployment, desired: Desired, applied: Applied, reporter: Reporter) -> Timeline:
    """Wait until the restarted server answers; its timeline counts from the restart command."""
    from .observe.health import wait_ready  # httpx with it: an apply that restarts nothing never loads it

    ep = endpoint(run.host, dep, desired.env)
    runner = runners.of(desired.layout)
    with_log = commands.unit_state(runner, dep.unit_name, sudo=run.host.sudo)
    state_only = commands.unit_state(runner, dep.unit_name, sudo=run.host.sudo, journal_lines=0)

    def unit_state(command: commands.Command = with_log) -> UnitState:
        return facts.parse_unit_state(run.run(command, timeout=30), runner)

    def progress(elapsed: float, unit: UnitState, probe: Probe) -> None:
        reporter.gate(run.name, dep.name, elapsed, unit, probe)
        failpoints.reach("during-gate")

    outcome = wait_ready(
        ep,
        timeout_s=dep.readiness.timeout_s,
        interval_s=dep.readiness.interval_s,
        request_timeout_s=dep.readiness.request_timeout_s,
        unit_state=unit_state,
        baseline=applied.after,
        on_progress=progress,
        since=applied.restart_sent,
        quick_state=lambda: unit_state(state_only),
    )
    if not outcome.ready:
        raise GateError(run.name, f"{dep.name}: {outcome.reason}", journal=journal_tail(run, dep, desired))
    sent, done = applied.restart_sent, applied.restart_done
    started = done - sent if sent is not None and done is not None else 0.0
    timeline = Timeline(round(started, 3), outcome.up_s, outcome.elapsed_s)
    reporter.event(run.name, dep.name, f"ready after {outcome.elapsed_s:.2f}s ({timeline.describe()})")
    return timeline


def restore(
    run: HostRun, failed: TargetPlan, cause: GateError, reporter: Reporter, *, pending: int | None
) -> Result:
    """Return one target to what ran before this verb (a node whose deployment failed on another node)."""
    return _restore(run, deployment(run, failed.deployment), failed, cause, reporter, pending=pending)


def _restore(
    run: HostRun,
    dep: Deployment,
    failed: TargetPlan,
    cause: GateError,
    reporter: Reporter,
    *,
    pending: int | None,
) -> Result:
    """Return to what ran before this verb; mark the failed revision as never current."""
    good = failed.facts.current_revision
    target = next(t for t in run.targets if t.deployment.name == dep.name)
    node = failed.desired.node
    # Unrecorded files are put back only when they made a whole deployment (unit and env file); a lone
    # unit could not run without its env file, and this verb has replaced it either way.
    before = dict(failed.facts.files) if len(failed.facts.files) == 2 else None
    if good is not None:
        what = f"revision {good}"
    elif before:
        what = "the files that were there before (no revision recorded)"
    elif failed.facts.files:
        what = f"no deployment (only its {' and '.join(failed.facts.files)} file was there, which cannot run)"
    else:
        what = "no deployment (this verb created it)"
    reporter.event(run.name, dep.name, f"rolling back to {what}")
    try:
        if good is not None:
            desired = revision_desired(run, target, good, origin=f"restore of {good}")
        elif before:
            keys = failed.desired.secret_keys
            desired = render.from_revision(
                dep, run.host, before, secret_keys=keys, origin="restore", node=node
            )
        else:
            desired = render.absent(dep, run.host, node)
        fresh = replace(gather_host(run)[0][dep.name], pending=None)
        p = plan_target(host=run.name, deployment=dep.name, desired=desired, facts=fresh)
        # A restore returns to what was; it records nothing (the failed revision is still pending).
        p = replace(p, changes=tuple(c for c in p.changes if not isinstance(c, RecordRevision)))
        _converge(run, dep, p, reporter, gate=True, pending=[])
        if pending is not None:
            outcome = f"failed: {cause}"
            run.run(state.abandon(desired.layout.state_dir, pending, outcome, sudo=run.host.sudo))
    except OrchError as exc:
        msg = f"{cause}; rollback to {what} FAILED too: {exc}"
        return Result(run.name, dep.name, "failed", msg, journal=cause.journal)
    msg = f"{cause}; rolled back to {what}"
    return Result(run.name, dep.name, "rolled-back", msg, revision=good, journal=cause.journal)


def deployment(run: HostRun, name: str) -> Deployment:
    return next(t.deployment for t in run.targets if t.deployment.name == name)


def api_address(host: Host) -> str:
    return "127.0.0.1" if host.connection == "local" else host.address


def endpoint(host: Host, dep: Deployment, env: Mapping[str, str]) -> Endpoint:
    """Where the deployment answers, with the API key its env file gives the server (if any)."""
    api_key = env.get(secrets.API_KEY_VAR)
    return Endpoint(f"http://{api_address(host)}:{dep.port}", dep.served_name, api_key)


def gather_host(
    run: HostRun, *, with_preflight: bool = False
) -> tuple[dict[str, DeploymentFacts], tuple[Proc, ...], preflight.HostProbe | None]:
    """One round trip: the deployments' facts, the processes marked as orch's, and optionally what
    preflight judges (else ``probe_host`` reads it later, from the same facts).

    The script reads facts, then preflight's probes (without what the facts read already), then every
    vLLM version either asks, in one Python process per interpreter (``pyreads``).
    """
    queries = [fact_query(run.host, t.deployment, held=run.lock is not None) for t in run.targets]
    parts, asks = [facts.script(queries)], facts.asks(queries)
    if with_preflight:
        parts += [f"echo {PREFLIGHT_MARK.strip()}", _preflight_script(run)]
        asks += preflight.asks([t.deployment for t in run.targets])
    label = "gather facts and preflight probes" if with_preflight else "gather facts"
    script = "; ".join(filter(None, [*parts, pyreads.script(asks)]))
    body, _, versions = run.run(Command(script, sudo=run.host.sudo, label=label)).partition(pyreads.PY_MARK)
    head, _, tail = body.partition(PREFLIGHT_MARK)
    found = facts.parse(head + versions, runners.of(Layout.of(run.host, "")))
    marked = facts.marked(head)
    probe = _joined(tail + versions, found, marked) if with_preflight else None
    return found, marked, probe


def probe_host(run: HostRun) -> preflight.HostProbe:
    """Preflight's probes alone, a round trip after ``gather_host`` read the facts (``run.facts`` and
    ``run.marked``, which the probes then do not read again)."""
    asks = preflight.asks([t.deployment for t in run.targets])
    script = f"{_preflight_script(run)}; {pyreads.script(asks)}"
    out = run.run(Command(script, sudo=run.host.sudo, label="preflight probes"))
    body, _, versions = out.partition(pyreads.PY_MARK)
    return _joined(body + versions, run.facts, run.marked)


def _preflight_script(run: HostRun) -> str:
    peers = tuple(dict.fromkeys(p for t in run.targets if t.node for p in nodes.peers(t.node)))
    deps = [t.deployment for t in run.targets]
    return preflight.script(run.host, deps, peers=peers, after_facts=True)


def _joined(
    output: str, found: Mapping[str, DeploymentFacts], marked: tuple[Proc, ...]
) -> preflight.HostProbe:
    pids = {name: f.unit.main_pid for name, f in found.items()}
    return preflight.joined(preflight.parse(output), marked=marked, main_pids=pids)


def fact_query(host: Host, dep: Deployment, *, held: bool = False) -> facts.FactQuery:
    """What to read of ``dep`` (``held``: this verb holds its lock)."""
    spec = dep.fetch
    record = upload.MANIFEST if spec is None or spec.source == "upload" else hub.MARKER
    return facts.FactQuery(
        Layout.of(host, dep.name), dep.unit_name, dep.vllm, spec.dest if spec else None, record, held
    )


def journal_tail(run: HostRun, dep: Deployment, desired: Desired, lines: int = 40) -> str:
    """The unit's last log lines, secrets masked (a server may log its own arguments or environment)."""
    cmd = commands.logs(runners.of(desired.layout), dep.unit_name, sudo=run.host.sudo, lines=lines)
    try:
        text = run.transport.run(cmd, timeout=30, check=False).stdout
    except HostError:
        return ""
    return Masker.build(desired.secret_values).text(text)


def revision_desired(run: HostRun, target: Target, number: int, *, origin: str) -> Desired:
    """The desired state that revision ``number`` on this host describes, checked against its checksums."""
    name = target.deployment.name
    layout = Layout.of(run.host, name)
    files = state.parse_revision(run.run(state.read_revision(layout.state_dir, number, sudo=run.host.sudo)))
    contents = revision_contents(files)
    if len(contents) != 2:
        raise RevisionError(f"{run.name}: {name} has no revision {number}, or its files are missing")
    recorded = (state.json_object(files.get("manifest.json", "")) or {}).get("files", {})
    for role, text in contents.items():
        if recorded.get(role) != render.digest(text):
            what = REVISION_FILES[role]
            raise RevisionError(
                f"{run.name}: {name} revision {number} is damaged: {what} does not match its checksum"
            )
    return render.from_revision(target.deployment, run.host, contents, origin=origin, node=target.node)
