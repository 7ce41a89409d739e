"""Runbook command lines and systemd units → ``Command``: one vLLM server's launcher, model, flags, env.

Pure: text or words in, values out. A runbook file holds ``vllm serve …`` or
``python -m vllm.entrypoints.openai.api_server …`` lines (backslash continuations and ``#``
comments allowed), ``export NAME=VALUE`` lines that pass variables to the commands below them,
and ``source VENV/bin/activate``. Anything else is one ConfigError naming the file and line:
orch imports what it can reproduce exactly, and refuses what it would have to guess.
``importer.py`` turns the commands into playbook entries.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError

API_SERVER = "vllm.entrypoints.openai.api_server"
_FLAG = re.compile(r"^--?[A-Za-z]")
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
_PYTHON = re.compile(r"^python[0-9.]*$")
# Output redirections and a trailing `&`: a runbook's `nohup … > vllm.log 2>&1 &`. Under systemd
# the journal keeps the output and the unit keeps the process, so they are dropped (and said so).
_REDIRECT = re.compile(r"^(?:[0-9]*|&)>>?(?:&[0-9]+|&-)?$")
_REDIRECT_GLUED = re.compile(r"^(?:[0-9]*|&)>>?\S+$")
_SHELL_ONLY = ("|", "||", "&&", ";", "<", "(", ")")
_SKIPPED = ("nohup", "exec", "env")


@dataclass(frozen=True)
class Where:
    """The input a command came from: a file (or the command line) and its first line."""

    file: str
    line: int | None = None

    def error(self, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=self.line)


@dataclass(frozen=True)
class Command:
    """One vLLM server's command line, taken apart; flags are in their order, each with its value."""

    where: Where
    kind: Literal["serve", "api_server"]
    model: str | None
    flags: tuple[tuple[str, str | None], ...]
    env: tuple[tuple[str, str], ...] = ()
    launcher: str = "vllm"  # the program as written: vllm, /opt/vllm/bin/vllm, python3, …
    venv: str | None = None  # from `source VENV/bin/activate`
    run_as: str | None = None  # a unit's User=
    unit: str | None = None  # a unit's file name
    notes: tuple[str, ...] = field(default=())


def parse_words(words: list[str], *, where: Where) -> Command:
    """A command already split into words (``orch import -- CUDA_VISIBLE_DEVICES=6 vllm serve …``)."""
    return _command(words, where, env=(), venv=None)


def parse_text(text: str, *, file: str) -> list[Command]:
    """Every command of a runbook file, with the variables exported above it."""
    commands: list[Command] = []
    env: dict[str, str] = {}
    venv: str | None = None
    for number, line in logical_lines(text):
        where = Where(file, number)
        words = _split(line, where)
        if not words:
            continue
        if words[0] == "export":
            env.update(_exports(words[1:], where))
        elif words[0] in ("source", "."):
            venv = _activated(words, where)
        else:
            commands.append(_command(words, where, env=tuple(env.items()), venv=venv))
    if not commands:
        raise ConfigError("no vllm serve or api_server command line found", file=file)
    return commands


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined, each with the number of its first line."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 1
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        stripped = raw.rstrip()
        if stripped.endswith("\\") and not stripped.lstrip().startswith("#"):
            pending.append(stripped[:-1])
            continue
        pending.append(raw)
        out.append((start, " ".join(pending)))
        pending = []
    if pending:
        out.append((start, " ".join(pending)))
    return out


def _split(line: str, where: Where) -> list[str]:
    """The line's words, up to a comment: as in the shell, ``#`` starts one only at a word's start
    (shlex's own comments would also cut ``--chat-template a#b``)."""
    try:
        words = shlex.split(line)
    except ValueError as exc:  # an unclosed quote
        raise where.error(f"cannot split the line into words: {exc}") from None
    comment = next((i for i, word in enumerate(words) if word.startswith("#")), len(words))
    return words[:comment]


def _exports(words: list[str], where: Where) -> dict[str, str]:
    found: dict[str, str] = {}
    for word in words:
        match = _ASSIGNMENT.match(word)
        if match is None:
            raise where.error(f"export {word!r}: only `export NAME=VALUE` is understood")
        found[match.group(1)] = match.group(2)
    return found


def _activated(words: list[str], where: Where) -> str:
    path = words[1] if len(words) == 2 else ""
    if not path.endswith("/bin/activate"):
        raise where.error(f"`{shlex.join(words)}`: only `source VENV/bin/activate` is understood")
    return path.removesuffix("/bin/activate")


def _command(
    words: list[str], where: Where, *, env: tuple[tuple[str, str], ...], venv: str | None
) -> Command:
    words, dropped = _strip_shell(words, where)
    assigned = dict(env)
    i = 0
    while i < len(words) and (_ASSIGNMENT.match(words[i]) or words[i] in _SKIPPED):
        match = _ASSIGNMENT.match(words[i])
        if match is not None:
            assigned[match.group(1)] = match.group(2)
        i += 1
    rest = words[i:]
    if not rest:
        raise where.error("sets variables but runs no command: use `export NAME=VALUE` for later lines")
    said = f"dropped `{' '.join(dropped)}`: systemd keeps the process, the journal its output"
    notes = (said,) if dropped else ()
    kind, launcher, args = _launcher(rest, where)
    model, flags = _flags(args, kind, where)
    return Command(where, kind, model, flags, tuple(assigned.items()), launcher, venv, notes=notes)


def _strip_shell(words: list[str], where: Where) -> tuple[list[str], list[str]]:
    """The command without a trailing ``> log 2>&1 &``; any other shell syntax is an error."""
    for i, word in enumerate(words):
        if word in _SHELL_ONLY or word.startswith(("|", ";", "&&", "<", "$(")) or "`" in word:
            raise where.error(f"{word!r} is shell syntax: give one vLLM command line, as systemd will run it")
        if word == "&" or _REDIRECT.match(word) or _REDIRECT_GLUED.match(word):
            return words[:i], _tail(words[i:], where)
    return words, []


def _tail(words: list[str], where: Where) -> list[str]:
    i = 0
    while i < len(words):
        word = words[i]
        if word == "&" or (_REDIRECT_GLUED.match(word) and not _REDIRECT.match(word)):
            i += 1
        elif _REDIRECT.match(word):
            i += 1 if word.endswith(("&1", "&2", "&-")) else 2
        else:
            raise where.error(f"{word!r} after a redirection: give one vLLM command line")
    return words


def _launcher(words: list[str], where: Where) -> tuple[Literal["serve", "api_server"], str, list[str]]:
    program = words[0].rsplit("/", 1)[-1]
    if program == "vllm" and words[1:2] == ["serve"]:
        return "serve", words[0], words[2:]
    if _PYTHON.match(program) and words[1:3] == ["-m", API_SERVER]:
        return "api_server", words[0], words[3:]
    shown = " ".join(words[:3])
    raise where.error(
        f"`{shown}` is not a vLLM server command: orch import reads `vllm serve MODEL …` and "
        f"`python -m {API_SERVER} --model MODEL …` (with `export` and `source VENV/bin/activate` lines)"
    )


def _flags(
    words: list[str], kind: str, where: Where
) -> tuple[str | None, tuple[tuple[str, str | None], ...]]:
    """The positional model (``vllm serve MODEL``) and the flags with their values, in order."""
    model: str | None = None
    flags: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if not _FLAG.match(word):
            if kind != "serve" or model is not None or flags:
                after = f" after {flags[-1][0]} {flags[-1][1]}" if flags else ""
                raise where.error(
                    f"unexpected word {word!r}{after}: one value per flag, the model right after `vllm serve`"
                )
            model = word
            i += 1
            continue
        name, eq, value = word.partition("=")
        if eq:
            flags.append((_dashes(name), value))
            i += 1
        elif i + 1 < len(words) and not _FLAG.match(words[i + 1]):
            flags.append((_dashes(name), words[i + 1]))
            i += 2
        else:
            flags.append((_dashes(name), None))
            i += 1
    return model, tuple(flags)


def _dashes(flag: str) -> str:
    """vLLM's parser reads ``--max_model_len`` as ``--max-model-len``; so does orch."""
    return flag.replace("_", "-") if flag.startswith("--") else flag


# ---------------------------------------------------------------- systemd units


def parse_unit(text: str, *, file: str) -> Command:
    """A systemd unit's [Service] ExecStart=, Environment= and User= as one command."""
    section = ""
    exec_start: tuple[int, str] | None = None
    env: dict[str, str] = {}
    notes: list[str] = []
    run_as: str | None = None
    for number, line in logical_lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("["):
            section = stripped
            continue
        key, _, value = (part.strip() for part in stripped.partition("="))
        if section != "[Service]":
            continue
        if key == "ExecStart" and value:
            if exec_start is not None:
                raise Where(file, number).error("a second ExecStart=: orch runs one vLLM server per unit")
            exec_start = (number, value)
        elif key == "Environment":
            env.update(_exports(_unit_words(value, Where(file, number)), Where(file, number)))
        elif key == "EnvironmentFile":
            notes.append(
                f"EnvironmentFile={value} (line {number}) is not read: put what it sets in env, secrets"
            )
        elif key == "User":
            run_as = value
    if exec_start is None:
        raise ConfigError("no ExecStart= in a [Service] section", file=file)
    number, value = exec_start
    where = Where(file, number)
    command = _command(_unit_words(value.lstrip("@-:+!"), where), where, env=tuple(env.items()), venv=None)
    notes = [*command.notes, *notes]
    return dataclasses.replace(command, run_as=run_as, unit=file.rsplit("/", 1)[-1], notes=tuple(notes))


def _unit_words(value: str, where: Where) -> list[str]:
    """systemd's quoting is close to the shell's; its ``%`` specifiers and ``$VAR`` are refused."""
    words = _split(value, where)
    for word in words:
        bare = word.replace("%%", "").replace("$$", "")
        if "%" in bare or "$" in bare:
            raise where.error(f"{word!r} uses a systemd specifier or variable: write the value out")
    return [w.replace("%%", "%").replace("$$", "$") for w in words]
