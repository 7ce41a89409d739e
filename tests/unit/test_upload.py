"""Which model files a host still needs: checksums and sizes, as data."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from orchestrator.core.render import FileSum, UploadSpec
from orchestrator.provision.upload import RemoteFiles, local_spec, missing, parse_remote


def test_local_spec_checksums_every_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "w.bin").write_bytes(b"\0" * 10)
    spec = local_spec(tmp_path, "/models/m", cache_dir=tmp_path / "cache")
    assert spec.files == (
        FileSum("config.json", 2, "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"),
        FileSum("sub/w.bin", 10, "01d448afd928065458cf670b60f5a594d735af0172c8d67f22a81680132681ca"),
    )


SPEC = UploadSpec("/local", "/models/m", (FileSum("a", 3, "sha-a"), FileSum("b", 5, "sha-b")))


def test_nothing_missing_when_sizes_and_checksums_match() -> None:
    remote = parse_remote(
        ["a\t3", "b\t5"], ['{"a": {"size": 3, "sha256": "sha-a"}, "b": {"size": 5, "sha256": "sha-b"}}']
    )
    assert missing(SPEC, remote) == ()


def test_truncated_file_is_sent_again() -> None:
    remote = RemoteFiles({"a": 3, "b": 2}, {"a": {"sha256": "sha-a"}, "b": {"sha256": "sha-b"}})
    assert missing(SPEC, remote) == (FileSum("b", 5, "sha-b"),)


def test_interrupted_upload_resumes_with_what_is_left() -> None:
    # The record grows as files land: after an interruption it names what arrived whole.
    remote = parse_remote(["a\t3", "b\t1"], [SPEC.manifest_json({"a"})])
    assert [f.path for f in missing(SPEC, remote)] == ["b"]
    # A file that landed but was never recorded (interrupted between the two) is sent again.
    assert [f.path for f in missing(SPEC, parse_remote(["a\t3"], [""]))] == ["a", "b"]


def test_changed_content_same_size() -> None:
    remote = RemoteFiles({"a": 3, "b": 5}, {"a": {"sha256": "old"}, "b": {"sha256": "sha-b"}})
    assert [f.path for f in missing(SPEC, remote)] == ["a"]


def test_checksums_are_cached_by_size_and_mtime(tmp_path: Path) -> None:
    model, cache = tmp_path / "m", tmp_path / "cache"
    model.mkdir()
    weights = model / "w.bin"
    weights.write_bytes(b"a" * 10)
    first = local_spec(model, "/d", cache_dir=cache).files[0].sha256
    # A cached entry is used while size and mtime are unchanged: poison it and it is what comes back.
    data = json.loads((cache / "checksums.json").read_text())
    data[str(weights.resolve())]["sha256"] = "from-cache"
    (cache / "checksums.json").write_text(json.dumps(data))
    assert local_spec(model, "/d", cache_dir=cache).files[0].sha256 == "from-cache"
    # Same size, new content and mtime: recomputed.
    weights.write_bytes(b"b" * 10)
    os.utime(weights, ns=(1, 1))
    again = local_spec(model, "/d", cache_dir=cache).files[0].sha256
    assert again not in ("from-cache", first)
    assert again == hashlib.sha256(b"b" * 10).hexdigest()


def test_unwritable_cache_only_costs_time(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder would be")
    spec = local_spec(tmp_path, "/d", cache_dir=blocker / "orch")
    assert [f.path for f in spec.files] == ["blocker", "f"]
