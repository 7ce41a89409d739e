"""One host for the length of a verb (its connection, targets, facts, lock), and the values verbs return.

``parallel`` runs work on every host at once and returns a result for every
one of them, as Fabric's ``ThreadingGroup`` does: an exception on one host is
that host's value, never a lost result for the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from .core.load import Target
from .core.model import Host
from .errors import HostError, OrchError
from .facts import DeploymentFacts
from .host import commands
from .host.procs import Proc
from .host.runners import UnitState
from .observe import preflight
from .observe.probe import Probe
from .transport import Held, Transport

T = TypeVar("T")
R = TypeVar("R")


class Reporter(Protocol):
    def event(self, host: str, deployment: str, text: str) -> None: ...

    def gate(self, host: str, deployment: str, elapsed: float, state: UnitState, probe: Probe) -> None: ...

    def progress(self, host: str, deployment: str, what: str, done: int, total: int) -> None: ...


class QuietReporter:
    def event(self, host: str, deployment: str, text: str) -> None:
        return None

    def progress(self, host: str, deployment: str, what: str, done: int, total: int) -> None:
        return None

    def gate(self, host: str, deployment: str, elapsed: float, state: UnitState, probe: Probe) -> None:
        return None


class LockLostError(HostError):
    """The process holding this verb's lock on the host ended (the connection dropped)."""


@dataclass
class HostRun:
    """One host's connection, its targets, and what was learnt about it."""

    name: str
    host: Host
    targets: list[Target]
    transport: Transport
    facts: dict[str, DeploymentFacts] = field(default_factory=dict)
    marked: tuple[Proc, ...] = ()  # the processes marked as orch's, as the facts read them
    probe: preflight.HostProbe | None = None
    error: OrchError | None = None
    lock: Held | None = None

    def run(self, command: commands.Command, *, timeout: float | None = 120) -> str:
        return self.transport.run(command, timeout=timeout).stdout

    def check_lock(self) -> None:
        """Refuse to change the host once the lock taken for this verb is gone."""
        if self.lock is not None and not self.lock.alive():
            raise LockLostError(
                self.name, "the lock on the host was lost (connection dropped?); stopped here"
            )

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


@dataclass(frozen=True)
class Timeline:
    """How a restarted deployment became ready, in seconds from the restart command being sent."""

    started_s: float  # the restart returned: the old process stopped, the new one started
    up_s: float | None  # vLLM up: /health first answered 200
    answer_s: float  # the first real completion passed the gate: ready

    def describe(self) -> str:
        up = "-" if self.up_s is None else f"{self.up_s:.2f}s"
        return f"process started {self.started_s:.2f}s → vLLM up {up} → first answer {self.answer_s:.2f}s"


@dataclass(frozen=True)
class Result:
    """How one deployment on one host ended."""

    host: str
    deployment: str
    status: str  # unchanged | applied | failed | rolled-back | error
    message: str = ""
    revision: int | None = None
    journal: str = ""
    timeline: Timeline | None = None  # when the gate passed

    @property
    def elapsed_s(self) -> float | None:
        """Ready after this long, counted from the restart."""
        return self.timeline.answer_s if self.timeline else None

    @property
    def ok(self) -> bool:
        return self.status in ("unchanged", "applied")


def parallel(items: Iterable[T], fn: Callable[[T], R]) -> list[R | BaseException]:
    """``fn`` on every item at once; each item's return value or exception, in the items' order."""
    batch = list(items)
    if not batch:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(batch))) as pool:
        futures = [pool.submit(fn, item) for item in batch]
    return [f.exception() or f.result() for f in futures]


def as_error(host: str, exc: BaseException) -> OrchError:
    """An exception from one host's work as that host's error (an unexpected one keeps its type name)."""
    if isinstance(exc, OrchError):
        return exc
    return HostError(host, f"unexpected {type(exc).__name__}: {exc}")
