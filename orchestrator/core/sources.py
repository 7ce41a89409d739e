"""Template text for rendering: the templates shipped in the package, and a playbook's overrides.

This is the edge where template files are read; render.py gets their text and stays pure.
An override is a regular UTF-8 file below the playbook's folder (symlinks followed, no
``..``), at most ``MAX_TEMPLATE_BYTES``; anything else is one ConfigError naming the file.
"""

from __future__ import annotations

import functools
import os
import stat
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .model import Deployment
from .render import TemplateSource, TemplateSources

if TYPE_CHECKING:  # load.py may check overrides with override_problem at load time
    from .load import Loaded

MAX_TEMPLATE_BYTES = 256 * 1024
SHIPPED = {"unit": "vllm.service.j2", "env": "vllm.env.j2", "supervisor": "vllm.supervisor.j2"}


@functools.cache
def shipped(name: str) -> TemplateSource:
    """A template of the package (``orchestrator/templates``), wherever orch is installed; read once."""
    ref = resources.files("orchestrator").joinpath("templates", name)
    return TemplateSource(str(ref), ref.read_text(encoding="utf-8"))


def override_problem(folder: Path, relative: str) -> str | None:
    """Why ``relative`` (from a playbook in ``folder``) cannot be a template override, or None."""
    try:
        _locate(folder, relative)
    except ValueError as exc:
        return str(exc)
    return None


def templates_for(loaded: Loaded, dep: Deployment) -> TemplateSources:
    """The templates ``dep`` renders with: its overrides, else the shipped ones."""

    def pick(role: str) -> TemplateSource:
        relative: str | None = getattr(dep.templates, role)
        if not relative:
            return shipped(SHIPPED[role])
        try:
            path = _locate(loaded.path.parent, relative)
        except ValueError as exc:
            where = f"deployment {dep.name}: templates.{role}"
            raise ConfigError(f"{where}: {exc}", file=str(loaded.path)) from None
        return TemplateSource(str(path), _read(path))

    return TemplateSources(unit=pick("unit"), env=pick("env"), supervisor=pick("supervisor"))


def _locate(folder: Path, relative: str) -> Path:
    """The regular file that ``relative`` names below ``folder``; ValueError says why not."""
    given = Path(relative).expanduser()
    if ".." in given.parts:
        raise ValueError(f"{relative}: '..' is not allowed in a template path")
    root = folder.resolve()
    path = (root / given).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{relative} is not below the playbook's folder {root} (it is {path})")
    try:
        info = path.stat()
    except OSError:
        raise ValueError(f"template not found: {relative}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{relative} is not a regular file")
    if info.st_size > MAX_TEMPLATE_BYTES:
        raise ValueError(f"{relative} is over {MAX_TEMPLATE_BYTES // 1024} KiB")
    return path


def _read(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_TEMPLATE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the template: {exc.strerror}", file=str(path)) from None
    if len(data) > MAX_TEMPLATE_BYTES:
        raise ConfigError(f"the template is over {MAX_TEMPLATE_BYTES // 1024} KiB", file=str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the template is not UTF-8 text (byte {exc.start})", file=str(path)) from None
