"""Named points where a test makes orch die at once, to prove what an interrupted verb leaves behind.

``ORCH_FAILPOINT=NAME`` sends SIGKILL to orch itself the first time it reaches
NAME: no handler runs, no connection says goodbye, exactly as when a laptop
drops off the network or a CI job is cancelled. ``NAME:stop`` sends SIGSTOP
instead, so that a test can break something (a connection, a disk) before it
sends SIGCONT. Unset, ``reach`` does nothing.
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = (
    "after-lock",  # the lock is held, nothing read yet
    "after-facts",  # facts read and the plan made, nothing changed
    "after-pending",  # the revision is recorded as pending, no live file changed
    "between-writes",  # the first file is written, the others not
    "before-restart",  # every file written, the server not restarted
    "after-restart",  # restarted, the readiness gate not begun
    "during-gate",  # the gate has polled once
    "before-commit",  # the gate passed, the revision not yet current
)
_seen: dict[str, int] = {}
_lock = threading.Lock()


def _wanted() -> tuple[str, str]:
    """The point ORCH_FAILPOINT names ("" when unset) and its action."""
    want, _, action = os.environ.get("ORCH_FAILPOINT", "").partition(":")
    return want, action


def armed(name: str | None) -> bool:
    """Whether a test set ``name`` (then apply sends the command after it on its own, so that the kill
    falls between the two)."""
    return bool(name) and _wanted()[0] == name


def reach(name: str) -> None:
    want, action = _wanted()
    if not want or want != name:
        return
    with _lock:
        _seen[name] = _seen.get(name, 0) + 1
        if _seen[name] > 1:
            return
    os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)
