"""Files orch writes on the controller (``monitoring --out``, ``bench --save``): atomic, errors in one line.

Each file is written beside its target and renamed over it, so a reader (Prometheus
re-reading ``targets.json``) never sees half a file, and a failed write leaves the old one.
Every filesystem error (a read-only folder, a file where a folder should be, a full disk)
becomes an ``OutputError`` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .errors import OutputError


def write_files(folder: Path, files: Mapping[str, str]) -> list[Path]:
    """Create ``folder`` if needed and write each name → text into it; returns the paths written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(str(folder), _reason(exc)) from exc
    if not folder.is_dir():
        raise OutputError(str(folder), "not a folder")
    return [write_text(folder / name, text) for name, text in files.items()]


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then rename)."""
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise OutputError(str(path), _reason(exc)) from exc
    return path


def _reason(exc: OSError) -> str:
    """The error as a person reads it; the full disk named, as "No space left on device" can hide."""
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno == errno.EROFS:
        return "the filesystem is read-only"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"a file stands where a folder should be ({exc.filename or 'on the path'})"
    return exc.strerror or str(exc)
