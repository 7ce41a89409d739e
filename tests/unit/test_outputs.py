"""Controller-side writes (``monitoring --out``): atomic, and every filesystem error one OutputError line.

A full disk and a read-only filesystem are real (small tmpfs mounts) where the test runs as
root; elsewhere those two are skipped and the error is injected at the rename.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import outputs
from orchestrator.errors import OrchError, OutputError
from orchestrator.observe import monitoring

TARGETS = [monitoring.MonitorTarget("qwen", "gpu-a", "10.0.0.5", 8000, 3, "qwen2.5")]
FILES = monitoring.files(TARGETS, gpu_exporter_port=9400)


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``where`` for the block, or a skip where mounting is not allowed."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "orch-test", str(where)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_monitoring_files_are_written_whole(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    written = outputs.write_files(out, FILES)
    assert [p.name for p in written] == ["prometheus.yml", "targets.json", "grafana-dashboard.json"]
    assert json.loads((out / "targets.json").read_text())[0]["labels"]["deployment"] == "qwen"
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # no temp file left


def test_a_file_where_the_folder_should_be(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputError) as info:
        outputs.write_files(tmp_path / "out", FILES)
    assert str(info.value) == f"{tmp_path / 'out'}: cannot write: a file stands where a folder should be " + (
        f"({tmp_path / 'out'})"
    )


def test_a_file_where_a_parent_folder_should_be(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"/f/out: cannot write: a file stands where a folder should be"):
        outputs.write_files(tmp_path / "f" / "out", FILES)


def test_a_folder_where_a_file_should_be(tmp_path: Path) -> None:
    (tmp_path / "targets.json").mkdir()
    with pytest.raises(OutputError, match=r"/targets.json: cannot write: Is a directory$"):
        outputs.write_files(tmp_path, FILES)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_full_disk(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=16k") as small:
        with pytest.raises(OutputError) as info:
            outputs.write_files(small, {"big": "x" * 100_000})
        assert str(info.value) == f"{small / 'big'}: cannot write: no space left on the device"
        assert list(small.iterdir()) == []  # the partial temp file is gone


def test_read_only_filesystem(tmp_path: Path) -> None:
    with (
        tmpfs(tmp_path / "ro", "ro,size=16k") as ro,
        pytest.raises(OutputError, match=r"cannot write: the filesystem is read-only$"),
    ):
        outputs.write_files(ro, FILES)


def test_read_only_folder_as_a_user(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(OutputError, match=r"cannot write: Permission denied$"):
        outputs.write_files(folder, FILES)


def test_full_disk_at_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OrchError) as info:
        outputs.write_text(tmp_path / "targets.json", "[]")
    assert "\n" not in str(info.value)
    assert str(info.value).endswith("targets.json: cannot write: no space left on the device")
    assert list(tmp_path.iterdir()) == []
