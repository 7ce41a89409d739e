"""Running host commands for the test bed: one place that runs, times out and reports failures."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger("testbed")

TAIL_CHARS = 2000


class TestbedError(RuntimeError):
    """Anything the test bed could not do; the message says what and why."""

    __test__ = False  # not a test class, despite the name


class CommandError(TestbedError):
    """A command exited non-zero (or timed out); carries the command, exit code and output tail."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        tail = (stderr.strip() or stdout.strip())[-TAIL_CHARS:]
        super().__init__(
            f"command failed with exit code {returncode}: {shlex.join(self.argv)}\n"
            f"--- output tail ---\n{tail}"
        )


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 600,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    log_path: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv; raise CommandError on a non-zero exit when check is set.

    With log_path, stdout and stderr go to that file (for long, chatty builds) and the
    error message carries the file's tail instead.
    """
    log.debug("run: %s", shlex.join(argv))
    if log_path is not None:
        return _run_logged(argv, check=check, timeout=timeout, env=env, log_path=log_path)
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, 124, _text(exc.stdout), f"timed out after {timeout} s") from exc
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _run_logged(
    argv: Sequence[str],
    *,
    check: bool,
    timeout: float | None,
    env: Mapping[str, str] | None,
    log_path: Path,
) -> subprocess.CompletedProcess[str]:
    with log_path.open("a") as out:
        out.write(f"\n$ {shlex.join(argv)}\n")
        out.flush()
        try:
            proc = subprocess.run(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                env=None if env is None else dict(env),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(argv, 124, "", f"timed out after {timeout} s; log {log_path}") from exc
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, "", f"(log {log_path})\n{tail_of(log_path)}")
    return subprocess.CompletedProcess(list(argv), proc.returncode, "", "")


def tail_of(path: Path, chars: int = TAIL_CHARS) -> str:
    """The last chars characters of a text file ('' if it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment for chroot commands, so the controller's settings do not leak in."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    env.update(extra)
    return env
