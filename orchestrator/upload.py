"""Model upload: which files of a controller folder a host still needs, by size and SHA-256.

The host keeps ``.orch-upload.json`` (path → size, sha256) beside the model,
rewritten after each file lands. A file is sent again when it is missing, its size differs
(a truncated or interrupted transfer), or the recorded checksum differs from the
controller's. Files already in place are never sent twice, so an interrupted
upload resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from .commands import MARK

MANIFEST = ".orch-upload.json"


@dataclass(frozen=True)
class FileSum:
    path: str  # relative to the model folder
    size: int
    sha256: str


@dataclass(frozen=True)
class UploadSpec:
    """A controller folder, its checksums, and where it goes on the host."""

    local_dir: str
    dest: str
    files: tuple[FileSum, ...]

    def manifest_json(self, paths: set[str] | None = None) -> str:
        """The checksums of ``paths`` (default: all files), as the host keeps them."""
        data = {
            f.path: {"size": f.size, "sha256": f.sha256}
            for f in self.files
            if paths is None or f.path in paths
        }
        return json.dumps(data, indent=1, sort_keys=True) + "\n"


@dataclass(frozen=True)
class RemoteFiles:
    sizes: dict[str, int]
    recorded: dict[str, str]  # path → sha256, from the host's manifest


def local_spec(local_dir: Path, dest: str) -> UploadSpec:
    """Checksum every file under ``local_dir`` (controller I/O)."""
    files = tuple(
        FileSum(str(p.relative_to(local_dir)), p.stat().st_size, _sha256(p))
        for p in sorted(local_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    )
    return UploadSpec(str(local_dir), dest, files)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remote_script(dest: str) -> str:
    """List sizes under the model folder and print its manifest."""
    d = shlex.quote(dest)
    return (
        f'echo "{MARK}files"; '
        f'[ -d {d} ] && (cd {d} && find . -type f ! -name {MANIFEST} -printf "%P\\t%s\\n"); '
        f'echo "{MARK}recorded"; cat {d}/{MANIFEST} 2>/dev/null; echo'
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
    recorded = {k: str(v.get("sha256", "")) for k, v in data.items() if isinstance(v, dict)}
    return RemoteFiles(sizes, recorded)


def missing(spec: UploadSpec, remote: RemoteFiles) -> tuple[FileSum, ...]:
    """The files the host still needs (pure)."""
    return tuple(
        f for f in spec.files if remote.sizes.get(f.path) != f.size or remote.recorded.get(f.path) != f.sha256
    )
