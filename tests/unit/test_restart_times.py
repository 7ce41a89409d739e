"""Where a restart's new process began, on the controller's clock (the summary's "process started")."""

from __future__ import annotations

import pytest

from orchestrator.apply import _Outcome, _take
from orchestrator.core.layout import Layout
from orchestrator.host import commands
from orchestrator.plan import Restart
from orchestrator.transport.fake import FakeTransport

_RUNNING = "SupervisorStatus=orch-x   RUNNING   pid 7, uptime 0:00:10"


def _stat(*, uptime: float, ticks: int) -> str:
    """``/proc/uptime``'s first field, then ``/proc/7/stat`` after the command name (start time: field 22)."""
    return f"{uptime} S 1 7 7 0 -1 4194304 397 0 0 0 2 6 0 0 20 0 1 0 {ticks} 2654208 386"


@pytest.mark.parametrize(
    ("runner", "status", "started"),
    [
        ("supervisord", _RUNNING, 102.0),  # startsecs waited
        # /proc's start time (10 ms ticks) where it agrees with supervisord's whole seconds; not where it
        # does not (a container whose /proc/uptime is its own).
        ("supervisord", f"{_RUNNING}\nProcStat={_stat(uptime=500.0, ticks=48925)}", 101.25),
        ("supervisord", f"{_RUNNING}\nProcStat={_stat(uptime=495.0, ticks=48925)}", 102.0),
        ("supervisord", f"{_RUNNING}\nProcStat={_stat(uptime=50.0, ticks=48925)}", 102.0),
        ("supervisord", "SupervisorStatus=orch-x   RUNNING   pid 7, uptime 0:00:30", 100.0),  # never before
        ("supervisord", "SupervisorStatus=orch-x   STARTING  \nSupervisorPid=7", 112.0),
        ("systemd", "ActiveState=active\nSubState=running\nMainPID=7", 112.0),
    ],
)
def test_a_restart_began_its_process_where_the_runner_says(runner: str, status: str, started: float) -> None:
    """supervisord's start returns after the program's startsecs: its uptime places the process's start
    earlier than the step's end (the summary's "process started"), never before the restart began."""
    out = _Outcome()
    layout = Layout("system", "x", "supervisord" if runner == "supervisord" else "systemd")
    stdout = f"{commands.LEFT_MARK}\n{status}\n"
    _take(
        FakeTransport("h"), Restart("orch-x", "env"), stdout, out, layout=layout, began=100.0, finished=112.0
    )
    assert (out.restarted, out.sent, out.done, out.after.main_pid) == (True, 100.0, started, 7)
