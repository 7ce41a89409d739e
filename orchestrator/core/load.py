"""YAML files → validated models, with every error naming its file and line.

yamlread.py turns a file into plain data and the line of every value, within
bounds; Pydantic's error locations are then mapped back to those lines.
Cross-model checks (unknown hosts, a GPU over-committed or a port used twice
on one host) happen here too.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from . import fleet, nodes, sources
from .model import Deployment, Host, Inventory, Launcher, Playbook, Readiness, VllmInstall
from .yamlread import Loc, Source, parse_yaml, printable, read_source

# A sum of shares such as 0.3 + 0.3 + 0.4 may come out a hair above 1.
SHARE_EPSILON = 1e-9

__all__ = ["Loaded", "Loc", "Source", "Target", "load", "load_inventory", "parse_yaml", "read_source"]


@dataclass(frozen=True)
class Target:
    """One deployment on one host; for a node of a multi-node deployment, its role there."""

    deployment: Deployment
    host_name: str
    host: Host
    node: nodes.NodeRole | None = None


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
            roles = self.roles(dep)
            for name in _expand(dep.host_refs, groups):
                if limit is None or name in limit:
                    out.append(Target(dep, name, self.inventory.hosts[name], roles.get(name)))
        return out

    def roles(self, dep: Deployment) -> dict[str, nodes.NodeRole]:
        """Host name → its role, for the nodes of a multi-node deployment (empty for any other)."""
        hosts = self.inventory.hosts
        addresses = {n.host: hosts[n.host].address for n in dep.nodes}
        interfaces = {n.host: hosts[n.host].interface for n in dep.nodes}
        return {r.hosts[r.rank]: r for r in nodes.roles(dep, addresses, interfaces)}

    def select(
        self, *, limit: Sequence[str] | None = None, deployment: str | None = None, whole: bool = False
    ) -> list[Target]:
        """The targets a verb's ``--limit``/``--deployment`` name; an unknown host or no match is an error
        (``whole``: so is a part of a multi-node deployment's nodes, for the verbs that change them)."""
        wanted = set(limit) if limit else None
        unknown = sorted((wanted or set()) - set(self.inventory.hosts))
        if unknown:
            raise ConfigError(f"--limit names unknown host {unknown[0]!r}", file=str(self.inventory_path))
        targets = self.targets(limit=wanted, deployment=deployment)
        if not targets:
            raise ConfigError("no deployment matches --limit/--deployment", file=str(self.path))
        for t in targets if whole else ():
            if t.node is not None and not set(t.node.hosts) <= {u.host_name for u in targets}:
                raise ConfigError(
                    f"--limit takes every node of {t.deployment.name} or none: {', '.join(t.node.hosts)}",
                    file=str(self.path),
                )
        return targets

    def resolve(self, relative: str, *, base: Path | None = None) -> Path:
        """A path from the playbook (or ``base``), relative to that file's folder."""
        root = (base or self.path).parent
        try:
            return (root / Path(relative).expanduser()).resolve()
        except RuntimeError as exc:  # ~user of a user that does not exist
            raise ConfigError(f"cannot resolve {relative!r}: {exc}", file=str(self.path)) from None


# ---------------------------------------------------------------- data → models


def validate(source: Source, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(source.data)
    except ValidationError as exc:
        raise _translate(source, exc) from None


def _translate(source: Source, exc: ValidationError) -> ConfigError:
    errors = _meaningful(exc.errors())
    first = errors[0]
    loc: Loc = ()
    for part in first["loc"]:
        # Pydantic's own steps (model[ref], function-after[…]) are no keys of the file: skip them.
        if not (isinstance(part, str) and "[" in part and (*loc, part) not in source.lines):
            loc = (*loc, part)
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
    return printable(msg.removeprefix("Value error, "), limit=300)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        name = printable(str(part), limit=40)
        out += f"[{name}]" if isinstance(part, int) else (f".{name}" if out else name)
    return out


def load_inventory(path: Path) -> Inventory:
    return _inventory(read_source(path))


def _inventory(source: Source) -> Inventory:
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
    unknown = [key for key in defaults if key not in Host.model_fields]
    if unknown:
        key = unknown[0]
        raise source.error(("defaults", key), f"defaults.{printable(str(key), 40)}: unknown field")
    if not isinstance(hosts, dict):
        return hosts
    return {name: ({**defaults, **spec} if isinstance(spec, dict) else spec) for name, spec in hosts.items()}


def load(path: Path, *, inventory_override: Path | None = None) -> Loaded:
    """Load and cross-check a playbook and its inventory; no network."""
    source = read_source(path)
    playbook: Playbook = validate(source, Playbook)
    inventory_path = inventory_override or (path.parent / playbook.inventory).resolve()
    if inventory_override is None and not _exists(inventory_path, stat.S_ISREG):
        what = "not a regular file" if _exists(inventory_path, bool) else "no such file"
        raise source.error(("inventory",), f"inventory: {what} {printable(str(inventory_path))}")
    inv_source = read_source(inventory_path)
    digest = hashlib.sha256(source.raw + b"\0" + inv_source.raw).hexdigest()[:16]
    loaded = Loaded(path, playbook, inventory_path, _inventory(inv_source), digest)
    for loc, message in _cross_check(loaded):
        raise source.error(loc, f"{_dotted(loc)}: {message}")
    return _with_routers(loaded)


def _with_routers(loaded: Loaded) -> Loaded:
    """Each ``router:`` becomes a deployment of its own, ``NAME-router``, after the written ones."""
    written = loaded.playbook.deployments
    routers = [_router_of(d, loaded.inventory) for d in written if d.router is not None]
    if not routers:
        return loaded
    playbook = loaded.playbook.model_copy(update={"deployments": (*written, *routers)})
    return replace(loaded, playbook=playbook)


def _router_of(dep: Deployment, inventory: Inventory) -> Deployment:
    r = dep.router
    assert r is not None
    hosts = _expand(dep.hosts, inventory.groups())
    workers = tuple(fleet.worker_url(_api_address(inventory.hosts[h]), dep.port) for h in hosts)
    install = VllmInstall(
        package=fleet.ROUTER_PACKAGE,
        version=r.version,
        venv=r.venv,
        python=r.python,
        index_url=r.index_url,
        no_index=r.no_index,
        extra_index_urls=r.extra_index_urls,
        find_links=r.find_links,
    )
    return Deployment(
        name=f"{dep.name}-router",
        hosts=(r.host,),
        model=dep.model_path,
        served_model_name=dep.served_name,
        accelerator="cpu",
        bind=r.bind,
        port=r.port,
        args={"--policy": r.policy, **r.args},
        vllm=install,
        launcher=Launcher(kind="router", venv=r.venv, workers=workers),
        readiness=Readiness(
            timeout_s=300.0, interval_s=0.5, request_timeout_s=dep.readiness.request_timeout_s
        ),
        service=dep.service,
    )


def _api_address(host: Host) -> str:
    return "127.0.0.1" if host.connection == "local" else host.address


def _exists(path: Path, kind: Callable[[int], Any]) -> bool:
    """Path.is_file() and is_dir() raise for a name too long; here that is just 'not found'."""
    try:
        return bool(kind(path.stat().st_mode))
    except (OSError, ValueError):
        return False


def _found(loaded: Loaded, relative: str, kind: Callable[[int], Any]) -> bool:
    try:
        return _exists(loaded.resolve(relative), kind)
    except ConfigError:  # ~user of no such user: not found either, said at the field's line
        return False


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
        for j, node in enumerate(dep.nodes):
            if node.host not in inv.hosts:
                what = "a group: a node is one host" if node.host in groups else "unknown host"
                yield ("deployments", i, "nodes", j, "host"), f"{what} {node.host!r}"
        local = dep.fetch.local if dep.fetch else None
        if local is not None and not _found(loaded, local, stat.S_ISDIR):
            yield ("deployments", i, "model", "local"), f"no such folder {printable(local)}"
        if dep.router is not None:
            yield from _router_problems(loaded, i, dep)
        for field in ("unit", "env", "supervisor"):
            rel = getattr(dep.templates, field)
            problem = None if rel is None else sources.override_problem(loaded.path.parent, rel)
            if problem is not None:
                yield ("deployments", i, "templates", field), problem
    yield from _host_conflicts(loaded)


def _router_problems(loaded: Loaded, i: int, dep: Deployment) -> Iterator[tuple[Loc, str]]:
    r = dep.router
    assert r is not None
    name = f"{dep.name}-router"
    if r.host not in loaded.inventory.hosts:
        yield ("deployments", i, "router", "host"), f"unknown host {r.host!r} (a host, not a group)"
    if any(d.name == name for d in loaded.playbook.deployments):
        yield ("deployments", i, "router"), f"the router's deployment would be named {name!r}, which is taken"
    for t in loaded.targets():
        if t.host_name == r.host and t.deployment.port == r.port:
            yield (
                ("deployments", i, "router", "port"),
                f"port {r.port} on host {r.host} is also used by {t.deployment.name!r}",
            )
    for other in loaded.playbook.deployments[:i]:
        if other.router and (other.router.host, other.router.port) == (r.host, r.port):
            yield (
                ("deployments", i, "router", "port"),
                f"port {r.port} on host {r.host} is also used by {other.name!r}'s router",
            )


def _host_conflicts(loaded: Loaded) -> Iterator[tuple[Loc, str]]:
    """Deployments on one host may share a GPU while their gpu_memory_utilization adds up to at most 1
    (vLLM gives each that share of the card); no two may listen on one port."""
    shares: dict[tuple[str, int], dict[str, float]] = {}
    ports: dict[tuple[str, int], str] = {}
    index = {d.name: i for i, d in enumerate(loaded.playbook.deployments)}
    for target in loaded.targets():
        dep, host = target.deployment, target.host_name
        i = index[dep.name]
        for g in target.node.gpus if target.node else dep.gpus:
            on_gpu = shares.setdefault((host, g), {})
            on_gpu[dep.name] = dep.gpu_memory_utilization
            total = sum(on_gpu.values())
            if len(on_gpu) > 1 and total > 1 + SHARE_EPSILON:
                listed = " + ".join(f"{name!r} {share:g}" for name, share in on_gpu.items())
                where = ("nodes", target.node.rank, "gpus") if target.node else ("gpu_memory_utilization",)
                yield (
                    ("deployments", i, *where),
                    f"GPU {g} on host {host} is over-committed: {listed} = {total:.3g} of the card "
                    "(the gpu_memory_utilization of the deployments on one GPU may add up to at most 1)",
                )
        other = ports.setdefault((host, dep.port), dep.name)
        if other != dep.name:
            yield ("deployments", i, "port"), f"port {dep.port} on host {host} is also used by {other!r}"
