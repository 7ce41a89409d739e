"""Connections to hosts: SSH (Fabric) or local, behind one interface."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..core.model import Host, Inventory
from ..errors import UnreachableError
from ..host.commands import Command
from .base import Ended, Held, Observer, Result, Transport
from .local import LocalTransport
from .observed import Observed
from .ssh import SSHTransport

__all__ = ["Ended", "Held", "Observed", "Observer", "Result", "Transport", "connect"]


def connect(name: str, host: Host, *, inventory: Inventory, inventory_path: Path) -> Transport:
    """A lazily opened connection to ``host``; nothing touches the network until the first run."""
    if host.connection == "local":
        return LocalTransport(name)
    base = inventory_path.parent
    known = Path(inventory.known_hosts).expanduser() if inventory.known_hosts else Path("~/.ssh/known_hosts")
    key = (base / Path(host.ssh_key).expanduser()).resolve() if host.ssh_key else None
    if key is not None and not key.is_file():
        return Unavailable(UnreachableError(name, f"SSH key {key} does not exist on this machine"))
    return SSHTransport(
        name,
        host,
        key_file=key,
        known_hosts=(base / known.expanduser()).resolve(),
        accept_new=inventory.host_key_policy == "accept-new",
        connect_timeout=inventory.connect_timeout_s,
    )


class Unavailable:
    """A host that cannot even be tried; every command fails with the reason."""

    def __init__(self, error: UnreachableError) -> None:
        self.name = error.host
        self.error = error

    def run(self, command: Command, *, timeout: float | None = None, check: bool = True) -> Result:
        raise self.error

    def stream(self, command: Command, on_line: Callable[[str], None]) -> int:
        raise self.error

    def put(self, local: Path, remote: str, *, progress: Callable[[int, int], None] | None = None) -> None:
        raise self.error

    def open(self) -> None:
        raise self.error

    def hold(self, command: Command, *, until: str, timeout: float) -> Held | Result:
        raise self.error

    def close(self) -> None:
        return None
