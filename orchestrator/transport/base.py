"""The one interface every connection implements: run a built command, close."""

from __future__ import annotations

import codecs
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import CommandError
from ..host.commands import Command, wrap_sudo


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str
    exit_code: int


@dataclass(frozen=True)
class Ended:
    """How a command seen by an ``Observer`` ended: an exit code, held open, an error, or none (a copy)."""

    seconds: float
    exit_code: int | None = None
    held: bool = False
    error: str = ""


class Observer(Protocol):
    """Told of every command a transport runs for a verb (``-v``): as it starts, and as it ends."""

    def started(self, host: str, command: Command) -> None: ...

    def ended(self, host: str, command: Command, how: Ended) -> None: ...


class Transport(Protocol):
    """A connection to one host. Implementations translate their own errors."""

    name: str

    def run(self, command: Command, *, timeout: float | None = None, check: bool = True) -> Result: ...

    def stream(self, command: Command, on_line: Callable[[str], None]) -> int:
        """Run until the command ends (its stdin sent first), passing each stdout line as it comes.

        Returns the exit code.
        """
        ...

    def put(self, local: Path, remote: str, *, progress: Callable[[int, int], None] | None = None) -> None:
        """Copy a controller file to ``remote`` (a path the login user can write).

        ``progress`` is called with (bytes sent, file size) as the copy goes.
        """
        ...

    def open(self) -> None:
        """Connect now (connections otherwise open at their first command); errors as ``run``'s."""
        ...

    def hold(self, command: Command, *, until: str, timeout: float) -> Held | Result:
        """Start a command that keeps running for the rest of the verb (a lock holder).

        Returns a ``Held`` once the command prints the line ``until``; the command's whole
        ``Result`` if it ends first. While held, a heartbeat line goes to its stdin every few
        seconds; releasing (or losing the connection) closes its stdin.
        """
        ...

    def close(self) -> None: ...


class Held(Protocol):
    """A command kept running by ``Transport.hold``."""

    def alive(self) -> bool:
        """Whether the command still runs (so whatever it holds is still held)."""
        ...

    def release(self) -> None: ...


class Heartbeat:
    """Sends a line every ``interval`` seconds through ``send`` until stopped or a send fails."""

    def __init__(self, send: Callable[[], None], interval: float) -> None:
        self._send = send
        self._interval = interval
        self._stop = threading.Event()
        self.failed = False
        self._thread = threading.Thread(target=self._beat, daemon=True, name="orch-heartbeat")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._send()
            except (OSError, EOFError, ValueError):
                self.failed = True
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 1)


def shell_of(command: Command) -> str:
    return wrap_sudo(command.script) if command.sudo else command.script


def checked(name: str, command: Command, result: Result, *, check: bool) -> Result:
    """Raise CommandError for a non-zero exit when ``check`` is set."""
    if check and result.exit_code != 0:
        raise CommandError(name, command=command.describe(), exit_code=result.exit_code, stderr=result.stderr)
    return result


class LineWriter:
    """Calls ``on_line`` for every complete line of the bytes written to it (UTF-8, a character split
    between two writes kept whole, undecodable bytes replaced); ``close`` passes on a last line that has
    no newline."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""

    def write(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + self._decoder.decode(data)).split("\n")
        for line in lines:
            self.on_line(line)

    def close(self) -> None:
        if tail := self._buffer + self._decoder.decode(b"", final=True):
            self.on_line(tail)
        self._buffer = ""
