"""Commands (``runbook.py``) → playbook entries and their YAML; every entry validated by orch's model.

Pure. Flags orch owns (``model.OWNED_FLAGS``) become fields and every other flag goes to
``args`` as written; ``CUDA_VISIBLE_DEVICES`` becomes ``gpus``, other variables ``env``. A value
is never guessed: what orch cannot reproduce exactly is a ConfigError at the command's line.
Secrets are never copied: a variable named like one (``HF_TOKEN``), ``VLLM_API_KEY`` and
``--api-key`` become references that orch reads from the controller's environment, and a note
says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from .load import Loc, Source, validate
from .masking import SECRET_NAME
from .model import OWNED_FLAGS, Deployment, Inventory
from .runbook import Command, Where
from .scalars import NAME
from .secrets import API_KEY_VAR
from .yamlread import printable

_NUMBERS: dict[str, type[int] | type[float]] = {
    "port": int,
    "tensor_parallel_size": int,
    "pipeline_parallel_size": int,
    "gpu_memory_utilization": float,
    "max_model_len": int,
}
_ORDER = list(Deployment.model_fields)
_LONG_OWNED = [flag for flag in OWNED_FLAGS if flag.startswith("--")]
_SHELL_WORD = re.compile(r"[$`]|^~")  # what the shell would have expanded


@dataclass(frozen=True)
class Entry:
    """One imported deployment: the playbook data, and the command it came from."""

    where: Where
    data: dict[str, Any]
    deployment: Deployment


@dataclass(frozen=True)
class Imported:
    entries: tuple[Entry, ...]
    notes: tuple[str, ...]  # what the user should know: secrets not copied, defaults chosen, …


def import_commands(commands: list[Command], *, host: str) -> Imported:
    """Playbook entries for ``commands``, all on ``host``; names are made unique, conflicts refused."""
    entries: list[Entry] = []
    notes: list[str] = []
    for command in commands:
        data, said = entry_data(command, host=host)
        data["name"] = _unique(data["name"], [e.data["name"] for e in entries])
        lines: dict[Loc, int] = {(): command.where.line} if command.where.line else {}
        source = Source(command.where.file, data, lines)
        deployment: Deployment = validate(source, Deployment)
        _no_conflict(command.where, deployment, [e.deployment for e in entries], host)
        entries.append(Entry(command.where, data, deployment))
        notes += [f"{_label(command.where)}: {note}" for note in said]
    return Imported(tuple(entries), tuple(notes))


def entry_data(command: Command, *, host: str) -> tuple[dict[str, Any], list[str]]:
    """One command as a playbook entry (plain data, not yet validated), and the notes it needs."""
    where = command.where
    notes = list(command.notes)
    fields, args = _fields_and_args(command.flags, where, notes)
    model = _model(command, fields.pop("model", None))
    data: dict[str, Any] = {"name": _name(command, fields.get("served_model_name") or model)}
    data["hosts"] = [host]
    data["model"] = model
    if "served_model_name" not in fields:
        fields["served_model_name"] = model
        notes.append(f"served_model_name: {model} (what vLLM calls it without --served-model-name)")
    gpus, env, secrets = _environment(command, notes)
    ranks = int(fields.get("tensor_parallel_size", 1)) * int(fields.get("pipeline_parallel_size", 1))
    if gpus is None:
        gpus = list(range(ranks))
        notes.append(f"no CUDA_VISIBLE_DEVICES: gpus {gpus}, the first {ranks} in nvidia-smi's order")
    api_key = secrets.pop("api_key", None)
    api_key = fields.pop("api_key", api_key)
    fields["gpus"] = gpus
    data |= dict(sorted(fields.items(), key=lambda item: _ORDER.index(item[0])))
    more = {"launcher": _launcher(command, notes), "run_as": command.run_as, "args": args}
    more |= {"env": env, "secrets": secrets, "api_key": api_key}
    data |= {key: value for key, value in more.items() if value}
    return data, notes


def _fields_and_args(
    flags: tuple[tuple[str, str | None], ...], where: Where, notes: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    fields: dict[str, Any] = {}
    args: dict[str, Any] = {}
    for written, value in flags:
        flag = _owned(written, where, notes)
        if flag == "--api-key":
            fields["api_key"] = {"env": API_KEY_VAR}
            notes.append(f"--api-key: not copied; orch reads it from ${API_KEY_VAR} on the controller")
        elif flag in OWNED_FLAGS:
            field = OWNED_FLAGS[flag]
            if field in fields:
                raise where.error(f"{written} is given twice (as {field})")
            fields[field] = _typed(field, written, value, where)
        elif flag in args:
            raise where.error(f"{written} is given twice: orch's args hold one value per flag")
        else:
            args[flag] = True if value is None else _arg_value(_literal(value, written, where))
    return fields, args


def _owned(flag: str, where: Where, notes: list[str]) -> str:
    """The owned flag that ``flag`` names, abbreviations included (vLLM's argparse takes them)."""
    if flag in OWNED_FLAGS or not flag.startswith("--"):
        return flag
    longer = [owned for owned in _LONG_OWNED if owned.startswith(flag)]
    if len(longer) > 1:
        raise where.error(f"{flag} is ambiguous ({', '.join(longer)}): write the flag in full")
    if longer:
        notes.append(f"{flag} read as {longer[0]}")
        return longer[0]
    return flag


def _typed(field: str, flag: str, value: str | None, where: Where) -> object:
    if value is None:
        raise where.error(f"{flag} needs a value")
    value = _literal(value, flag, where)
    kind = _NUMBERS.get(field)
    if kind is None:
        return value
    try:
        return kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise where.error(f"{flag} {value!r}: {what} expected (orch's {field})") from None


def _arg_value(value: str) -> str | int | float:
    """``30`` as 30, ``0.5`` as 0.5, anything that would not read back the same as the text."""
    for kind in (int, float):
        try:
            number = kind(value)
        except ValueError:
            continue
        if str(number) == value:
            return number
    return value


def _literal(value: str, what: str, where: Where) -> str:
    if _SHELL_WORD.search(value):
        raise where.error(f"{what} {value!r}: the shell would expand this; write the value out")
    return value


def _model(command: Command, flag_model: object) -> str:
    where = command.where
    if command.model is not None and flag_model is not None:
        raise where.error("the model is given twice (after `serve` and as --model)")
    model = command.model if command.model is not None else flag_model
    if not isinstance(model, str):
        form = "vllm serve MODEL" if command.kind == "serve" else "--model MODEL"
        raise where.error(f"no model: give it as `{form}`")
    return _literal(model, "model", where)


def _environment(
    command: Command, notes: list[str]
) -> tuple[list[int] | None, dict[str, str], dict[str, Any]]:
    gpus: list[int] | None = None
    env: dict[str, str] = {}
    secrets: dict[str, Any] = {}
    for key, value in command.env:
        if key == "CUDA_VISIBLE_DEVICES":
            gpus = _gpus(value, command.where)
        elif key == "CUDA_DEVICE_ORDER":
            if value != "PCI_BUS_ID":
                notes.append(f"CUDA_DEVICE_ORDER={value} dropped: orch numbers GPUs as nvidia-smi does")
        elif key == API_KEY_VAR or SECRET_NAME.search(key):
            secrets["api_key" if key == API_KEY_VAR else key] = {"env": key}
            notes.append(f"{key}: its value is not copied; orch reads it from ${key} on the controller")
        else:
            env[key] = _literal(value, key, command.where)
    return gpus, env, secrets


def _gpus(value: str, where: Where) -> list[int]:
    parts = value.split(",")
    if not value or not all(p.strip().isdigit() for p in parts):
        raise where.error(f"CUDA_VISIBLE_DEVICES={value!r}: orch names GPUs by index, like 6,7")
    return [int(p) for p in parts]


def _launcher(command: Command, notes: list[str]) -> dict[str, str]:
    out = {"kind": "api_server"} if command.kind == "api_server" else {}
    path = PurePosixPath(command.launcher)
    venv = str(path.parent.parent) if path.parent.name == "bin" else command.venv
    if venv in ("/usr", "/usr/local", "/"):
        venv = None
    if venv is not None:
        out["venv"] = venv
        if path.name not in ("vllm", "python") and path.parent.name == "bin":
            notes.append(f"runs {venv}/bin/python (not {path.name})")
    elif command.kind == "serve":
        notes.append(
            "vllm from the service's PATH (/usr/local/bin, /usr/bin): set launcher.venv if in a venv"
        )
    elif path.name != "python3":
        notes.append(f"runs python3 from the service's PATH, not {command.launcher}: or set launcher.venv")
    return out


def _name(command: Command, label: str) -> str:
    base = command.unit.removesuffix(".service").removeprefix("orch-") if command.unit else label
    name = re.sub(r"[^a-z0-9_-]+", "-", PurePosixPath(base).name.lower()).strip("-_")[:63]
    return name if re.match(NAME, name) else "vllm"


def _unique(name: str, taken: list[str]) -> str:
    n, candidate = 1, name
    while candidate in taken:
        n += 1
        candidate = f"{name[:60]}-{n}"
    return candidate


def _no_conflict(where: Where, new: Deployment, earlier: list[Deployment], host: str) -> None:
    for old in earlier:
        shared = sorted(set(new.gpus) & set(old.gpus))
        clash = f"GPU {shared[0]}" if shared else (f"port {new.port}" if new.port == old.port else None)
        if clash:
            raise where.error(
                f"{clash} on host {host} is also used by {old.name}: import the two for different hosts"
            )


def _label(where: Where) -> str:
    return f"{printable(where.file, 120)}:{where.line}" if where.line else printable(where.file, 120)


# ---------------------------------------------------------------- YAML


class _Dumper(yaml.SafeDumper):
    """Indents a list under its key, as orch's own playbooks are written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _dump(data: object, *, flow: bool | None = None) -> str:
    """Block style, with lists and mappings of scalars on one line (``gpus: [6, 7]``) unless ``flow``."""
    text: str = yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=flow, width=100, allow_unicode=True
    )
    return text


def playbook_yaml(imported: Imported, *, inventory: str) -> str:
    """The playbook: a comment naming each entry's source, then the entry."""
    lines = [
        "# Written by `orch import`; check it with `orch validate`.\n",
        _dump({"inventory": inventory}, flow=False),
    ]
    lines.append("deployments:\n")
    for entry in imported.entries:
        lines.append(f"  # from {_label(entry.where)}\n")
        lines += ["  " + line + "\n" for line in _dump([entry.data]).splitlines()]
    return "".join(lines)


def inventory_yaml(*, host: str, address: str) -> str:
    """An inventory with one host; validated by orch's model before it is written."""
    data = {"hosts": {host: {"address": address, "user": "root"}}}
    validate(Source("--host", data, {}), Inventory)
    head = "# Written by `orch import`: set user, ssh_key and become as the server needs.\n"
    return head + _dump(data, flow=False)
