"""Where a deployment lives on a host: its unit, env file and state folder, and the names its runner uses.

Pure naming, no I/O and no commands: ``host.runners`` builds the commands from these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .model import Host

RunnerName = Literal["systemd", "supervisord"]
Scope = Literal["system", "user"]
Role = Literal["unit", "env"]
ROLES: tuple[Role, ...] = ("env", "unit")
SUPERVISOR_CONF_DIR = "/etc/supervisor/conf.d"


@dataclass(frozen=True)
class Layout:
    """Where a deployment's files live on a host, and which runner manages it.

    Paths under the user's home start with ``~/``; commands expand them.
    """

    scope: Scope
    name: str
    runner_name: RunnerName = "systemd"
    conf_dir: str | None = None

    @classmethod
    def of(cls, host: Host, name: str) -> Layout:
        return cls(host.scope, name, host.runner, host.supervisor_conf_dir)

    @property
    def unit_path(self) -> str:
        if self.runner_name == "supervisord":
            return supervisor_conf_path(self.conf_dir or SUPERVISOR_CONF_DIR, f"orch-{self.name}")
        base = "/etc/systemd/system" if self.scope == "system" else "~/.config/systemd/user"
        return f"{base}/orch-{self.name}.service"

    @property
    def env_path(self) -> str:
        base = "/etc/orch" if self.scope == "system" else "~/.config/orch"
        return f"{base}/{self.name}.env"

    @property
    def state_dir(self) -> str:
        return f"/var/lib/orch/{self.name}" if self.scope == "system" else f"~/.local/state/orch/{self.name}"

    @property
    def env_file_directive(self) -> str:
        """The env file as the unit names it (``%h`` is the user's home in user units)."""
        return self.env_path.replace("~/", "%h/", 1)

    def path(self, role: Role) -> str:
        return self.unit_path if role == "unit" else self.env_path


def program(unit: str) -> str:
    """The supervisord program name of a unit name (``orch-x.service`` → ``orch-x``)."""
    return unit.removesuffix(".service")


def log_path(unit: str) -> str:
    return f"/var/log/{program(unit)}.log"


def supervisor_conf_path(conf_dir: str, unit: str) -> str:
    return f"{conf_dir}/{program(unit)}.conf"
