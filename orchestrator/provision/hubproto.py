"""What the controller and the host-side hub fetch say to each other; part of the program run on the host.

The host-side program is ``hubfetch`` with ``hubclients`` and this module: stdlib and the hub
library only, never orch (``hub.script`` sends the three as one text). The controller imports this
module too, for the names both sides share. The program reads one JSON request on stdin (or from
the file named as its first argument), so that tokens never travel in argv:

    {"op": "probe" | "fetch", "source": "hf" | "modelscope", "id": "org/name",
     "revision": str | null, "dest": "/abs/dir", "env": {"HF_ENDPOINT": ..., "HF_TOKEN": ...}}

``env`` goes into os.environ before the library is imported (HF_ENDPOINT, HF_TOKEN, HF_HOME,
MODELSCOPE_ENDPOINT, MODELSCOPE_API_TOKEN, ...). It answers in JSON lines on stdout:

    probe:  {"event": "listing", "commit": sha, "files": [{"path", "size"}], "total": bytes}
    fetch:  {"event": "progress", "done": bytes, "total": bytes}   about every 0.5 s, then
            {"event": "done", "commit": sha, "files": [...], "total": bytes}
    error:  {"event": "error", "message": "one line: what and why"}   and exit status 1

A finished fetch leaves the record ``dest/.orch-model.json`` (source, id, revision, commit, files).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = ".orch-model.json"
SOURCES = ("hf", "modelscope")
OPS = ("probe", "fetch")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|KEY|COOKIE|CREDENTIAL", re.IGNORECASE)


class FetchError(Exception):
    """A failure with a one-line message for the operator."""


@dataclass(frozen=True)
class Request:
    op: str
    source: str
    id: str
    revision: str | None
    dest: str
    env: dict[str, str]


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int


@dataclass(frozen=True)
class Listing:
    """What the hub holds at the requested revision."""

    commit: str
    files: tuple[HubFile, ...]

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    def as_json(self) -> dict[str, Any]:
        files = [{"path": f.path, "size": f.size} for f in self.files]
        return {"commit": self.commit, "files": files, "total": self.total}


def read_request(argv: list[str]) -> Request:
    raw = Path(argv[0]).read_text() if argv and argv[0] != "-" else sys.stdin.read()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise FetchError(f"the request is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FetchError("the request must be a JSON object")
    return _validated(data)


def _validated(data: dict[str, Any]) -> Request:
    op, source, repo_id = data.get("op"), data.get("source"), data.get("id")
    revision, dest, env = data.get("revision"), data.get("dest") or "", data.get("env") or {}
    if op not in OPS or source not in SOURCES:
        raise FetchError(f"request: op must be one of {OPS} and source one of {SOURCES}")
    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise FetchError(f"request: id must look like org/name, not {repo_id!r}")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise FetchError("request: revision must be a non-empty string or null")
    if op == "fetch" and (not isinstance(dest, str) or not os.path.isabs(dest)):
        raise FetchError(f"request: dest must be an absolute path, not {dest!r}")
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise FetchError("request: env must be an object of strings")
    return Request(op, source, repo_id, revision, str(dest), {k: str(v) for k, v in env.items()})


def secret_values(env: dict[str, str]) -> list[str]:
    """Values that must never be printed: those of variables named like tokens, longest first."""
    return sorted((v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= 6), key=len, reverse=True)


def contained(source: str, listing: Listing) -> Listing:
    """The listing, when every path stays inside the model folder. The hub is whatever the playbook's
    HF_ENDPOINT names: a path like ``../../etc/x`` would have a file outside the folder removed
    (``remove_damaged``) or written."""
    for f in listing.files:
        parts = f.path.replace("\\", "/").split("/")
        if f.path.startswith("/") or ".." in parts or not f.path or "\0" in f.path:
            raise FetchError(f"{source}: the hub lists {f.path!r}, a path outside the model folder")
    return listing
