"""What the verbs print: plans, diffs, results, tables, the live reporter, JSON; only the terminal."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from ..facts import UnitState
from ..hostrun import Result
from ..observe import bench, metrics
from ..observe.diagnose import diagnose
from ..observe.gpu import Check
from ..observe.health import Probe
from ..plan import TargetPlan
from ..session import Session

# emoji=False: ':x:' in a file, a path or a message prints as ':x:'.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

Checks = dict[tuple[str, str], list[Check]]


def show_plans(
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
            "plans": [plan_json(p, checks.get((p.host, p.deployment), [])) for p in plans],
            "errors": [result_json(e) for e in errors],
        }
        out.print_json(data=data)
        return
    for p in plans:
        show_plan(p)
        show_checks(checks.get((p.host, p.deployment), []), quiet=True)
    for e in errors:
        out.print(f"[red]✗ {escape(e.host)}[/red] {escape(e.deployment)}: {escape(e.message)}")
    changed = sum(p.changed for p in plans)
    restarts = sum(p.restarts for p in plans)
    note = " (offline: compared with nothing)" if offline else ""
    out.print(f"\n[bold]Plan:[/bold] {changed} of {len(plans)} to change, {restarts} restart(s){note}.")


def show_plan(p: TargetPlan) -> None:
    scope = p.desired.layout.scope
    state = p.facts.unit.describe()
    rev = f"revision {p.facts.current_revision or '-'}" + (
        f"; {p.desired.node.describe()}" if p.desired.node else ""
    )
    header = f"{p.host} · {p.deployment} ({p.desired.unit_name}, {scope}; now {state}, {rev})"
    out.rule(f"[bold]{escape(header)}[/bold]", align="left")
    for d in p.diffs:
        if d.secret_only:
            out.print(f"  {escape(d.path)}: [yellow]secret values change (masked)[/yellow]")
        for line in d.text.removesuffix("\n").split("\n") if d.text else ():
            out.print(diff_line(line))
    if not p.changed:
        out.print("  [green]no changes[/green]")
    for c in p.changes:
        out.print(f"  [yellow]~[/yellow] {escape(c.summary())}")


def diff_line(line: str) -> Text:
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


def show_checks(checks: list[Check], *, quiet: bool) -> None:
    marks = {"ok": "[green]✓[/green]", "warn": "[yellow]![/yellow]", "error": "[red]✗[/red]"}
    for c in checks:
        if not quiet or c.severity != "ok":
            out.print(f"  {marks[c.severity]} preflight {c.name}: {escape(c.message)}")


def check_json(c: Check) -> dict[str, Any]:
    return {"name": c.name, "ok": c.ok, "severity": c.severity, "message": c.message}


def plan_json(p: TargetPlan, checks: list[Check]) -> dict[str, Any]:
    return {
        "preflight": [check_json(c) for c in checks],
        "host": p.host,
        "deployment": p.deployment,
        "changed": p.changed,
        "unit_state": p.facts.unit.describe(),
        "revision": p.facts.current_revision,
        "changes": [{"type": type(c).__name__, "summary": c.summary()} for c in p.changes],
        "diffs": [{"path": d.path, "diff": d.text, "secret_only": d.secret_only} for d in p.diffs],
        "node": None
        if (n := p.desired.node) is None
        else {"rank": n.rank, "of": n.nnodes, "backend": n.backend},
    }


def result_json(r: Result) -> dict[str, Any]:
    return {
        "host": r.host,
        "deployment": r.deployment,
        "status": r.status,
        "message": r.message,
        "revision": r.revision,
        "ready_after_s": r.elapsed_s,
    }


def show_notices(session: Session) -> None:
    for host, dep, text in session.notices():
        err.print(f"[yellow]![/yellow] {escape(host)} {escape(dep)}: {escape(text)}")


def show_summary(results: list[Result]) -> None:
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
            print_diagnosis(r.journal)


def print_diagnosis(journal: str) -> None:
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


def status_table(rows: list[dict[str, Any]]) -> Table:
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
        node = r.get("node")
        table.add_row(
            r["host"],
            r["deployment"] + (f"\n{escape(node['role'])}" if node else ""),
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


def metrics_table(m: metrics.MetricsSummary) -> Table:
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


def revisions_table(rows: list[dict[str, Any]]) -> Table:
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
    return table


def show_host_errors(errors: list[Result]) -> None:
    for e in errors:
        out.print(f"[red]✗ {escape(e.host)}[/red]: {escape(e.message)}")


def run_bench(cfg: bench.BenchConfig) -> bench.BenchResult:
    """Run the benchmark under a progress bar on stderr."""
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task(
            f"{cfg.num_requests} requests, concurrency {cfg.concurrency}", total=cfg.num_requests
        )
        return bench.run_bench(cfg, on_progress=lambda done, total: progress.update(task, completed=done))
