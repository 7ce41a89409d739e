"""The one interface every connection implements: run a built command, close."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..commands import Command, wrap_sudo
from ..errors import CommandError


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str
    exit_code: int


class Transport(Protocol):
    """A connection to one host. Implementations translate their own errors."""

    name: str

    def run(self, command: Command, *, timeout: float | None = None, check: bool = True) -> Result: ...

    def close(self) -> None: ...


def shell_of(command: Command) -> str:
    return wrap_sudo(command.script) if command.sudo else command.script


def checked(name: str, command: Command, result: Result, *, check: bool) -> Result:
    """Raise CommandError for a non-zero exit when ``check`` is set."""
    if check and result.exit_code != 0:
        raise CommandError(name, command=command.describe(), exit_code=result.exit_code, stderr=result.stderr)
    return result
