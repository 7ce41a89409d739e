"""What the read-only verbs show, as data: status rows, revision rows, logs, /metrics, one target's endpoint.

Each function reads the hosts through a Session (or the servers over HTTP) and returns plain rows;
``cli`` only formats them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from .core.fleet import worker_url
from .core.layout import Layout
from .core.load import Loaded, Target
from .core.model import Deployment
from .core.quoting import parse_env
from .errors import AnswerError, ConfigError, OrchError
from .facts import DeploymentFacts
from .host import commands, runners, state
from .hostrun import HostRun, Result
from .observe import health, httpio, metrics, preflight
from .observe.probe import Endpoint, Probe
from .observe.router import Router
from .session import Session, api_address, endpoint, revisions
from .trace import Trace

Row = dict[str, Any]


def fleets(loaded: Loaded, rows: list[Row]) -> list[Row]:
    """Per deployment with a router: how many replicas run which revision, and which the router routes to."""
    out: list[Row] = []
    for dep in loaded.playbook.deployments:
        if dep.router is None:
            continue
        hosts = [t.host_name for t in loaded.targets(deployment=dep.name)]
        revisions: dict[str, list[str]] = {}
        for r in rows:
            if r["deployment"] == dep.name and "error" not in r:
                revisions.setdefault(str(r["revision"] or "-"), []).append(r["host"])
        front = Router(f"http://{api_address(loaded.inventory.hosts[dep.router.host])}:{dep.router.port}")
        row: Row = {"deployment": dep.name, "replicas": len(hosts), "revisions": revisions}
        row |= {"router": f"{dep.name}-router", "router_url": front.base_url}
        try:
            listed = set(front.workers())
        except AnswerError as exc:
            out.append(row | {"in_router": None, "router_error": str(exc)})
            continue
        urls = {h: worker_url(api_address(loaded.inventory.hosts[h]), dep.port) for h in hosts}
        out.append(row | {"in_router": [h for h in hosts if urls[h] in listed], "router_error": None})
    return out


def status_rows(
    loaded: Loaded, targets: list[Target], *, trace: Trace | None = None
) -> tuple[list[Row], list[Result]]:
    """One row per target, in the targets' order; a host that failed adds an error row per target."""
    with Session(loaded, targets, trace=trace) as session:
        session.gather(with_preflight=True)
        rows = session.collect(lambda run: [status_row(run, t, trace=trace) for t in run.targets])
        errors = session.host_errors()
    order = {(t.host_name, t.deployment.name): i for i, t in enumerate(targets)}
    rows.sort(key=lambda r: order[(r["host"], r["deployment"])])
    rows += [{"host": e.host, "deployment": e.deployment, "error": e.message} for e in errors]
    return rows, errors


def status_row(run: HostRun, t: Target, *, trace: Trace | None = None) -> dict[str, Any]:
    f = run.facts.get(t.deployment.name, DeploymentFacts())
    ready: Probe | None = None
    if f.unit.running and t.node is not None and not t.node.serves:  # no API: it serves through the head
        ready = Probe(True, "node", f"runs; serves through {t.node.head}")
    elif f.unit.running:
        ep = endpoint(run.host, t.deployment, parse_env(f.files.get("env", "")))
        start = time.monotonic()
        with httpio.client(timeout=5) as client:
            ready = health.probe(client, ep)
        if trace is not None:
            outcome = "ready" if ready.ready else f"not ready: {ready.stage}: {ready.detail}"
            trace.request(run.name, f"readiness probe of {ep.base_url}", time.monotonic() - start, outcome)
    return {
        "host": run.name,
        "deployment": t.deployment.name,
        "unit": t.deployment.unit_name,
        "node": None
        if t.node is None
        else {"rank": t.node.rank, "of": t.node.nnodes, "role": t.node.describe()},
        "scope": run.host.scope,
        "state": f.unit.describe(),
        "enabled": f.unit.enabled,
        "since": f.unit.active_since,
        "restarts": f.unit.n_restarts,
        "revision": f.current_revision,
        "runs": _runs(f),
        "pending": None if f.pending is None else {**asdict(f.pending), "note": f.pending.describe()},
        "locked_by": f.locked_by.describe() if f.locked_by else None,
        "vllm": _vllm_version(run, t.deployment, f),
        "ready": bool(ready and ready.ready),
        "orphans": [p.describe() for p in f.orphans],
        "detail": "; ".join(
            x
            for x in (
                f.pending.describe() if f.pending else "",
                f"in progress: {f.locked_by.describe()}" if f.locked_by else "",
                "" if ready is None or ready.ready else f"{ready.stage}: {ready.detail}",
                _orphans(f),
            )
            if x
        ),
        **(preflight.gpu_status(t.deployment, run.probe, run.host) if run.probe else {}),
    }


def _orphans(f: DeploymentFacts) -> str:
    if not f.orphans:
        return ""
    listed = " ".join(p.describe() for p in f.orphans)
    return f"processes that outlived a stop: {listed} (`--reap` on apply or destroy ends them)"


def _runs(f: DeploymentFacts) -> str:
    """Which revision's configuration the server runs, as far as the records can tell."""
    if not f.unit.running:
        return "nothing"
    if f.pending is None:
        return f"revision {f.current_revision}" if f.current_revision else "unrecorded files"
    if f.pending.restarted:
        return f"revision {f.pending.revision}, not confirmed by a readiness gate"
    return f"revision {f.pending.previous}" if f.pending.previous else "unrecorded files"


def _vllm_version(run: HostRun, dep: Deployment, f: DeploymentFacts) -> str:
    """The vLLM the deployment runs: the pinned package's version, else what its launcher reports."""
    if f.vllm_version:
        return f.vllm_version
    own = run.probe.deployments.get(dep.name) if run.probe else None
    return own.vllm_version if own and own.vllm_version else ""


def revision_rows(
    loaded: Loaded, targets: list[Target], *, trace: Trace | None = None
) -> tuple[list[Row], list[Result]]:
    """Every recorded revision of the targets, sorted by host, deployment and number."""

    def one(run: HostRun) -> list[Row]:
        rows: list[Row] = []
        for t in run.targets:
            revs, st = revisions(run, t)
            rows += [_revision_row(run.name, t.deployment.name, r, st) for r in revs]
        return rows

    with Session(loaded, targets, trace=trace) as session:
        rows = session.collect(one)
        errors = session.host_errors()
    rows.sort(key=lambda r: (r["host"], r["deployment"], r["revision"]))
    return rows, errors


def _revision_row(host: str, dep: str, rev: state.RevisionInfo, st: state.StateFacts) -> Row:
    m = rev.manifest
    if rev.number == st.current:
        status = "current"
    elif st.pending is not None and rev.number == st.pending.revision:
        status = "pending: " + st.pending.describe()
    else:
        status = rev.outcome or ""
    return {
        "host": host,
        "deployment": dep,
        "revision": rev.number,
        "current": rev.number == st.current,
        "state": status,
        "created": m.get("created", ""),
        "by": m.get("by", ""),
        "source": m.get("source", ""),
        "playbook_digest": m.get("playbook_digest", ""),
    }


def scrape(
    targets: list[Target], *, trace: Trace | None = None
) -> list[tuple[Target, metrics.MetricsSummary | str]]:
    """Each target's /metrics summarised, or why it could not be read (a headless node has none)."""
    results: list[tuple[Target, metrics.MetricsSummary | str]] = []
    for t in (t for t in targets if t.node is None or t.node.serves):
        url = f"http://{api_address(t.host)}:{t.deployment.port}/metrics"
        start = time.monotonic()
        try:
            results.append((t, metrics.scrape(url)))
        except OrchError as exc:
            results.append((t, f"cannot scrape: {exc}"))
        if trace is not None:
            outcome = results[-1][1] if isinstance(results[-1][1], str) else "read"
            trace.request(t.host_name, f"GET {url}", time.monotonic() - start, outcome)
    return results


def bench_target(
    loaded: Loaded, targets: list[Target], *, trace: Trace | None = None
) -> tuple[Target, int | None, Endpoint]:
    """The one deployment on one host to load, its revision and endpoint (API key read from the host).

    A multi-node deployment is loaded through its head (the only node that answers the API)."""
    targets = [t for t in targets if t.node is None or t.node.serves]
    if len(targets) != 1:
        names = ", ".join(f"{t.deployment.name}@{t.host_name}" for t in targets)
        raise ConfigError(
            f"bench one deployment on one host; pick with -d/--limit among: {names}", file=str(loaded.path)
        )
    with Session(loaded, targets, trace=trace) as session:
        session.gather()
        [run] = session.runs.values()
        if run.error:
            raise run.error
    f = run.facts.get(targets[0].deployment.name, DeploymentFacts())
    return (
        targets[0],
        f.current_revision,
        endpoint(targets[0].host, targets[0].deployment, parse_env(f.files.get("env", ""))),
    )


def current_revisions(
    loaded: Loaded, targets: list[Target], *, trace: Trace | None = None
) -> tuple[dict[tuple[str, str], int | None], list[Result]]:
    """The current revision of each (host, deployment) that answered."""
    revisions: dict[tuple[str, str], int | None] = {}
    with Session(loaded, targets, trace=trace) as session:
        session.gather()
        for run in session.live():
            for t in run.targets:
                f = run.facts.get(t.deployment.name, DeploymentFacts())
                revisions[(run.name, t.deployment.name)] = f.current_revision
        return revisions, session.host_errors()


LineSink = Callable[[str, str, str], None]  # (host, deployment, line)


def logs(
    loaded: Loaded,
    targets: list[Target],
    *,
    lines: int,
    follow: bool,
    on_line: LineSink,
    trace: Trace | None = None,
) -> list[Result]:
    """Each deployment's log lines, to ``on_line``; with ``follow``, until interrupted."""

    def one(run: HostRun) -> None:
        for t in run.targets:
            runner = runners.of(Layout.of(run.host, t.deployment.name))
            unit, sudo = t.deployment.unit_name, run.host.sudo
            cmd = commands.logs(runner, unit, sudo=sudo, lines=lines, follow=follow)
            run.transport.stream(cmd, _to(on_line, run.name, t.deployment.name))

    with Session(loaded, targets, trace=trace) as session:
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
