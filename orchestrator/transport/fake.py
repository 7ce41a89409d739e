"""A transport for unit tests: it runs nothing, records what it is given, and answers from a script.

Every command reaches the host in order in ``sent`` (``put`` as a command labelled
``put REMOTE``). The answer to a command is the first rule that matches it and has uses
left: a ``Result`` (checked like a real transport's: non-zero raises ``CommandError``
when ``check`` is set), an exception to raise (an ``UnreachableError`` is a host lost
mid-way), or a function of the command. A command no rule answers gets ``default``.
``hold`` returns a ``FakeHeld`` unless a rule answers it (a ``Result``: the command
ended, e.g. a busy lock); a held command can be made to die. A ``steps`` script is
answered command by command, each recorded in ``sent`` as its own.

    host = FakeTransport("h1").on("gather facts", Result(facts_text, "", 0), times=1)
    host.on("write /etc/orch/x.env", UnreachableError("h1", "connection lost"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..host.commands import STEP, Command
from .base import Held, Result, Transport, checked

Matcher = Callable[[Command], bool]
Answer = Result | Exception | Callable[[Command], Result]
OK = Result("", "", 0)


@dataclass
class Rule:
    match: Matcher
    answer: Answer
    times: int | None = None  # None: every time


def labelled(part: str) -> Matcher:
    """A matcher: the command's label contains ``part``."""
    return lambda command: part in command.label


class FakeHeld:
    """A held command: alive until released or made to die (a dropped connection)."""

    def __init__(self, command: Command) -> None:
        self.command = command
        self.released = False
        self.dead = False

    def alive(self) -> bool:
        return not (self.released or self.dead)

    def die(self) -> None:
        self.dead = True

    def release(self) -> None:
        self.released = True


class FakeTransport:
    """One fake host (not thread-safe: one per host, as a session uses them).

    ``journal``, when given, also gets (host, command) for each command: one list shared by
    several hosts orders all their commands.
    """

    def __init__(
        self,
        name: str,
        *,
        default: Answer = OK,
        journal: list[tuple[str, Command]] | None = None,
    ) -> None:
        self.name = name
        self.default = default
        self.rules: list[Rule] = []
        self.sent: list[Command] = []
        self.execs: list[Command] = []  # what went to the host as one command each (a steps script: one)
        self.holds: list[FakeHeld] = []
        self.journal = journal
        self.closed = False

    def on(self, match: str | Matcher, answer: Answer, *, times: int | None = None) -> FakeTransport:
        """Answer commands matching ``match`` (a label substring, or a predicate); rules apply in order."""
        self.rules.append(Rule(labelled(match) if isinstance(match, str) else match, answer, times))
        return self

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.sent]

    def run(self, command: Command, *, timeout: float | None = None, check: bool = True) -> Result:
        self.execs.append(command)
        answer = self._steps(command) if command.parts else self._answer(command)
        return checked(self.name, command, answer, check=check)

    def stream(self, command: Command, on_line: Callable[[str], None]) -> int:
        result = self._answer(command)
        for line in result.stdout.splitlines():
            on_line(line)
        return result.exit_code

    def put(self, local: Path, remote: str, *, progress: Callable[[int, int], None] | None = None) -> None:
        self._answer(Command("", label=f"put {remote}"))
        if progress is not None:
            size = local.stat().st_size if local.is_file() else 0
            progress(size, size)

    def hold(self, command: Command, *, until: str, timeout: float) -> FakeHeld | Result:
        rule = self._take(command)
        if rule is not None:
            return _give(command, rule)
        held = FakeHeld(command)
        self.holds.append(held)
        return held

    def open(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def _steps(self, command: Command) -> Result:
        """A ``steps`` script: each of its commands answered as its own, up to the first that fails."""
        out, err = [f"{STEP} - 0 -\n"], []  # no host clock: the controller's send and receive times
        for i, part in enumerate(command.parts):
            result = self._answer(part)
            out.append(f"{result.stdout}\n{STEP} {i} {result.exit_code} -\n")
            err.append(result.stderr)
            if result.exit_code != 0:
                return Result("".join(out), "".join(err), result.exit_code)
        return Result("".join(out), "".join(err), 0)

    def _answer(self, command: Command) -> Result:
        rule = self._take(command)
        return _give(command, self.default if rule is None else rule)

    def _take(self, command: Command) -> Answer | None:
        """Record ``command``; use up the first rule that answers it."""
        self.sent.append(command)
        if self.journal is not None:
            self.journal.append((self.name, command))
        for rule in self.rules:
            if (rule.times is None or rule.times > 0) and rule.match(command):
                if rule.times is not None:
                    rule.times -= 1
                return rule.answer
        return None


def _give(command: Command, answer: Answer) -> Result:
    if isinstance(answer, Exception):
        raise answer
    return answer if isinstance(answer, Result) else answer(command)


if TYPE_CHECKING:  # mypy proves that the fake is a Transport and a FakeHeld a Held
    _transport: Transport = FakeTransport("")
    _held: Held = FakeHeld(Command(""))
