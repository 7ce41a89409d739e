"""Secrets are read on the controller, from its environment or a file, never from a playbook.

A secret file is read within MAX_SECRET_BYTES (so /dev/zero or a log file is refused at once) and
decoded strictly; a value must be one line of printable text, since it becomes one line of an
env file on the host.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SecretError
from .model import Deployment, SecretRef
from .scalars import UNSAFE
from .yamlread import printable

API_KEY_VAR = "VLLM_API_KEY"
MAX_SECRET_BYTES = 64 * 1024  # a token or a key is well under 1 KiB; a certificate chain fits


def refs(dep: Deployment) -> dict[str, SecretRef]:
    """The deployment's secrets by env-file name (``api_key`` becomes ``VLLM_API_KEY``)."""
    out = dict(dep.secrets)
    if dep.api_key is not None:
        out[API_KEY_VAR] = dep.api_key
    return out


def resolve(dep: Deployment, *, base: Path) -> dict[str, str]:
    """The deployment's secret values, read on the controller."""
    return {name: _read(dep.name, name, ref, base) for name, ref in refs(dep).items()}


def _read(deployment: str, name: str, ref: SecretRef, base: Path) -> str:
    where = f"deployment {deployment}: secret {name}"
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None:
            raise SecretError(f"{where}: environment variable {ref.env} is not set")
    else:
        value = _read_file(where, base, ref.file or "").strip()
    if not value:
        raise SecretError(f"{where} is empty")
    bad = UNSAFE.search(value)
    if bad is not None:
        # A line break would end the env file's line early and start a variable of its own.
        raise SecretError(f"{where} holds the control character U+{ord(bad.group()):04X}: one line expected")
    return value


def _read_file(where: str, base: Path, relative: str) -> str:
    try:
        path = (base / Path(relative).expanduser()).resolve()
    except RuntimeError as exc:  # ~user of a user that does not exist
        raise SecretError(f"{where}: cannot resolve {relative!r}: {exc}") from None
    shown = printable(str(path), limit=200)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretError(f"{where}: cannot read {shown}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretError(f"{where}: {shown} holds more than {MAX_SECRET_BYTES // 1024} KiB: not a secret")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretError(f"{where}: {shown} is not UTF-8 text (byte offset {exc.start})") from None
