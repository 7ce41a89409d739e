"""The hub libraries on the host (huggingface_hub, modelscope): list a revision, download it into a
folder, and say in one line why the library failed. Part of the host-side program (see ``hubproto``)."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .hubproto import FetchError, HubFile, Listing, Request

CONNECTION_ERRORS = {
    "ConnectError", "ConnectTimeout", "ConnectionError", "NetworkError", "NewConnectionError",
    "MaxRetryError", "TimeoutException", "ReadTimeout", "RequestTimeoutError", "OfflineModeIsEnabled",
}  # fmt: skip


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


def kinds(exc: BaseException) -> set[str]:
    """Class names of every exception in the chain, with their bases (version-proof matching)."""
    return {cls.__name__ for e in _chain(exc) for cls in type(e).__mro__}


def http_status(exc: BaseException) -> int | None:
    for e in _chain(exc):
        response = getattr(e, "response", None)
        for code in (getattr(response, "status_code", None), getattr(e, "status_code", None)):
            if isinstance(code, int) and code >= 400:
                return code
    return None


def first_line(exc: BaseException) -> str:
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
        return f"{self.source}: {self._reason(exc, kinds(exc), http_status(exc))}"

    def _reason(self, exc: BaseException, kinds: set[str], status: int | None) -> str:
        at, repo, rev = f"at {self.endpoint}", self.req.id, self.req.revision or "the default revision"
        if "RevisionNotFoundError" in kinds:
            return f"revision {rev!r} of {repo} not found {at}"
        if kinds & {"RemoteEntryNotFoundError", "EntryNotFoundError"}:
            return f"a listed file of {repo} is missing {at}: {first_line(exc)}"
        if status == 401:
            return f"401 unauthorized {at}: {self._token_problem()}"
        if "GatedRepoError" in kinds or status == 403:
            return f"403 forbidden {at}: {self.token_env} has no access to {repo} (gated or private)"
        if status == 404 or kinds & {"RepositoryNotFoundError", "NotExistError"}:
            missing = f"revision {rev!r} of {repo}" if self.repo_exists() else f"repository {repo}"
            return f"{missing} not found {at}"
        if kinds & CONNECTION_ERRORS:
            errno = re.search(r"\[Errno -?\d+\][^\"')]*", str(exc))  # the cause, not the retry wrapping
            return f"cannot reach {self.endpoint}: {errno.group(0).strip() if errno else first_line(exc)}"
        return f"HTTP {status} {at}: {first_line(exc)}" if status else first_line(exc)

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
