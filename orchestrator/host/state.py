"""A deployment's state directory on its host: the lock, the revisions, which is current, which is pending.

    DIR/lock               flock(1) target, held through a changing verb by a process of its SSH session
    DIR/lock.holder        who holds it: one JSON line (by, pid, verb, since)
    DIR/revisions/N/       vllm.service, vllm.env, manifest.json; ``outcome`` when N never became current
    DIR/pending            JSON: revision N is being applied (by, verb, started, previous)
    DIR/pending.restarted  present once that verb has begun restarting the server
    DIR/current            the revision that last passed its readiness gate

A changing verb writes revision N and ``pending`` *before* any live file
changes, marks ``pending.restarted`` as it restarts, and makes N ``current``
only after the gate: an interrupted verb leaves a record that says exactly how
far it got. Commands are built here (pure); transports run them.
"""

from __future__ import annotations

import io
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.layout import ROLES, Role
from ..core.render import DesiredFile
from .commands import MARK, Command, qpath, read_files
from .markers import blocks, decode, sections

LOCKED = f"{MARK}locked"
BUSY = f"{MARK}busy"
LOCK_CONFLICT = 75  # flock -E: the exit code of a lock held by someone else
HEARTBEAT_S = 5.0
# The holder gives the lock up when the controller has been silent this long (a partition, a frozen laptop).
SILENCE_S = 15
_HOLD = (
    'for d in "$@"; do printf "%s\\n" "$0" >"$d/lock.holder"; done; '
    f'echo "{LOCKED}"; while timeout {SILENCE_S} sh -c "read -r x"; do :; done; exit 0'
)


@dataclass(frozen=True)
class Holder:
    """Who holds (or asks for) a lock."""

    by: str
    pid: int
    verb: str
    since: str

    def tojson_object(self) -> str:
        return json.dumps({"by": self.by, "pid": self.pid, "verb": self.verb, "since": self.since})

    def describe(self) -> str:
        return f"{self.by} (pid {self.pid}, orch {self.verb} since {self.since})"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        data = json_object(text)
        if data is None:
            return None
        pid = data.get("pid")
        return cls(
            str(data.get("by", "?")),
            pid if isinstance(pid, int) else 0,
            str(data.get("verb", "?")),
            str(data.get("since", "?")),
        )


@dataclass(frozen=True)
class Pending:
    """A revision that a verb began to apply and did not finish (or is finishing now)."""

    revision: int
    restarted: bool
    by: str = "?"
    verb: str = "?"
    started: str = "?"
    previous: int | None = None

    def describe(self) -> str:
        where = (
            "after restarting the server; the readiness gate did not confirm it"
            if self.restarted
            else f"before restarting; the server runs {_revision(self.previous)}'s process"
        )
        return (
            f"revision {self.revision} ({self.verb} by {self.by} at {self.started}) was interrupted {where}"
        )


def _revision(n: int | None) -> str:
    return f"revision {n}" if n is not None else "no revision"


def lock(dirs: list[str], *, holder: Holder, wait_s: float, sudo: bool) -> Command:
    """Take the lock of every state dir (sorted: no deadlock between waiters), then hold it until stdin ends.

    Prints ``@@orchlocked`` once held; or, when another holds one, ``@@orchbusy DIR`` and its holder.
    The holder reads a heartbeat line from stdin; EOF or SILENCE_S of silence ends it and frees the lock.
    """
    ordered = sorted(set(dirs))
    quoted = [qpath(d) for d in ordered]
    flag = "-n" if wait_s <= 0 else f"-w {wait_s:g}"
    nested = " ".join(f'flock {flag} -E {LOCK_CONFLICT} "$d{i}/lock"' for i in range(len(quoted)))
    assign = "; ".join(f"d{i}={q}" for i, q in enumerate(quoted))
    args = " ".join(f'"$d{i}"' for i in range(len(quoted)))
    there = " && ".join(f'[ -d "$d{i}" ]' for i in range(len(quoted)))  # no mkdir process once they are
    script = (
        f"umask 077; {assign}; {there} || mkdir -p {args} || exit 3; "
        f"{nested} sh -c {shlex.quote(_HOLD)} {shlex.quote(holder.tojson_object())} {args}; rc=$?; "
        f'if [ "$rc" -eq {LOCK_CONFLICT} ]; then for d in {args}; do '
        f'flock -n "$d/lock" true || {{ echo "{BUSY} $d"; cat "$d/lock.holder" 2>/dev/null; echo; }}; '
        f"done; fi; exit $rc"
    )
    return Command(script, sudo=sudo, label="lock " + " ".join(ordered))


def parse_busy(output: str) -> list[tuple[str, Holder | None]]:
    """The state dirs another verb holds, with their holders, from ``lock``'s output."""
    out: list[tuple[str, Holder | None]] = []
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{BUSY} "):
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            out.append((line[len(BUSY) + 1 :], Holder.parse(nxt)))
    return out


def begin(state_dir: str, *, tar: bytes, meta: dict[str, Any], sudo: bool) -> Command:
    """Unpack the revision (tar on stdin) as the next number and name it pending; prints the number.

    Nothing live changes here: a full disk or a damaged folder fails the verb before any file is switched.
    ``pending`` holds the number on its first line and ``meta`` (JSON) on its second.
    """
    d = qpath(state_dir)
    record = shlex.quote(json.dumps(meta, sort_keys=True))
    script = (
        f'set -e; umask 077; d={d}; [ -d "$d/revisions" ] || mkdir -p "$d/revisions"; '
        # the highest number, in the shell alone (no process per step: this runs on every change)
        'n=0; for r in "$d"/revisions/*; do r=${r##*/}; '
        'case $r in ""|*[!0-9]*) ;; *) [ "$r" -gt "$n" ] && n=$r;; esac; done; '
        # a number is never given twice, even when its folder was removed by hand
        'c=""; { read -r c <"$d/current"; } 2>/dev/null || :; case $c in ""|*[!0-9]*) ;; *) '
        '[ "$c" -gt "$n" ] && n=$c;; esac; '
        "n=$(( n + 1 )); "
        'tmp=$(mktemp -d "$d/.new-XXXXXX"); trap \'rm -rf "$tmp" "$d/pending.tmp"\' EXIT; '
        'tar -x -C "$tmp"; mv "$tmp" "$d/revisions/$n"; '
        f'{{ echo "$n"; printf "%s\\n" {record}; }} >"$d/pending.tmp"; '
        'rm -f "$d/pending.restarted"; mv -f "$d/pending.tmp" "$d/pending"; echo "$n"'
    )
    return Command(script, stdin=tar, sudo=sudo, label=f"record pending revision in {state_dir}")


def restarting(state_dir: str) -> str:
    """A script prefix marking the pending revision's restart as begun (run right before the restart)."""
    d = qpath(state_dir)
    return f"if [ -f {d}/pending ]; then : >{d}/pending.restarted || exit 1; fi"


def commit(state_dir: str, revision: int, *, sudo: bool) -> Command:
    """Make ``revision`` current and clear the pending record (after its readiness gate passed)."""
    d = qpath(state_dir)
    script = (
        f'set -e; d={d}; echo {int(revision)} >"$d/current.tmp"; mv -f "$d/current.tmp" "$d/current"; '
        'rm -f "$d/pending" "$d/pending.restarted"'
    )
    return Command(script, sudo=sudo, label=f"make revision {revision} current in {state_dir}")


def abandon(state_dir: str, revision: int, outcome: str, *, sudo: bool) -> Command:
    """Mark a pending revision as never current (``failed``, ``interrupted``…) and clear the record.

    The outcome is kept as one line (it may quote a server's answer): ``list_revisions`` reads it
    between its markers, where a line of its own could pass for one.
    """
    d = qpath(state_dir)
    n = int(revision)
    line = " ".join(outcome.split())
    script = (
        f'set -e; d={d}; [ -d "$d/revisions/{n}" ] && printf "%s\\n" {shlex.quote(line)} '
        f'>"$d/revisions/{n}/outcome" || true; rm -f "$d/pending" "$d/pending.restarted"'
    )
    return Command(script, sudo=sudo, label=f"mark revision {n} {outcome.split(':', 1)[0]} in {state_dir}")


def facts_section(state_dir: str, *, lock: bool = True) -> str:
    """The script section that ``gather`` reads for one deployment's state (parsed by ``parse_section``);
    ``lock=False`` when the verb holds the deployment's lock itself (who holds it is known: no one else).

    One-line files are read with the shell's ``read``: no process for them, nor for a file that is not
    there.
    """
    return "; ".join(
        [
            f"d={qpath(state_dir)}",
            f'echo "{MARK}current"',
            'c=""; [ -f "$d/current" ] && { read -r c <"$d/current" || :; } 2>/dev/null',
            '[ -n "$c" ] && printf \'%s\\n\' "$c"',
            f'echo "{MARK}manifest"',
            '[ -n "$c" ] && base64 -w0 "$d/revisions/$c/manifest.json" 2>/dev/null',
            "echo",
            f'echo "{MARK}pending"',
            '[ -f "$d/pending" ] && cat "$d/pending" 2>/dev/null; echo',
            '[ -f "$d/pending.restarted" ] && echo restarted',
            f'echo "{MARK}outcomes"',
            'for o in "$d"/revisions/*/outcome; do [ -f "$o" ] && { o=${o%/*}; echo "${o##*/}"; }; done',
            "true",
            *([f'echo "{MARK}lock"', _HOLDER] if lock else []),
        ]
    )


# Who holds the lock, when someone does: the holder file's one line.
_HOLDER = (
    '[ -f "$d/lock" ] && ! flock -n "$d/lock" true 2>/dev/null && '
    '{ h=""; { read -r h <"$d/lock.holder" || :; } 2>/dev/null; [ -n "$h" ] && printf \'%s\\n\' "$h"; }; true'
)


@dataclass(frozen=True)
class StateFacts:
    current: int | None = None
    manifest: dict[str, Any] | None = None  # the current revision's
    pending: Pending | None = None
    never_current: frozenset[int] = frozenset()  # revisions with an outcome: failed, interrupted
    locked_by: Holder | None = None


def parse_section(sec: dict[str, list[str]]) -> StateFacts:
    """Read ``facts_section``'s parts (already split at their markers)."""
    current = "".join(sec.get("current", [])).strip()
    pending_lines = [line for line in sec.get("pending", []) if line.strip()]
    restarted = "restarted" in pending_lines
    pending = _pending("\n".join(x for x in pending_lines if x != "restarted"), restarted=restarted)
    failed = frozenset(int(x) for x in sec.get("outcomes", []) if x.strip().isdigit())
    holder_text = "".join(sec.get("lock", [])).strip()
    manifest = decode("".join(sec.get("manifest", [])))
    return StateFacts(
        current=int(current) if current.isdigit() else None,
        manifest=json_object(manifest) if manifest else None,
        pending=pending,
        never_current=failed,
        locked_by=Holder.parse(holder_text) if holder_text else None,
    )


def _pending(text: str, *, restarted: bool) -> Pending | None:
    first, _, rest = text.strip().partition("\n")
    if not first.strip():
        return None
    data = json_object(rest) or {}
    previous = data.get("previous")
    return Pending(
        revision=int(first) if first.strip().isdigit() else 0,
        restarted=restarted,
        by=str(data.get("by", "?")),
        verb=str(data.get("verb", "?")),
        started=str(data.get("created", "?")),
        previous=previous if isinstance(previous, int) else None,
    )


def read_revision(state_dir: str, revision: int, *, sudo: bool) -> Command:
    base = f"{state_dir}/revisions/{int(revision)}"
    names = ("vllm.service", "vllm.env", "manifest.json", "outcome")
    return Command(
        read_files({name: f"{base}/{name}" for name in names}), sudo=sudo, label=f"read revision {revision}"
    )


def list_revisions(state_dir: str, *, sudo: bool) -> Command:
    d = qpath(state_dir)
    script = (
        f"d={d}; for r in $(ls \"$d/revisions\" 2>/dev/null | grep -E '^[0-9]+$' | sort -n); do "
        f'echo "{MARK}rev $r"; base64 -w0 "$d/revisions/$r/manifest.json" 2>/dev/null; echo; '
        f'echo "{MARK}outcome"; cat "$d/revisions/$r/outcome" 2>/dev/null; done; '
        f'echo "{MARK}state"; {facts_section(state_dir)}'
    )
    return Command(script, sudo=sudo, label="list revisions")


@dataclass(frozen=True)
class RevisionInfo:
    number: int
    manifest: dict[str, Any]
    outcome: str = ""  # why it never became current: failed…, interrupted…; "" otherwise


def json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def parse_revisions(output: str) -> tuple[list[RevisionInfo], StateFacts]:
    """Parse ``list_revisions``: every revision (with its outcome), then the state facts."""
    body, _, tail = output.partition(f"{MARK}state\n")
    revs = []
    for num, text in blocks(body, "rev"):
        if not num.isdigit():
            continue
        sec = sections(text)
        manifest = json_object(decode("".join(sec.get("", [])))) or {}
        revs.append(RevisionInfo(int(num), manifest, " ".join(sec.get("outcome", [])).strip()))
    return revs, parse_section(sections(tail))


def parse_revision(output: str) -> dict[str, str]:
    """Parse ``read_revision``'s output into file name → content."""
    return {
        key.split(" ", 1)[1]: decode("".join(v))
        for key, v in sections(output).items()
        if key.startswith("file ")
    }


REVISION_FILES: dict[Role, str] = {"unit": "vllm.service", "env": "vllm.env"}


def revision_tar(files: Sequence[DesiredFile], *, meta: Mapping[str, Any], source: str) -> bytes:
    """The revision's files and manifest as a tar stream (modes kept: the env file stays 0600)."""
    import tarfile  # here: only a change writes a revision, and a plan or a no-op need not load it

    manifest = {
        **meta,
        "source": source,
        "files": {f.role: f.sha256 for f in files},
    }
    members = [(REVISION_FILES[f.role], f.content.encode(), f.mode) for f in files]
    members.append(("manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n", 0o600))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def revision_contents(files: dict[str, str]) -> dict[Role, str]:
    """Map a revision's file names back to roles (``unit``, ``env``)."""
    return {role: files[REVISION_FILES[role]] for role in ROLES if REVISION_FILES[role] in files}
