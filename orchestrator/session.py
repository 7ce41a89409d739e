"""The fixed stages of every verb that changes hosts, across hosts in parallel.

connect → lock (changing verbs) → gather facts (one round trip per host) → desired state →
plan → (the CLI confirms) → execute each target (``converge``) → release. ``apply``,
``rollback`` and ``destroy`` differ only in where the desired state comes from.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from . import __version__, failpoints, multinode, rollout
from .converge import api_address, deployment, endpoint, gather_host, journal_tail, revision_desired
from .core import nodes, render
from .core.layout import Layout
from .core.load import Loaded, Target
from .core.render import Desired
from .core.sources import templates_for
from .errors import HostError, OrchError, RevisionError
from .facts import DeploymentFacts
from .host import commands, runners, state
from .hostrun import HostRun, QuietReporter, Reporter, Result, as_error, parallel
from .observe import preflight
from .observe.gpu import Check
from .plan import TargetPlan, plan_target
from .provision import hub, upload
from .transport import Result as CommandResult
from .transport import connect

__all__ = [
    "HostRun",
    "LockError",
    "Result",
    "Session",
    "api_address",
    "deployment",
    "endpoint",
    "journal_tail",
    "parallel",
]


DesiredOf = Callable[[HostRun, Target], Desired]
R = TypeVar("R")


class LockError(OrchError):
    """Another verb holds a deployment's lock on a host (names the holder)."""


class Session:
    """Connections to the hosts of some targets, for the length of one verb."""

    def __init__(self, loaded: Loaded, targets: list[Target], *, reporter: Reporter | None = None) -> None:
        self.loaded = loaded
        self.reporter = reporter or QuietReporter()
        self.runs: dict[str, HostRun] = {}
        self.failed: list[Result] = []  # targets whose plan could not be made
        self._rank = {(t.host_name, t.deployment.name): i for i, t in enumerate(targets)}
        for t in targets:
            if t.host_name not in self.runs:
                transport = connect(
                    t.host_name, t.host, inventory=loaded.inventory, inventory_path=loaded.inventory_path
                )
                self.runs[t.host_name] = HostRun(t.host_name, t.host, [], transport)
            self.runs[t.host_name].targets.append(t)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        def end(run: HostRun) -> None:
            run.release()
            run.transport.close()

        parallel(self.runs.values(), end)

    def live(self) -> list[HostRun]:
        return [r for r in self.runs.values() if r.error is None]

    def each(self, fn: Callable[[HostRun], None]) -> None:
        """``fn`` on every live host at once; an exception marks that host failed and spares the others."""

        def call(run: HostRun) -> list[None]:
            fn(run)
            return []

        self.collect(call)

    def collect(self, fn: Callable[[HostRun], list[R]]) -> list[R]:
        """``fn`` on every live host at once; their lists joined in host order (a failed host adds none)."""
        runs, values = self.live(), []
        for run, outcome in zip(runs, parallel(runs, fn), strict=True):
            if isinstance(outcome, BaseException):
                run.error = as_error(run.name, outcome)
            else:
                values += outcome
        return values

    def lock(self, verb: str, *, wait_s: float = 0) -> None:
        """Take every target's lock on its host, for the rest of the session, before anything is read.

        Raises LockError naming the holders when another verb holds any (after releasing what was taken);
        an unreachable host is marked failed like in ``gather``.
        """
        holder = state.Holder(
            f"{getpass.getuser()}@{socket.gethostname()}",
            os.getpid(),
            verb,
            datetime.now(UTC).astimezone().isoformat(timespec="seconds"),
        )
        busy: list[str] = []

        def one(run: HostRun) -> None:
            dirs = [Layout.of(run.host, t.deployment.name).state_dir for t in run.targets]
            command = state.lock(dirs, holder=holder, wait_s=wait_s, sudo=run.host.sudo)
            held = run.transport.hold(command, until=state.LOCKED, timeout=wait_s * len(dirs) + 60)
            if not isinstance(held, CommandResult):
                run.lock = held
            elif held.exit_code == state.LOCK_CONFLICT:
                busy.extend(_busy(run, held.stdout, wait_s))
            else:
                stderr = held.stderr.strip().splitlines()[-1:] or [f"exit code {held.exit_code}"]
                raise HostError(run.name, f"cannot take the lock: {stderr[0]}")

        # Every connection at once (the handshakes are the slow part), then the first host's lock alone,
        # then the rest together: two verbs started at once over the same hosts meet on the first one,
        # so exactly one goes on (the other fails, or waits, there).
        self.each(lambda run: run.transport.open())
        ordered = sorted(self.live(), key=lambda r: r.name)
        first = ordered[0] if ordered else None
        if first is not None:
            try:
                one(first)
            except OrchError as exc:
                first.error = exc
        if not busy:
            self.each(lambda run: None if run is first else one(run))
        failpoints.reach("after-lock")
        if busy:
            for run in self.runs.values():
                run.release()
            raise LockError("; ".join(busy))

    def gather(self, *, with_preflight: bool = False) -> None:
        """Facts (and preflight's) of every host in one command each, in parallel.

        A failing host is marked; the others go on.
        """

        def one(run: HostRun) -> None:
            run.facts, run.probe = gather_host(run, with_preflight=with_preflight)

        self.each(one)

    def notices(self) -> list[tuple[str, str, str]]:
        """What a person must know before anything else: interrupted verbs, and verbs running now."""
        out: list[tuple[str, str, str]] = []
        for run in self.live():
            for name, f in run.facts.items():
                if f.pending is not None:
                    out.append((run.name, name, f.pending.describe()))
                if f.locked_by is not None and run.lock is None:
                    out.append((run.name, name, f"in progress now: {f.locked_by.describe()}"))
        return out

    def preflight(self) -> dict[tuple[str, str], list[Check]]:
        """Preflight verdicts per (host, deployment), from what ``gather`` read."""
        out = {
            (run.name, t.deployment.name): preflight.checks(
                nodes.view(t.deployment, t.node), run.probe, runner=run.host.runner
            )
            for run in self.live()
            if run.probe is not None
            for t in run.targets
        }
        for key, more in multinode.checks(self.runs, self.loaded.playbook.deployments).items():
            out[key] = [*out.get(key, []), *more]
        return out

    def plans(self, desired_of: DesiredOf, *, meta: dict[str, Any]) -> list[TargetPlan]:
        """A plan per target, in the targets' order; a target that cannot be planned fails on its own."""
        runs = self.live()

        def one(run: HostRun) -> list[TargetPlan | Result]:
            out: list[TargetPlan | Result] = []
            for t in run.targets:
                try:
                    out.append(plan_one(run, t, desired_of, meta=meta))
                except OrchError as exc:
                    out.append(Result(run.name, t.deployment.name, "error", str(exc)))
            return out

        plans: list[TargetPlan] = []
        for run, outcome in zip(runs, parallel(runs, one), strict=True):
            if isinstance(outcome, BaseException):
                run.error = as_error(run.name, outcome)
                continue
            plans += [p for p in outcome if isinstance(p, TargetPlan)]
            self.failed += [r for r in outcome if isinstance(r, Result)]
        targets = [t for r in self.runs.values() for t in r.targets]
        ordered = sorted(plans, key=lambda p: self._rank[(p.host, p.deployment)])
        plans, apart = multinode.together(multinode.align(ordered), targets)
        self.failed += apart
        return plans

    def host_errors(self) -> list[Result]:
        """A result for each target that failed before any change (its host, or its own planning)."""
        return [
            Result(run.name, t.deployment.name, "error", str(run.error))
            for run in self.runs.values()
            if run.error is not None
            for t in run.targets
        ] + self.failed

    def execute(self, plans: list[TargetPlan], *, gate: bool = True, restore: bool = True) -> list[Result]:
        """Carry out the plans (rollout.py: fleets in batches behind a router); results in plan order."""
        return rollout.run(
            self.runs,
            plans,
            deployments={d.name: d for d in self.loaded.playbook.deployments},
            hosts=self.loaded.inventory.hosts,
            reporter=self.reporter,
            gate=gate,
            restore=restore,
        )


def _busy(run: HostRun, output: str, wait_s: float) -> list[str]:
    names = {Layout.of(run.host, t.deployment.name).state_dir: t.deployment.name for t in run.targets}
    waited = f" after waiting {wait_s:g}s" if wait_s > 0 else ""
    hint = "" if wait_s > 0 else "; wait for it with --lock-timeout DURATION"
    out = []
    for path, holder in state.parse_busy(output):
        name = next((n for d, n in names.items() if path.endswith(d.removeprefix("~/"))), path)
        who = holder.describe() if holder else "another orch verb"
        out.append(f"{run.name}: {name} is locked by {who}{waited}{hint}")
    return out or [f"{run.name}: locked by another orch verb{waited}{hint}"]


def plan_one(run: HostRun, t: Target, desired_of: DesiredOf, *, meta: dict[str, Any]) -> TargetPlan:
    desired = desired_of(run, t)
    known = run.facts.get(t.deployment.name, DeploymentFacts())
    if run.lock is not None:
        known = replace(known, locked_by=None)  # that is this verb
    known = replace(known, hub_listing=hub_listing(run, desired, known))
    return plan_target(host=run.name, deployment=t.deployment.name, desired=desired, facts=known, meta=meta)


def hub_listing(run: HostRun, desired: Desired, known: DeploymentFacts) -> hub.Listing | None:
    """Ask the hub, from the host, what a due download holds.

    None when no download is due, or when vLLM (whose Python runs the hub client) is not there yet.
    """
    spec = desired.fetch
    if spec is None or not hub.is_hub(spec) or not hub.needs_fetch(spec, known.model_files):
        return None
    if desired.vllm is not None and not known.vllm_version:
        return None  # the venv whose Python runs the hub client does not exist yet
    command = hub.command("probe", desired, sudo=run.host.sudo)
    answer = hub.outcome(run.transport.run(command, timeout=300, check=False).stdout.splitlines())
    if answer.kind != "listing":
        raise HostError(run.name, f"model {spec.describe()}: {answer.message}")
    return answer.listing()


def renderer(loaded: Loaded, secrets_of: dict[str, dict[str, str]]) -> Callable[[Target, str], Desired]:
    """The desired state from the playbook: templates rendered on the controller (given the vLLM version
    found on the host, which decides a multi-node deployment's backend when it says ``auto``)."""
    sources = {d.name: templates_for(loaded, d) for d in loaded.playbook.deployments}
    uploads = {
        d.name: upload.local_spec(loaded.resolve(d.fetch.local), d.fetch.dest)
        for d in loaded.playbook.deployments
        if d.fetch is not None and d.fetch.local is not None
    }

    def render_target(target: Target, version: str = "") -> Desired:
        dep = target.deployment
        return render.render(
            dep,
            target.host,
            secrets=secrets_of[dep.name],
            templates=sources[dep.name],
            upload=uploads.get(dep.name),
            node=nodes.resolved(target.node, version) if target.node else None,
        )

    return render_target


def rendered(loaded: Loaded, secrets_of: dict[str, dict[str, str]]) -> DesiredOf:
    render_target = renderer(loaded, secrets_of)

    def desired_of(run: HostRun, target: Target) -> Desired:
        return render_target(target, multinode.found_version(run, target.deployment) if target.node else "")

    return desired_of


def manifest_meta(loaded: Loaded, **extra: Any) -> dict[str, Any]:
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "by": f"{getpass.getuser()}@{socket.gethostname()}",
        "orch_version": __version__,
        "playbook": str(loaded.path),
        "playbook_digest": loaded.digest,
        **extra,
    }


def from_revisions(to: int | None) -> DesiredOf:
    """The desired state of a rollback: revision ``to``, or the last one before the current that served."""

    def desired_of(run: HostRun, target: Target) -> Desired:
        name = target.deployment.name
        known = run.facts.get(name, DeploymentFacts())
        current = known.current_revision
        if current is None:
            raise RevisionError(f"{run.name}: {name} has no recorded revision to roll back from")
        if to is not None and to in known.never_current:
            raise RevisionError(f"{run.name}: {name} revision {to} never served (failed or interrupted)")
        earlier = [n for n in range(current - 1, 0, -1) if n not in known.never_current]
        number = to if to is not None else (earlier[0] if earlier else 0)
        if number < 1:
            raise RevisionError(f"{run.name}: {name} has no revision before {current}")
        return revision_desired(run, target, number, origin=f"rollback to {number}")

    return desired_of


def revisions(run: HostRun, t: Target) -> tuple[list[state.RevisionInfo], state.StateFacts]:
    """The revisions recorded for one deployment on this host, and its current and pending ones."""
    layout = Layout.of(run.host, t.deployment.name)
    return state.parse_revisions(run.run(state.list_revisions(layout.state_dir, sudo=run.host.sudo)))


LineSink = Callable[[str, str, str], None]  # (host, deployment, line)


def logs(
    loaded: Loaded, targets: list[Target], *, lines: int, follow: bool, on_line: LineSink
) -> list[Result]:
    """Each deployment's log lines, to ``on_line``; with ``follow``, until interrupted."""

    def one(run: HostRun) -> None:
        for t in run.targets:
            runner = runners.of(Layout.of(run.host, t.deployment.name))
            unit, sudo = t.deployment.unit_name, run.host.sudo
            cmd = commands.logs(runner, unit, sudo=sudo, lines=lines, follow=follow)
            run.transport.stream(cmd, _to(on_line, run.name, t.deployment.name))

    with Session(loaded, targets) as session:
        if follow:
            _follow(session, one)
        else:
            session.each(one)
        return session.host_errors()


def _to(sink: LineSink, host: str, deployment: str) -> Callable[[str], None]:
    def line(text: str) -> None:
        sink(host, deployment, text)

    return line


def _follow(session: Session, fn: Callable[[HostRun], None]) -> None:
    """Stream from every host until interrupted (one thread per host; Ctrl-C ends them all)."""
    threads = [threading.Thread(target=_guarded(fn, run), daemon=True) for run in session.live()]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.2)


def _guarded(fn: Callable[[HostRun], None], run: HostRun) -> Callable[[], None]:
    def call() -> None:
        try:
            fn(run)
        except OrchError as exc:
            run.error = exc

    return call
