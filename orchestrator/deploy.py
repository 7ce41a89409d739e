"""The fixed stages of every verb that changes hosts, across hosts in parallel.

connect → gather facts (one round trip per host) → desired state → plan →
(the CLI confirms) → execute → readiness gate → record a revision, or restore
the last good revision when the gate fails. ``apply`` and ``rollback`` differ
only in where the desired state comes from.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from . import __version__, commands, facts, hub, preflight, render, secrets, upload
from .apply import record, revision_contents, run_changes
from .errors import GateError, HostError, OrchError, RevisionError
from .facts import DeploymentFacts, UnitState
from .gpu import Check
from .health import Endpoint, Outcome, Probe, wait_ready
from .load import Loaded, Target
from .model import Deployment, Host
from .plan import TargetPlan, plan_target
from .render import Desired, TemplateSource, TemplateSources
from .transport import Transport, connect

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
T = TypeVar("T")


class Reporter(Protocol):
    def event(self, host: str, deployment: str, text: str) -> None: ...

    def gate(self, host: str, deployment: str, elapsed: float, state: UnitState, probe: Probe) -> None: ...

    def progress(self, host: str, deployment: str, what: str, done: int, total: int) -> None: ...


class QuietReporter:
    def event(self, host: str, deployment: str, text: str) -> None:
        return None

    def progress(self, host: str, deployment: str, what: str, done: int, total: int) -> None:
        return None

    def gate(self, host: str, deployment: str, elapsed: float, state: UnitState, probe: Probe) -> None:
        return None


@dataclass
class HostRun:
    """One host's connection, its targets, and what was learnt about it."""

    name: str
    host: Host
    targets: list[Target]
    transport: Transport
    facts: dict[str, DeploymentFacts] = field(default_factory=dict)
    probe: preflight.HostProbe | None = None
    error: OrchError | None = None

    def run(self, command: commands.Command, *, timeout: float | None = 120) -> str:
        return self.transport.run(command, timeout=timeout).stdout


@dataclass(frozen=True)
class Result:
    """How one deployment on one host ended."""

    host: str
    deployment: str
    status: str  # unchanged | applied | failed | rolled-back | error
    message: str = ""
    revision: int | None = None
    journal: str = ""
    elapsed_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("unchanged", "applied")


DesiredOf = Callable[[HostRun, Target], Desired]


def parallel(items: Iterable[T], fn: Callable[[T], Any]) -> None:
    """Run ``fn`` on every item at once; each ``fn`` handles its own errors."""
    batch = list(items)
    if not batch:
        return
    with ThreadPoolExecutor(max_workers=min(32, len(batch))) as pool:
        for future in [pool.submit(fn, item) for item in batch]:
            future.result()


class Session:
    """Connections to the hosts of some targets, for the length of one verb."""

    def __init__(self, loaded: Loaded, targets: list[Target], *, reporter: Reporter | None = None) -> None:
        self.loaded = loaded
        self.reporter = reporter or QuietReporter()
        self.runs: dict[str, HostRun] = {}
        self.failed: list[Result] = []  # targets whose plan could not be made
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
        for run in self.runs.values():
            run.transport.close()

    def live(self) -> list[HostRun]:
        return [r for r in self.runs.values() if r.error is None]

    def gather(self, *, with_preflight: bool = False) -> None:
        """Facts (and preflight's) of every host in one command each, in parallel.

        A failing host is marked; the others go on.
        """

        def one(run: HostRun) -> None:
            try:
                run.facts, run.probe = gather_host(run, with_preflight=with_preflight)
            except OrchError as exc:
                run.error = exc

        parallel(self.live(), one)

    def preflight(self) -> dict[tuple[str, str], list[Check]]:
        """Preflight verdicts per (host, deployment), from what ``gather`` read."""
        return {
            (run.name, t.deployment.name): preflight.checks(t.deployment, run.probe, runner=run.host.runner)
            for run in self.live()
            if run.probe is not None
            for t in run.targets
        }

    def plans(self, desired_of: DesiredOf, *, meta: dict[str, Any]) -> list[TargetPlan]:
        """A plan per target; a target that cannot be planned becomes an error of its own."""
        out: list[TargetPlan] = []

        def one(run: HostRun) -> None:
            for t in run.targets:
                try:
                    out.append(plan_one(run, t, desired_of, meta=meta))
                except OrchError as exc:
                    self.failed.append(Result(run.name, t.deployment.name, "error", str(exc)))

        parallel(self.live(), one)
        order = {(t.host_name, t.deployment.name): i for i, t in enumerate(self._targets())}
        return sorted(out, key=lambda p: order[(p.host, p.deployment)])

    def _targets(self) -> list[Target]:
        return [t for run in self.runs.values() for t in run.targets]

    def host_errors(self) -> list[Result]:
        """A result for each target that failed before any change (its host, or its own planning)."""
        return [
            Result(run.name, t.deployment.name, "error", str(run.error))
            for run in self.runs.values()
            if run.error is not None
            for t in run.targets
        ] + self.failed

    def execute(self, plans: list[TargetPlan], *, gate: bool = True, restore: bool = True) -> list[Result]:
        """Carry out the plans, host by host in parallel; restore the last good revision on failure."""
        results: list[Result] = []
        by_host: dict[str, list[TargetPlan]] = {}
        for p in plans:
            by_host.setdefault(p.host, []).append(p)

        def one(host: str) -> None:
            run = self.runs[host]
            for p in by_host[host]:
                results.append(self._execute_one(run, p, gate=gate, restore=restore))

        parallel(by_host, one)
        return results

    def _execute_one(self, run: HostRun, p: TargetPlan, *, gate: bool, restore: bool) -> Result:
        dep = _deployment(run, p.deployment)
        if not p.changed:
            return Result(run.name, dep.name, "unchanged", revision=p.facts.current_revision)
        try:
            return self._converge(run, dep, p, gate=gate)
        except GateError as exc:
            self.reporter.event(run.name, dep.name, f"FAILED: {exc}")
            if not restore:
                return Result(run.name, dep.name, "failed", str(exc), journal=exc.journal)
            return self._restore(run, dep, p, exc)
        except OrchError as exc:
            return Result(run.name, dep.name, "failed", str(exc))

    def _converge(self, run: HostRun, dep: Deployment, p: TargetPlan, *, gate: bool) -> Result:
        for change in p.changes:
            self.reporter.event(run.name, dep.name, change.summary())
        applied = run_changes(
            run.transport,
            p,
            sudo=run.host.sudo,
            progress=lambda what, done, total: self.reporter.progress(run.name, dep.name, what, done, total),
        )
        if applied.leftovers:
            self.reporter.event(
                run.name, dep.name, f"WARNING: processes outlived the stop: {' '.join(applied.leftovers)}"
            )
        elapsed = None
        if gate and not dep.readiness.enabled and applied.restarted:
            self.reporter.event(run.name, dep.name, "readiness gate disabled (readiness.enabled: false)")
        if gate and dep.readiness.enabled and p.desired.present and applied.restarted:
            outcome = self._gate(run, dep, p.desired, applied.after)
            elapsed = outcome.elapsed_s
        revision = record(run.transport, p, sudo=run.host.sudo)
        if revision is not None:
            self.reporter.event(run.name, dep.name, f"recorded revision {revision}")
        return Result(
            run.name, dep.name, "applied", revision=revision or p.facts.current_revision, elapsed_s=elapsed
        )

    def _gate(self, run: HostRun, dep: Deployment, desired: Desired, baseline: UnitState) -> Outcome:
        env_file = desired.file("env")
        ep = endpoint(run.host, dep, env_file.content if env_file else "")
        runner = desired.layout.runner
        state_cmd = commands.unit_state(runner, dep.unit_name, sudo=run.host.sudo)

        def unit_state() -> UnitState:
            return facts.parse_unit_state(run.run(state_cmd, timeout=30), runner)

        outcome = wait_ready(
            ep,
            timeout_s=dep.readiness.timeout_s,
            interval_s=dep.readiness.interval_s,
            request_timeout_s=dep.readiness.request_timeout_s,
            unit_state=unit_state,
            baseline=baseline,
            on_progress=lambda e, s, pr: self.reporter.gate(run.name, dep.name, e, s, pr),
        )
        if not outcome.ready:
            raise GateError(
                run.name, f"{dep.name}: {outcome.reason}", journal=journal_tail(run, dep, desired)
            )
        self.reporter.event(run.name, dep.name, f"ready after {outcome.elapsed_s:.1f}s")
        return outcome

    def _restore(self, run: HostRun, dep: Deployment, failed: TargetPlan, cause: GateError) -> Result:
        """Return to the revision that was current before the failed change (or to nothing)."""
        good = failed.facts.current_revision
        target = next(t for t in run.targets if t.deployment.name == dep.name)
        what = f"revision {good}" if good is not None else "no deployment (first apply failed)"
        self.reporter.event(run.name, dep.name, f"rolling back to {what}")
        try:
            desired = (
                revision_desired(run, target, good, origin=f"restore of {good}")
                if good is not None
                else render.absent(dep, run.host)
            )
            fresh = gather_host(run)[0][dep.name]
            p = plan_target(host=run.name, deployment=dep.name, desired=desired, facts=fresh)
            self._converge(run, dep, p, gate=True)
        except OrchError as exc:
            msg = f"{cause}; rollback to {what} FAILED too: {exc}"
            return Result(run.name, dep.name, "failed", msg, journal=cause.journal)
        msg = f"{cause}; rolled back to {what}"
        return Result(run.name, dep.name, "rolled-back", msg, revision=good, journal=cause.journal)


def _deployment(run: HostRun, name: str) -> Deployment:
    return next(t.deployment for t in run.targets if t.deployment.name == name)


def api_address(host: Host) -> str:
    return "127.0.0.1" if host.connection == "local" else host.address


def endpoint(host: Host, dep: Deployment, env_text: str) -> Endpoint:
    """Where the deployment answers, with the API key its env file gives the server (if any)."""
    api_key = render.parse_env(env_text).get(secrets.API_KEY_VAR)
    return Endpoint(f"http://{api_address(host)}:{dep.port}", dep.served_name, api_key)


PREFLIGHT_MARK = f"{commands.MARK}preflight\n"


def gather_host(
    run: HostRun, *, with_preflight: bool = False
) -> tuple[dict[str, DeploymentFacts], preflight.HostProbe | None]:
    """One round trip: the deployments' facts, and optionally what preflight judges."""
    command = facts.gather([fact_query(run.host, t.deployment) for t in run.targets], sudo=run.host.sudo)
    if with_preflight:
        extra = preflight.script(run.host, [t.deployment for t in run.targets])
        command = replace(command, script=f"{command.script}; echo {PREFLIGHT_MARK.strip()}; {extra}")
    head, _, tail = run.run(command).partition(PREFLIGHT_MARK)
    runner = render.Layout.of(run.host, "").runner
    return facts.parse(head, runner), preflight.parse(tail) if with_preflight else None


def fact_query(host: Host, dep: Deployment) -> facts.FactQuery:
    spec = dep.fetch
    record = upload.MANIFEST if spec is None or spec.source == "upload" else hub.MARKER
    return facts.FactQuery(
        render.Layout.of(host, dep.name), dep.unit_name, dep.vllm, spec.dest if spec else None, record
    )


def plan_one(run: HostRun, t: Target, desired_of: DesiredOf, *, meta: dict[str, Any]) -> TargetPlan:
    desired = desired_of(run, t)
    known = run.facts.get(t.deployment.name, DeploymentFacts())
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


def journal_tail(run: HostRun, dep: Deployment, desired: Desired, lines: int = 40) -> str:
    cmd = commands.logs(desired.layout.runner, dep.unit_name, sudo=run.host.sudo, lines=lines)
    try:
        return run.transport.run(cmd, timeout=30, check=False).stdout
    except HostError:
        return ""


def revision_desired(run: HostRun, target: Target, number: int, *, origin: str) -> Desired:
    layout = render.Layout.of(run.host, target.deployment.name)
    files = facts.parse_revision(
        run.run(commands.read_revision(layout.state_dir, number, sudo=run.host.sudo))
    )
    contents = revision_contents(files)
    if len(contents) != 2:
        raise RevisionError(f"{run.name}: {target.deployment.name} has no revision {number}")
    keys = frozenset(render.parse_env(contents["env"]))
    return render.from_revision(target.deployment, run.host, contents, secret_keys=keys, origin=origin)


def templates_for(loaded: Loaded, dep: Deployment) -> TemplateSources:
    def read(override: str | None, default: str) -> TemplateSource:
        path = loaded.resolve(override) if override else TEMPLATE_DIR / default
        return TemplateSource(str(path), path.read_text())

    return TemplateSources(
        unit=read(dep.templates.unit, "vllm.service.j2"),
        env=read(dep.templates.env, "vllm.env.j2"),
        supervisor=read(dep.templates.supervisor, "vllm.supervisor.j2"),
    )


def renderer(loaded: Loaded, secrets_of: dict[str, dict[str, str]]) -> Callable[[Target], Desired]:
    """The desired state from the playbook: templates rendered on the controller."""
    sources = {d.name: templates_for(loaded, d) for d in loaded.playbook.deployments}
    uploads = {
        d.name: upload.local_spec(loaded.resolve(d.fetch.local), d.fetch.dest)
        for d in loaded.playbook.deployments
        if d.fetch is not None and d.fetch.local is not None
    }

    def render_target(target: Target) -> Desired:
        dep = target.deployment
        return render.render(
            dep,
            target.host,
            secrets=secrets_of[dep.name],
            templates=sources[dep.name],
            upload=uploads.get(dep.name),
        )

    return render_target


def rendered(loaded: Loaded, secrets_of: dict[str, dict[str, str]]) -> DesiredOf:
    render_target = renderer(loaded, secrets_of)
    return lambda run, target: render_target(target)


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
    """The desired state of a rollback: revision ``to``, or the one before the current."""

    def desired_of(run: HostRun, target: Target) -> Desired:
        name = target.deployment.name
        current = run.facts.get(name, DeploymentFacts()).current_revision
        if current is None:
            raise RevisionError(f"{run.name}: {name} has no recorded revision to roll back from")
        number = to if to is not None else current - 1
        if number < 1:
            raise RevisionError(f"{run.name}: {name} has no revision before {current}")
        return revision_desired(run, target, number, origin=f"rollback to {number}")

    return desired_of
