"""What the verbs print: results, tables, the live reporter, JSON; only the terminal (plans: planout.py)."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeAlias

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .plain import plain_table

if TYPE_CHECKING:  # the verbs that print plans only need none of these at run time
    from rich.live import Live

    from ..facts import UnitState
    from ..hostrun import Result, Timeline
    from ..observe import bench, metrics
    from ..observe.gpu import Check
    from ..observe.probe import Probe
    from ..session import Session

# emoji=False: ':x:' in a file, a path or a message prints as ':x:'.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

Checks: TypeAlias = "dict[tuple[str, str], list[Check]]"


def show_table(table: Table, *, console: Console = out) -> None:
    """A boxed table on a terminal; elsewhere (a pipe, a file) plain aligned columns, no cell cut."""
    if console.is_terminal:
        console.print(table)
    else:
        console.print(plain_table(table), markup=False, soft_wrap=True)


def heading(title: str, *, console: Console = out) -> None:
    """A section's title (markup): a rule across a terminal it fits; else one line, never cut."""
    text = Text.from_markup(title)
    if console.is_terminal and text.cell_len + 6 <= console.width:
        console.rule(text, align="left")
    else:
        console.print(Text("── ").append_text(text), soft_wrap=True)


def trace_line(text: str) -> None:
    """A ``-v`` line (or block) on stderr, as plain text: a script's brackets are not markup."""
    err.print(Text(text, style="dim"))


def show_checks(checks: list[Check], *, quiet: bool) -> None:
    marks = {"ok": "[green]✓[/green]", "warn": "[yellow]![/yellow]", "error": "[red]✗[/red]"}
    for c in checks:
        if not quiet or c.severity != "ok":
            out.print(f"  {marks[c.severity]} preflight {c.name}: {escape(c.message)}")


def check_json(c: Check) -> dict[str, Any]:
    return {"name": c.name, "ok": c.ok, "severity": c.severity, "message": c.message}


def result_json(r: Result) -> dict[str, Any]:
    return {
        "host": r.host,
        "deployment": r.deployment,
        "status": r.status,
        "message": r.message,
        "revision": r.revision,
        "ready_after_s": r.elapsed_s,
        "ready_timeline": asdict(r.timeline) if r.timeline else None,
    }


def timeline_cell(t: Timeline) -> str:
    """``0.61 → 20.10 → 20.31s``: the process started, vLLM answered /health, the first completion."""
    up = "-" if t.up_s is None else f"{t.up_s:.2f}"
    return f"{t.started_s:.2f} → {up} → {t.answer_s:.2f}s"


def show_notices(session: Session) -> None:
    for host, dep, text in session.notices():
        err.print(f"[yellow]![/yellow] {escape(host)} {escape(dep)}: {escape(text)}")


def show_summary(results: list[Result]) -> None:
    table = Table(title="Result", show_lines=False)
    columns = ("host", "deployment", "status", "revision", "ready after", "started → up → answer", "message")
    for col in columns:
        table.add_column(col)
    colors = {"applied": "green", "unchanged": "green", "rolled-back": "yellow"}
    for r in results:
        color = colors.get(r.status, "red")
        t = r.timeline
        table.add_row(
            r.host,
            r.deployment,
            f"[{color}]{r.status}[/{color}]",
            str(r.revision or "-"),
            f"{t.answer_s:.2f}s" if t else "",
            timeline_cell(t) if t else "",
            escape(r.message),
        )
    show_table(table)
    for r in results:
        if r.journal and not r.ok:
            heading(escape(f"journal of {r.deployment} on {r.host} (last lines)"))
            out.print(escape(r.journal.rstrip()))
            print_diagnosis(r.journal)


def print_diagnosis(journal: str) -> None:
    from ..observe.diagnose import diagnose

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
        from rich.live import Live

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
        "GPUs (its own · used/total MiB, util)",
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
        gpus = "\n".join(_gpu_cell(g) for g in r.get("gpus", []))
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


def _gpu_cell(g: dict[str, Any]) -> str:
    """``0: 43496 · 87007/143771 0%``, then one line per other holder of memory on that GPU."""
    card = f"{g['used_mib']}/{g['total_mib']} {g['utilization_pct']}%"
    head = f"{g['index']}: {g.get('deployment_mib', '?')} · {card}"
    others = [f"  + {escape(o['who'])} {o['mib']}" for o in g.get("others", [])]
    return "\n".join([head, *others])


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
    from rich.progress import Progress

    from ..observe import benchclient

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task(
            f"{cfg.num_requests} requests, concurrency {cfg.concurrency}", total=cfg.num_requests
        )
        return benchclient.run_bench(cfg, on_progress=lambda done, _: progress.update(task, completed=done))
