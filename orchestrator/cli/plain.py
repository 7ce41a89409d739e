"""Tables for a pipe or a file: aligned plain text, every cell whole, one line per row.

A terminal gets rich's boxed tables, fitted to its width; anywhere else the width means nothing,
and a cut cell (``acti…``) is a lost value, so the same ``Table`` is written as plain columns
two spaces apart, with no styles, no box and no trailing spaces: it reads in a file and greps
one row per line.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

EMPTY = "-"
GAP = "  "


def cell_text(cell: RenderableType) -> str:
    """A cell as one line of plain text: markup read, styles dropped, its lines joined with ``; ``."""
    if isinstance(cell, Text):
        text = cell.plain
    elif isinstance(cell, str):
        text = Text.from_markup(cell, emoji=False).plain
    else:
        text = str(cell)
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or EMPTY


def plain_table(table: Table) -> str:
    """``table`` as aligned lines: its title, a header line (when it shows one), then its rows
    (numbers stay right-aligned where the table says so)."""
    columns = [[cell_text(cell) for cell in column.cells] for column in table.columns]
    rows = [list(row) for row in zip(*columns, strict=True)]
    if table.show_header:
        rows.insert(0, [cell_text(column.header) for column in table.columns])
    widths = [max((cell_len(row[i]) for row in rows), default=0) for i in range(len(table.columns))]
    lines = [cell_text(table.title)] if table.title else []
    right = [column.justify == "right" for column in table.columns]
    for row in rows:
        padded = [_pad(cell, width, right=r) for cell, width, r in zip(row, widths, right, strict=True)]
        lines.append(GAP.join(padded).rstrip())
    return "\n".join(lines)


def _pad(cell: str, width: int, *, right: bool) -> str:
    space = " " * (width - cell_len(cell))
    return space + cell if right else cell + space
