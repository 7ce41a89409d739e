"""A stand-in model hub on loopback: every DIR/<org>/<name>/ is a model repo, served at once
through the file APIs of Hugging Face and of ModelScope, so that the real client libraries
(huggingface_hub, modelscope) can list and download it without the internet.

    python3 tests/hubstub.py --root DIR [--bind 127.0.0.1] [--port 0] [--token T] [--log FILE]
                             [--rate BYTES_PER_S] [--drop-after BYTES] [--ignore-blobs]

Once listening it prints one JSON line, {"url": "http://HOST:PORT"}, to stdout.

Hugging Face (``HF_ENDPOINT=URL``; token: ``Authorization: Bearer``):
  GET  /api/models/{repo}[/revision/{rev}][?blobs=true]   model info: sha, siblings (sizes with blobs)
  GET  /api/models/{repo}/tree/{rev}[/{path}][?recursive=true]
  HEAD/GET /{repo}/resolve/{rev}/{path}   ETag, X-Repo-Commit, Content-Length, Range → 206
  Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) and X-Error-Message
  as the real hub does. Files are plain HTTP (no X-Xet-* headers, no xetHash), so hf_xet stays idle.

ModelScope (``MODELSCOPE_ENDPOINT=URL``; token: ``Authorization: Bearer`` or cookie ``m_session_id``):
  GET /api/v1/models/{repo}                           repo info
  GET /api/v1/models/{repo}/revisions                 branches (master, main)
  GET /api/v1/models/{repo}/repo/files?Revision=&Recursive=&Root=
  GET /api/v1/models/{repo}/repo?Revision=&FilePath=  the file, Range → 206
  Answers in the legacy envelope {"Code", "Data", "Message", "RequestId", "Success"}.

The commit id is the SHA-1 over the repo's file names and contents; "main", "master" and that
commit are the revisions, any other is not found. Paths with a component starting with "." are
not part of a repo. Stdlib only (Python 3.11).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

BRANCHES = ("main", "master")
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".msgpack", ".h5")
LFS_MIN_SIZE = 10 * 1024 * 1024
CHUNK = 64 * 1024
CREATED = "2026-01-01T00:00:00.000Z"
CREATED_EPOCH = 1767225600


@dataclass(frozen=True)
class RepoFile:
    path: str  # relative, "/"-separated
    size: int
    blob_sha1: str  # git blob id, as the hub's "oid"
    sha256: str
    disk: Path

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES) or self.size >= LFS_MIN_SIZE

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_sha1


@dataclass(frozen=True)
class Repo:
    repo_id: str
    commit: str
    files: tuple[RepoFile, ...]

    def file(self, path: str) -> RepoFile | None:
        return next((f for f in self.files if f.path == path), None)

    def dirs(self) -> list[str]:
        found = {"/".join(f.path.split("/")[:i]) for f in self.files for i in range(1, f.path.count("/") + 1)}
        return sorted(found)


class HubError(Exception):
    """An error answer: HTTP status, the hub's error code and a message."""

    def __init__(self, status: int, code: str, message: str, *, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


class Store:
    """The repos under root, read from disk on every request; file hashes cached by (size, mtime)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._hashes: dict[tuple[Path, int, int], tuple[str, str]] = {}
        self._lock = threading.Lock()

    def repo(self, repo_id: str) -> Repo:
        base = self.root / repo_id
        if repo_id.count("/") != 1 or ".." in repo_id.split("/") or not base.is_dir():
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        files = tuple(self._file(base, p) for p in sorted(base.rglob("*")) if self._member(base, p))
        digest = hashlib.sha1()
        for f in files:
            digest.update(f"{f.path}\0{f.blob_sha1}\n".encode())
        return Repo(repo_id, digest.hexdigest(), files)

    def at(self, repo_id: str, revision: str | None) -> Repo:
        """The repo at a revision: a branch name or the commit id; anything else is not found."""
        repo = self.repo(repo_id)
        if revision not in (None, "", *BRANCHES, repo.commit):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo

    @staticmethod
    def _member(base: Path, path: Path) -> bool:
        rel = path.relative_to(base)
        return path.is_file() and not any(part.startswith(".") for part in rel.parts)

    def _file(self, base: Path, path: Path) -> RepoFile:
        st = path.stat()
        key = (path, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._hashes.get(key)
        if cached is None:
            data = path.read_bytes()
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            cached = (blob, hashlib.sha256(data).hexdigest())
            with self._lock:
                self._hashes[key] = cached
        return RepoFile(path.relative_to(base).as_posix(), st.st_size, cached[0], cached[1], path)


@dataclass
class Options:
    token: str | None
    rate: float | None
    drop_after: int | None
    log: Path | None
    ignore_blobs: bool = False


@dataclass
class Answer:
    """What a route returns: status, headers, and a JSON body or a file range."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    file: RepoFile | None = None
    start: int = 0
    end: int = 0  # exclusive


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> Answer:
    return Answer(
        status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()
    )


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single `bytes=a-b` range; None means the whole file."""
    if not header:
        return None
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or match.group(1) == "":
        raise HubError(416, "RangeNotSatisfiable", f"unsupported range {header}")
    start = int(match.group(1))
    end = min(int(match.group(2)) + 1, size) if match.group(2) else size
    if start >= size or end <= start:
        raise HubError(416, "RangeNotSatisfiable", f"range {header} outside 0-{size}")
    return start, end


def _file_answer(f: RepoFile, range_header: str | None, headers: dict[str, str]) -> Answer:
    window = _byte_range(range_header, f.size)
    headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    if window is None:
        return Answer(200, headers, file=f, start=0, end=f.size)
    start, end = window
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
    return Answer(206, headers, file=f, start=start, end=end)


# ---------------------------------------------------------------- Hugging Face


def hf_model_info(store: Store, repo_id: str, rev: str | None, query: dict[str, list[str]]) -> Answer:
    repo = store.at(repo_id, rev)
    blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
    siblings: list[dict[str, Any]] = []
    for f in repo.files:
        entry: dict[str, Any] = {"rfilename": f.path}
        if blobs:
            entry.update(size=f.size, blobId=f.blob_sha1)
            if f.lfs:
                entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
        siblings.append(entry)
    org = repo_id.split("/")[0]
    return _json(200, {
        "_id": repo.commit[:24], "id": repo_id, "modelId": repo_id, "author": org, "sha": repo.commit,
        "lastModified": CREATED, "createdAt": CREATED, "private": False, "gated": False,
        "disabled": False, "downloads": 0, "likes": 0, "tags": [], "library_name": "transformers",
        "siblings": siblings, "usedStorage": sum(f.size for f in repo.files),
    })  # fmt: skip


def hf_tree(store: Store, repo_id: str, rev: str, sub: str, query: dict[str, list[str]]) -> Answer:
    repo = store.at(repo_id, rev)
    recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
    prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
    if prefix and prefix.rstrip("/") not in repo.dirs():
        raise HubError(404, "EntryNotFound", f"{sub} does not exist on {rev}", commit=repo.commit)

    def wanted(path: str) -> bool:
        rest = path[len(prefix) :]
        return path.startswith(prefix) and bool(rest) and (recursive or "/" not in rest)

    entries: list[dict[str, Any]] = [
        {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
        for d in repo.dirs() if wanted(d)
    ]  # fmt: skip
    for f in repo.files:
        if wanted(f.path):
            entry: dict[str, Any] = {"type": "file", "oid": f.blob_sha1, "size": f.size, "path": f.path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            entries.append(entry)
    return _json(200, sorted(entries, key=lambda e: e["path"]))


def hf_resolve(store: Store, repo_id: str, rev: str, path: str, range_header: str | None) -> Answer:
    repo = store.at(repo_id, rev)
    f = repo.file(path)
    if f is None:
        raise HubError(404, "EntryNotFound", "Entry not found", commit=repo.commit)
    headers = {"ETag": f'"{f.etag}"', "X-Repo-Commit": repo.commit}
    if f.lfs:  # what the hub adds for LFS files; the client prefers these
        headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)})
    return _file_answer(f, range_header, headers)


def hf_error(err: HubError) -> Answer:
    headers = {"X-Error-Message": err.message}
    if err.code in ("RepoNotFound", "RevisionNotFound", "EntryNotFound", "GatedRepo"):
        headers["X-Error-Code"] = err.code
    if err.commit:
        headers["X-Repo-Commit"] = err.commit
    return _json(err.status, {"error": err.message}, headers)


# ---------------------------------------------------------------- ModelScope


def ms_envelope(data: object, *, status: int = 200, message: str = "success") -> Answer:
    return _json(status, {
        "Code": 200 if status < 400 else status, "Data": data, "Message": message,
        "RequestId": uuid.uuid4().hex, "Success": status < 400,
    })  # fmt: skip


def ms_repo_info(store: Store, repo_id: str) -> Answer:
    repo = store.repo(repo_id)
    org, name = repo_id.split("/")
    return ms_envelope({
        "Id": int(repo.commit[:8], 16), "Name": name, "Path": org, "ChineseName": name,
        "Visibility": 5, "IsPublished": 1, "CreatedTime": CREATED_EPOCH, "LastUpdatedTime": CREATED_EPOCH,
        "ModelType": ["other"], "Tasks": [], "License": "apache-2.0", "Downloads": 0, "Stars": 0,
    })  # fmt: skip


def ms_revisions(store: Store, repo_id: str) -> Answer:
    repo = store.repo(repo_id)
    branches = [{"Revision": b, "CommitId": repo.commit, "CreatedAt": CREATED_EPOCH} for b in BRANCHES]
    return ms_envelope({"RevisionMap": {"Branches": branches, "Tags": []}})


def ms_files(store: Store, repo_id: str, query: dict[str, list[str]]) -> Answer:
    rev = query.get("Revision", ["master"])[0]
    repo = store.at(repo_id, rev)
    recursive = query.get("Recursive", ["False"])[0].lower() == "true"
    root = query.get("Root", [""])[0].strip("/")
    prefix = f"{root}/" if root else ""

    def wanted(path: str) -> bool:
        rest = path[len(prefix) :]
        return path.startswith(prefix) and bool(rest) and (recursive or "/" not in rest)

    common = {"Revision": repo.commit, "CommitMessage": "stub", "CommittedDate": CREATED_EPOCH,
              "CommitterName": "hubstub", "InCheck": False}  # fmt: skip
    files: list[dict[str, Any]] = [
        {**common, "Name": d.rsplit("/", 1)[-1], "Path": d, "Type": "tree", "Size": 0, "Sha256": "",
         "Id": hashlib.sha1(d.encode()).hexdigest(), "IsLFS": False, "Mode": "040000"}
        for d in repo.dirs() if wanted(d)
    ]  # fmt: skip
    files += [
        {**common, "Name": f.path.rsplit("/", 1)[-1], "Path": f.path, "Type": "blob", "Size": f.size,
         "Sha256": f.sha256, "Id": f.blob_sha1, "IsLFS": f.lfs, "Mode": "100644"}
        for f in repo.files if wanted(f.path)
    ]  # fmt: skip
    latest = {"Id": repo.commit, "ShortId": repo.commit[:7], "Message": "stub", "CommittedDate": CREATED_EPOCH,
              "AuthorName": "hubstub", "AuthorEmail": "hubstub@localhost"}  # fmt: skip
    return ms_envelope({"Files": files, "LatestCommitter": latest, "IsVisual": 0, "TotalCount": len(files)})


def ms_file(store: Store, repo_id: str, query: dict[str, list[str]], range_header: str | None) -> Answer:
    repo = store.at(repo_id, query.get("Revision", ["master"])[0])
    f = repo.file(query.get("FilePath", [""])[0].lstrip("/"))
    if f is None:
        raise HubError(404, "EntryNotFound", "file not found")
    return _file_answer(f, range_header, {"ETag": f'"{f.sha256}"'})


def ms_error(err: HubError) -> Answer:
    return ms_envelope(None, status=err.status, message=err.message)


# ---------------------------------------------------------------- routing

Route = Callable[[Store, re.Match[str], dict[str, list[str]], str | None], Answer]
REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], Route]] = [
    ("ms", re.compile(rf"/api/v1/models/{REPO}"), lambda s, m, q, r: ms_repo_info(s, m["repo"])),
    ("ms", re.compile(rf"/api/v1/models/{REPO}/revisions"), lambda s, m, q, r: ms_revisions(s, m["repo"])),
    ("ms", re.compile(rf"/api/v1/models/{REPO}/repo/files"), lambda s, m, q, r: ms_files(s, m["repo"], q)),
    ("ms", re.compile(rf"/api/v1/models/{REPO}/repo"), lambda s, m, q, r: ms_file(s, m["repo"], q, r)),
    ("hf", re.compile(rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?"),
     lambda s, m, q, r: hf_model_info(s, m["repo"], m["rev"] and unquote(m["rev"]), q)),
    ("hf", re.compile(rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"),
     lambda s, m, q, r: hf_tree(s, m["repo"], unquote(m["rev"]), unquote(m["path"] or ""), q)),
    ("hf", re.compile(rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
     lambda s, m, q, r: hf_resolve(s, m["repo"], unquote(m["rev"]), unquote(m["path"]), r)),
]  # fmt: skip


def route(
    store: Store, path: str, query: dict[str, list[str]], range_header: str | None
) -> tuple[str, Answer]:
    for api, pattern, handler in ROUTES:
        match = pattern.fullmatch(path)
        if match:
            try:
                return api, handler(store, match, query, range_header)
            except HubError as err:
                return api, (ms_error(err) if api == "ms" else hf_error(err))
    api = "ms" if path.startswith("/api/v1/") else "hf"
    err = HubError(404, "NotFound", f"no route for {path}")
    return api, (ms_error(err) if api == "ms" else hf_error(err))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def log_message(self, format: str, *args: Any) -> None:  # the JSON log replaces it
        pass

    def _token_sent(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        cookie = re.search(r"(?:^|;\s*)m_session_id=([^;]+)", self.headers.get("Cookie", ""))
        return cookie.group(1) if cookie else None

    def _serve(self, *, head: bool) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)  # groups are unquoted one by one: a quoted "/" stays
        range_header = self.headers.get("Range")
        sent = self._token_sent()
        expected = self.server.options.token
        authorized = expected is None or sent == expected
        if self.server.options.ignore_blobs:
            query.pop("blobs", None)  # like a mirror that lists file names only
        if authorized:
            api, answer = route(self.server.store, path, query, range_header)
        else:
            api = "ms" if path.startswith("/api/v1/") else "hf"
            answer = self._unauthorized(api, sent)
        started = time.monotonic()
        sent_bytes = self._send(answer, head=head)
        self.server.record({
            "t": round(time.time(), 3), "api": api, "method": self.command, "path": self.path,
            "range": range_header, "auth": sent is not None, "auth_ok": authorized and sent is not None,
            "status": answer.status, "bytes": sent_bytes, "seconds": round(time.monotonic() - started, 3),
        })  # fmt: skip

    @staticmethod
    def _unauthorized(api: str, sent: str | None) -> Answer:
        if api == "ms":
            return ms_error(HubError(401, "Unauthorized", "Unauthorized: token missing or invalid"))
        if sent is None:  # what the hub answers for a private repo without a token
            return hf_error(HubError(401, "RepoNotFound", "Invalid username or password."))
        return hf_error(HubError(401, "Unauthorized", "Invalid credentials in Authorization header"))

    def _send(self, answer: Answer, *, head: bool) -> int:
        length = answer.end - answer.start if answer.file else len(answer.body)
        self.send_response(answer.status)
        for key, value in answer.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if head:
            return 0
        if answer.file is None:
            self.wfile.write(answer.body)
            return len(answer.body)
        return self._send_file(answer)

    def _send_file(self, answer: Answer) -> int:
        assert answer.file is not None
        options, sent = self.server.options, 0
        limit = answer.end - answer.start
        if options.drop_after is not None and answer.start == 0 and self.server.first_full_get(answer.file):
            limit = min(limit, options.drop_after)
        chunk = CHUNK if not options.rate else max(1, min(CHUNK, int(options.rate / 10)))
        started = time.monotonic()
        try:
            with answer.file.disk.open("rb") as fh:
                fh.seek(answer.start)
                while sent < limit:
                    data = fh.read(min(chunk, limit - sent))
                    if not data:
                        break
                    self.wfile.write(data)
                    sent += len(data)
                    if options.rate:
                        ahead = sent / options.rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        if sent < answer.end - answer.start:
            self.close_connection = True  # the body was cut short: the client sees a broken transfer
        return sent


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: Store, options: Options) -> None:
        super().__init__(address, Handler)
        self.store, self.options = store, options
        self._log_lock = threading.Lock()
        self._dropped: set[str] = set()

    def first_full_get(self, f: RepoFile) -> bool:
        """True once per file: the first full download of it is the one --drop-after cuts."""
        with self._log_lock:
            if f.sha256 in self._dropped or f.size <= (self.options.drop_after or 0):
                return False
            self._dropped.add(f.sha256)
            return True

    def record(self, entry: dict[str, Any]) -> None:
        if self.options.log is None:
            return
        with self._log_lock, self.options.log.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, required=True, help="folder holding <org>/<name>/ repos")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--token", help="every request must carry this token, or gets 401")
    parser.add_argument("--log", type=Path, help="append one JSON line per request here")
    parser.add_argument("--rate", type=float, help="file bodies are sent at this many bytes per second")
    parser.add_argument(
        "--drop-after", type=int, help="cut the first full download of each file after N bytes"
    )
    parser.add_argument("--ignore-blobs", action="store_true", help="HF model info without file sizes")
    args = parser.parse_args(argv)
    server = HubServer((args.bind, args.port), Store(args.root.resolve()),
                       Options(args.token, args.rate, args.drop_after, args.log, args.ignore_blobs))  # fmt: skip
    host, port = server.server_address[:2]
    print(json.dumps({"url": f"http://{host}:{port}"}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
