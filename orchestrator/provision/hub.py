"""Models from a hub (``hf``, ``modelscope``), downloaded on the host by the hub's own client.

The download runs ``hubfetch`` (with ``hubclients`` and ``hubproto``, sent as one text by
``script``) on the host with the deployment's venv Python; it answers in JSON lines
(``listing``, ``progress``, ``done``, ``error``) and, once every file is in place, writes
``.orch-model.json`` (source, id, revision, commit, files and sizes) into the model folder.
This module is the controller's part: whether a host still needs a fetch, the program and the
request sent on stdin (the only place a token travels), and the parsing of the answers.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from ..core.model import ModelSource
from ..core.render import Desired
from ..host import commands
from .hubproto import MARKER as MARKER
from .hubproto import SOURCES, HubFile
from .hubproto import Listing as Listing
from .upload import RemoteFiles

# The host-side program's modules, each importing only the ones before it (relatively) and the stdlib.
HOST_MODULES = ("hubproto", "hubclients", "hubfetch")
# Runs them under `PY -c`: each source becomes a module of one package, then hubfetch's main runs.
BOOT = """\
import sys, types
package = types.ModuleType("orchhub")
package.__path__ = []
sys.modules["orchhub"] = package
for name, source in SOURCES:
    module = types.ModuleType(f"orchhub.{name}")
    module.__package__ = "orchhub"
    sys.modules[module.__name__] = module
    exec(compile(source, f"{name}.py", "exec"), module.__dict__)
sys.exit(module.main(sys.argv[1:]))
"""


def is_hub(spec: ModelSource | None) -> bool:
    return spec is not None and spec.source in SOURCES


def needs_fetch(spec: ModelSource, remote: RemoteFiles | None) -> str:
    """Why the host needs a download ("" when its folder holds this source's files whole)."""
    marker = remote.record if remote else {}
    if not marker:
        return "not fetched yet"
    wanted = {"source": spec.source, "id": spec.id, "revision": spec.revision}
    had = {key: marker.get(key) for key in wanted}
    if had != wanted:
        return f"holds {had['source']}:{had['id']}@{had['revision'] or 'default'}"
    sizes = remote.sizes if remote else {}
    broken = [f for f in _files(marker.get("files")) if sizes.get(f.path) != f.size]
    if broken:
        return f"{len(broken)} file(s) missing or truncated, e.g. {broken[0].path}"
    return ""


def _files(raw: object) -> tuple[HubFile, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple(
        HubFile(str(f["path"]), int(f["size"]))
        for f in raw
        if isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("size"), int)
    )


def request(op: str, spec: ModelSource, env: dict[str, str]) -> bytes:
    """The JSON request ``hubfetch`` reads on stdin; ``env`` may hold tokens, so it never goes in argv."""
    body = {
        "op": op,
        "source": spec.source,
        "id": spec.id,
        "revision": spec.revision,
        "dest": spec.dest,
        "env": env,
    }
    return json.dumps(body).encode()


@functools.cache
def script() -> str:
    """The host-side program as one text for ``PY -c`` (its modules read once from the package)."""
    folder = resources.files("orchestrator.provision")
    sources = [(name, folder.joinpath(f"{name}.py").read_text()) for name in HOST_MODULES]
    return BOOT.replace("SOURCES", repr(sources), 1)


def command(op: Literal["probe", "fetch"], desired: Desired, *, sudo: bool) -> commands.Command:
    """Run ``hubfetch`` for the desired hub model, with the deployment's env (tokens included) on stdin."""
    spec = desired.fetch
    if spec is None:
        raise ValueError("the desired state has no hub model")
    body = request(op, spec, dict(desired.env))
    label = f"{'list' if op == 'probe' else 'fetch'} {spec.describe()}"
    return commands.hub_fetch(desired.python, script(), body, sudo=sudo, label=label)


@dataclass(frozen=True)
class Event:
    kind: str  # listing | progress | done | error | output (a line that is not an event)
    data: dict[str, Any]

    @property
    def message(self) -> str:
        return str(self.data.get("message", ""))

    def listing(self) -> Listing:
        return Listing(str(self.data.get("commit", "")), _files(self.data.get("files")))


def parse_event(line: str) -> Event:
    try:
        data = json.loads(line)
    except ValueError:
        return Event("output", {"message": line})
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        return Event("output", {"message": line})
    return Event(data["event"], data)


def outcome(lines: list[str]) -> Event:
    """The last ``done``, ``listing`` or ``error`` event of a run, or an error made of its last output."""
    events = [parse_event(line) for line in lines if line.strip()]
    final = [e for e in events if e.kind in ("done", "listing", "error")]
    if final:
        return final[-1]
    tail = [e.message for e in events if e.kind == "output"][-3:]
    return Event("error", {"message": " | ".join(tail) or "hubfetch ended without an answer"})
