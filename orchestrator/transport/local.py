"""Runs commands on the controller itself (``connection: local``), without SSH."""

from __future__ import annotations

import subprocess

from ..commands import Command
from ..errors import CommandError
from .base import Result, checked, shell_of


class LocalTransport:
    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, command: Command, *, timeout: float | None = None, check: bool = True) -> Result:
        try:
            proc = subprocess.run(
                ["/bin/bash", "-c", shell_of(command)],
                input=command.stdin or b"",
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(
                self.name, command=command.describe(), exit_code=-1, stderr=f"timed out after {timeout}s"
            ) from exc
        result = Result(
            proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"), proc.returncode
        )
        return checked(self.name, command, result, check=check)

    def close(self) -> None:
        return None
