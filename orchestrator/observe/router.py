"""vLLM's router (``vllm-router``) as a rollout uses it, and a replica's drain.

The router keeps a list of worker URLs: ``GET /list_workers`` reads it, ``POST /remove_worker?url=``
takes one out (requests already sent to it go on; new ones go elsewhere) and ``POST /add_worker?url=``
puts it back. A replica taken out is drained before it stops: orch waits until its ``/metrics`` show no
request running or waiting (twice in a row, since a request the router chose just before the removal
may still be on its way).
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
        with httpx.Client(timeout=self.timeout_s, transport=self.transport) as client:
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
    metrics_url: str,
    *,
    timeout_s: float,
    interval_s: float = 0.25,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Drained:
    """Wait until the replica has no request running or waiting, seen twice in a row, or ``timeout_s``.

    A replica whose /metrics cannot be read counts as drained: it serves nothing the router could lose.
    """
    start = clock()
    quiet, left = 0, 0
    with httpx.Client(timeout=min(10.0, timeout_s), transport=transport) as client:
        while True:
            try:
                answer = httpio.fetch(client, "GET", metrics_url, limit=8 << 20)
                m = summarize(answer.text, source=metrics_url)
                left = int((m.running or 0) + (m.waiting or 0))
            except AnswerError:
                return Drained(True, clock() - start, 0)
            quiet = quiet + 1 if left == 0 else 0
            if quiet >= 2:
                return Drained(True, clock() - start, 0)
            if clock() - start >= timeout_s:
                return Drained(False, clock() - start, left)
            sleep(interval_s)
