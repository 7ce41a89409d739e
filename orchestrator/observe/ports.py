"""Which TCP ports listen on a host, and which processes hold them; the port check on that. Pure.

``ss -ltnpH`` where the host has it; else the kernel's own tables, ``/proc/net/tcp`` and
``/proc/net/tcp6`` (listening sockets and their inodes), with the PIDs found through the
``socket:[INODE]`` links under ``/proc/PID/fd``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..core.model import Deployment
from ..host.commands import MARK
from .gpu import Check

_USERS = re.compile(r"pid=(\d+)")
_TABLES = "/proc/net/tcp /proc/net/tcp6"
# Listening sockets (state 0A): "ADDRESS:PORT(hex) INODE".
_LISTENING = f"awk 'FNR>1 && $4==\"0A\" {{print $2, $10}}' {_TABLES} 2>/dev/null"
_SOCKETS = (
    "find /proc/[0-9]*/fd -maxdepth 1 -lname 'socket:*' -printf '%h %l\\n' 2>/dev/null | "
    'awk -v w=" $(echo $orch_l | awk \'{for (i = 2; i <= NF; i += 2) printf "%s ", $i}\')" '
    '\'{i = $2; gsub(/[^0-9]/, "", i); split($1, d, "/"); '
    'if (i != "" && index(w, " " i " ")) print d[3], i}\''
)
SCRIPT = (
    f'if command -v ss >/dev/null; then echo "{MARK}listen"; ss -ltnpH; '
    f'else echo "{MARK}no-ss"; if [ -r /proc/net/tcp ]; then orch_l=$({_LISTENING}); '
    f'echo "{MARK}listen-proc"; printf \'%s\\n\' "$orch_l"; echo "{MARK}sockets"; {_SOCKETS}; fi; fi'
)

Listeners = dict[int, frozenset[int]]


def parse(sec: dict[str, list[str]]) -> Listeners | None:
    """Listening port → the PIDs holding it; None when the host could not tell."""
    if "no-ss" not in sec:
        return parse_ss(sec.get("listen", []))
    if "listen-proc" not in sec:
        return None
    return parse_proc(sec["listen-proc"], sec.get("sockets", []))


def parse_ss(lines: list[str]) -> Listeners:
    """``ss -ltnpH`` lines (empty PID sets when ss may not show other users' PIDs)."""
    out: Listeners = {}
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[3]:
            continue
        port = fields[3].rsplit(":", 1)[1]
        if port.isdigit():
            pids = frozenset(int(p) for p in _USERS.findall(line))
            out[int(port)] = out.get(int(port), frozenset()) | pids
    return out


def parse_proc(listening: list[str], sockets: list[str]) -> Listeners:
    """``/proc/net/tcp{,6}`` listening lines ("0100007F:1F40 4711") and "PID INODE" lines."""
    pids_of: dict[str, set[int]] = {}
    for line in sockets:
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit():
            pids_of.setdefault(fields[1], set()).add(int(fields[0]))
    out: Listeners = {}
    for line in listening:
        fields = line.split()
        if len(fields) != 2 or ":" not in fields[0]:
            continue
        try:
            port = int(fields[0].rsplit(":", 1)[1], 16)
        except ValueError:
            continue
        out[port] = out.get(port, frozenset()) | frozenset(pids_of.get(fields[1], set()))
    return out


def check_port(
    dep: Deployment,
    listeners: Listeners | None,
    *,
    own: frozenset[int],
    orphans: frozenset[int],
    who: Callable[[int], str],
    reap: bool,
) -> Check:
    """The deployment's port must be free, or held by the deployment itself.

    ``who`` names a PID that is neither the deployment's (another orch deployment by name);
    a leftover of the deployment holding it is freed only by ``--reap``.
    """
    port = dep.port
    if listeners is None:
        return Check(
            "port", True, "warn", f"port {port} not checked: the host has no `ss` and no /proc/net/tcp"
        )
    if port not in listeners:
        return Check("port", True, "ok", f"port {port} is free")
    holders = listeners[port]
    if holders and holders <= own:
        return Check("port", True, "ok", f"port {port} is held by this deployment")
    if not holders and own:
        return Check("port", True, "ok", f"port {port} is in use, presumably by this deployment (running)")
    if holders and holders <= own | orphans:
        left = ", ".join(f"pid {p}" for p in sorted(holders - own))
        if reap:
            return Check(
                "port",
                True,
                "ok",
                f"port {port} is held by {left}, left over by this deployment; --reap ends it",
            )
        return Check(
            "port",
            False,
            "error",
            f"port {port} is held by {left}, left over by this deployment: --reap ends it",
        )
    others = ", ".join(dict.fromkeys(who(p) for p in sorted(holders - own - orphans))) or "another process"
    return Check("port", False, "error", f"port {port} is in use by {others}; choose another port or stop it")
