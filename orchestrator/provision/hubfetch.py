"""Fetch a model from a hub ON THE HOST, with the hub's own client (huggingface_hub or modelscope).

The entry point of the host-side program (with ``hubclients`` and ``hubproto``, whose docstring
gives the request and the answers). The controller sends the three modules as one text and runs
it with the deployment's venv Python, ``PY -c PROGRAM`` (``hub.script``), which calls ``main``.

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
from pathlib import Path
from types import FrameType
from typing import Any

from .hubclients import CONNECTION_ERRORS, HUBS, Hub, first_line, http_status, kinds
from .hubproto import MARKER, FetchError, Listing, Request, contained, read_request, secret_values

LOCK = ".orch-fetch.lock"
PROGRESS_EVERY_S = 0.5
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_VERBOSITY": "error",
    "HF_HUB_DISABLE_TELEMETRY": "1",  # also skips the agent-registry request to the endpoint
    "TQDM_DISABLE": "1",  # modelscope's progress bars
}
# A fetch goes online by definition: offline switches meant for vLLM are dropped here.
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# huggingface_hub >= 1.x downloads to "<hash>.<etag>.<8 hex>.incomplete": unique per process, never resumed.
HF_STALE_PART = re.compile(r"^[^.]+\.[^.]+\.[0-9a-f]{8}\.incomplete$")
PARTIAL_SUFFIXES = (".incomplete", ".parallel_tmp")


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


def apply_env(env: dict[str, str]) -> None:
    """The request's environment, before the hub library is imported (it reads it at import time)."""
    os.environ.update(env)
    for name in OFFLINE_ENV:
        os.environ.pop(name, None)
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # library chatter; failures are reported as events


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
        if http_status(exc) is None and not kinds(exc) & CONNECTION_ERRORS:
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
    """The current directory (``-c`` puts it first on sys.path) may hold a module named like one the
    library imports (orch's own secrets.py shadows the stdlib's): drop that entry."""
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
        message = f"{source}: unexpected {type(exc).__name__}: {first_line(exc)}"
    out.error(message)
    return 1
