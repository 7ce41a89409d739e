"""Model upload: which files of a controller folder a host still needs, by size and SHA-256.

The host keeps ``.orch-upload.json`` (path → size, sha256) beside the model,
rewritten after each file lands. A file is sent again when it is missing, its size differs
(a truncated or interrupted transfer), or the recorded checksum differs from the
controller's. Files already in place are never sent twice, so an interrupted
upload resumes where it stopped.

The controller's checksums are cached by (path, size, mtime), so a plan does not
read a multi-GB model again when nothing in it changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.render import FileSum, UploadSpec
from ..host.commands import MARK

MANIFEST = ".orch-upload.json"
CACHE_FILE = "checksums.json"


@dataclass(frozen=True)
class RemoteFiles:
    """A model folder on the host: each file's size, and the record orch keeps beside them."""

    sizes: dict[str, int]
    record: dict[str, Any]  # the upload manifest or the hub marker, {} when absent or unreadable

    def recorded_sha256(self) -> dict[str, str]:
        return {k: str(v.get("sha256", "")) for k, v in self.record.items() if isinstance(v, dict)}


def local_spec(local_dir: Path, dest: str, *, cache_dir: Path | None = None) -> UploadSpec:
    """Checksum every file under ``local_dir`` (controller I/O), reusing cached sums of unchanged files."""
    cache = ChecksumCache(cache_dir or default_cache_dir())
    files = tuple(
        FileSum(str(p.relative_to(local_dir)), p.stat().st_size, cache.sha256(p))
        for p in sorted(local_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    )
    cache.save()
    return UploadSpec(str(local_dir), dest, files)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orch"


class ChecksumCache:
    """SHA-256 of controller files keyed by absolute path, size and mtime; a stale entry is recomputed."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / CACHE_FILE
        self.entries = _read_json(self.path)
        self.dirty = False

    def sha256(self, file: Path) -> str:
        st = file.stat()
        key, stamp = str(file.resolve()), [st.st_size, st.st_mtime_ns]
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
            return str(entry["sha256"])
        digest = _sha256(file)
        self.entries[key] = {"stamp": stamp, "sha256": digest}
        self.dirty = True
        return digest

    def save(self) -> None:
        """Write the cache atomically; a cache that cannot be written only costs time next run."""
        if not self.dirty:
            return
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".checksums-")
            with os.fdopen(fd, "w") as fh:
                json.dump(self.entries, fh)
            os.replace(tmp, self.path)
        self.dirty = False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remote_script(dest: str, record: str) -> str:
    """List sizes under a model folder (but its record and the hub clients' caches) and print the record."""
    d = shlex.quote(dest)
    return (
        f'echo "{MARK}files"; '
        f"[ -d {d} ] && (cd -- {d} && find . -path ./.cache -prune -o -type f ! -name {shlex.quote(record)} "
        '-printf "%P\\t%s\\n"); '
        f'echo "{MARK}recorded"; cat -- {d}/{shlex.quote(record)} 2>/dev/null; echo'
    )


def parse_remote(files_lines: list[str], recorded_lines: list[str]) -> RemoteFiles:
    sizes = {}
    for line in files_lines:
        path, _, size = line.rpartition("\t")
        if path and size.isdigit():
            sizes[path] = int(size)
    try:
        data = json.loads("\n".join(recorded_lines) or "{}")
    except json.JSONDecodeError:
        data = {}
    return RemoteFiles(sizes, data if isinstance(data, dict) else {})


def missing(spec: UploadSpec, remote: RemoteFiles) -> tuple[FileSum, ...]:
    """The files the host still needs (pure)."""
    shas = remote.recorded_sha256()
    return tuple(f for f in spec.files if remote.sizes.get(f.path) != f.size or shas.get(f.path) != f.sha256)
