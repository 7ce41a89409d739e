"""A plan on the terminal: a rule per target, its diffs and its changes; or the same as JSON.

The lines are written straight to the console's file, styled with rich's own styles
(``Style.render`` for the console's colour system): rich renders a printed Text at some 50 µs a
line, and a plan of 1,000 targets has 40,000 lines. Nothing in a line is read as markup or
emoji; characters a terminal would act on or not show appear as escapes, highlighted.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.console import COLOR_SYSTEMS
from rich.style import Style

from .output import Checks, check_json, out, result_json

if TYPE_CHECKING:
    from ..core.model import Deployment
    from ..hostrun import Result
    from ..observe.gpu import Check
    from ..plan import TargetPlan

DIFF_STYLES = {"+": "green", "-": "red", "@": "cyan"}
MARKS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "error": ("✗", "red")}


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
        if out.is_terminal:
            out.print_json(data=data)
        else:  # as print_json writes it, without its highlighter's time
            _write([json.dumps(data, indent=2, ensure_ascii=False)])
        return
    for p in plans:
        _write([*plan_lines(p), *check_lines(checks.get((p.host, p.deployment), []))])
    changed = sum(p.changed for p in plans)
    restarts = sum(p.restarts for p in plans)
    note = " (offline: compared with nothing)" if offline else ""
    end = f"{changed} of {len(plans)} to change, {restarts} restart(s){note}."
    _write([f"{paint('✗ ' + e.host, 'red')} {shown(f'{e.deployment}: {e.message}')}" for e in errors])
    _write(["", f"{paint('Plan:', 'bold')} {shown(end)}"])


def show_rollout(plans: list[TargetPlan], deployments: Sequence[Deployment]) -> None:
    """A line per deployment taken in batches or behind a router, and per multi-node deployment: the order
    a rollout takes."""
    from ..waves import describe

    _write([paint(line, "bold") for line in describe(plans, {d.name: d for d in deployments})])


def plan_lines(p: TargetPlan) -> list[str]:
    """One target's part of the plan: a rule naming it, its diffs, then its changes."""
    rev = f"revision {p.facts.current_revision or '-'}"
    node = f"; {p.desired.node.describe()}" if p.desired.node else ""
    header = (
        f"{p.host} · {p.deployment} ({p.desired.unit_name}, {p.desired.layout.scope}; "
        f"now {p.facts.unit.describe()}, {rev}{node})"
    )
    lines = [rule(header)]
    for d in p.diffs:
        if d.secret_only:
            lines.append(f"  {shown(d.path)}: {paint('secret values change (masked)', 'yellow')}")
        lines += [diff_line(line) for line in (d.text.removesuffix("\n").split("\n") if d.text else ())]
    if not p.changed:
        lines.append("  " + paint("no changes", "green"))
    lines += [f"  {paint('~', 'yellow')} {shown(c.summary())}" for c in p.changes]
    return lines


def check_lines(checks: list[Check]) -> list[str]:
    """The preflight checks that did not pass."""
    return [
        f"  {paint(*MARKS[c.severity])} preflight {shown(c.name)}: {shown(c.message)}"
        for c in checks
        if c.severity != "ok"
    ]


def diff_line(line: str) -> str:
    """A diff line as the file holds it, coloured by its first character."""
    style = "bold" if line.startswith(("+++", "---")) else DIFF_STYLES.get(line[:1], "")
    return shown(line, style)


def rule(title: str) -> str:
    """``title`` in bold, then a line to the console's width (rich's left-aligned rule) on a terminal it
    fits; else (a pipe, a file, a narrow terminal) ``── title`` on one line, never cut."""
    if not out.is_terminal or cell_len(title) + 6 > out.width:
        return "── " + paint(title, "bold")
    fill = out.width - cell_len(title) - 1
    line = ("─" if out.encoding.startswith("utf") else "-") * fill
    return paint(title, "bold") + (" " + paint(line, "bright_green") if fill > 0 else "")


def shown(text: str, style: str = "") -> str:
    """``text`` in ``style``, its unprintable characters (but tabs) as escapes, in reverse video."""
    if text.replace("\t", " ").isprintable():
        return paint(text, style)
    runs = itertools.groupby(text, key=lambda ch: ch.isprintable() or ch == "\t")
    return "".join(
        paint("".join(chars), style) if plain else paint(_escaped(chars), f"{style} reverse")
        for plain, chars in runs
    )


def paint(text: str, style: str = "") -> str:
    system = COLOR_SYSTEMS.get(out.color_system or "")
    return _style(style).render(text, color_system=system) if style and system else text


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


def _escaped(chars: Iterable[str]) -> str:
    return "".join(ascii(ch)[1:-1] for ch in chars)


@functools.cache
def _style(name: str) -> Style:
    return Style.parse(name)


def _write(lines: list[str]) -> None:
    if lines:
        out.file.write("\n".join(lines) + "\n")
