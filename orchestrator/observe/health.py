"""The readiness gate: a deployment is ready only when it really serves.

Ready means ``/health`` is 200, ``/v1/models`` lists the served name, and a
one-token chat completion succeeds both plain and streamed (``/health`` alone
answers 200 while a dead engine fails every request). The gate polls with
tenacity until an overall deadline, and stops early when the unit crashes. Whatever a
server answers (HTML, the wrong JSON, a reset, an endless or enormous body) is a
not-ready probe with a one-line reason, never an exception (httpio bounds every read).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from ..errors import AnswerError
from ..host.runners import UnitState
from . import httpio


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    served_name: str
    api_key: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class Probe:
    ready: bool
    stage: str
    detail: str = ""


@dataclass(frozen=True)
class Outcome:
    ready: bool
    reason: str
    elapsed_s: float
    unit: UnitState | None = None


Progress = Callable[[float, UnitState, Probe], None]


def probe(client: httpx.Client, ep: Endpoint) -> Probe:
    """One pass over the four checks; the first that fails names the stage.

    Never raises for what a server does: every unusable answer (no connection, HTML, the
    wrong JSON, a reset, a body too large or too slow) is a not-ready probe with a one-line reason.
    """
    for stage, check in _CHECKS:
        try:
            detail = check(client, ep)
        except AnswerError as exc:
            where = "connect" if isinstance(exc.__cause__, httpio.CONNECT_ERRORS) else stage
            return Probe(False, where, f"{exc.url.removeprefix(ep.base_url)}: {exc.reason}")
        if detail:
            return Probe(False, stage, httpio.one_line(detail))
    return Probe(True, "ready")


def _health(client: httpx.Client, ep: Endpoint) -> str:
    answer = httpio.fetch(client, "GET", f"{ep.base_url}/health")
    return "" if answer.status == 200 else f"/health answered {answer.status}"


def _models(client: httpx.Client, ep: Endpoint) -> str:
    answer = httpio.fetch(client, "GET", f"{ep.base_url}/v1/models", headers=ep.headers())
    if answer.status != 200:
        return f"/v1/models answered {answer.status}"
    listing = httpio.loads(answer.body, url=answer.url)
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return f"/v1/models answered no list of models: {httpio.snippet(answer.body)}"
    ids = [m.get("id") for m in data if isinstance(m, dict)]
    if ep.served_name not in ids:
        return f"/v1/models lists {httpio.snippet(repr(ids))}, not {ep.served_name!r}"
    return ""


def _chat_plain(client: httpx.Client, ep: Endpoint) -> str:
    answer = _chat(client, ep, stream=False)
    if answer.status != 200:
        return f"chat completion answered {answer.status}: {httpio.snippet(answer.body)}"
    reply = httpio.loads(answer.body, url=answer.url)
    if not isinstance(reply, dict) or not reply.get("choices"):
        return f"chat completion answered {answer.status} without choices: {httpio.snippet(answer.body)}"
    return ""


def _chat_stream(client: httpx.Client, ep: Endpoint) -> str:
    answer = _chat(client, ep, stream=True)
    if answer.status != 200:
        return f"streamed chat answered {answer.status}: {httpio.snippet(answer.body)}"
    events = [line[5:].strip() for line in answer.text.splitlines() if line.startswith("data:")]
    if not events or events[-1] != "[DONE]":
        return "streamed chat did not end with data: [DONE]"
    chunks = [httpio.loads(e, url=answer.url) for e in events[:-1]]
    odd = next((e for e, c in zip(events, chunks, strict=False) if not isinstance(c, dict)), None)
    if odd is not None:
        return f"streamed chat sent a chunk that is not an object: {httpio.snippet(odd)}"
    if not any(c.get("choices") for c in chunks):
        return "streamed chat sent no choices"
    return ""


_CHECKS: tuple[tuple[str, Callable[[httpx.Client, Endpoint], str]], ...] = (
    ("health", _health),
    ("models", _models),
    ("chat", _chat_plain),
    ("stream", _chat_stream),
)


def _chat(client: httpx.Client, ep: Endpoint, *, stream: bool) -> httpio.Answer:
    """A one-token chat completion, streamed or not."""
    body = {"model": ep.served_name, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    url = f"{ep.base_url}/v1/chat/completions"
    return httpio.fetch(client, "POST", url, json_body={**body, "stream": stream}, headers=ep.headers())


def _died(state: UnitState, baseline: UnitState) -> bool:
    """Crashed, restarted since the gate began (restart count or main PID moved), or stopped."""
    restarted = state.n_restarts > baseline.n_restarts or (
        baseline.main_pid > 0 and state.main_pid > 0 and state.main_pid != baseline.main_pid
    )
    return state.crashed or restarted or state.active_state == "inactive"


def wait_ready(
    ep: Endpoint,
    *,
    timeout_s: float,
    interval_s: float,
    request_timeout_s: float,
    unit_state: Callable[[], UnitState],
    baseline: UnitState,
    on_progress: Progress | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Outcome:
    """Poll until ready, the unit crashes, or ``timeout_s`` passes."""
    start = time.monotonic()
    last: list[tuple[UnitState, Probe]] = []

    def attempt() -> Probe | None:
        state = unit_state()
        if _died(state, baseline):
            last.append(
                (state, Probe(False, "unit", f"unit {state.describe()} (restarts {state.n_restarts})"))
            )
            return None
        result = probe(client, ep)
        last.append((state, result))
        if on_progress is not None:
            on_progress(time.monotonic() - start, state, result)
        return result

    with httpx.Client(timeout=request_timeout_s, transport=transport) as client:
        retrying = Retrying(
            stop=stop_after_delay(timeout_s),
            wait=wait_fixed(interval_s),
            retry=retry_if_result(lambda p: p is not None and not p.ready),
        )
        with contextlib.suppress(RetryError):
            retrying(attempt)
    elapsed = time.monotonic() - start
    state, result = last[-1]
    if result.ready:
        return Outcome(True, "ready", elapsed, state)
    if result.stage == "unit":
        return Outcome(False, f"the unit died: {result.detail}", elapsed, state)
    return Outcome(
        False, f"not ready after {timeout_s:.0f}s: {result.stage}: {result.detail}", elapsed, state
    )
