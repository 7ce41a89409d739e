"""A transport that tells an ``Observer`` of each command it passes on: the one seam ``-v`` watches.

Every kind of call goes through it (run, stream, hold, put, open), whichever transport is
inside, so what is shown is exactly what ran. The observer sees the ``Command`` — its label,
script and whether it has stdin — never the stdin's bytes or the command's output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import HostError
from ..host.commands import Command
from .base import Ended, Held, Observer, Result, Transport, checked

T = TypeVar("T")


class Observed:
    def __init__(self, inner: Transport, observer: Observer) -> None:
        self.inner = inner
        self.observer = observer
        self.name = inner.name

    def run(self, command: Command, *, timeout: float | None = None, check: bool = True) -> Result:
        # The inner transport does not check, so the exit code is seen before a CommandError is raised.
        result = self._watch(command, lambda: self.inner.run(command, timeout=timeout, check=False))
        return checked(self.name, command, result, check=check)

    def stream(self, command: Command, on_line: Callable[[str], None]) -> int:
        return self._watch(command, lambda: self.inner.stream(command, on_line))

    def put(self, local: Path, remote: str, *, progress: Callable[[int, int], None] | None = None) -> None:
        copy = Command("", label=f"upload {local} to {remote}")
        self._watch(copy, lambda: self.inner.put(local, remote, progress=progress))

    def open(self) -> None:
        self._watch(Command("", label="connect"), self.inner.open)

    def hold(self, command: Command, *, until: str, timeout: float) -> Held | Result:
        return self._watch(command, lambda: self.inner.hold(command, until=until, timeout=timeout))

    def close(self) -> None:
        self.inner.close()

    def _watch(self, command: Command, call: Callable[[], T]) -> T:
        self.observer.started(self.name, command)
        start = time.monotonic()
        try:
            value = call()
        except Exception as exc:
            error = str(exc).removeprefix(f"{exc.host}: ") if isinstance(exc, HostError) else str(exc)
            self.observer.ended(self.name, command, Ended(time.monotonic() - start, error=error or repr(exc)))
            raise
        seconds = time.monotonic() - start
        if isinstance(value, Result):
            how = Ended(seconds, exit_code=value.exit_code)
        elif isinstance(value, int):
            how = Ended(seconds, exit_code=value)
        else:
            how = Ended(seconds, held=value is not None)
        self.observer.ended(self.name, command, how)
        return value
