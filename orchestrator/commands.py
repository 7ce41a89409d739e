"""Every shell command orch runs on a host is built and quoted here, and only here.

Pure: returns ``Command`` values (a shell string, optional stdin, whether it
needs sudo); transports execute them. Paths starting with ``~/`` are expanded
against ``$HOME`` on the host.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

Scope = Literal["system", "user"]
MARK = "@@orch"
USER_ENV = 'export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/run/user/$(id -u)}"; '


@dataclass(frozen=True)
class Command:
    script: str
    stdin: bytes | None = None
    sudo: bool = False
    # Shown in errors and logs instead of the script (scripts can be long).
    label: str = ""

    def describe(self) -> str:
        return self.label or self.script


def qpath(path: str) -> str:
    """Quote a host path; ``~/x`` stays relative to the login user's home."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def systemctl(scope: Scope, *args: str) -> str:
    base = "systemctl --user" if scope == "user" else "systemctl"
    prefix = USER_ENV if scope == "user" else ""
    return prefix + " ".join([base, *(shlex.quote(a) for a in args)])


def journalctl(scope: Scope, unit: str, *, lines: int, follow: bool = False) -> str:
    base = "journalctl --user" if scope == "user" else "journalctl"
    follow_flag = " -f" if follow else ""
    return f"{_prefix(scope)}{base} -u {shlex.quote(unit)} -n {lines} --no-pager -o short-iso{follow_flag}"


def _prefix(scope: Scope) -> str:
    return USER_ENV if scope == "user" else ""


def write_file(path: str, *, mode: int, sudo: bool, content: bytes) -> Command:
    """Write atomically: a temp file beside the target (same filesystem), then rename."""
    target = qpath(path)
    script = (
        f'set -e; umask 077; t={target}; mkdir -p "$(dirname "$t")"; '
        f'tmp=$(mktemp "$t.orch-XXXXXX"); cat >"$tmp"; chmod {mode:o} "$tmp"; mv -f "$tmp" "$t"'
    )
    return Command(script, stdin=content, sudo=sudo, label=f"write {path}")


def remove_file(path: str, *, sudo: bool) -> Command:
    return Command(f"rm -f {qpath(path)}", sudo=sudo, label=f"remove {path}")


def daemon_reload(scope: Scope, *, sudo: bool) -> Command:
    return Command(systemctl(scope, "daemon-reload"), sudo=sudo)


def unit_action(scope: Scope, action: str, unit: str, *, sudo: bool) -> Command:
    return Command(systemctl(scope, action, unit), sudo=sudo)


SHOW_PROPS = "LoadState,ActiveState,SubState,UnitFileState,NRestarts,MainPID,ActiveEnterTimestamp,Result"


def unit_state(scope: Scope, unit: str, *, sudo: bool, journal_lines: int = 1) -> Command:
    """The unit's properties, then its last journal lines (for the progress line)."""
    script = (
        f"{systemctl(scope, 'show', unit, '-p', SHOW_PROPS)}; echo {MARK}journal; "
        f"{journalctl(scope, unit, lines=journal_lines)} 2>/dev/null | grep -v '^-- ' || true"
    )
    return Command(script, sudo=sudo, label=f"state of {unit}")


LEFT_MARK = "orch-left:"
# The unit's main process and all its descendants (EngineCore, TP workers), before it stops.
_TREE = (
    'p=$({show}); tree=$(ps -eo pid=,ppid= | awk -v r="$p" '
    "'BEGIN{{a[r]=1}} {{pp[$1]=$2}} END{{if (r>0) do {{c=0; for (x in pp) if (!(x in a) && (pp[x] in a)) "
    "{{a[x]=1; c=1}}}} while (c); if (r>0) for (x in a) print x}}')"
)
# Which of them outlived the stop: each would hold memory (GPU memory, on a GPU host) the next start needs.
_LEFT = (
    'left=""; for k in $tree; do c=$(cat /proc/$k/comm 2>/dev/null) && left="$left $k:$c"; done; '
    f'echo "{LEFT_MARK}$left"'
)


def stop(scope: Scope, unit: str, *, sudo: bool) -> Command:
    """Stop, then report any of the unit's processes still alive."""
    tree = _TREE.format(show=systemctl(scope, "show", "-p", "MainPID", "--value", unit))
    script = f"{tree}; {systemctl(scope, 'stop', unit)}; {_LEFT}"
    return Command(script, sudo=sudo, label=f"stop {unit}")


def restart(scope: Scope, unit: str, *, sudo: bool) -> Command:
    """Stop (reporting survivors), start, and report NRestarts: the base for detecting a crash."""
    tree = _TREE.format(show=systemctl(scope, "show", "-p", "MainPID", "--value", unit))
    script = (
        f"{systemctl(scope, 'reset-failed', unit)} 2>/dev/null || true; {tree}; "
        f"{systemctl(scope, 'stop', unit)}; {_LEFT}; "
        f"{systemctl(scope, 'start', unit)} && {systemctl(scope, 'show', unit, '-p', 'NRestarts')}"
    )
    return Command(script, sudo=sudo, label=f"restart {unit}")


def read_files(paths: dict[str, str]) -> str:
    """A script section printing each file base64-encoded after a marker; absent files print nothing."""
    parts = []
    for key, path in paths.items():
        q = qpath(path)
        parts.append(f'if [ -f {q} ]; then echo "{MARK}file {key}"; base64 -w0 {q}; echo; fi')
    return "; ".join(parts)


def record_revision(state_dir: str, *, sudo: bool, tar: bytes) -> Command:
    """Unpack a revision (tar on stdin) as the next number, then point ``current`` at it."""
    d = qpath(state_dir)
    script = (
        f'set -e; umask 077; d={d}; mkdir -p "$d/revisions"; '
        'n=$(ls "$d/revisions" | grep -E "^[0-9]+$" | sort -n | tail -1); n=$(( ${n:-0} + 1 )); '
        'tmp=$(mktemp -d "$d/.new-XXXXXX"); tar -x -C "$tmp"; mv "$tmp" "$d/revisions/$n"; '
        'echo "$n" >"$d/current.tmp"; mv -f "$d/current.tmp" "$d/current"; echo "$n"'
    )
    return Command(script, stdin=tar, sudo=sudo, label=f"record revision in {state_dir}")


def set_current(state_dir: str, revision: int, *, sudo: bool) -> Command:
    d = qpath(state_dir)
    script = f'set -e; d={d}; echo {int(revision)} >"$d/current.tmp"; mv -f "$d/current.tmp" "$d/current"'
    return Command(script, sudo=sudo, label=f"set current revision {revision}")


def read_revision(state_dir: str, revision: int, *, sudo: bool) -> Command:
    base = f"{state_dir}/revisions/{int(revision)}"
    files = {name: f"{base}/{name}" for name in ("vllm.service", "vllm.env", "manifest.json")}
    return Command(read_files(files), sudo=sudo, label=f"read revision {revision}")


def list_revisions(state_dir: str, *, sudo: bool) -> Command:
    d = qpath(state_dir)
    script = (
        f"d={d}; for r in $(ls \"$d/revisions\" 2>/dev/null | grep -E '^[0-9]+$' | sort -n); do "
        f'echo "{MARK}rev $r"; base64 -w0 "$d/revisions/$r/manifest.json" 2>/dev/null; echo; done; '
        f'echo "{MARK}current"; cat "$d/current" 2>/dev/null || true'
    )
    return Command(script, sudo=sudo, label="list revisions")


def wrap_sudo(script: str) -> str:
    """Run a whole script under non-interactive sudo (never prompts; fails instead)."""
    return f"sudo -n sh -c {shlex.quote(script)}"
