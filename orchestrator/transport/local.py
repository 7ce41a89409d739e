"""Runs commands on the controller itself (``connection: local``), without SSH."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from ..commands import Command
from ..errors import CommandError, HostError
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

    def stream(self, command: Command, on_line: Callable[[str], None]) -> int:
        with subprocess.Popen(
            ["/bin/bash", "-c", shell_of(command)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL if command.stdin is None else subprocess.PIPE,
        ) as proc:
            assert proc.stdout is not None
            if proc.stdin is not None:
                proc.stdin.write(command.stdin or b"")
                proc.stdin.close()
            for raw in proc.stdout:
                on_line(raw.decode(errors="replace").rstrip("\n"))
            return proc.wait()

    def put(self, local: Path, remote: str, *, progress: Callable[[int, int], None] | None = None) -> None:
        try:
            shutil.copyfile(local, remote)
        except OSError as exc:
            raise HostError(self.name, f"cannot copy {local} to {remote}: {exc.strerror}") from exc
        if progress is not None:
            size = local.stat().st_size
            progress(size, size)

    def close(self) -> None:
        return None
