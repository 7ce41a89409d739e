"""Secrets are read on the controller, from its environment or a file, never from a playbook."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SecretError
from .model import Deployment, SecretRef

API_KEY_VAR = "VLLM_API_KEY"


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
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None:
            raise SecretError(
                f"deployment {deployment}: secret {name}: environment variable {ref.env} is not set"
            )
    else:
        path = (base / Path(ref.file or "").expanduser()).resolve()
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise SecretError(
                f"deployment {deployment}: secret {name}: cannot read {path}: {exc.strerror}"
            ) from exc
    if not value or "\n" in value:
        raise SecretError(f"deployment {deployment}: secret {name} is empty or spans several lines")
    return value
