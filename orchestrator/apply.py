"""Executes a plan's changes on one host; it makes no decisions of its own.

``command_for`` gives the one command of each change; ``run_changes`` runs a
plan's changes, the revision records (``Abandon``, ``RecordRevision``) first,
consecutive plain commands joined into one script. ``converge`` decides what
happens around them (the gate, making the revision current, a restore).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import facts
from .core.layout import Layout
from .core.render import Desired
from .errors import CommandError, HostError
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
    # time.monotonic() when the restart began and when its new process began (the restart's end; on
    # supervisord, that less the program's uptime); inside a script of several commands, placed by the
    # host's own clock between the script's steps.
    restart_sent: float | None = None
    restart_done: float | None = None
    # The number of the revision recorded as pending, when the changes recorded one.
    recorded: int | None = None


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


def live(changes: tuple[Change, ...]) -> list[Change]:
    """The changes that touch the live deployment (all but the revision records), as planned."""
    return [c for c in changes if not isinstance(c, RecordRevision | Abandon)]


def in_order(changes: tuple[Change, ...]) -> list[Change]:
    """The changes as they run: the revision records first, then the live ones as planned."""
    return [c for c in changes if isinstance(c, RecordRevision | Abandon)] + live(changes)


class StepError(CommandError):
    """One change's command failed; the changes before it ran (``recorded``: the pending revision they
    recorded, if they recorded one)."""

    def __init__(self, error: CommandError, change: Change, recorded: int | None) -> None:
        super().__init__(error.host, command=error.command, exit_code=error.exit_code, stderr=error.stderr)
        self.change = change
        self.recorded = recorded


# Changes that are one plain command each: consecutive ones go to the host as one script.
_JOINED = (WriteFile, RemoveFile, DaemonReload, Enable, Disable, Stop, Restart, Reap, RecordRevision, Abandon)


def run_changes(
    transport: Transport,
    plan: TargetPlan,
    *,
    sudo: bool,
    progress: Progress = _no_progress,
    before: Callable[[Change], None] = lambda change: None,
    cut: Callable[[Change], bool] = lambda change: False,
) -> Applied:
    """Run the plan's changes: the revision records first (nothing live changes before they are written),
    then the live ones in order.

    Consecutive changes of one plain command each go to the host as one script (``commands.steps``): a
    first apply's record, two writes, reload, enable and restart are one round trip. ``cut`` starts a new
    script at a change (a test's failpoint then falls between two). ``before`` is called ahead of each
    change, before the script holding it is sent: a lock check, a failpoint. A failed command raises
    ``StepError``.
    """
    out = _Outcome()
    for group in _groups(in_order(plan.changes), cut):
        for change in group:
            before(change)
        first = group[0]
        try:
            if isinstance(first, UploadModel):
                upload_model(transport, first, sudo=sudo, progress=progress)
            elif isinstance(first, FetchModel):
                fetch_model(transport, plan.desired, sudo=sudo, progress=progress)
            else:
                _run_group(transport, plan, group, out, sudo=sudo)
        except StepError:
            raise
        except CommandError as exc:
            raise StepError(exc, first, out.recorded) from None
    return Applied(
        out.restarted, out.after, tuple(out.leftovers), out.reaped, out.sent, out.done, out.recorded
    )


@dataclass
class _Outcome:
    """What the changes' commands printed, gathered as they end (one host's thread)."""

    restarted: bool = False
    after: UnitState = field(default_factory=UnitState)
    leftovers: list[str] = field(default_factory=list)
    reaped: tuple[str, ...] | None = None
    sent: float | None = None
    done: float | None = None
    recorded: int | None = None


def _groups(changes: list[Change], cut: Callable[[Change], bool]) -> list[list[Change]]:
    groups: list[list[Change]] = []
    for change in changes:
        joins = groups and isinstance(change, _JOINED) and isinstance(groups[-1][-1], _JOINED)
        if joins and not cut(change):
            groups[-1].append(change)
        else:
            groups.append([change])
    return groups


def _run_group(
    transport: Transport, plan: TargetPlan, group: list[Change], out: _Outcome, *, sudo: bool
) -> None:
    layout = plan.desired.layout
    cmds = [command_for(change, layout=layout, sudo=sudo) for change in group]
    script = cmds[0] if len(cmds) == 1 else commands.steps(cmds, label=" → ".join(c.describe() for c in cmds))
    sent = time.monotonic()
    result = transport.run(script, timeout=sum(map(_timeout, group)), check=False)
    received = time.monotonic()
    if len(cmds) == 1:
        ended = [commands.StepOutput(result.stdout, result.exit_code, None)]
        start = None
    else:
        start, ended = commands.split_steps(result.stdout)
    for i, change in enumerate(group):
        step = ended[i] if i < len(ended) else None
        if step is None or step.code != 0:
            code = step.code if step is not None else result.exit_code
            what = cmds[i].describe()
            error = CommandError(transport.name, command=what, exit_code=code or -1, stderr=result.stderr)
            raise StepError(error, change, out.recorded)
        # When it began and ended, on the controller's clock: the host's own clock between the steps.
        began = _at(sent, start, ended[i - 1].at if i else start, unknown=sent)
        finished = _at(sent, start, step.at, unknown=received)
        _take(transport, change, step.stdout, out, layout=layout, began=began, finished=finished)


def _at(sent: float, start: float | None, at: float | None, *, unknown: float) -> float:
    return sent + (at - start) if start is not None and at is not None else unknown


def _take(
    transport: Transport,
    change: Change,
    stdout: str,
    out: _Outcome,
    *,
    layout: Layout,
    began: float,
    finished: float,
) -> None:
    out.leftovers += _leftovers(stdout)
    if isinstance(change, Reap) or (isinstance(change, Stop | Restart) and change.reap):
        out.reaped = (*(out.reaped or ()), *procs.reaped(stdout))
    if isinstance(change, Restart):
        state = stdout.split(commands.LEFT_MARK, 1)[-1].split("\n", 1)[-1]
        out.after = facts.parse_state(state, runners.of(layout))
        # supervisord's start returns once the program has run its startsecs: the process began its
        # uptime (runners.UnitState.up_s) earlier than the step's end.
        up = out.after.up_s
        started = finished if up is None else max(began, finished - up)
        out.restarted, out.sent, out.done = True, began, started
    if isinstance(change, RecordRevision):
        last = (stdout.strip().splitlines() or [""])[-1]
        if not last.isdigit():
            raise HostError(transport.name, f"recording the pending revision printed {stdout[-200:]!r}")
        out.recorded = int(last)


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
