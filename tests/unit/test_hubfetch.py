"""hubfetch against the real hub clients (huggingface_hub, modelscope) and the stand-in hub on loopback.

Both programs run as subprocesses, as on a host: the stub (tests/hubstub.py) on 127.0.0.1, and
the host-side program as ``PY -c SCRIPT`` (``hub.script()``, what orch sends) with the JSON request
on stdin. PY is the first of this
interpreter and $ORCH_HUB_PYTHON that has the library; without one, those tests are skipped
(the test-bed integration test runs them in a host). Nothing leaves loopback.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hubstub
import pytest

from orchestrator.provision import hub, hubproto

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = hub.script()
STUB = ROOT / "tests" / "hubstub.py"
REPO = "acme/tiny"
BIG = "acme/big"  # weights over 10 MiB: huggingface_hub writes a download to disk in 10 MiB chunks
WEIGHTS = "model.safetensors"
WEIGHTS_SIZE = 2 * 1024 * 1024
BIG_SIZE = 24 * 1024 * 1024
LIBRARY = {"hf": "huggingface_hub", "modelscope": "modelscope"}
TOKEN_ENV = {"hf": "HF_TOKEN", "modelscope": "MODELSCOPE_API_TOKEN"}
SOURCES = ["hf", "modelscope"]


@functools.cache
def hub_python(source: str) -> str | None:
    """An interpreter that can import the source's library: this one, or $ORCH_HUB_PYTHON."""
    for python in (sys.executable, os.environ.get("ORCH_HUB_PYTHON")):
        if python and subprocess.run([python, "-c", f"import {LIBRARY[source]}"], capture_output=True,
                                     check=False, timeout=60).returncode == 0:  # fmt: skip
            return python
    return None


def python_for(source: str) -> str:
    python = hub_python(source)
    if python is None:
        pytest.skip(
            f"{LIBRARY[source]} is in neither this interpreter ({sys.executable}) nor $ORCH_HUB_PYTHON "
            f"({os.environ.get('ORCH_HUB_PYTHON') or 'unset'}); e.g. python3.11 -m venv /tmp/hubvenv && "
            "/tmp/hubvenv/bin/pip install huggingface_hub==2.4.0 hf_xet==1.8.0 modelscope==1.40.2 modelscope-hub==0.5.1, "
            "then ORCH_HUB_PYTHON=/tmp/hubvenv/bin/python"
        )
    return python


def make_repo(root: Path, repo_id: str, weights_size: int) -> Path:
    """A small model repo: config and tokenizer files, seeded random "weights", one nested file."""
    repo = root / repo_id
    (repo / "sub").mkdir(parents=True)
    (repo / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 256}) + "\n")
    (repo / "tokenizer.json").write_text(json.dumps({"vocab": {f"t{i}": i for i in range(2000)}}))
    (repo / WEIGHTS).write_bytes(random.Random(weights_size).randbytes(weights_size))
    (repo / "sub" / "notes.txt").write_text("nested path\n")
    return repo


@dataclass
class Stub:
    url: str
    log: Path
    proc: subprocess.Popen[str]

    def requests(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [json.loads(line) for line in lines]

    def clear(self) -> None:
        self.log.write_text("")

    def settle(self, name: str) -> None:
        """Wait until the stub has logged every started GET of a file (an aborted one is logged late)."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not self.file_gets(name):
            time.sleep(0.1)

    def file_gets(self, name: str) -> list[dict[str, Any]]:
        """GETs of a file's bytes, by either API."""
        return [r for r in self.requests() if r["method"] == "GET" and r["status"] in (200, 206)
                and (r["path"].endswith(f"/{name}") or f"FilePath={name}" in r["path"])]  # fmt: skip


@pytest.fixture
def hub_root(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    make_repo(root, REPO, WEIGHTS_SIZE)
    make_repo(root, BIG, BIG_SIZE)
    return root


@pytest.fixture
def start_stub(tmp_path: Path, hub_root: Path) -> Iterator[Callable[..., Stub]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*options: str) -> Stub:
        log = tmp_path / f"stub-{len(procs)}.log"
        argv = [sys.executable, str(STUB), "--root", str(hub_root), "--bind", "127.0.0.1", "--port", "0",
                "--log", str(log), *options]  # fmt: skip
        with (tmp_path / f"stub-{len(procs)}.err").open("w") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first, "hubstub did not start: " + (tmp_path / f"stub-{len(procs) - 1}.err").read_text()
        return Stub(json.loads(first)["url"], log, proc)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


@dataclass
class Result:
    code: int
    events: list[dict[str, Any]]
    stdout: str
    stderr: str

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1]

    def progress(self) -> list[int]:
        return [e["done"] for e in self.events if e["event"] == "progress"]


def request(op: str, source: str, url: str, dest: Path, *, revision: str | None = None,
            repo: str = REPO, **env: str) -> str:  # fmt: skip
    home = dest.parent / "home"
    base = {"HF_ENDPOINT": url, "MODELSCOPE_ENDPOINT": url, "HF_HOME": str(home / "hf")}
    return json.dumps({"op": op, "source": source, "id": repo, "revision": revision, "dest": str(dest),
                       "env": {**base, **env}})  # fmt: skip


def host_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no tokens, proxies or caches of the machine running the tests."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


def parse(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line must be a JSON event: nothing else may reach the controller's parser."""
    events = [json.loads(line) for line in stdout.splitlines()]
    assert all(isinstance(e, dict) and "event" in e for e in events), stdout
    return events


def hubfetch(python: str, body: str, tmp_path: Path, *, timeout: float = 120) -> Result:
    proc = subprocess.run([python, "-c", SCRIPT], input=body, capture_output=True, text=True,
                          env=host_env(tmp_path), timeout=timeout, check=False)  # fmt: skip
    print(proc.stdout, proc.stderr, sep="\n")
    return Result(proc.returncode, parse(proc.stdout), proc.stdout, proc.stderr)


def expected_listing(hub_root: Path, repo_id: str = REPO) -> dict[str, Any]:
    repo = hubstub.Store(hub_root).repo(repo_id)
    files = [{"path": f.path, "size": f.size} for f in repo.files]
    return {"commit": repo.commit, "files": files, "total": sum(f["size"] for f in files)}


def same_tree(dest: Path, repo: Path) -> bool:
    wanted = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    return all((dest / rel).read_bytes() == data for rel, data in wanted.items())


# ---------------------------------------------------------------- without a hub library


def test_the_host_program_imports_only_the_stdlib_and_its_own_modules() -> None:
    """It runs where orch is not installed: each module imports the standard library and the modules
    sent before it (the hub library is imported by name, at run time)."""
    for i, name in enumerate(hub.HOST_MODULES):
        for node in ast.walk(ast.parse((ROOT / "orchestrator" / "provision" / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert (node.level, node.module) in {(1, before) for before in hub.HOST_MODULES[:i]}, name
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert {n.split(".")[0] for n in names} <= sys.stdlib_module_names, (name, names)


def test_request_errors_are_one_json_line(tmp_path: Path) -> None:
    python = sys.executable
    for body, expected in (
        ("not json", "the request is not JSON"),
        (
            json.dumps({"op": "fetch", "source": "hf", "id": REPO, "dest": "rel/dir"}),
            "dest must be an absolute",
        ),
        (json.dumps({"op": "probe", "source": "pypi", "id": REPO}), "source one of"),
        (json.dumps({"op": "probe", "source": "hf", "id": "no-slash"}), "id must look like org/name"),
    ):
        result = hubfetch(python, body, tmp_path)
        assert result.code == 1
        assert [e["event"] for e in result.events] == ["error"]
        assert expected in result.last["message"]


@pytest.mark.parametrize("source", SOURCES)
def test_missing_library_is_named_with_the_interpreter(source: str, tmp_path: Path) -> None:
    # -S: no site-packages, so neither library can be imported whatever this interpreter has.
    proc = subprocess.run([sys.executable, "-S", "-c", SCRIPT], capture_output=True, text=True, check=False,
                          input=request("probe", source, "http://127.0.0.1:9", tmp_path / "m"),
                          env=host_env(tmp_path), timeout=60)  # fmt: skip
    assert proc.returncode == 1
    message = parse(proc.stdout)[-1]["message"]
    assert message == (
        f"{LIBRARY[source]} is not installed in this Python ({sys.executable}): pip install {LIBRARY[source]}"
    )


# ---------------------------------------------------------------- with the real clients


@pytest.mark.parametrize("source", SOURCES)
def test_probe_lists_files_sizes_and_commit(
    source: str, tmp_path: Path, hub_root: Path, start_stub: Any
) -> None:
    python, stub = python_for(source), start_stub()
    result = hubfetch(python, request("probe", source, stub.url, tmp_path / "m"), tmp_path)
    assert result.code == 0
    assert result.events == [{"event": "listing", **expected_listing(hub_root)}]
    assert not (tmp_path / "m").exists()  # a probe writes nothing
    assert not [r for r in stub.requests() if r["method"] == "GET" and r["bytes"] >= WEIGHTS_SIZE]


def test_hf_sizes_come_from_the_tree_when_model_info_has_none(
    tmp_path: Path, hub_root: Path, start_stub: Any
) -> None:
    python, stub = python_for("hf"), start_stub("--ignore-blobs")
    result = hubfetch(python, request("probe", "hf", stub.url, tmp_path / "m"), tmp_path)
    assert result.events == [{"event": "listing", **expected_listing(hub_root)}]
    assert any("/tree/" in r["path"] for r in stub.requests())


@pytest.mark.parametrize("source", SOURCES)
def test_fetch_writes_files_and_marker_and_a_rerun_downloads_nothing(
    source: str, tmp_path: Path, hub_root: Path, start_stub: Any
) -> None:
    python, stub, dest = python_for(source), start_stub(), tmp_path / "models" / "tiny"
    result = hubfetch(python, request("fetch", source, stub.url, dest, revision="main"), tmp_path)
    listing = expected_listing(hub_root)
    assert result.code == 0, result.last
    assert result.last == {"event": "done", **listing}
    assert result.progress()[-1] == listing["total"] and result.progress() == sorted(result.progress())
    assert same_tree(dest, hub_root / REPO)
    marker = json.loads((dest / ".orch-model.json").read_text())
    assert marker == {"source": source, "id": REPO, "revision": "main", "commit": listing["commit"],
                      "files": listing["files"]}  # fmt: skip
    assert "done" not in result.stderr and "%|" not in result.stderr  # no progress bars

    stub.clear()
    again = hubfetch(python, request("fetch", source, stub.url, dest, revision="main"), tmp_path)
    assert again.last == {"event": "done", **listing}
    fetched = [r["path"] for r in stub.requests() if r["method"] == "GET" and ("/resolve/" in r["path"]
               or "FilePath=" in r["path"])]  # fmt: skip
    assert fetched == []


@pytest.mark.parametrize("source", SOURCES)
def test_a_truncated_file_is_fetched_again(
    source: str, tmp_path: Path, hub_root: Path, start_stub: Any
) -> None:
    python, stub, dest = python_for(source), start_stub(), tmp_path / "m"
    body = request("fetch", source, stub.url, dest, revision="main")
    assert hubfetch(python, body, tmp_path).code == 0
    with (dest / WEIGHTS).open("r+b") as f:
        f.truncate(1000)
    stub.clear()
    again = hubfetch(python, body, tmp_path)
    assert again.code == 0, again.last
    assert same_tree(dest, hub_root / REPO)
    assert [(g["range"], g["bytes"]) for g in stub.file_gets(WEIGHTS)] == [(None, WEIGHTS_SIZE)]
    assert stub.file_gets("config.json") == []


@pytest.mark.parametrize("source", SOURCES)
def test_commit_id_is_a_revision_and_others_are_not(
    source: str, tmp_path: Path, hub_root: Path, start_stub: Any
) -> None:
    python, stub = python_for(source), start_stub()
    commit = expected_listing(hub_root)["commit"]
    by_commit = hubfetch(
        python, request("probe", source, stub.url, tmp_path / "m", revision=commit), tmp_path
    )
    assert by_commit.last["commit"] == commit
    result = hubfetch(python, request("fetch", source, stub.url, tmp_path / "m", revision="v9"), tmp_path)
    assert result.code == 1
    assert result.events == [
        {"event": "error", "message": f"{source}: revision 'v9' of {REPO} not found at {stub.url}"}
    ]


@pytest.mark.parametrize("source", SOURCES)
def test_unknown_repo(source: str, tmp_path: Path, start_stub: Any) -> None:
    python, stub = python_for(source), start_stub()
    result = hubfetch(python, request("fetch", source, stub.url, tmp_path / "m", repo="acme/nope"), tmp_path)
    assert result.code == 1
    assert result.events == [
        {"event": "error", "message": f"{source}: repository acme/nope not found at {stub.url}"}
    ]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("source", SOURCES)
def test_unreachable_endpoint(source: str, tmp_path: Path) -> None:
    python = python_for(source)
    result = hubfetch(python, request("probe", source, "http://127.0.0.1:9", tmp_path / "m"), tmp_path)
    assert result.code == 1
    assert (
        result.last["message"] == f"{source}: cannot reach http://127.0.0.1:9: [Errno 111] Connection refused"
    )


@pytest.mark.parametrize("source", SOURCES)
def test_token_is_required_sent_and_never_printed(source: str, tmp_path: Path, start_stub: Any) -> None:
    python, stub, dest, var = (
        python_for(source),
        start_stub("--token", "s3cret-token"),
        tmp_path / "m",
        TOKEN_ENV[source],
    )
    missing = hubfetch(python, request("fetch", source, stub.url, dest), tmp_path)
    assert missing.code == 1
    assert missing.last["message"] == (
        f"{source}: 401 unauthorized at {stub.url}: {var} missing ({REPO} is private, gated or absent)"
    )
    wrong = hubfetch(python, request("fetch", source, stub.url, dest, **{var: "wrong-token-value"}), tmp_path)
    assert wrong.code == 1
    assert (
        wrong.last["message"]
        == f"{source}: 401 unauthorized at {stub.url}: {var} is wrong or has no access to {REPO}"
    )
    assert "wrong-token-value" not in wrong.stdout + wrong.stderr

    stub.clear()
    right = hubfetch(python, request("fetch", source, stub.url, dest, **{var: "s3cret-token"}), tmp_path)
    assert right.code == 0, right.last
    assert "s3cret-token" not in right.stdout + right.stderr
    seen = stub.requests()
    assert seen and all(r["auth_ok"] for r in seen), [r for r in seen if not r["auth_ok"]]


@pytest.mark.parametrize("source", SOURCES)
def test_dropped_connection_is_resumed_with_range(
    source: str, tmp_path: Path, hub_root: Path, start_stub: Any
) -> None:
    # The first download of each file bigger than 12 MB is cut there; the client asks for the rest.
    python, stub, dest = python_for(source), start_stub("--drop-after", "12000000"), tmp_path / "m"
    result = hubfetch(python, request("fetch", source, stub.url, dest, repo=BIG), tmp_path)
    assert result.code == 0, result.last
    assert same_tree(dest, hub_root / BIG)
    (first, second) = stub.file_gets(WEIGHTS)
    assert (first["range"], first["status"], first["bytes"]) == (None, 200, 12_000_000)
    start = int(second["range"].removeprefix("bytes=").rstrip("-"))
    assert 10 * 1024 * 1024 <= start <= 12_000_000  # what the client had written to disk
    assert (second["status"], second["bytes"]) == (206, BIG_SIZE - start)


def run_until(python: str, body: str, tmp_path: Path, *, stop_at: int) -> Result:
    """Start a fetch and SIGTERM it once its progress passes stop_at bytes."""
    err_path = tmp_path / "interrupted.err"
    with err_path.open("w") as err:
        proc = subprocess.Popen([python, "-c", SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, text=True, env=host_env(tmp_path))  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        proc.stdin.write(body)
        proc.stdin.close()
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            event = json.loads(line)
            if event["event"] != "progress" or event["done"] > stop_at:
                break
        proc.send_signal(signal.SIGTERM)
        lines.append(proc.stdout.read())
        proc.wait(timeout=30)
    finally:
        watchdog.cancel()
        proc.stdout.close()
    stdout = "".join(lines)
    print(stdout, err_path.read_text(), sep="\n")
    return Result(proc.returncode, parse(stdout), stdout, err_path.read_text())


@pytest.mark.parametrize("source", SOURCES)
def test_interrupted_fetch_is_continued_by_a_rerun(
    source: str, tmp_path: Path, hub_root: Path, start_stub: Any
) -> None:
    python, stub, dest = python_for(source), start_stub("--rate", "8000000"), tmp_path / "m"
    body = request("fetch", source, stub.url, dest, repo=BIG)
    stopped = run_until(python, body, tmp_path, stop_at=10 * 1024 * 1024)
    assert stopped.code == 1
    assert stopped.last == {"event": "error", "message": "interrupted by SIGTERM; a re-run continues"}
    assert len(stopped.progress()) >= 2, "progress comes about every 0.5 s"
    assert not (dest / ".orch-model.json").exists()
    assert not (dest / WEIGHTS).exists()

    stub.settle(WEIGHTS)
    stub.clear()
    again = hubfetch(python, body, tmp_path)
    assert again.code == 0, again.last
    assert same_tree(dest, hub_root / BIG)
    assert not list(dest.rglob("*.incomplete")), "no partial file is left behind"
    # Files that were complete are not fetched again.
    assert stub.file_gets("config.json") == [] and stub.file_gets("tokenizer.json") == []
    resumed = [(g["range"], g["status"], g["bytes"]) for g in stub.file_gets(WEIGHTS)]
    if source == "modelscope":  # modelscope continues its partial file with a Range request
        start = BIG_SIZE - resumed[0][2]
        assert resumed == [(f"bytes={start}-", 206, BIG_SIZE - start)] and start >= 10 * 1024 * 1024
    else:  # huggingface_hub 1.x+ starts an interrupted file over (its temp names are unique per process)
        assert resumed == [(None, 200, BIG_SIZE)]


@pytest.mark.parametrize("path", ["../../etc/shadow", "/etc/shadow", "a/../../b", "..", "", "a\\..\\..\\b"])
def test_a_listed_path_outside_the_model_folder_is_refused(path: str) -> None:
    """The hub is whatever the playbook's endpoint names; its listing must not reach outside dest."""
    listing = hubproto.Listing("c0ffee", (hubproto.HubFile("config.json", 2), hubproto.HubFile(path, 0)))
    with pytest.raises(hubproto.FetchError, match="a path outside the model folder"):
        hubproto.contained("hf", listing)
    assert hubproto.contained("hf", hubproto.Listing("c", (hubproto.HubFile("sub/a..b", 1),))).files
