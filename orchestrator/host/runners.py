"""The process managers a deployment can run under: systemd, or supervisord where there is no systemd.

Each runner builds the shell snippets for the same verbs (state, processes, reload,
enable, start, stop, logs) and reads its own state output back into one ``UnitState``;
everything above this module is the same for both. Pure: no I/O.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Protocol

from ..core.layout import (
    SUPERVISOR_CONF_DIR,
    Layout,
    RunnerName,
    Scope,
    log_path,
    program,
    supervisor_conf_path,
)

USER_ENV = 'export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/run/user/$(id -u)}"; '
SHOW_PROPS = "LoadState,ActiveState,SubState,UnitFileState,NRestarts,MainPID,ActiveEnterTimestamp,Result"


@dataclass(frozen=True)
class UnitState:
    """A deployment's process as its runner reports it, in systemd's words."""

    load_state: str = "not-found"
    active_state: str = "inactive"
    sub_state: str = "dead"
    unit_file_state: str = ""
    n_restarts: int = 0
    main_pid: int = 0
    active_since: str = ""
    result: str = ""
    journal_tail: str = ""
    # How long the main process has run at the read, where the runner says it (supervisord's uptime).
    up_s: float | None = None

    @property
    def running(self) -> bool:
        return self.active_state in ("active", "activating", "reloading") and self.sub_state != "auto-restart"

    @property
    def crashed(self) -> bool:
        return self.active_state == "failed" or self.sub_state == "auto-restart"

    @property
    def enabled(self) -> bool:
        return self.unit_file_state == "enabled"

    def describe(self) -> str:
        return f"{self.active_state}/{self.sub_state}"


class Runner(Protocol):
    """Shell snippets for one process manager; ``unit`` is the unit or program name."""

    def state(self, unit: str) -> str: ...

    def parse_state(self, props: dict[str, str]) -> UnitState: ...

    def main_pid(self, unit: str) -> str: ...

    def processes(self, unit: str) -> str: ...

    def reload(self, unit: str) -> str: ...

    def enable(self, unit: str) -> str: ...

    def disable(self, unit: str) -> str: ...

    def start(self, unit: str) -> str: ...

    def stop(self, unit: str) -> str: ...

    def logs(self, unit: str, *, lines: int, follow: bool) -> str: ...


@dataclass(frozen=True)
class Systemd:
    scope: Scope

    def _ctl(self, *args: str) -> str:
        user = self.scope == "user"
        return (USER_ENV if user else "") + " ".join(
            ["systemctl --user" if user else "systemctl", *(shlex.quote(a) for a in args)]
        )

    def state(self, unit: str) -> str:
        return f"{self._ctl('show', unit, '-p', SHOW_PROPS)} 2>/dev/null"

    def parse_state(self, props: dict[str, str]) -> UnitState:
        def num(key: str) -> int:
            value = props.get(key, "0")
            return int(value) if value.isdigit() else 0

        return UnitState(
            load_state=props.get("LoadState", "not-found"),
            active_state=props.get("ActiveState", "inactive"),
            sub_state=props.get("SubState", "dead"),
            unit_file_state=props.get("UnitFileState", ""),
            n_restarts=num("NRestarts"),
            main_pid=num("MainPID"),
            active_since=props.get("ActiveEnterTimestamp", ""),
            result=props.get("Result", ""),
        )

    def main_pid(self, unit: str) -> str:
        return self._ctl("show", "-p", "MainPID", "--value", unit)

    def processes(self, unit: str) -> str:
        # The main process's tree (systemd's stop returns once the unit's cgroup is empty: the tree is
        # what is left to see on a unit whose processes left its cgroup).
        return descendants(self.main_pid(unit))

    def reload(self, unit: str) -> str:
        # Only when the manager needs it: reloading re-reads every unit (about 0.15 CPU-s on a small host,
        # more on a big one). A unit it has loaded from its file as it is now needs none: systemd 246 and
        # later loads a new unit file on its own when it is first asked for it (as the reload's own
        # `show` does). A unit not loaded (older systemd), changed or removed gets the reload.
        show = self._ctl("show", unit, "-p", "LoadState,NeedDaemonReload")
        return (
            f's=$({show} 2>/dev/null); case "$s" in '
            "*LoadState=loaded*NeedDaemonReload=no*|*NeedDaemonReload=no*LoadState=loaded*) ;; "
            f"*) {self._ctl('daemon-reload')};; esac"
        )

    def enable(self, unit: str) -> str:
        # Without --no-reload, enable reloads the whole manager once more after the plan's own
        # daemon-reload (about 1 s on a busy host); the symlinks it makes are read at boot.
        return self._ctl("enable", "--no-reload", unit)

    def disable(self, unit: str) -> str:
        return self._ctl("disable", unit)

    def start(self, unit: str) -> str:
        return f"{self._ctl('reset-failed', unit)} 2>/dev/null || true; {self._ctl('start', unit)}"

    def stop(self, unit: str) -> str:
        return self._ctl("stop", unit)

    def logs(self, unit: str, *, lines: int, follow: bool) -> str:
        base = "journalctl --user" if self.scope == "user" else "journalctl"
        prefix = USER_ENV if self.scope == "user" else ""
        follow_flag = " -f" if follow else ""
        return f"{prefix}{base} -u {shlex.quote(unit)} -n {int(lines)} --no-pager -o short-iso{follow_flag}"


# supervisorctl status words → (ActiveState, SubState), in systemd's terms.
_SUPERVISOR_STATES = {
    "RUNNING": ("active", "running"),
    "STARTING": ("activating", "start"),
    "BACKOFF": ("activating", "auto-restart"),
    "STOPPING": ("deactivating", "stop"),
    "STOPPED": ("inactive", "dead"),
    "EXITED": ("inactive", "dead"),
    "FATAL": ("failed", "failed"),
    "UNKNOWN": ("failed", "unknown"),
}
_STATUS = re.compile(r"^\S+\s+([A-Z]+)(?:\s+pid (\d+), uptime (\S+))?")


@dataclass(frozen=True)
class Supervisord:
    """supervisord (the usual process manager in containers); programs live in ``conf_dir``."""

    conf_dir: str = SUPERVISOR_CONF_DIR

    def conf_path(self, unit: str) -> str:
        return supervisor_conf_path(self.conf_dir, unit)

    def state(self, unit: str) -> str:
        name = _program_word(unit)
        # status prints no pid while the program is STARTING; `pid` does (asked only then: each
        # supervisorctl is a Python process of its own). The process's start comes from /proc: status's
        # uptime has whole seconds, of two clocks each cut to the second (off by up to a second).
        return (
            f'orch_sv=$(supervisorctl status {name} 2>&1 | head -1); echo "SupervisorStatus=$orch_sv"; '
            'case "$orch_sv" in *" pid "*) orch_p=${orch_sv#*pid }; orch_p=${orch_p%%,*};; '
            f'*) orch_p=$({self.main_pid(unit)}); echo "SupervisorPid=$orch_p";; esac; '
            '{ read -r orch_u _ </proc/uptime && read -r orch_st </proc/"$orch_p"/stat; } 2>/dev/null '
            '&& echo "ProcStat=$orch_u ${orch_st##*) }"; '
            f"[ -f {shlex.quote(self.conf_path(unit))} ] && echo UnitFileState=enabled"
        )

    def parse_state(self, props: dict[str, str]) -> UnitState:
        m = _STATUS.match(props.get("SupervisorStatus", ""))
        enabled = props.get("UnitFileState", "")
        if not m or m.group(1) not in _SUPERVISOR_STATES:
            return UnitState(unit_file_state=enabled)
        active, sub = _SUPERVISOR_STATES[m.group(1)]
        started = props.get("SupervisorPid", "").strip()
        pid = (
            int(m.group(2)) if m.group(2) else int(started) if started.isdigit() and active != "failed" else 0
        )
        uptime = m.group(3) or ""
        up = _seconds(uptime)
        precise = _proc_up(props.get("ProcStat", "")) if pid else None
        # /proc's reading where it agrees with supervisord's (lxcfs gives a container its own uptime).
        if precise is not None and (up is None or abs(precise - up) < 1.5):
            up = precise
        return UnitState("loaded", active, sub, enabled, main_pid=pid, active_since=uptime, up_s=up)

    def main_pid(self, unit: str) -> str:
        return f"supervisorctl pid {_program_word(unit)} 2>/dev/null | grep -xE '[0-9]+' || echo 0"

    def processes(self, unit: str) -> str:
        # Every process with the program's mark (supervisord's SUPERVISOR_PROCESS_NAME, which children
        # inherit): read from /proc, where `supervisorctl pid` would put a Python start on a restart's path
        # before the stop. Leftovers of an earlier start carry it too: they hold what the next start needs.
        mark = shlex.quote(f"SUPERVISOR_PROCESS_NAME={program(unit)}")
        return (
            f"grep -lzx -- {mark} /proc/[0-9]*/environ 2>/dev/null "
            "| sed -n 's|^/proc/\\([0-9]*\\)/environ$|\\1|p'"
        )

    def reload(self, unit: str) -> str:
        # Only this program's group: `update` alone would apply anyone's pending changes.
        return f"supervisorctl reread >/dev/null && supervisorctl update {_program_word(unit)}"

    def enable(self, unit: str) -> str:
        return "true"  # autostart=true in the program's config

    def disable(self, unit: str) -> str:
        return "true"  # removing the config and reloading removes the program

    def start(self, unit: str) -> str:
        # Only ever after stop (commands.restart): one supervisorctl process (about 0.2 s of Python each),
        # and a stop that left the program running fails here ("already started") instead of passing.
        return f"supervisorctl start {_program_word(unit)}"

    def stop(self, unit: str) -> str:
        return f"supervisorctl stop {_program_word(unit)} >/dev/null || true"

    def logs(self, unit: str, *, lines: int, follow: bool) -> str:
        return f"tail -n {int(lines)}{' -F' if follow else ''} -- {shlex.quote(log_path(unit))}"


def descendants(main_pid: str) -> str:
    """A script printing the PID the command ``main_pid`` prints and those of all its descendants
    (EngineCore, TP workers), one a line; nothing for 0."""
    return (
        f'p=$({main_pid}); ps -eo pid=,ppid= | awk -v r="$p" '
        "'BEGIN{a[r]=1} {pp[$1]=$2} END{if (r>0) do {c=0; for (x in pp) if (!(x in a) && (pp[x] in a)) "
        "{a[x]=1; c=1}} while (c); if (r>0) for (x in a) print x}'"
    )


# Clock ticks a second, the unit of /proc/PID/stat's times (USER_HZ: 100 on every architecture Linux has now).
_USER_HZ = 100


def _proc_up(line: str) -> float | None:
    """How long a process has run, from ``/proc/uptime``'s first field followed by the process's
    ``/proc/PID/stat`` from its state on (field 3): its start time, field 22, is ``fields[20]`` here."""
    fields = line.split()
    if len(fields) < 21 or not fields[20].isdigit():
        return None
    try:
        uptime = float(fields[0])
    except ValueError:
        return None
    up = uptime - int(fields[20]) / _USER_HZ
    return up if up >= 0 else None


def _seconds(uptime: str) -> float | None:
    """supervisord's uptime (Python's timedelta as text, ``H:MM:SS``) in seconds; None for any other form."""
    parts = uptime.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    hours, minutes, seconds = map(int, parts)
    return float(hours * 3600 + minutes * 60 + seconds)


def _program_word(unit: str) -> str:
    """The program name as one shell word (supervisorctl reads options only before its action)."""
    return shlex.quote(program(unit))


def runner_for(name: RunnerName, scope: Scope, *, conf_dir: str | None = None) -> Runner:
    if name == "supervisord":
        return Supervisord(conf_dir) if conf_dir else Supervisord()
    return Systemd(scope)


def of(layout: Layout) -> Runner:
    """The runner that manages the deployment ``layout`` places."""
    return runner_for(layout.runner_name, layout.scope, conf_dir=layout.conf_dir)
