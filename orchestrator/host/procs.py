"""Which orch deployment a process belongs to, read from the process itself; ending a deployment's leftovers.

A runner marks every process it starts, and the mark passes to every descendant:

- systemd puts a unit's processes in its cgroup (``/proc/PID/cgroup`` names
  ``/system.slice/orch-NAME.service``, or ``…/user@UID.service/…/orch-NAME.service`` for a user unit);
  a process that outlives its unit's stop stays in that cgroup.
- supervisord gives each program's process ``SUPERVISOR_PROCESS_NAME=orch-NAME`` in its environment,
  which children inherit (``/proc/PID/environ``); they keep it when their parent dies.

So a process is a deployment's by its mark, whether or not its parent still lives: the tree under
the unit's main PID is its live part, the rest are leftovers of an earlier start ("orphans"). Pure:
shell snippets and their parsers.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from ..core.layout import Layout

# sed expressions: a /proc file's matching line → "T PID KIND NAME".
_PID, _NAME = "^/proc/\\([0-9]*\\)/", "orch-\\([a-z0-9_-]*\\)"
_CG = f"{_PID}cgroup:[^:]*:[^:]*:"
_USER = "/user\\.slice/user-\\([0-9]*\\)\\.slice/user@[0-9]*\\.service/\\(app\\.slice/\\)\\{0,1\\}"
_SED = (
    f"-e 's|{_CG}/system\\.slice/{_NAME}\\.service$|T \\1 system \\2|p' "
    f"-e 's|{_CG}{_USER}{_NAME}\\.service$|T \\1 user-\\2 \\4|p' "
    f"-e 's|{_PID}environ:SUPERVISOR_PROCESS_NAME={_NAME}$|T \\1 supervisord \\2|p'"
)
# /proc/PID/stat → "P PID PPID STATE COMM" (the command name is the text between the first "(" and the last
# ")": it may hold spaces and parentheses).
_STAT = "'s/^\\([0-9]*\\) (\\(.*\\)) \\([A-Za-z]\\) \\([0-9]*\\) .*/P \\1 \\4 \\3 \\2/p'"
# Every marked process on the host: "T PID KIND NAME" lines (KIND: system, user-UID, supervisord), then
# "P PID PPID STAT COMM" for each of them, read from their /proc/PID/stat (no `ps`: it reads every
# process's). Zombies are left out where the lines are read.
LISTING = (
    "orch_t=$( { grep -H 'orch-[a-z0-9_-]*\\.service$' /proc/[0-9]*/cgroup; "
    "grep -aHo 'SUPERVISOR_PROCESS_NAME=orch-[a-z0-9_-]*' /proc/[0-9]*/environ; } 2>/dev/null "
    f"| sed -n {_SED} | sort -u); "
    '[ -z "$orch_t" ] || { printf \'%s\\n\' "$orch_t"; printf \'%s\\n\' "$orch_t" | { orch_p=""; '
    'while read -r _ orch_x _; do orch_p="$orch_p /proc/$orch_x/stat"; done; '
    f"sed -n {_STAT} $orch_p 2>/dev/null || :; }}; }}"  # a process that ended meanwhile is no failure
)
REAPED_MARK = "orch-reaped:"
# The login's (or sudo's) uid as a shell word: bash's EUID, else `id -u`, asked once a script
# (${orch_uid:=…} keeps the first answer).
UID = "${orch_uid:=${EUID:-$(id -u)}}"


@dataclass(frozen=True)
class Owner:
    """Whose a process is: the runner's kind (``system``, ``user-UID``, ``supervisord``), the deployment."""

    kind: str
    name: str


@dataclass(frozen=True)
class Proc:
    """One marked process."""

    pid: int
    ppid: int
    comm: str
    owner: Owner

    def describe(self) -> str:
        return f"{self.pid}:{self.comm}"


def owner_kind(layout: Layout, uid: int | None = None) -> str:
    """The kind of mark the runner of ``layout`` leaves; with no ``uid``, a shell word that prints it."""
    if layout.runner_name == "supervisord":
        return "supervisord"
    if layout.scope == "system":
        return "system"
    return f"user-{uid}" if uid is not None else f'"user-{UID}"'


def owner_of(layout: Layout, uid: int) -> Owner:
    return Owner(owner_kind(layout, uid), layout.name)


def parse(lines: Iterable[str]) -> tuple[Proc, ...]:
    """``LISTING``'s lines → the marked processes still alive, by PID."""
    tags: dict[int, Owner] = {}
    stats: dict[int, tuple[int, str, str]] = {}
    for line in lines:
        f = line.split(None, 4)
        if len(f) == 4 and f[0] == "T" and f[1].isdigit():
            tags.setdefault(int(f[1]), Owner(f[2], f[3]))
        elif len(f) == 5 and f[0] == "P" and f[1].isdigit() and f[2].isdigit():
            stats[int(f[1])] = (int(f[2]), f[3], f[4].strip())
    return tuple(
        Proc(pid, stats[pid][0], stats[pid][2], owner)
        for pid, owner in sorted(tags.items())
        if pid in stats and not stats[pid][1].startswith("Z")
    )


def live_tree(procs: Iterable[Proc], main_pid: int) -> frozenset[int]:
    """The PIDs of ``procs`` under the runner's main PID (the main process included)."""
    by_pid = {p.pid: p for p in procs}
    live: set[int] = set()
    if main_pid <= 0:
        return frozenset()
    for p in by_pid.values():
        seen: set[int] = set()
        cur: Proc | None = p
        while cur is not None and cur.pid not in seen:
            seen.add(cur.pid)
            if main_pid in (cur.pid, cur.ppid):
                live |= seen
                break
            cur = by_pid.get(cur.ppid)
    return frozenset(live)


def orphans(procs: Iterable[Proc], main_pid: int) -> tuple[Proc, ...]:
    """A deployment's marked processes that are not under its main process: leftovers of an earlier start."""
    mine = tuple(procs)
    live = live_tree(mine, main_pid)
    return tuple(p for p in mine if p.pid not in live)


def mine_script(layout: Layout) -> str:
    """The PIDs marked as ``layout``'s deployment, one a line (read on the host, at the moment it runs)."""
    kind, name = owner_kind(layout), shlex.quote(layout.name)
    return f"{{ {LISTING}; }} | awk -v k={kind} -v n={name} '$1==\"T\" && $3==k && $4==n {{print $2}}'"


def reap_script(layout: Layout, *, keep: str = "") -> str:
    """End the processes marked as ``layout``'s deployment, except the PIDs in the shell variable ``keep``.

    TERM first, then KILL to what is left after 5 s; prints ``orch-reaped: PID:COMM …`` (what it ended).
    Nothing unmarked is touched: the PIDs come from the marks, read at the moment this runs.
    """
    skip = f'case " $(echo ${keep}) " in *" $orch_q "*) continue;; esac; ' if keep else ""
    return (
        f'orch_r=""; for orch_q in $({mine_script(layout)}); do {skip}'
        'orch_c=$(cat /proc/$orch_q/comm 2>/dev/null) && kill -TERM "$orch_q" 2>/dev/null '
        '&& orch_r="$orch_r $orch_q:$orch_c"; done; '
        'for _ in 1 2 3 4 5 6 7 8 9 10; do orch_a=""; for orch_x in $orch_r; do '
        'orch_s=$(ps -o stat= -p "${orch_x%%:*}" 2>/dev/null) && [ "${orch_s#Z}" = "$orch_s" ] '
        "&& orch_a=1; done; "
        '[ -z "$orch_a" ] && break; sleep 0.5; done; '
        'for orch_x in $orch_r; do kill -KILL "${orch_x%%:*}" 2>/dev/null; done; '
        f'echo "{REAPED_MARK}$orch_r"'
    )


def reaped(output: str) -> list[str]:
    """What ``reap_script`` ended, as ``PID:COMM``."""
    for line in output.splitlines():
        if line.startswith(REAPED_MARK):
            return line[len(REAPED_MARK) :].split()
    return []
