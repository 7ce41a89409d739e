"""vLLM's router (``vllm-router``) as a rollout uses it, and a replica's drain.

The router keeps a list of worker URLs: ``GET /list_workers`` reads it, ``POST /remove_worker?url=``
takes one out (requests already sent to it go on; new ones go elsewhere) and ``POST /add_worker?url=``
puts it back. A replica taken out is drained before it stops: orch waits until it has had no request for
``quiet_s`` (a request the router chose just before the removal may still be on its way). Two counts
are read: vLLM's ``/load`` (requests inside its HTTP handlers, from the moment their body is read to the
last byte of their answer; orch starts a replica behind a router with ``--enable-server-load-tracking``)
and ``/metrics`` (requests running or waiting in the engine). ``/load`` sees a request before the engine
does, while its prompt is still being templated and tokenized; a server started without the flag
answers 0 there, so the engine's count always stands beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from ..errors import AnswerError
from . import httpio
from .metrics import summarize


@dataclass(frozen=True)
class Router:
    base_url: str  # http://ADDRESS:PORT
    timeout_s: float = 10.0
    transport: httpx.BaseTransport | None = None

    def workers(self) -> list[str]:
        body = httpio.loads(self._call("GET", "/list_workers").body, url=self.base_url + "/list_workers")
        urls = body.get("urls") if isinstance(body, dict) else None
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise AnswerError(self.base_url + "/list_workers", f"no list of worker URLs: {body!r:.120}")
        return urls

    def remove(self, worker: str) -> None:
        self._call("POST", "/remove_worker", worker)

    def add(self, worker: str) -> None:
        self._call("POST", "/add_worker", worker)

    def _call(self, method: str, path: str, worker: str | None = None) -> httpio.Answer:
        url = self.base_url + path
        query = f"?{httpx.QueryParams({'url': worker})}" if worker is not None else ""
        with httpio.client(timeout=self.timeout_s, transport=self.transport) as client:
            answer = httpio.fetch(client, method, url + query)
        if answer.status != 200:
            raise AnswerError(url, f"answered {answer.status}: {httpio.snippet(answer.body)}")
        return answer


@dataclass(frozen=True)
class Drained:
    done: bool
    waited_s: float
    left: int  # requests still running or waiting when the deadline came (0 when done)


def drain(
    worker: str,
    *,
    timeout_s: float,
    quiet_s: float = 1.0,
    interval_s: float = 0.25,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Drained:
    """Wait until the replica at ``worker`` (a base URL) has had no request for ``quiet_s``, or ``timeout_s``.

    A replica whose /metrics cannot be read counts as drained: it serves nothing the router could lose.
    """
    start = clock()
    quiet_since: float | None = None
    with httpio.client(timeout=min(10.0, timeout_s), transport=transport) as client:
        while True:
            try:
                left = _in_flight(client, worker)
            except AnswerError:
                return Drained(True, clock() - start, 0)
            now = clock()
            quiet_since = (quiet_since if quiet_since is not None else now) if left == 0 else None
            if quiet_since is not None and now - quiet_since >= quiet_s:
                return Drained(True, now - start, 0)
            if now - start >= timeout_s:
                return Drained(False, now - start, left)
            sleep(interval_s)


def _in_flight(client: httpx.Client, worker: str) -> int:
    """Requests the replica holds: the larger of its HTTP handlers' count and its engine's."""
    answer = httpio.fetch(client, "GET", worker + "/metrics", limit=8 << 20)
    m = summarize(answer.text, source=worker + "/metrics")
    engine = int((m.running or 0) + (m.waiting or 0))
    try:
        load = httpio.fetch(client, "GET", worker + "/load")
        body = httpio.loads(load.body, url=worker + "/load") if load.status == 200 else None
    except AnswerError:  # a vLLM without /load: the engine's count alone
        return engine
    handlers = body.get("server_load") if isinstance(body, dict) else None
    return max(engine, handlers) if isinstance(handlers, int) else engine
