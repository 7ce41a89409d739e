"""What ``-v`` and ``-vv`` show of a verb's work on its hosts, as lines for the CLI to print.

``-v``: each command as it ends: host, label, exit code (or held, or the error), time taken.
``-vv``: also each command as it starts, with its script. Secret values the verb knows (resolved
from the playbook, read back from a host's env file or a revision) are hidden in every line, and a
command's stdin (env files, revision archives, a hub request with its token) is never shown, only
its size. HTTP requests a read verb makes itself (metrics, status's readiness probe) are one line each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from .core.masking import Masker
from .host.commands import Command
from .transport import Ended

INDENT = "    "


class Trace:
    """An ``Observer`` for the transports of one verb; ``sink`` prints a block of lines."""

    def __init__(self, level: int, sink: Callable[[str], None]) -> None:
        self.level = level
        self._sink = sink
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._masker = Masker()

    def hide(self, values: Iterable[str]) -> None:
        """Secret values to hide from now on (hosts run in parallel: safe from any thread)."""
        with self._lock:
            new = {v for v in values if v} - self._values
            if new:
                self._values |= new
                self._masker = Masker.build(self._values)

    def started(self, host: str, command: Command) -> None:
        if self.level >= 2:
            self._emit(started(host, command))

    def ended(self, host: str, command: Command, how: Ended) -> None:
        if self.level >= 1:
            self._emit(ended(host, command, how))

    def request(self, host: str, what: str, seconds: float, outcome: str) -> None:
        """One HTTP request (or a probe's few) made from the controller."""
        if self.level >= 1:
            self._emit(f"[{host}] {what} → {outcome} ({seconds:.2f}s)")

    def _emit(self, text: str) -> None:
        with self._lock:
            self._sink(self._masker.text(text))


def started(host: str, command: Command) -> str:
    """``[host] start: label``, then the script, indented, and the size of any stdin."""
    lines = [f"[{host}] start: {command.describe()}"]
    if command.script:
        via = " (as root through sudo -n)" if command.sudo else ""
        body = command.script.replace("\n", "\n" + INDENT + "  ")
        lines.append(f"{INDENT}script{via}: {body}")
    if command.stdin is not None:
        lines.append(f"{INDENT}stdin: {len(command.stdin)} bytes (not shown)")
    return "\n".join(lines)


def ended(host: str, command: Command, how: Ended) -> str:
    """``[host] label → exit 0 (0.42s)``."""
    if how.error:
        outcome = f"error: {how.error}"
    elif how.exit_code is not None:
        outcome = f"exit {how.exit_code}"
    else:
        outcome = "held" if how.held else "done"
    return f"[{host}] {command.describe()} → {outcome} ({how.seconds:.2f}s)"
