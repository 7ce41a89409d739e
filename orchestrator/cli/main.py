"""The ``orch`` command: verbs, output and exit codes; no logic of its own.

Exit codes: 0 success (``plan``: no changes), 2 ``plan`` has changes, 1 error.
Only OrchError is caught: it prints as one red line, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from .. import __version__, facts, failpoints, outputs
from ..core import render
from ..core.layout import Layout
from ..core.load import Loaded, Target, load
from ..core.model import Deployment
from ..core.secrets import refs as secret_refs
from ..core.secrets import resolve
from ..errors import ConfigError, OrchError, SecretError
from ..facts import UnitState
from ..host import commands, runners, state
from ..observe import bench, health, metrics, monitoring, preflight
from ..observe.diagnose import diagnose
from ..observe.gpu import Check
from ..observe.health import Probe
from ..plan import TargetPlan, plan_target
from ..session import (
    DesiredOf,
    HostRun,
    Result,
    Session,
    api_address,
    endpoint,
    from_revisions,
    manifest_meta,
    rendered,
    renderer,
)

# emoji=False: ':x:' in a file, a path or a message prints as ':x:'.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


# ---------------------------------------------------------------- arguments


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orch", description="Declarative vLLM deployments over SSH and systemd.")
    p.add_argument("--version", action="version", version=f"orch {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs: dict[str, str] = {
        "validate": "check a playbook and its inventory (no network)",
        "plan": "show what apply would change (exit 0: nothing, 2: changes)",
        "apply": "converge hosts to the playbook, gate on readiness, record a revision",
        "rollback": "return to an earlier revision through the same path as apply",
        "status": "unit state, revision and readiness of every deployment",
        "revisions": "the revisions recorded on each host",
        "destroy": "stop, disable and remove deployments (revisions are kept)",
        "preflight": "check GPUs, memory, port, launcher, model and fit before deploying",
        "metrics": "scrape /metrics: queue, KV-cache usage, TTFT / ITL / latency percentiles",
        "bench": "load-test a deployment (TTFT, TPOT, ITL, throughput), tagged with its revision",
        "monitoring": "render a Prometheus scrape config and a Grafana dashboard for the playbook",
        "logs": "the journal of each deployment's unit",
    }
    for verb, help_text in verbs.items():
        sp = sub.add_parser(verb, help=help_text, description=help_text)
        sp.add_argument("playbook", type=Path, nargs="?" if verb == "bench" else None)
        sp.add_argument("-i", "--inventory", type=Path, help="use this inventory instead of the playbook's")
        if verb != "validate":
            sp.add_argument("--limit", action="append", metavar="HOST", help="only these hosts (repeatable)")
            sp.add_argument("--deployment", "-d", metavar="NAME", help="only this deployment")
        _verb_options(verb, sp)
    return p


def _verb_options(verb: str, sp: argparse.ArgumentParser) -> None:
    if verb in ("plan", "status", "revisions", "validate", "preflight", "metrics"):
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    if verb == "plan":
        sp.add_argument("--offline", action="store_true", help="render only; no SSH")
    if verb in ("apply", "rollback", "destroy"):
        sp.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
        sp.add_argument(
            "--lock-timeout",
            type=duration,
            default=0.0,
            metavar="DURATION",
            help="wait this long (30s, 5m, 1h) for another verb's lock on a host instead of failing at once",
        )
    if verb in ("apply", "rollback"):
        sp.add_argument("--no-rollback", action="store_true", help="keep a failed state for debugging")
        sp.add_argument("--force", action="store_true", help="apply even when preflight finds errors")
    if verb == "rollback":
        sp.add_argument("--to", type=int, metavar="REV", help="revision number (default: the previous one)")
    if verb == "status":
        sp.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    if verb == "bench":
        _bench_options(sp)
    if verb == "monitoring":
        sp.add_argument(
            "--out", type=Path, required=True, help="folder for prometheus.yml, targets.json, dashboard"
        )
        sp.add_argument("--gpu-exporter-port", type=int, help="also scrape each host's DCGM exporter here")
    if verb == "logs":
        sp.add_argument("-n", "--lines", type=int, default=50)
        sp.add_argument("-f", "--follow", action="store_true")


def _bench_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("-n", "--num-requests", type=int, default=100)
    sp.add_argument("-c", "--concurrency", type=int, default=8)
    sp.add_argument(
        "--request-rate", type=float, help="requests/s with Poisson arrivals (default: all at once)"
    )
    sp.add_argument(
        "--input-len", type=int, default=128, help="prompt length in words (about as many tokens)"
    )
    sp.add_argument("--output-len", type=int, default=64)
    sp.add_argument("--prompt", help="one fixed prompt instead of random words")
    sp.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--save", type=Path, metavar="FILE.json", help="write the result here")
    sp.add_argument(
        "--compare", nargs=2, type=Path, metavar=("A.json", "B.json"), help="compare two saved results"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(VERBS[args.verb](args))
    except OrchError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]")
        return 130


# ---------------------------------------------------------------- shared steps


def _load(args: argparse.Namespace) -> Loaded:
    return load(args.playbook, inventory_override=args.inventory)


def _targets(loaded: Loaded, args: argparse.Namespace) -> list[Target]:
    limit = set(args.limit) if getattr(args, "limit", None) else None
    targets = loaded.targets(limit=limit, deployment=getattr(args, "deployment", None))
    if limit:
        unknown = limit - set(loaded.inventory.hosts)
        if unknown:
            raise ConfigError(
                f"--limit names unknown host {sorted(unknown)[0]!r}", file=str(loaded.inventory_path)
            )
    if not targets:
        raise ConfigError("no deployment matches --limit/--deployment", file=str(loaded.path))
    return targets


def _secrets(loaded: Loaded) -> dict[str, dict[str, str]]:
    try:
        return {d.name: resolve(d, base=loaded.path.parent) for d in loaded.playbook.deployments}
    except SecretError as exc:
        raise SecretError(f"{loaded.path}: {exc}") from None


def _confirm(args: argparse.Namespace, question: str) -> bool:
    if args.yes or not sys.stdin.isatty():
        return True
    answer = err.input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")


# ---------------------------------------------------------------- validate / plan


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = _load(args)
    # Validation never reads a secret: a placeholder no template text can be confused with stands in.
    secrets_of = {
        d.name: dict.fromkeys(secret_refs(d), "orch-validate-placeholder")
        for d in loaded.playbook.deployments
    }
    render_target = renderer(loaded, secrets_of)
    for t in loaded.targets():
        render_target(t)
    n_dep, n_hosts = len(loaded.playbook.deployments), len({t.host_name for t in loaded.targets()})
    if args.json:
        out.print_json(data={"valid": True, "deployments": n_dep, "hosts": n_hosts})
    else:
        out.print(f"[green]ok[/green]: {args.playbook}: {n_dep} deployment(s) on {n_hosts} host(s)")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    loaded = _load(args)
    targets = _targets(loaded, args)
    secrets_of = _secrets(loaded)
    if args.offline:
        return _plan_offline(targets, renderer(loaded, secrets_of), as_json=args.json)
    with Session(loaded, targets) as session:
        session.gather(with_preflight=True)
        if not args.json:
            _show_notices(session)
        plans = session.plans(rendered(loaded, secrets_of), meta={})
        errors = session.host_errors()
        checks = session.preflight()
    _show_plans(plans, errors, as_json=args.json, checks=checks)
    if errors or _blocking(plans, checks):
        return EXIT_ERROR
    return EXIT_CHANGES if any(p.changed for p in plans) else EXIT_OK


Checks = dict[tuple[str, str], list[Check]]


def _blocking(plans: list[TargetPlan], checks: Checks) -> list[str]:
    """Preflight errors of deployments that the plan would (re)start."""
    return [
        f"{p.host} {p.deployment}: {c.message}"
        for p in plans
        if p.restarts
        for c in checks.get((p.host, p.deployment), [])
        if not c.ok
    ]


def _plan_offline(
    targets: list[Target], render_target: Callable[[Target], render.Desired], *, as_json: bool
) -> int:
    plans = [
        plan_target(
            host=t.host_name,
            deployment=t.deployment.name,
            desired=render_target(t),
            facts=facts.DeploymentFacts(),
        )
        for t in targets
    ]
    _show_plans(plans, [], as_json=as_json, offline=True)
    return EXIT_CHANGES


def _show_plans(
    plans: list[TargetPlan],
    errors: list[Result],
    *,
    as_json: bool,
    offline: bool = False,
    checks: Checks | None = None,
) -> None:
    checks = checks or {}
    if as_json:
        data = {
            "plans": [_plan_json(p, checks.get((p.host, p.deployment), [])) for p in plans],
            "errors": [_result_json(e) for e in errors],
        }
        out.print_json(data=data)
        return
    for p in plans:
        _show_plan(p)
        _show_checks(checks.get((p.host, p.deployment), []), quiet=True)
    for e in errors:
        out.print(f"[red]✗ {escape(e.host)}[/red] {escape(e.deployment)}: {escape(e.message)}")
    changed = sum(p.changed for p in plans)
    restarts = sum(p.restarts for p in plans)
    note = " (offline: compared with nothing)" if offline else ""
    out.print(f"\n[bold]Plan:[/bold] {changed} of {len(plans)} to change, {restarts} restart(s){note}.")


def _show_plan(p: TargetPlan) -> None:
    scope = p.desired.layout.scope
    state = p.facts.unit.describe()
    rev = p.facts.current_revision
    header = f"{p.host} · {p.deployment} ({p.desired.unit_name}, {scope}; now {state}, revision {rev or '-'})"
    out.rule(f"[bold]{escape(header)}[/bold]", align="left")
    for d in p.diffs:
        if d.secret_only:
            out.print(f"  {escape(d.path)}: [yellow]secret values change (masked)[/yellow]")
        for line in d.text.removesuffix("\n").split("\n") if d.text else ():
            out.print(_diff_line(line))
    if not p.changed:
        out.print("  [green]no changes[/green]")
    for c in p.changes:
        out.print(f"  [yellow]~[/yellow] {escape(c.summary())}")


def _diff_line(line: str) -> Text:
    """A diff line as the file holds it: no markup or emoji read in it; characters a terminal would act on
    or not show (ESC, CR, U+2028, zero-width…) appear as escapes, highlighted."""
    style = {"+": "green", "-": "red", "@": "cyan"}.get(line[:1], "")
    if line.startswith(("+++", "---")):
        style = "bold"
    shown = Text(style=style)
    for ch in line:
        plain = ch.isprintable() or ch == "\t"
        shown.append(ch if plain else ascii(ch)[1:-1], style="" if plain else "reverse")
    return shown


def _show_checks(checks: list[Check], *, quiet: bool) -> None:
    marks = {"ok": "[green]✓[/green]", "warn": "[yellow]![/yellow]", "error": "[red]✗[/red]"}
    for c in checks:
        if not quiet or c.severity != "ok":
            out.print(f"  {marks[c.severity]} preflight {c.name}: {escape(c.message)}")


def _check_json(c: Check) -> dict[str, Any]:
    return {"name": c.name, "ok": c.ok, "severity": c.severity, "message": c.message}


def _plan_json(p: TargetPlan, checks: list[Check]) -> dict[str, Any]:
    return {
        "preflight": [_check_json(c) for c in checks],
        "host": p.host,
        "deployment": p.deployment,
        "changed": p.changed,
        "unit_state": p.facts.unit.describe(),
        "revision": p.facts.current_revision,
        "changes": [{"type": type(c).__name__, "summary": c.summary()} for c in p.changes],
        "diffs": [{"path": d.path, "diff": d.text, "secret_only": d.secret_only} for d in p.diffs],
    }


def _result_json(r: Result) -> dict[str, Any]:
    return {
        "host": r.host,
        "deployment": r.deployment,
        "status": r.status,
        "message": r.message,
        "revision": r.revision,
        "ready_after_s": r.elapsed_s,
    }


# ---------------------------------------------------------------- apply / rollback / destroy


def cmd_apply(args: argparse.Namespace) -> int:
    loaded = _load(args)
    desired_of = rendered(loaded, _secrets(loaded))
    return _converge(args, loaded, desired_of, verb="apply")


def cmd_rollback(args: argparse.Namespace) -> int:
    loaded = _load(args)
    return _converge(args, loaded, from_revisions(args.to), verb="rollback")


def cmd_destroy(args: argparse.Namespace) -> int:
    loaded = _load(args)

    def absent(run: HostRun, t: Target) -> render.Desired:
        return render.absent(t.deployment, t.host)

    args.no_rollback, args.force = True, False
    return _converge(args, loaded, absent, verb="destroy")


def _converge(args: argparse.Namespace, loaded: Loaded, desired_of: DesiredOf, *, verb: str) -> int:
    targets = _targets(loaded, args)
    reporter = RichReporter()
    with Session(loaded, targets, reporter=reporter) as session:
        session.lock(verb, wait_s=args.lock_timeout)
        session.gather(with_preflight=verb != "destroy")
        _show_notices(session)
        plans = session.plans(desired_of, meta=manifest_meta(loaded, verb=verb))
        errors = session.host_errors()
        checks = session.preflight()
        failpoints.reach("after-facts")
        _show_plans(plans, errors, as_json=False, checks=checks)
        if not any(p.changed for p in plans):
            out.print("[green]Nothing to do.[/green]")
            return _summary([*session.execute(plans), *errors]) if errors else EXIT_OK
        blocking = _blocking(plans, checks)
        if blocking and not args.force:
            err.print(
                f"[red]preflight failed[/red] ({len(blocking)} problem(s)); nothing was changed. "
                "Fix them, or pass --force to apply anyway."
            )
            return EXIT_ERROR
        for line in blocking:
            err.print(f"[yellow]warning: --force: going on despite:[/yellow] {escape(line)}")
        if not _confirm(args, f"{verb.capitalize()} these changes?"):
            err.print("cancelled: nothing was changed")
            return EXIT_ERROR
        with reporter.live():
            results = session.execute(plans, restore=not args.no_rollback)
    return _summary([*results, *errors])


def _show_notices(session: Session) -> None:
    for host, dep, text in session.notices():
        err.print(f"[yellow]![/yellow] {escape(host)} {escape(dep)}: {escape(text)}")


def duration(text: str) -> float:
    """``30``, ``30s``, ``5m``, ``1h`` → seconds (argparse type)."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 30s, 5m or 1h)") from None
    if value < 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return value


def _summary(results: list[Result]) -> int:
    table = Table(title="Result", show_lines=False)
    for col in ("host", "deployment", "status", "revision", "ready after", "message"):
        table.add_column(col)
    colors = {"applied": "green", "unchanged": "green", "rolled-back": "yellow"}
    for r in results:
        color = colors.get(r.status, "red")
        ready = f"{r.elapsed_s:.1f}s" if r.elapsed_s is not None else ""
        table.add_row(
            r.host,
            r.deployment,
            f"[{color}]{r.status}[/{color}]",
            str(r.revision or "-"),
            ready,
            escape(r.message),
        )
    out.print(table)
    for r in results:
        if r.journal and not r.ok:
            out.rule(f"journal of {r.deployment} on {r.host} (last lines)", align="left")
            out.print(escape(r.journal.rstrip()))
            _print_diagnosis(r.journal)
    return EXIT_OK if all(r.ok for r in results) else EXIT_ERROR


def _print_diagnosis(journal: str) -> None:
    for d in diagnose(journal):
        out.print(f"[bold yellow]cause:[/bold yellow] {escape(d.cause)}\n[bold]fix:[/bold] {escape(d.fix)}")


class RichReporter:
    """Events as lines; the readiness gate as a live table (a line every 15 s when not a terminal)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], str] = {}
        self._printed: dict[tuple[str, str], float] = {}
        self._started: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._live: Live | None = None

    def live(self) -> contextlib.AbstractContextManager[object]:
        """A live table of the gates on a terminal; elsewhere progress comes as lines."""
        if not err.is_terminal:
            return contextlib.nullcontext()
        self._live = Live(self._table(), console=err, refresh_per_second=4, transient=True)
        return self._live

    def event(self, host: str, deployment: str, text: str) -> None:
        with self._lock:
            self._rows.pop((host, deployment), None)
        err.print(f"[cyan]{escape(host)}[/cyan] {escape(deployment)}: {escape(text)}")
        self._refresh()

    def gate(self, host: str, deployment: str, elapsed: float, state: UnitState, probe: Probe) -> None:
        last = state.journal_tail.splitlines()[-1] if state.journal_tail else ""
        line = (
            f"waiting {elapsed:5.0f}s  unit {state.describe()}  {probe.stage}: {probe.detail}  │ {last[-90:]}"
        )
        self._row(host, deployment, line)

    def progress(self, host: str, deployment: str, what: str, done: int, total: int) -> None:
        t0, done0 = self._started.setdefault((host, deployment, what), (time.monotonic(), done))
        rate = (done - done0) / max(time.monotonic() - t0, 1e-3)
        self._row(host, deployment, f"{what} {transfer_bar(done, total)}  {rate / 2**20:6.1f} MiB/s")

    def _row(self, host: str, deployment: str, line: str) -> None:
        """Show ``line`` as the live row of (host, deployment); off a terminal, print it every 15 s."""
        key = (host, deployment)
        with self._lock:
            self._rows[key] = line
        if not err.is_terminal and time.monotonic() - self._printed.get(key, 0) >= 15:
            self._printed[key] = time.monotonic()
            err.print(f"{host} {deployment}: {escape(line)}")
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def _table(self) -> Table:
        table = Table.grid(padding=(0, 1))
        with self._lock:
            for (host, dep), line in self._rows.items():
                table.add_row(f"[cyan]{escape(host)}[/cyan]", escape(dep), escape(line))
        return table


def transfer_bar(done: int, total: int, width: int = 24) -> str:
    """``[#########.......]  37%  1.2/3.3 GiB`` (no bar when the total is unknown)."""
    gib = 2**30
    if total <= 0:
        return f"{done / gib:.2f} GiB"
    frac = min(max(done / total, 0.0), 1.0)
    filled = round(frac * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac:4.0%}  {done / gib:.2f}/{total / gib:.2f} GiB"


# ---------------------------------------------------------------- status / revisions / logs


def cmd_status(args: argparse.Namespace) -> int:
    loaded = _load(args)
    targets = _targets(loaded, args)
    if not args.watch:
        rows, errors = _status_rows(loaded, targets)
        if args.json:
            out.print_json(data={"deployments": rows})
        else:
            out.print(_status_table(rows))
        return EXIT_ERROR if errors else EXIT_OK
    with Live(console=out, auto_refresh=False) as live:
        while True:
            live.update(_status_table(_status_rows(loaded, targets)[0]), refresh=True)
            time.sleep(args.watch)


def _status_rows(loaded: Loaded, targets: list[Target]) -> tuple[list[dict[str, Any]], list[Result]]:
    with Session(loaded, targets) as session:
        session.gather(with_preflight=True)
        rows = session.collect(lambda run: [_status_row(run, t) for t in run.targets])
        errors = session.host_errors()
    order = {(t.host_name, t.deployment.name): i for i, t in enumerate(targets)}
    rows.sort(key=lambda r: order[(r["host"], r["deployment"])])
    rows += [{"host": e.host, "deployment": e.deployment, "error": e.message} for e in errors]
    return rows, errors


def _status_row(run: HostRun, t: Target) -> dict[str, Any]:
    f = run.facts.get(t.deployment.name, facts.DeploymentFacts())
    ready: Probe | None = None
    if f.unit.running:
        ep = endpoint(run.host, t.deployment, f.files.get("env", ""))
        with httpx.Client(timeout=5) as client:
            ready = health.probe(client, ep)
    return {
        "host": run.name,
        "deployment": t.deployment.name,
        "unit": t.deployment.unit_name,
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
        "detail": "; ".join(
            x
            for x in (
                f.pending.describe() if f.pending else "",
                f"in progress: {f.locked_by.describe()}" if f.locked_by else "",
                "" if ready is None or ready.ready else f"{ready.stage}: {ready.detail}",
            )
            if x
        ),
        **(preflight.gpu_status(t.deployment, run.probe) if run.probe else {}),
    }


def _runs(f: facts.DeploymentFacts) -> str:
    """Which revision's configuration the server runs, as far as the records can tell."""
    if not f.unit.running:
        return "nothing"
    if f.pending is None:
        return f"revision {f.current_revision}" if f.current_revision else "unrecorded files"
    if f.pending.restarted:
        return f"revision {f.pending.revision}, not confirmed by a readiness gate"
    return f"revision {f.pending.previous}" if f.pending.previous else "unrecorded files"


def _vllm_version(run: HostRun, dep: Deployment, f: facts.DeploymentFacts) -> str:
    """The vLLM the deployment runs: the pinned package's version, else what its launcher reports."""
    if f.vllm_version:
        return f.vllm_version
    own = run.probe.deployments.get(dep.name) if run.probe else None
    return own.vllm_version if own and own.vllm_version else ""


def _status_table(rows: list[dict[str, Any]]) -> Table:
    table = Table()
    for col in (
        "host",
        "deployment",
        "state",
        "rev",
        "vLLM",
        "ready",
        "restarts",
        "GPUs (used/total MiB, util)",
        "TP balance",
        "since / detail",
    ):
        table.add_column(col)
    for r in rows:
        if "error" in r:
            table.add_row(
                r["host"], r["deployment"], "[red]error[/red]", "", "", "", "", "", "", escape(r["error"])
            )
            continue
        ready = "[green]yes[/green]" if r["ready"] else "[red]no[/red]"
        gpus = "\n".join(
            f"{g['index']}: {g['used_mib']}/{g['total_mib']} {g['utilization_pct']}%"
            for g in r.get("gpus", [])
        )
        bal = r.get("tp_balance")
        balance = (
            "" if not bal else (f"{'[green]' if bal['balanced'] else '[red]'}{bal['spread_pct']:.1f}%[/]")
        )
        table.add_row(
            r["host"],
            r["deployment"],
            r["state"],
            str(r["revision"] or "-") + (f" ({r['pending']['revision']} pending)" if r["pending"] else ""),
            r["vllm"] or "-",
            ready,
            str(r["restarts"]),
            gpus,
            balance,
            escape(r["detail"] or r["since"]),
        )
    return table


def cmd_revisions(args: argparse.Namespace) -> int:
    loaded = _load(args)
    targets = _targets(loaded, args)
    with Session(loaded, targets) as session:

        def one(run: HostRun) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            for t in run.targets:
                layout = Layout.of(run.host, t.deployment.name)
                text = run.run(state.list_revisions(layout.state_dir, sudo=run.host.sudo))
                revs, st = state.parse_revisions(text)
                rows += [_revision_row(run.name, t.deployment.name, r, st) for r in revs]
            return rows

        rows = session.collect(one)
        errors = session.host_errors()
    rows.sort(key=lambda r: (r["host"], r["deployment"], r["revision"]))
    if args.json:
        out.print_json(data={"revisions": rows, "errors": [_result_json(e) for e in errors]})
    else:
        table = Table()
        for col in ("host", "deployment", "revision", "state", "created", "by", "source"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["host"],
                r["deployment"],
                str(r["revision"]),
                escape(r["state"]),
                r["created"],
                r["by"],
                r["source"],
            )
        out.print(table)
    return EXIT_ERROR if errors else EXIT_OK


def _revision_row(host: str, dep: str, rev: state.RevisionInfo, st: state.StateFacts) -> dict[str, Any]:
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


def cmd_logs(args: argparse.Namespace) -> int:
    loaded = _load(args)
    targets = _targets(loaded, args)
    lock = threading.Lock()
    with Session(loaded, targets) as session:

        def one(run: HostRun) -> None:
            for t in run.targets:
                prefix = f"[cyan]{escape(run.name)}[/cyan] {escape(t.deployment.name)} | "

                def show(line: str, prefix: str = prefix) -> None:
                    with lock:
                        out.print(prefix + escape(line))

                runner = runners.of(Layout.of(run.host, t.deployment.name))
                journal = commands.logs(
                    runner, t.deployment.unit_name, sudo=run.host.sudo, lines=args.lines, follow=args.follow
                )
                run.transport.stream(journal, show)

        if args.follow:
            _follow(session, one)
        else:
            session.each(one)
        errors = session.host_errors()
    for e in errors:
        err.print(f"[red]✗ {escape(e.host)}[/red]: {escape(e.message)}")
    return EXIT_ERROR if errors else EXIT_OK


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


def cmd_metrics(args: argparse.Namespace) -> int:
    loaded = _load(args)
    results: list[tuple[Target, metrics.MetricsSummary | str]] = []
    for t in _targets(loaded, args):
        url = f"http://{api_address(t.host)}:{t.deployment.port}/metrics"
        try:
            results.append((t, metrics.scrape(url)))
        except OrchError as exc:
            results.append((t, f"cannot scrape: {exc}"))
    if args.json:
        data = [
            {"host": t.host_name, "deployment": t.deployment.name}
            | ({"error": m} if isinstance(m, str) else m.to_dict())
            for t, m in results
        ]
        out.print_json(data={"metrics": data})
    else:
        for t, m in results:
            out.rule(f"[bold]{escape(t.host_name)} · {escape(t.deployment.name)}[/bold]", align="left")
            out.print(f"[red]{escape(m)}[/red]" if isinstance(m, str) else _metrics_table(m))
    return EXIT_ERROR if any(isinstance(m, str) for _, m in results) else EXIT_OK


def _metrics_table(m: metrics.MetricsSummary) -> Table:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:.1f}%"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    table = Table(show_header=False, box=None)
    table.add_row("requests running / waiting", f"{num(m.running)} / {num(m.waiting)}")
    table.add_row("KV-cache usage", pct(m.kv_cache_usage))
    table.add_row("prefix-cache hit rate", pct(m.prefix_cache_hit_rate))
    table.add_row(
        "finished requests", ", ".join(f"{k}: {v:,.0f}" for k, v in m.request_success.items()) or "-"
    )
    table.add_row("prompt / generation tokens", f"{num(m.prompt_tokens)} / {num(m.generation_tokens)}")
    for label, h in (
        ("TTFT", m.ttft),
        ("inter-token latency", m.inter_token_latency),
        ("end-to-end", m.e2e_latency),
    ):
        table.add_row(f"{label} (ms) mean p50 p90 p99", _hist(h))
    table.add_row("metric names found", ", ".join(f"{k}={v}" for k, v in m.found_names.items()))
    return table


def _hist(h: metrics.HistogramSummary | None) -> str:
    if h is None or not h.count:
        return "-"
    vals = [h.mean, h.p50, h.p90, h.p99]
    return f"n={h.count:,.0f}  " + "  ".join("-" if v is None else f"{v * 1000:.1f}" for v in vals)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.compare:
        a, b = (_read_bench(p) for p in args.compare)
        out.print(bench.format_compare(a, b, labels=(args.compare[0].stem, args.compare[1].stem)))
        return EXIT_OK
    if args.playbook is None:
        raise ConfigError("bench needs a PLAYBOOK (or --compare A.json B.json)", file="orch bench")
    if min(args.num_requests, args.concurrency, args.output_len) < 1:
        raise ConfigError(
            "--num-requests, --concurrency and --output-len must be at least 1", file="orch bench"
        )
    loaded = _load(args)
    target, revision, ep = _bench_target(loaded, args)
    cfg = bench.BenchConfig(
        base_url=ep.base_url,
        model=ep.served_name,
        num_requests=args.num_requests,
        concurrency=args.concurrency,
        request_rate=args.request_rate,
        input_len=args.input_len,
        output_len=args.output_len,
        prompt=args.prompt,
        seed=args.seed,
        api_key=ep.api_key,
        endpoint=args.endpoint,
    )
    result = bench.with_tags(
        _run_bench(cfg),
        deployment=target.deployment.name,
        host=target.host_name,
        revision=str(revision or "-"),
        orch_version=__version__,
    )
    title = f"{target.deployment.name} on {target.host_name}, revision {revision or '-'}"
    out.print(bench.format_table(result, title=title))
    if args.save:
        outputs.write_text(args.save, result.to_json())
        out.print(f"saved {args.save}")
    return EXIT_OK if result.completed else EXIT_ERROR


def _read_bench(path: Path) -> bench.BenchResult:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from exc
    try:
        return bench.BenchResult.from_json(text) if '"orch-bench/' in text else bench.from_vllm_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a bench result: {exc}", file=str(path)) from exc


def _bench_target(loaded: Loaded, args: argparse.Namespace) -> tuple[Target, int | None, health.Endpoint]:
    """The one deployment on one host to load, its revision and endpoint (API key read from the host)."""
    targets = _targets(loaded, args)
    if len(targets) != 1:
        names = ", ".join(f"{t.deployment.name}@{t.host_name}" for t in targets)
        raise ConfigError(
            f"bench one deployment on one host; pick with -d/--limit among: {names}", file=str(loaded.path)
        )
    with Session(loaded, targets) as session:
        session.gather()
        [run] = session.runs.values()
        if run.error:
            raise run.error
    f = run.facts.get(targets[0].deployment.name, facts.DeploymentFacts())
    return (
        targets[0],
        f.current_revision,
        endpoint(targets[0].host, targets[0].deployment, f.files.get("env", "")),
    )


def _run_bench(cfg: bench.BenchConfig) -> bench.BenchResult:
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task(
            f"{cfg.num_requests} requests, concurrency {cfg.concurrency}", total=cfg.num_requests
        )
        return bench.run_bench(cfg, on_progress=lambda done, total: progress.update(task, completed=done))


def cmd_monitoring(args: argparse.Namespace) -> int:
    loaded = _load(args)
    targets = _targets(loaded, args)
    revisions: dict[tuple[str, str], int | None] = {}
    with Session(loaded, targets) as session:
        session.gather()
        for run in session.live():
            for t in run.targets:
                revisions[(run.name, t.deployment.name)] = run.facts.get(
                    t.deployment.name, facts.DeploymentFacts()
                ).current_revision
        errors = session.host_errors()
    monitored = [
        monitoring.MonitorTarget(
            deployment=t.deployment.name,
            host=t.host_name,
            address=t.host.address,
            port=t.deployment.port,
            revision=revisions.get((t.host_name, t.deployment.name)),
            served_name=t.deployment.served_name,
        )
        for t in targets
    ]
    files = monitoring.files(monitored, gpu_exporter_port=args.gpu_exporter_port)
    written = outputs.write_files(args.out, files)
    out.print(f"wrote {', '.join(str(p) for p in written)} ({len(monitored)} targets)")
    for e in errors:
        err.print(f"[yellow]warning:[/yellow] {escape(e.host)}: revision unknown: {escape(e.message)}")
    return EXIT_OK


def cmd_preflight(args: argparse.Namespace) -> int:
    loaded = _load(args)
    targets = _targets(loaded, args)
    with Session(loaded, targets) as session:
        session.gather(with_preflight=True)
        checks = session.preflight()
        errors = session.host_errors()
    if args.json:
        data = [
            {"host": h, "deployment": d, "checks": [_check_json(c) for c in cs]}
            for (h, d), cs in checks.items()
        ]
        out.print_json(data={"preflight": data, "errors": [_result_json(e) for e in errors]})
    else:
        for (host, dep), cs in checks.items():
            out.rule(f"[bold]{escape(host)} · {escape(dep)}[/bold]", align="left")
            _show_checks(cs, quiet=False)
        for e in errors:
            out.print(f"[red]✗ {escape(e.host)}[/red]: {escape(e.message)}")
    failed = errors or any(not c.ok for cs in checks.values() for c in cs)
    return EXIT_ERROR if failed else EXIT_OK


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "preflight": cmd_preflight,
    "metrics": cmd_metrics,
    "bench": cmd_bench,
    "monitoring": cmd_monitoring,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "apply": cmd_apply,
    "rollback": cmd_rollback,
    "destroy": cmd_destroy,
    "status": cmd_status,
    "revisions": cmd_revisions,
    "logs": cmd_logs,
}


if __name__ == "__main__":
    sys.exit(main())
