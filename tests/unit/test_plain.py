"""Tables and headings off a terminal: plain aligned lines, every value whole, one row a line."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from orchestrator.cli.output import heading, revisions_table, show_table, status_table
from orchestrator.cli.plain import plain_table
from orchestrator.observe.benchreport import format_table, from_vllm_json

LONG_DETAIL = "pending revision 7 (apply by alice@a-rather-long-controller-name.example.org), not confirmed"


def row(host: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "host": host,
        "deployment": "qwen2.5-14b-instruct-production",
        "state": "active (running) since Tue 2026-12-01 14:02:00 UTC",
        "revision": 12,
        "pending": None,
        "vllm": "0.11.0+cpu",
        "ready": True,
        "restarts": 0,
        "gpus": [
            {
                "index": 0,
                "used_mib": 70000,
                "total_mib": 81559,
                "utilization_pct": 97,
                "deployment_mib": 69000,
            },
            {
                "index": 1,
                "used_mib": 69800,
                "total_mib": 81559,
                "utilization_pct": 96,
                "deployment_mib": 68800,
            },
        ],
        "tp_balance": {"balanced": True, "spread_pct": 0.3},
        "detail": LONG_DETAIL,
        "since": "",
    }
    return base | over


def piped(width: int = 80) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, highlight=False, soft_wrap=True, emoji=False), buffer


def test_a_status_table_in_a_pipe_keeps_every_value_whole_one_row_a_line() -> None:
    console, buffer = piped(width=40)
    show_table(status_table([row("gpu-server-in-rack-7"), row("h2", ready=False)]), console=console)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 3  # the header and one line per row, however long
    assert lines[0].split()[:3] == ["host", "deployment", "state"]
    first = lines[1]
    for whole in (
        "gpu-server-in-rack-7",
        "qwen2.5-14b-instruct-production",
        "active (running) since Tue 2026-12-01 14:02:00 UTC",
        LONG_DETAIL,
        "0: 69000 · 70000/81559 97%; 1: 68800 · 69800/81559 96%",  # a cell's lines, joined
        "0.3%",
    ):
        assert whole in first
    assert lines[2].startswith("h2 ") and " no " in lines[2]
    assert "…" not in buffer.getvalue() and "│" not in buffer.getvalue()
    assert all(line == line.rstrip() for line in lines)
    # Columns line up: each value starts where its header does.
    assert lines[1].index("qwen2.5") == lines[0].index("deployment") == lines[2].index("qwen2.5")


def test_empty_cells_read_as_a_dash_so_that_columns_stay_countable() -> None:
    console, buffer = piped()
    rows = [
        {"host": "h", "deployment": "d", "revision": 1, "state": "", "created": "", "by": "", "source": ""}
    ]
    show_table(revisions_table(rows), console=console)
    assert buffer.getvalue().splitlines()[1].split() == ["h", "d", "1", "-", "-", "-", "-"]


def test_on_a_terminal_the_table_is_boxed_and_fitted() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=60, force_terminal=True, color_system=None)
    show_table(status_table([row("gpu-server-in-rack-7")]), console=console)
    assert "│" in buffer.getvalue() or "┃" in buffer.getvalue()
    assert max(len(line) for line in buffer.getvalue().splitlines()) <= 60


def test_numbers_stay_right_aligned_and_the_title_comes_first() -> None:
    fixture = Path(__file__).parents[1] / "fixtures/vllm-0.26-gpu-tp2/bench-serve-result.json"
    result = replace(from_vllm_json(fixture.read_text()), duration_s=12.5, completed=1000, failed=0)
    lines = plain_table(format_table(result, title="obs on th1, revision 3")).splitlines()
    assert lines[0] == "obs on th1, revision 3"
    assert lines[1].split() == ["metric", "mean", "median", "p90", "p99"]
    ok_failed = next(line for line in lines if line.startswith("requests ok / failed"))
    duration = next(line for line in lines if line.startswith("duration s"))
    assert ok_failed.split()[-3:] == ["-", "-", "-"]  # empty cells read as "-"
    # Right-aligned in the "mean" column: the values end where the header does.
    end = lines[1].index("mean") + len("mean")
    assert ok_failed.index("1000 / 0") + len("1000 / 0") == duration.index("12.50") + len("12.50") == end


@pytest.mark.parametrize("terminal", [False, True])
def test_a_long_heading_is_never_cut(terminal: bool) -> None:
    title = "gpu-server-in-rack-7 · qwen2.5-14b-instruct (orch-qwen.service, system; now active)"
    for width in (40, 200):
        buffer = io.StringIO()
        console = Console(file=buffer, width=width, force_terminal=terminal, color_system=None)
        heading(f"[bold]{title}[/bold]", console=console)
        if terminal and width == 200:
            assert buffer.getvalue().startswith(f"{title} ──")  # a rule across the terminal
            assert len(buffer.getvalue().rstrip("\n")) == 200
        else:
            assert buffer.getvalue() == f"── {title}\n"
