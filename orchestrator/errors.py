"""The one exception tree of orch.

Every error a user can meet derives from OrchError and renders as one line.
Third-party errors (YAML, Pydantic, Paramiko, httpx, prometheus_client, the
controller's filesystem) are translated where they enter, with
``raise ... from exc``; the CLI catches OrchError alone.

    OrchError
    ├── ConfigError          bad playbook or inventory (file:line)
    ├── SecretError          a secret could not be read on the controller
    ├── HostError            something failed on one host (names the host)
    │   ├── UnreachableError     SSH could not connect or authenticate
    │   ├── HostKeyError         the host key is unknown or does not match
    │   ├── CommandError         a remote command exited non-zero
    │   └── GateError            the readiness gate failed (carries the journal tail)
    ├── RevisionError        a requested revision does not exist
    ├── AnswerError          a server's HTTP answer is unusable (unreachable, not the expected format)
    └── OutputError          a file orch writes on the controller could not be written (names the path)
"""

from __future__ import annotations


class OrchError(Exception):
    """Base of every error orch raises on purpose."""


class ConfigError(OrchError):
    """A playbook or inventory is invalid; names the file and line."""

    def __init__(self, message: str, *, file: str, line: int | None = None) -> None:
        self.file = file
        self.line = line
        self.reason = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")


class SecretError(OrchError):
    """A secret named by a playbook could not be read on the controller."""


class RevisionError(OrchError):
    """A revision asked for does not exist on a host."""


class AnswerError(OrchError):
    """A server's HTTP answer could not be used: no connection, an error status, or the wrong format."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: {reason}")


class OutputError(OrchError):
    """A file orch writes on the controller (``--out``, ``--save``) could not be written."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: cannot write: {reason}")


class HostError(OrchError):
    """Something failed on one host."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"{host}: {message}")


class UnreachableError(HostError):
    """The host could not be reached or logged in to."""


class HostKeyError(HostError):
    """The host's SSH key is unknown to known_hosts or does not match it."""


class CommandError(HostError):
    """A remote command exited non-zero."""

    def __init__(self, host: str, *, command: str, exit_code: int, stderr: str) -> None:
        self.command = command
        self.exit_code = exit_code
        self.stderr = stderr
        tail = " | ".join(stderr.strip().splitlines()[-3:]) or "(no stderr)"
        super().__init__(host, f"`{_short(command)}` exited {exit_code}: {tail}")


class GateError(HostError):
    """The readiness gate failed; ``journal`` holds the unit's last log lines."""

    def __init__(self, host: str, message: str, *, journal: str = "") -> None:
        self.journal = journal
        super().__init__(host, message)


def _short(command: str, limit: int = 120) -> str:
    one_line = " ".join(command.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"
