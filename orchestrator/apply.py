"""Executes a plan's changes on one host; it makes no decisions of its own.

``command_for`` gives the one command of each change; ``run_changes`` runs
the changes that touch the live deployment, in order. The revision records
(``Abandon``, ``RecordRevision``) are run by ``converge`` around them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from . import facts
from .core.layout import Layout
from .core.render import Desired
from .errors import CommandError
from .host import commands, procs, runners, state
from .host.commands import Command
from .host.runners import UnitState
from .plan import (
    Abandon,
    Change,
    DaemonReload,
    Disable,
    Enable,
    FetchModel,
    InstallVllm,
    Reap,
    RecordRevision,
    RemoveFile,
    Restart,
    Stop,
    TargetPlan,
    UploadModel,
    WriteFile,
)
from .provision import hub
from .provision.upload import MANIFEST
from .transport import Transport

# No command may hang an apply on a host that stopped answering (frozen, not down): a stop waits at
# most TimeoutStopSec, well below STOP_TIMEOUT_S; writing a file or reloading takes seconds.
STOP_TIMEOUT_S = 600.0
FILE_TIMEOUT_S = 60.0
INSTALL_TIMEOUT_S = 3600.0
# Reports a long transfer: (what, bytes done, bytes in all).
Progress = Callable[[str, int, int], None]


def _no_progress(what: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class Applied:
    """What running the changes left behind: the unit's state right after a restart, if any."""

    restarted: bool
    after: UnitState
    # Processes of the unit that outlived a stop, as "pid:name".
    leftovers: tuple[str, ...] = ()
    # What --reap ended, as "pid:name"; None when nothing was asked to reap.
    reaped: tuple[str, ...] | None = None
    # time.monotonic() when the restart command was sent, and when it returned (the new process runs).
    restart_sent: float | None = None
    restart_done: float | None = None


def command_for(change: Change, *, layout: Layout, sudo: bool) -> Command:
    """The one command that carries out ``change`` (pure)."""
    runner = runners.of(layout)
    match change:
        case InstallVllm(spec=spec):
            return commands.install_vllm(spec, sudo=sudo)
        case WriteFile(path=path, content=content, mode=mode):
            return commands.write_file(path, mode=mode, sudo=sudo, content=content.encode())
        case RemoveFile(path=path):
            return commands.remove_file(path, sudo=sudo)
        case DaemonReload(unit=unit):
            return commands.reload(runner, unit, sudo=sudo)
        case Enable(unit=unit):
            return commands.enable(runner, unit, sudo=sudo)
        case Disable(unit=unit):
            return commands.disable(runner, unit, sudo=sudo)
        case Stop(unit=unit, reap=reap):
            return commands.stop(runner, unit, sudo=sudo, reap=layout if reap else None)
        case Restart(unit=unit, reap=reap):
            cmd = commands.restart(runner, unit, sudo=sudo, reap=layout if reap else None)
            return replace(cmd, script=f"{state.restarting(layout.state_dir)}; {cmd.script}")
        case Reap(unit=unit):
            return commands.reap(runner, unit, layout, sudo=sudo)
        case RecordRevision():
            keep = ("by", "verb", "created")
            meta: dict[str, object] = {k: change.meta[k] for k in keep if k in change.meta}
            tar = state.revision_tar(change.files, meta=change.meta, source=change.source)
            return state.begin(
                layout.state_dir, tar=tar, meta={**meta, "previous": change.previous}, sudo=sudo
            )
        case Abandon(revision=revision, outcome=outcome):
            return state.abandon(layout.state_dir, revision, outcome, sudo=sudo)
    raise AssertionError(f"unknown change {change!r}")


def run_changes(
    transport: Transport,
    plan: TargetPlan,
    *,
    sudo: bool,
    progress: Progress = _no_progress,
    before: Callable[[Change], None] = lambda change: None,
) -> Applied:
    """Run the live changes in order (``before`` is called ahead of each: a lock check, a failpoint)."""
    after, restarted, leftovers = UnitState(), False, []
    reaped: list[str] | None = None
    sent = done = None
    for change in plan.changes:
        if isinstance(change, RecordRevision | Abandon):
            continue
        before(change)
        if isinstance(change, UploadModel):
            upload_model(transport, change, sudo=sudo, progress=progress)
            continue
        if isinstance(change, FetchModel):
            fetch_model(transport, plan.desired, sudo=sudo, progress=progress)
            continue
        timeout = _timeout(change)
        sent = time.monotonic() if isinstance(change, Restart) else sent
        result = transport.run(command_for(change, layout=plan.desired.layout, sudo=sudo), timeout=timeout)
        leftovers += _leftovers(result.stdout)
        if isinstance(change, Reap) or (isinstance(change, Stop | Restart) and change.reap):
            reaped = [*(reaped or []), *procs.reaped(result.stdout)]
        if isinstance(change, Restart):
            restarted, done = True, time.monotonic()
            state = result.stdout.split(commands.LEFT_MARK, 1)[-1].split("\n", 1)[-1]
            after = facts.parse_state(state, runners.of(plan.desired.layout))
    return Applied(restarted, after, tuple(leftovers), None if reaped is None else tuple(reaped), sent, done)


def _timeout(change: Change) -> float:
    if isinstance(change, InstallVllm):
        return INSTALL_TIMEOUT_S
    return STOP_TIMEOUT_S if isinstance(change, Stop | Restart | Reap) else FILE_TIMEOUT_S


def upload_model(
    transport: Transport, change: UploadModel, *, sudo: bool, progress: Progress = _no_progress
) -> None:
    """Send each needed file to a temp path and move it into place, recording its checksum as it lands.

    The record grows file by file, so an interrupted upload resumes with what is left.
    """
    spec = change.spec
    landed = {f.path for f in spec.files} - {f.path for f in change.files}
    manifest = f"{spec.dest}/{MANIFEST}"
    total, sent = sum(f.size for f in change.files), 0
    for f in change.files:
        tmp = f"/tmp/orch-upload-{f.sha256[:16]}"
        base = sent

        def sent_so_far(done: int, _size: int, base: int = base) -> None:
            progress("upload", base + done, total)

        transport.put(Path(spec.local_dir) / f.path, tmp, progress=sent_so_far)
        sent += f.size
        place = commands.place_upload(tmp, f"{spec.dest}/{f.path}", sudo=sudo)
        transport.run(place, timeout=FILE_TIMEOUT_S)
        landed.add(f.path)
        record = spec.manifest_json(landed).encode()
        transport.run(
            commands.write_file(manifest, mode=0o644, sudo=sudo, content=record), timeout=FILE_TIMEOUT_S
        )


def fetch_model(
    transport: Transport, desired: Desired, *, sudo: bool, progress: Progress = _no_progress
) -> None:
    """Download the model on the host with the hub's client, reporting its progress as it comes."""
    command = hub.command("fetch", desired, sudo=sudo)
    lines: list[str] = []

    def on_line(line: str) -> None:
        event = hub.parse_event(line)
        if event.kind == "progress":
            progress("fetch", int(event.data.get("done", 0)), int(event.data.get("total", 0)))
        else:
            lines.append(line)

    code = transport.stream(command, on_line)
    final = hub.outcome(lines)
    if code != 0 or final.kind != "done":
        message = final.message if final.kind == "error" else f"ended with exit code {code}"
        raise CommandError(transport.name, command=command.describe(), exit_code=code, stderr=message)


def _leftovers(output: str) -> list[str]:
    for line in output.splitlines():
        if line.startswith(commands.LEFT_MARK):
            return line[len(commands.LEFT_MARK) :].split()
    return []
