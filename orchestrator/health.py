"""The readiness gate: a deployment is ready only when it really serves.

Ready means ``/health`` is 200, ``/v1/models`` lists the served name, and a
one-token chat completion succeeds both plain and streamed (``/health`` alone
answers 200 while a dead engine fails every request). The gate polls with
tenacity until an overall deadline, and stops early when the unit crashes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from .runners import UnitState


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
    """One pass over the four checks; the first that fails names the stage."""
    try:
        return _probe(client, ep)
    except httpx.HTTPError as exc:
        return Probe(False, "connect", _http_reason(exc))


def _probe(client: httpx.Client, ep: Endpoint) -> Probe:
    health = client.get(f"{ep.base_url}/health")
    if health.status_code != 200:
        return Probe(False, "health", f"/health answered {health.status_code}")
    models = client.get(f"{ep.base_url}/v1/models", headers=ep.headers())
    if models.status_code != 200:
        return Probe(False, "models", f"/v1/models answered {models.status_code}")
    ids = [m.get("id") for m in models.json().get("data", [])]
    if ep.served_name not in ids:
        return Probe(False, "models", f"/v1/models lists {ids}, not {ep.served_name!r}")
    plain = client.post(
        f"{ep.base_url}/v1/chat/completions", json=_chat(ep, stream=False), headers=ep.headers()
    )
    if plain.status_code != 200 or not plain.json().get("choices"):
        return Probe(False, "chat", f"chat completion answered {plain.status_code}: {_snippet(plain.text)}")
    return _probe_stream(client, ep)


def _probe_stream(client: httpx.Client, ep: Endpoint) -> Probe:
    body = _chat(ep, stream=True)
    with client.stream("POST", f"{ep.base_url}/v1/chat/completions", json=body, headers=ep.headers()) as resp:
        if resp.status_code != 200:
            resp.read()
            return Probe(False, "stream", f"streamed chat answered {resp.status_code}: {_snippet(resp.text)}")
        events = [line[5:].strip() for line in resp.iter_lines() if line.startswith("data:")]
    if not events or events[-1] != "[DONE]":
        return Probe(False, "stream", "streamed chat did not end with data: [DONE]")
    chunks = [json.loads(e) for e in events[:-1]]
    if not any(c.get("choices") for c in chunks):
        return Probe(False, "stream", "streamed chat sent no choices")
    return Probe(True, "ready")


def _chat(ep: Endpoint, *, stream: bool) -> dict[str, object]:
    return {
        "model": ep.served_name,
        "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 1,
        "stream": stream,
    }


def _snippet(text: str, limit: int = 160) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[:limit] + "…"


def _http_reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


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
