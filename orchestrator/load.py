"""YAML files → validated models, with every error naming its file and line.

YAML is composed into nodes first so each value keeps its line; Pydantic's
error locations are then mapped back to those lines. Cross-model checks
(unknown hosts, a GPU or port used twice on one host) happen here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError
from .model import Deployment, Host, Inventory, Playbook

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Source:
    """A parsed YAML document: its data and the line of every path in it."""

    file: str
    data: Any
    lines: dict[Loc, int]

    def line(self, loc: Loc) -> int | None:
        """The line of the deepest known prefix of ``loc``."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None

    def error(self, loc: Loc, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=self.line(loc))


@dataclass(frozen=True)
class Target:
    """One deployment on one host."""

    deployment: Deployment
    host_name: str
    host: Host


@dataclass(frozen=True)
class Loaded:
    """A playbook with its inventory, checked against each other."""

    path: Path
    playbook: Playbook
    inventory_path: Path
    inventory: Inventory
    digest: str

    def targets(self, *, limit: set[str] | None = None, deployment: str | None = None) -> list[Target]:
        groups = self.inventory.groups()
        out: list[Target] = []
        for dep in self.playbook.deployments:
            if deployment is not None and dep.name != deployment:
                continue
            for name in _expand(dep.hosts, groups):
                if limit is None or name in limit:
                    out.append(Target(dep, name, self.inventory.hosts[name]))
        return out

    def resolve(self, relative: str, *, base: Path | None = None) -> Path:
        """A path from the playbook (or ``base``), relative to that file's folder."""
        root = (base or self.path).parent
        return (root / Path(relative).expanduser()).resolve()


def parse_yaml(text: str, *, file: str) -> Source:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", file=file, line=line) from exc
    if node is None:
        raise ConfigError("the file is empty", file=file, line=1)
    lines: dict[Loc, int] = {}
    data = _build(node, (), lines, file)
    return Source(file=file, data=data, lines=lines)


def _build(node: yaml.Node, loc: Loc, lines: dict[Loc, int], file: str) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError("a key must be a plain value", file=file, line=key_node.start_mark.line + 1)
            key = _scalar(key_node)
            if key in out:
                raise ConfigError(f"duplicate key {key!r}", file=file, line=key_node.start_mark.line + 1)
            lines[(*loc, key)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, (*loc, key), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*loc, i), lines, file) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    return loader.construct_object(node, deep=True)


def validate(source: Source, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(source.data)
    except ValidationError as exc:
        raise _translate(source, exc) from None


def _translate(source: Source, exc: ValidationError) -> ConfigError:
    errors = _meaningful(exc.errors())
    first = errors[0]
    loc = tuple(part for part in first["loc"] if not (isinstance(part, str) and "[" in part))
    message = _message(first)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return source.error(loc, f"{_dotted(loc)}: {message}{more}" if loc else message + more)


def _meaningful(errors: list[Any]) -> list[Any]:
    """Drop the 'too short' that a tuple reports when one of its items was rejected."""
    locs = [tuple(e["loc"]) for e in errors]
    return [
        e
        for e in errors
        if not (
            e["type"] == "too_short"
            and any(len(o) > len(e["loc"]) and o[: len(e["loc"])] == tuple(e["loc"]) for o in locs)
        )
    ] or errors


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "missing":
        return "required field missing"
    msg = str(error["msg"]).replace("Tuple should", "List should")
    return msg.removeprefix("Value error, ")


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_source(path: Path) -> Source:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from exc
    return parse_yaml(text, file=str(path))


def load_inventory(path: Path) -> Inventory:
    source = read_source(path)
    if not isinstance(source.data, dict):
        raise source.error((), "an inventory must be a mapping with a hosts: key")
    data = dict(source.data)
    data["hosts"] = _with_defaults(source, data)
    inventory: Inventory = validate(Source(source.file, data, source.lines), Inventory)
    return inventory


def _with_defaults(source: Source, data: dict[str, Any]) -> Any:
    defaults = data.get("defaults") or {}
    hosts = data.get("hosts")
    if not isinstance(defaults, dict):
        raise source.error(("defaults",), "defaults must be a mapping")
    unknown = set(defaults) - set(Host.model_fields)
    if unknown:
        key = sorted(unknown)[0]
        raise source.error(("defaults", key), f"defaults.{key}: unknown field")
    if not isinstance(hosts, dict):
        return hosts
    return {name: ({**defaults, **spec} if isinstance(spec, dict) else spec) for name, spec in hosts.items()}


def load(path: Path, *, inventory_override: Path | None = None) -> Loaded:
    """Load and cross-check a playbook and its inventory; no network."""
    source = read_source(path)
    playbook: Playbook = validate(source, Playbook)
    inventory_path = inventory_override or (path.parent / playbook.inventory).resolve()
    if inventory_override is None and not inventory_path.is_file():
        raise source.error(("inventory",), f"inventory: no such file {inventory_path}")
    inventory = load_inventory(inventory_path)
    loaded = Loaded(path, playbook, inventory_path, inventory, _digest(source, inventory_path))
    for loc, message in _cross_check(loaded):
        raise source.error(loc, f"{_dotted(loc)}: {message}")
    return loaded


def _digest(source: Source, inventory_path: Path) -> str:
    import hashlib

    blob = Path(source.file).read_bytes() + b"\0" + inventory_path.read_bytes()
    return hashlib.sha256(blob).hexdigest()[:16]


def _expand(names: tuple[str, ...], groups: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    for name in names:
        for host in groups.get(name, [name]):
            if host not in out:
                out.append(host)
    return out


def _cross_check(loaded: Loaded) -> Iterator[tuple[Loc, str]]:
    inv = loaded.inventory
    groups = inv.groups()
    names = [d.name for d in loaded.playbook.deployments]
    for i, dep in enumerate(loaded.playbook.deployments):
        if names.index(dep.name) != i:
            yield ("deployments", i, "name"), f"deployment name {dep.name!r} is used twice"
        for j, ref in enumerate(dep.hosts):
            if ref not in inv.hosts and ref not in groups:
                yield (
                    ("deployments", i, "hosts", j),
                    (f"unknown host or group {ref!r} (inventory {loaded.inventory_path.name})"),
                )
        local = dep.fetch.local if dep.fetch else None
        if local is not None and not loaded.resolve(local).is_dir():
            yield ("deployments", i, "model", "local"), f"no such folder {local}"
        for field in ("unit", "env", "supervisor"):
            rel = getattr(dep.templates, field)
            if rel is not None and not loaded.resolve(rel).is_file():
                yield ("deployments", i, "templates", field), f"template not found: {rel}"
    yield from _host_conflicts(loaded)


def _host_conflicts(loaded: Loaded) -> Iterator[tuple[Loc, str]]:
    gpus: dict[tuple[str, int], str] = {}
    ports: dict[tuple[str, int], str] = {}
    index = {d.name: i for i, d in enumerate(loaded.playbook.deployments)}
    for target in loaded.targets():
        dep, host = target.deployment, target.host_name
        i = index[dep.name]
        for g in dep.gpus:
            other = gpus.setdefault((host, g), dep.name)
            if other != dep.name:
                yield ("deployments", i, "gpus"), f"GPU {g} on host {host} is also used by {other!r}"
        other = ports.setdefault((host, dep.port), dep.name)
        if other != dep.name:
            yield ("deployments", i, "port"), f"port {dep.port} on host {host} is also used by {other!r}"
