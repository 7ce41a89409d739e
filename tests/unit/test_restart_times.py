"""Where a restart's new process began, on the controller's clock (the summary's "process started")."""

from __future__ import annotations

import pytest

from orchestrator.apply import _Outcome, _take
from orchestrator.core.layout import Layout
from orchestrator.host import commands
from orchestrator.plan import Restart
from orchestrator.transport.fake import FakeTransport


@pytest.mark.parametrize(
    ("runner", "status", "started"),
    [
        (
            "supervisord",
            "SupervisorStatus=orch-x   RUNNING   pid 7, uptime 0:00:10",
            102.0,
        ),  # startsecs waited
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
