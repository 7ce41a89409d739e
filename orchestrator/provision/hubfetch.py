"""Fetch a model from a hub ON THE HOST, with the hub's own client (huggingface_hub or modelscope).

This file is a self-contained program (stdlib + the hub library; it never imports orch). The
controller sends it as text and runs it with the deployment's venv Python, ``PY -c "$(cat
hubfetch.py)"``; ``PY hubfetch.py`` and ``PY - REQUEST_FILE`` work too. It reads one JSON request
on stdin (or from the file named as its first argument), so that tokens never travel in argv:

    {"op": "probe" | "fetch", "source": "hf" | "modelscope", "id": "org/name",
     "revision": str | null, "dest": "/abs/dir", "env": {"HF_ENDPOINT": ..., "HF_TOKEN": ...}}

``env`` goes into os.environ before the library is imported (HF_ENDPOINT, HF_TOKEN, HF_HOME,
MODELSCOPE_ENDPOINT, MODELSCOPE_API_TOKEN, ...). It answers in JSON lines on stdout:

    probe:  {"event": "listing", "commit": sha, "files": [{"path", "size"}], "total": bytes}
    fetch:  {"event": "progress", "done": bytes, "total": bytes}   about every 0.5 s, then
            {"event": "done", "commit": sha, "files": [...], "total": bytes}
    error:  {"event": "error", "message": "one line: what and why"}   and exit status 1

A fetch lists the repo first (so a bad token or id fails before anything is written), removes
the record ``dest/.orch-model.json`` and any listed file of the wrong size, downloads into
``dest`` with the library's snapshot_download (huggingface_hub: pinned to the listed commit),
checks every listed file's size, then writes the record (source, id, revision, commit, files)
atomically. One fetch per folder at a time (flock on ``dest/.orch-fetch.lock``). Partial files
are left in place, so a re-run continues: modelscope resumes them with HTTP Range;
huggingface_hub (1.x and later) keeps the files already complete and fetches an interrupted file
again from its start (its temporary names are unique per process, so stale ones are removed
here; within one run it does resume a dropped connection with Range). SIGTERM/SIGHUP end the run
with an error event. Library progress bars, logging and warnings are switched off.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

MARKER = ".orch-model.json"
LOCK = ".orch-fetch.lock"
PROGRESS_EVERY_S = 0.5
SOURCES = ("hf", "modelscope")
OPS = ("probe", "fetch")
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_VERBOSITY": "error",
    "HF_HUB_DISABLE_TELEMETRY": "1",  # also skips the agent-registry request to the endpoint
    "TQDM_DISABLE": "1",  # modelscope's progress bars
}
# A fetch goes online by definition: offline switches meant for vLLM are dropped here.
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|KEY|COOKIE|CREDENTIAL", re.IGNORECASE)
# huggingface_hub >= 1.x downloads to "<hash>.<etag>.<8 hex>.incomplete": unique per process, never resumed.
HF_STALE_PART = re.compile(r"^[^.]+\.[^.]+\.[0-9a-f]{8}\.incomplete$")
PARTIAL_SUFFIXES = (".incomplete", ".parallel_tmp")
CONNECTION_ERRORS = {
    "ConnectError", "ConnectTimeout", "ConnectionError", "NetworkError", "NewConnectionError",
    "MaxRetryError", "TimeoutException", "ReadTimeout", "RequestTimeoutError", "OfflineModeIsEnabled",
}  # fmt: skip


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
    commit: str
    files: tuple[HubFile, ...]

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    def as_json(self) -> dict[str, Any]:
        files = [{"path": f.path, "size": f.size} for f in self.files]
        return {"commit": self.commit, "files": files, "total": self.total}


class Output:
    """JSON lines on the real stdout; anything else the process prints goes to stderr instead."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._fd = os.dup(1)
        os.dup2(2, 1)  # stray prints (libraries, subprocesses) must not look like events
        sys.stdout = sys.stderr
        self._lock = threading.Lock()
        self.secrets: list[str] = []

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}) + "\n"
        if not self._lock.acquire(timeout=2):  # a signal handler must never wait forever
            return
        try:
            os.write(self._fd, line.encode())
        except OSError:
            pass  # the controller went away: keep downloading, a re-run finds the files
        finally:
            self._lock.release()

    def error(self, message: str) -> None:
        """The error event: one line, with any secret of the request masked."""
        self.emit("error", message=self.scrub(" ".join(message.split())))

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


# ---------------------------------------------------------------- request and environment


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


def apply_env(env: dict[str, str]) -> None:
    """The request's environment, before the hub library is imported (it reads it at import time)."""
    os.environ.update(env)
    for name in OFFLINE_ENV:
        os.environ.pop(name, None)
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # library chatter; failures are reported as events


def import_library(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        broken = "" if (exc.name or "").split(".")[0] == package else f" ({exc})"
        raise FetchError(
            f"{package} is not installed in this Python ({sys.executable}): pip install {package}{broken}"
        ) from None


# ---------------------------------------------------------------- errors


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _kinds(exc: BaseException) -> set[str]:
    """Class names of every exception in the chain, with their bases (version-proof matching)."""
    return {cls.__name__ for e in _chain(exc) for cls in type(e).__mro__}


def _status(exc: BaseException) -> int | None:
    for e in _chain(exc):
        response = getattr(e, "response", None)
        for code in (getattr(response, "status_code", None), getattr(e, "status_code", None)):
            if isinstance(code, int) and code >= 400:
                return code
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------- the hubs


class Hub:
    """One hub's client: list a revision, download it into a folder, explain its errors in one line."""

    source = ""
    token_env = ""

    def __init__(self, req: Request) -> None:
        self.req = req

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def listing(self) -> Listing:
        raise NotImplementedError

    def download(self, listing: Listing, dest: Path) -> None:
        raise NotImplementedError

    def repo_exists(self) -> bool:
        return False

    def explain(self, exc: BaseException) -> str:
        """The one-line message for a library error."""
        return f"{self.source}: {self._reason(exc, _kinds(exc), _status(exc))}"

    def _reason(self, exc: BaseException, kinds: set[str], status: int | None) -> str:
        at, repo, rev = f"at {self.endpoint}", self.req.id, self.req.revision or "the default revision"
        if "RevisionNotFoundError" in kinds:
            return f"revision {rev!r} of {repo} not found {at}"
        if kinds & {"RemoteEntryNotFoundError", "EntryNotFoundError"}:
            return f"a listed file of {repo} is missing {at}: {_first_line(exc)}"
        if status == 401:
            return f"401 unauthorized {at}: {self._token_problem()}"
        if "GatedRepoError" in kinds or status == 403:
            return f"403 forbidden {at}: {self.token_env} has no access to {repo} (gated or private)"
        if status == 404 or kinds & {"RepositoryNotFoundError", "NotExistError"}:
            missing = f"revision {rev!r} of {repo}" if self.repo_exists() else f"repository {repo}"
            return f"{missing} not found {at}"
        if kinds & CONNECTION_ERRORS:
            errno = re.search(r"\[Errno -?\d+\][^\"')]*", str(exc))  # the cause, not the retry wrapping
            return f"cannot reach {self.endpoint}: {errno.group(0).strip() if errno else _first_line(exc)}"
        return f"HTTP {status} {at}: {_first_line(exc)}" if status else _first_line(exc)

    def _token_problem(self) -> str:
        if os.environ.get(self.token_env):
            return f"{self.token_env} is wrong or has no access to {self.req.id}"
        return f"{self.token_env} missing ({self.req.id} is private, gated or absent)"


class HfHub(Hub):
    """huggingface_hub: HfApi.model_info(files_metadata=True), snapshot_download(local_dir=)."""

    source, token_env = "hf", "HF_TOKEN"

    def __init__(self, req: Request) -> None:
        super().__init__(req)
        self.lib = import_library("huggingface_hub", "huggingface_hub")

    @property
    def endpoint(self) -> str:
        return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")

    def listing(self) -> Listing:
        api = self.lib.HfApi()
        info = api.model_info(self.req.id, revision=self.req.revision, files_metadata=True)
        sizes = {s.rfilename: s.size for s in info.siblings or ()}
        if None in sizes.values():  # an endpoint that ignores ?blobs=true: the tree has the sizes
            tree = api.list_repo_tree(self.req.id, revision=info.sha, recursive=True)
            sizes = {f.path: f.size for f in tree if type(f).__name__ == "RepoFile"}
        return Listing(str(info.sha), tuple(HubFile(path, int(size)) for path, size in sizes.items()))

    def download(self, listing: Listing, dest: Path) -> None:
        # The listed commit, not the branch: what lands is exactly what was listed.
        self.lib.snapshot_download(self.req.id, revision=listing.commit, local_dir=str(dest))


class ModelScopeHub(Hub):
    """modelscope: the repo's file list (modelscope_hub, which modelscope is built on), snapshot_download."""

    source, token_env = "modelscope", "MODELSCOPE_API_TOKEN"

    def __init__(self, req: Request) -> None:
        super().__init__(req)
        self.lib = import_library("modelscope.hub.snapshot_download", "modelscope")
        hub = import_library("modelscope_hub", "modelscope")
        self.api = hub.HubApi()
        self._endpoint = str(hub.get_default_config().endpoint)  # MODELSCOPE_ENDPOINT, or the default site

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def listing(self) -> Listing:
        entries = self.api.legacy.list_repo_files(
            self.req.id, "model", revision=self.req.revision or "master", recursive=True
        )
        blobs = [e for e in entries if (e.get("Type") or "blob") != "tree" and e.get("Path")]
        files = tuple(HubFile(str(e["Path"]), int(e.get("Size") or 0)) for e in blobs)
        return Listing(self._commit(blobs), files)

    def _commit(self, blobs: list[dict[str, Any]]) -> str:
        """The head commit: the one of the most recently committed file (entries carry their last commit)."""
        dated = [e for e in blobs if isinstance(e.get("Revision"), str) and e["Revision"]]
        if not dated:
            return self.req.revision or "master"
        return str(max(dated, key=lambda e: int(e.get("CommittedDate") or 0))["Revision"])

    def download(self, listing: Listing, dest: Path) -> None:
        self.lib.snapshot_download(model_id=self.req.id, revision=self.req.revision, local_dir=str(dest))

    def repo_exists(self) -> bool:
        try:
            self.api.legacy.get_repo_info(self.req.id, "model")
        except Exception:
            return False
        return True


HUBS: dict[str, type[Hub]] = {"hf": HfHub, "modelscope": ModelScopeHub}


# ---------------------------------------------------------------- fetch


def on_disk(dest: Path, listing: Listing) -> int:
    """Bytes of the listing already under dest: whole files plus partial downloads, at most the total."""
    done = 0
    for f in listing.files:
        with contextlib.suppress(OSError):
            done += min((dest / f.path).stat().st_size, f.size)
    for root, _, names in os.walk(dest):
        for name in names:
            if name.endswith(PARTIAL_SUFFIXES):
                with contextlib.suppress(OSError):
                    done += os.stat(os.path.join(root, name)).st_size
    return min(done, listing.total)


@contextlib.contextmanager
def progress(out: Output, dest: Path, listing: Listing) -> Iterator[None]:
    """Report the bytes on disk every PROGRESS_EVERY_S while the body runs."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(PROGRESS_EVERY_S):
            out.emit("progress", done=on_disk(dest, listing), total=listing.total)

    out.emit("progress", done=on_disk(dest, listing), total=listing.total)
    thread = threading.Thread(target=tick, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def exclusive(dest: Path) -> Iterator[None]:
    """One fetch into a folder at a time; a second one waits (then finds the files there)."""
    with (dest / LOCK).open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"hubfetch: waiting for another fetch into {dest}", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def remove_damaged(dest: Path, listing: Listing) -> None:
    """A listed file of the wrong size (truncated, or of another revision) is removed before the download:
    huggingface_hub trusts a file it recorded for this commit without looking at its size."""
    for f in listing.files:
        path = dest / f.path
        if path.is_file() and path.stat().st_size != f.size:
            path.unlink()


def remove_stale_parts(dest: Path) -> None:
    """huggingface_hub's per-process temp files of a killed run: never resumed, so only taking space."""
    for part in (dest / ".cache" / "huggingface" / "download").rglob("*.incomplete"):
        if HF_STALE_PART.match(part.name):
            part.unlink(missing_ok=True)


def check_space(source: str, dest: Path, listing: Listing) -> None:
    need = listing.total - on_disk(dest, listing)
    free = shutil.disk_usage(dest).free
    if need > free:
        raise FetchError(f"{source}: not enough space in {dest}: {need} more bytes needed, {free} free")


def verify(source: str, dest: Path, listing: Listing) -> None:
    """Every listed file is in place, whole; the library said it succeeded, the disk must agree."""
    for f in listing.files:
        path = dest / f.path
        size = path.stat().st_size if path.is_file() else None
        if size != f.size:
            found = "missing" if size is None else f"{size} bytes"
            raise FetchError(f"{source}: {f.path} is {found} after the download; the hub lists {f.size}")


def write_marker(dest: Path, req: Request, listing: Listing) -> None:
    record = {"source": req.source, "id": req.id, "revision": req.revision, **listing.as_json()}
    record.pop("total")
    tmp = dest / f"{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, dest / MARKER)


def contained(source: str, listing: Listing) -> Listing:
    """The listing, when every path stays inside the model folder. The hub is whatever the playbook's
    HF_ENDPOINT names: a path like ``../../etc/x`` would have a file outside the folder removed
    (``remove_damaged``) or written."""
    for f in listing.files:
        parts = f.path.replace("\\", "/").split("/")
        if f.path.startswith("/") or ".." in parts or not f.path or "\0" in f.path:
            raise FetchError(f"{source}: the hub lists {f.path!r}, a path outside the model folder")
    return listing


def fetch(out: Output, hub: Hub, req: Request) -> None:
    dest = Path(req.dest)
    listing = contained(req.source, hub.listing())
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"{req.source}: cannot create {dest}: {exc.strerror}") from None
    with exclusive(dest):
        (dest / MARKER).unlink(missing_ok=True)  # the folder is about to change: no stale record
        remove_damaged(dest, listing)
        remove_stale_parts(dest)
        check_space(req.source, dest, listing)
        with progress(out, dest, listing):
            hub.download(listing, dest)
        verify(req.source, dest, listing)
        write_marker(dest, req, listing)
    out.emit("progress", done=listing.total, total=listing.total)
    out.emit("done", **listing.as_json())


def run(out: Output, req: Request) -> None:
    hub = HUBS[req.source](req)
    try:
        if req.op == "probe":
            out.emit("listing", **contained(req.source, hub.listing()).as_json())
        else:
            fetch(out, hub, req)
    except (FetchError, KeyboardInterrupt):
        raise
    except OSError as exc:
        if _status(exc) is None and not _kinds(exc) & CONNECTION_ERRORS:
            raise FetchError(f"{req.source}: {exc.strerror or exc} ({exc.filename or req.dest})") from exc
        raise FetchError(hub.explain(exc)) from exc
    except Exception as exc:
        raise FetchError(hub.explain(exc)) from exc


def on_signal(out: Output) -> None:
    """SIGTERM/SIGHUP: say so, and leave at once; partial files stay for the next run."""

    def handler(signum: int, frame: FrameType | None) -> None:
        out.error(f"interrupted by {signal.Signals(signum).name}; a re-run continues")
        os._exit(1)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def safe_path() -> None:
    """The current directory (-c) or this file's folder may hold a module named like one the library
    imports (orch's own secrets.py shadows the stdlib's): drop the entry Python put first for them."""
    if sys.path and not getattr(sys.flags, "safe_path", False):
        del sys.path[0]


def main(argv: list[str]) -> int:
    safe_path()
    out = Output()
    on_signal(out)
    source = "hubfetch"
    try:
        req = read_request(argv)
        source = req.source
        out.secrets = secret_values(req.env)
        apply_env(req.env)
        run(out, req)
        return 0
    except FetchError as exc:
        message = str(exc)
    except KeyboardInterrupt:
        message = f"{source}: interrupted; a re-run continues"
    except Exception as exc:  # a bug here or in the library: the trace goes to stderr only
        print(out.scrub(traceback.format_exc()), file=sys.stderr, flush=True)
        message = f"{source}: unexpected {type(exc).__name__}: {_first_line(exc)}"
    out.error(message)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
