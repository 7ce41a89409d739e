"""Load-test results read and shown: vLLM's own result file, the comparison of two results, tables."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.table import Table

from .bench import LATENCIES, MAX_ERRORS, BenchConfig, BenchResult, Stats

# --- vLLM's own result file ------------------------------------------------------------------------------


def from_vllm_json(text: str, *, base_url: str = "") -> BenchResult:
    """Read the JSON ``vllm bench serve --save-result`` writes, to compare it with orch's.

    Percentiles vLLM did not report (it writes the ones named by
    ``--metric-percentiles``, default 99) read None; ``count`` is unknown (0).
    """
    data = json.loads(text)
    rate = float(data.get("request_rate", "inf"))
    cfg = BenchConfig(
        base_url=base_url,
        model=str(data.get("model_id", "")),
        num_requests=int(data.get("num_prompts", data["completed"] + data["failed"])),
        concurrency=int(data.get("max_concurrency") or data.get("num_prompts") or 1),
        request_rate=None if math.isinf(rate) else rate,
        endpoint="chat" if "chat" in str(data.get("backend", "")) else "completions",
    )
    finished = datetime.strptime(data["date"], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    duration = float(data["duration"])
    return BenchResult(
        config=cfg,
        started=finished - timedelta(seconds=duration),
        finished=finished,
        duration_s=duration,
        completed=int(data["completed"]),
        failed=int(data["failed"]),
        errors=tuple(str(e) for e in data.get("errors", []) if e)[:MAX_ERRORS],
        total_input_tokens=int(data["total_input_tokens"]),
        total_output_tokens=int(data["total_output_tokens"]),
        request_throughput=float(data["request_throughput"]),
        output_throughput=float(data["output_throughput"]),
        total_token_throughput=float(data["total_token_throughput"]),
        ttft=_vllm_stats(data, "ttft"),
        tpot=_vllm_stats(data, "tpot"),
        itl=_vllm_stats(data, "itl"),
        e2el=_vllm_stats(data, "e2el"),
        tags={"tool": "vllm bench serve", "label": str(data.get("label") or data.get("backend", ""))},
    )


def _vllm_stats(data: Mapping[str, Any], name: str) -> Stats:
    def get(key: str) -> float | None:
        value = data.get(f"{key}_{name}_ms")
        return None if value is None else float(value)

    return Stats(count=0, mean=get("mean"), median=get("median"), p90=get("p90"), p99=get("p99"))


# --- comparison and tables -------------------------------------------------------------------------------

THROUGHPUTS = ("request_throughput", "output_throughput", "total_token_throughput")
STAT_FIELDS = tuple(f.name for f in fields(Stats) if f.name != "count")
UNITS = {"request_throughput": "req/s", "output_throughput": "tok/s", "total_token_throughput": "tok/s"}


def metrics(result: BenchResult) -> dict[str, float | None]:
    """The comparable numbers of a result by name: throughputs, then ``<latency>_<stat>`` in ms."""
    values: dict[str, float | None] = {name: getattr(result, name) for name in THROUGHPUTS}
    for name in LATENCIES:
        stats: Stats = getattr(result, name)
        values.update({f"{name}_{stat}_ms": getattr(stats, stat) for stat in STAT_FIELDS})
    return values


def change_pct(a: float, b: float) -> float:
    """Relative change from a to b in percent (0 when equal, ±inf from 0)."""
    if a == b:
        return 0.0
    if a == 0:
        return math.copysign(math.inf, b)
    return (b - a) / abs(a) * 100


def compare(a: BenchResult, b: BenchResult) -> list[tuple[str, float, float, float]]:
    """(metric, a, b, change % from a to b) for every metric both results report."""
    mb = metrics(b)
    return [
        (name, va, vb, change_pct(va, vb))
        for name, va in metrics(a).items()
        if va is not None and (vb := mb[name]) is not None
    ]


def higher_is_better(metric: str) -> bool:
    """Throughputs improve upwards, latencies downwards."""
    return metric in THROUGHPUTS


def format_table(result: BenchResult, *, title: str | None = None) -> Table:
    """A rich table of one result: counts and throughputs, then one row per latency."""
    table = Table(title=title or f"bench {result.config.model} @ {result.config.base_url}")
    for column in ("metric", "mean", "median", "p90", "p99"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    table.add_row("requests ok / failed", f"{result.completed} / {result.failed}", "", "", "")
    table.add_row("duration s", f"{result.duration_s:.2f}", "", "", "")
    for name in THROUGHPUTS:
        table.add_row(f"{name.replace('_', ' ')} {UNITS[name]}", f"{getattr(result, name):.2f}", "", "", "")
    for name in LATENCIES:
        stats: Stats = getattr(result, name)
        table.add_row(f"{name} ms", *(_num(getattr(stats, stat)) for stat in STAT_FIELDS))
    return table


def format_compare(a: BenchResult, b: BenchResult, *, labels: tuple[str, str] = ("a", "b")) -> Table:
    """A rich table of ``compare(a, b)``; a change for the better is green, for the worse red."""
    table = Table(title=f"{labels[0]} -> {labels[1]}")
    table.add_column("metric")
    for column in (*labels, "change"):
        table.add_column(column, justify="right")
    for metric, va, vb, pct in compare(a, b):
        table.add_row(metric, _num(va), _num(vb), _change(metric, pct))
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _change(metric: str, pct: float) -> str:
    if pct == 0 or math.isnan(pct):
        return f"{pct:+.1f}%"
    better = (pct > 0) == higher_is_better(metric)
    return f"[{'green' if better else 'red'}]{pct:+.1f}%[/]"
