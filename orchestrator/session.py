"""The fixed stages of every verb that changes hosts, across hosts in parallel.

connect → lock (changing verbs) → gather facts (one round trip per host) → desired state →
plan → preflight's probes where a plan changes something (a second round trip there) → (the CLI
confirms) → execute each target (``converge``) → release. ``apply``,
``rollback`` and ``destroy`` differ only in where the desired state comes from.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from . import __version__, failpoints, multinode, rollout
from .converge import (
    api_address,
    deployment,
    endpoint,
    gather_host,
    journal_tail,
    probe_host,
    revision_desired,
)
from .core import nodes
from .core.layout import Layout
from .core.load import Loaded, Target
from .core.masking import env_secrets
from .core.quoting import parse_env
from .core.render import Desired
from .core.secrets import refs
from .desired import renderer
from .errors import HostError, OrchError, RevisionError
from .facts import DeploymentFacts
from .host import state
from .hostrun import HostRun, QuietReporter, Reporter, Result, as_error, parallel
from .observe import preflight
from .observe.gpu import Check
from .plan import TargetPlan, plan_target
from .provision import hub
from .trace import Trace
from .transport import Observed, connect
from .transport import Result as CommandResult

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

    def __init__(
        self,
        loaded: Loaded,
        targets: list[Target],
        *,
        reporter: Reporter | None = None,
        trace: Trace | None = None,
    ) -> None:
        self.loaded = loaded
        self.reporter = reporter or QuietReporter()
        self.trace = trace
        self.runs: dict[str, HostRun] = {}
        self.failed: list[Result] = []  # targets whose plan could not be made
        self._rank = {(t.host_name, t.deployment.name): i for i, t in enumerate(targets)}
        for t in targets:
            if t.host_name not in self.runs:
                transport = connect(
                    t.host_name, t.host, inventory=loaded.inventory, inventory_path=loaded.inventory_path
                )
                if trace is not None:
                    transport = Observed(transport, trace)
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

    def gather(self, *, with_preflight: bool = False, to_plan: bool = False) -> None:
        """Facts of every host in one command each, in parallel; ``with_preflight``: preflight's probes in
        the same command. ``to_plan``: only on the hosts whose plan needs them (a multi-node backend that
        the vLLM found there decides); ``probe`` reads them where the plans change something.

        A failing host is marked; the others go on.
        """

        def one(run: HostRun) -> None:
            early = with_preflight or (to_plan and any(map(multinode.waits_on_version, run.targets)))
            run.facts, run.marked, run.probe = gather_host(run, with_preflight=early)
            for t in run.targets:  # what the host's env file holds is hidden from -vv from now on
                env = run.facts.get(t.deployment.name, DeploymentFacts()).files.get("env", "")
                self._hide(env_secrets(parse_env(env), frozenset(refs(t.deployment))))

        self.each(one)

    def probe(self, plans: list[TargetPlan]) -> list[TargetPlan]:
        """Preflight's probes, a second round trip, on the hosts not probed yet where a plan changes
        something (every node of a multi-node deployment that does): an unchanged target is not judged.

        Returns the plans less those of a host whose probes failed (marked failed, as in ``gather``) and
        of the other nodes of its multi-node deployments.
        """
        changed = {(p.host, p.deployment) for p in plans if p.changed}
        spread = {name for _, name in changed}
        hosts = {
            run.name
            for run in self.live()
            for t in run.targets
            if (run.name, t.deployment.name) in changed or (t.node and t.deployment.name in spread)
        }

        def one(run: HostRun) -> None:
            if run.probe is None and run.name in hosts:
                run.probe = probe_host(run)

        self.each(one)
        live = {run.name for run in self.live()}
        return self._together([p for p in plans if p.host in live])

    def _together(self, plans: list[TargetPlan]) -> list[TargetPlan]:
        """The plans of the deployments whose every node was planned; the other nodes fail (``failed``)."""
        kept, apart = multinode.together(plans, [t for r in self.runs.values() for t in r.targets])
        self.failed += apart
        return kept

    def _hide(self, values: Iterable[str]) -> None:
        if self.trace is not None:
            self.trace.hide(values)

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

    def preflight(self, *, reap: bool = False) -> dict[tuple[str, str], list[Check]]:
        """Preflight verdicts per (host, deployment), from what ``gather`` read (``reap``: the verb ends
        each deployment's leftover processes before it starts it); a multi-node deployment's nodes are
        also checked against each other."""
        out = {
            (run.name, t.deployment.name): preflight.checks(
                nodes.view(t.deployment, t.node),
                run.probe,
                host=run.host,
                peers=[nodes.view(p.deployment, p.node) for p in run.targets],
                reap=reap,
            )
            for run in self.live()
            if run.probe is not None
            for t in run.targets
        }
        for key, more in multinode.checks(self.runs, self.loaded.playbook.deployments).items():
            out[key] = [*out.get(key, []), *more]
        return out

    def plans(self, desired_of: DesiredOf, *, meta: dict[str, Any], reap: bool = False) -> list[TargetPlan]:
        """A plan per target, in the targets' order; a target that cannot be planned fails on its own.

        ``reap``: the plans also end each deployment's processes that outlived a stop.
        """
        runs = self.live()

        def seen(run: HostRun, t: Target) -> Desired:
            desired = desired_of(run, t)
            self._hide(desired.secret_values)  # before any command could carry them
            return desired

        def one(run: HostRun) -> list[TargetPlan | Result]:
            out: list[TargetPlan | Result] = []
            for t in run.targets:
                try:
                    out.append(plan_one(run, t, seen, meta=meta, reap=reap))
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
        ordered = sorted(plans, key=lambda p: self._rank[(p.host, p.deployment)])
        return self._together(multinode.align(ordered))

    def host_errors(self) -> list[Result]:
        """A result for each target that failed before any change (its host, or its own planning); a
        target that failed on its own before its host did (its probes, after the plans) is listed once."""
        own = {(r.host, r.deployment) for r in self.failed}
        return [
            Result(run.name, t.deployment.name, "error", str(run.error))
            for run in self.runs.values()
            if run.error is not None
            for t in run.targets
            if (run.name, t.deployment.name) not in own
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


def plan_one(
    run: HostRun, t: Target, desired_of: DesiredOf, *, meta: dict[str, Any], reap: bool = False
) -> TargetPlan:
    desired = desired_of(run, t)
    known = run.facts.get(t.deployment.name, DeploymentFacts())
    if run.lock is not None:
        known = replace(known, locked_by=None)  # that is this verb
    known = replace(known, hub_listing=hub_listing(run, desired, known))
    return plan_target(
        host=run.name, deployment=t.deployment.name, desired=desired, facts=known, meta=meta, reap=reap
    )


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
