"""Runs commands on the controller itself (``connection: local``), without SSH."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from ..errors import CommandError, HostError
from ..host.commands import Command
from ..host.state import HEARTBEAT_S
from .base import Heartbeat, Held, Result, checked, shell_of


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

    def open(self) -> None:
        return None

    def hold(self, command: Command, *, until: str, timeout: float) -> Held | Result:
        proc = subprocess.Popen(
            ["/bin/bash", "-c", shell_of(command)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdin is not None
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        seen: list[str] = []
        try:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                if line == until:
                    return ProcessHold(proc)
                seen.append(line)
        finally:
            timer.cancel()
        _, err = proc.communicate()
        return Result("\n".join(seen), err.decode(errors="replace"), proc.returncode)

    def close(self) -> None:
        return None


class ProcessHold:
    """A local command held open; stdin gets the heartbeat, closing it releases the command."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._beat = Heartbeat(self._send, HEARTBEAT_S)

    def _send(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(b"\n")
        self._proc.stdin.flush()

    def alive(self) -> bool:
        return not self._beat.failed and self._proc.poll() is None

    def release(self) -> None:
        self._beat.stop()
        with contextlib.suppress(OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()
