"""The readiness gate: a deployment is ready only when it really serves.

Ready means ``/health`` is 200, ``/v1/models`` lists the served name, and a
one-token chat completion succeeds both plain and streamed (``/health`` alone
answers 200 while a dead engine fails every request). The gate polls with
tenacity until an overall deadline, and stops early when the unit crashes. Whatever a
server answers (HTML, the wrong JSON, a reset, an endless or enormous body) is a
not-ready probe with a one-line reason, never an exception (httpio bounds every read).

Polling is cheap until the server answers: while ``/health`` refuses or fails, the next probe
follows within ``POLL_S``, so the gate sees a server within a fraction of a second of its first
answer; then the other three checks run at once. The unit's state (a round trip to the host) is
read in the background every ``interval_s``, so no probe waits for the host, and once more alongside
every probe that gets past ``/health``: a ready verdict rests on a state read made while its requests
ran. The state the restart printed (``baseline``) is the first reading when it shows the unit running,
so a server that answers within ``interval_s`` costs the host one state read, not two. After a probe
whose completions failed the gate waits ``interval_s``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from tenacity import RetryCallState, RetryError, Retrying, retry_if_result, stop_after_delay

from ..errors import AnswerError
from ..host.runners import UnitState
from . import httpio
from .probe import Endpoint, Probe

POLL_S = 0.1  # between probes while /health does not answer 200: each is one small request
CHEAP_STAGES = frozenset({"connect", "health"})  # a probe that failed here sent no completion


@dataclass(frozen=True)
class Outcome:
    """The gate's verdict; times in seconds from ``since`` (the restart), or from the gate's start."""

    ready: bool
    reason: str
    elapsed_s: float
    unit: UnitState | None = None
    up_s: float | None = None  # when /health first answered 200


Progress = Callable[[float, UnitState, Probe], None]


def probe(client: httpx.Client, ep: Endpoint, *, first: int = 0, last: int | None = None) -> Probe:
    """One pass over the four checks (or ``_CHECKS[first:last]``); the first that fails names the stage.

    Never raises for what a server does: every unusable answer (no connection, HTML, the
    wrong JSON, a reset, a body too large or too slow) is a not-ready probe with a one-line reason.
    """
    for stage, check in _CHECKS[first:last]:
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


def pause(last: Probe, *, poll_s: float, interval_s: float) -> float:
    """How long to wait after a failed probe: briefly while the server does not answer (each probe
    is then one small request), ``interval_s`` after one that sent completions."""
    return min(poll_s, interval_s) if last.stage in CHEAP_STAGES else interval_s


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
    since: float | None = None,
    poll_s: float = POLL_S,
    quick_state: Callable[[], UnitState] | None = None,
) -> Outcome:
    """Poll until ready, the unit crashes, or ``timeout_s`` passes (from the gate's start).

    ``baseline``: the unit's state right after the restart; a restart counter or main PID that moves past
    it means the server died. ``since`` (``time.monotonic()``): where the outcome's times count from,
    e.g. the restart.
    ``quick_state``: a cheaper read of the state (no log line), for the read beside the completions.
    """
    start = time.monotonic()
    origin = start if since is None else since
    last: list[tuple[UnitState, Probe]] = []
    up: list[float] = []

    def attempt() -> Probe | None:
        state = reads.latest()
        if _died(state, baseline):
            return _dead(state)
        result = probe(client, ep, last=1)
        if result.ready:  # the server answers: the completions, with the state read while they run
            if not up:
                up.append(time.monotonic() - origin)
            beside = reads.beside()
            result = _completions(client, ep, requests)
            state = reads.settle(beside)
            if _died(state, baseline):
                return _dead(state)
        last.append((state, result))
        if on_progress is not None:
            on_progress(time.monotonic() - origin, state, result)
        return result

    def _dead(state: UnitState) -> Probe | None:  # None: tenacity stops
        last.append((state, Probe(False, "unit", f"unit {state.describe()} (restarts {state.n_restarts})")))
        return None

    def wait(_: RetryCallState) -> float:  # never past the deadline: one last probe happens there
        left = start + timeout_s - time.monotonic()
        return max(0.0, min(pause(last[-1][1], poll_s=poll_s, interval_s=interval_s), left))

    with (
        httpio.client(
            timeout=request_timeout_s, transport=transport, plain_http=ep.base_url.startswith("http://")
        ) as client,
        ThreadPoolExecutor(1, thread_name_prefix="orch-gate-state") as host,
        ThreadPoolExecutor(len(_CHECKS) - 1, thread_name_prefix="orch-gate-http") as requests,
    ):
        first = baseline if baseline.running else None  # else a full read (with the log) comes first
        reads = _Reads(unit_state, quick_state or unit_state, interval_s=interval_s, pool=host, first=first)
        retrying = Retrying(
            stop=stop_after_delay(timeout_s),
            wait=wait,
            retry=retry_if_result(lambda p: p is not None and not p.ready),
        )
        with contextlib.suppress(RetryError):
            retrying(attempt)
    elapsed = time.monotonic() - origin
    state, result = last[-1]
    up_s = up[0] if up else None
    if result.ready:
        return Outcome(True, "ready", elapsed, state, up_s)
    if result.stage == "unit":
        return Outcome(False, f"the unit died: {result.detail}", elapsed, state, up_s)
    return Outcome(
        False, f"not ready after {timeout_s:.0f}s: {result.stage}: {result.detail}", elapsed, state, up_s
    )


def _completions(client: httpx.Client, ep: Endpoint, pool: ThreadPoolExecutor) -> Probe:
    """The checks after /health, at once (the two completions go into one batch); the first failure
    in the checks' order names the stage."""
    runs = [pool.submit(probe, client, ep, first=i, last=i + 1) for i in range(1, len(_CHECKS))]
    return next((p for p in (r.result() for r in runs) if not p.ready), Probe(True, "ready"))


class _Reads:
    """The unit's state, read in the background every ``interval_s``, one read at a time (one command
    on the host's connection), so that no probe waits for the host. ``first``: a state already read,
    which stands for the first read (the next is due ``interval_s`` later)."""

    def __init__(
        self,
        full: Callable[[], UnitState],
        quick: Callable[[], UnitState],
        *,
        interval_s: float,
        pool: ThreadPoolExecutor,
        first: UnitState | None = None,
    ) -> None:
        self._full, self._quick, self._interval_s, self._pool = full, quick, interval_s, pool
        self._flying: Future[UnitState] | None = None
        self._started = -math.inf if first is None else time.monotonic()
        self._state = first

    def latest(self) -> UnitState:
        """The newest state read (the first is waited for); starts the next read when one is due.
        A read that failed raises here."""
        if self._flying is not None and (self._flying.done() or self._state is None):
            self.settle(self._flying)
        if self._flying is None and time.monotonic() - self._started >= self._interval_s:
            self._flying = self._start(self._full)
            if self._state is None:
                self.settle(self._flying)
        assert self._state is not None
        return self._state

    def beside(self) -> Future[UnitState]:
        """A read that overlaps what happens next: the one under way, or a quick one started now."""
        if self._flying is None:
            self._flying = self._start(self._quick)
        return self._flying

    def settle(self, read: Future[UnitState]) -> UnitState:
        self._state = read.result()
        if read is self._flying:
            self._flying = None
        return self._state

    def _start(self, read: Callable[[], UnitState]) -> Future[UnitState]:
        self._started = time.monotonic()
        return self._pool.submit(read)
