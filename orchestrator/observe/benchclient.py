"""The load test's client: streamed requests sent on ``bench``'s schedule, each timed chunk by chunk.

The client reads the stream as vLLM's does: aiohttp, connections kept alive and
read to the end of each stream, each read taking whatever bytes the socket holds,
a token chunk stamped as its event is parsed. Requests alternating between this
client and vLLM's within one run measure the same (benchmarks/bench_vs_vllm.md);
the httpx client used before cost 3 % of throughput there, and far more when the
client was short of CPU.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from .bench import BenchConfig, BenchResult, RequestOutcome, arrival_offsets, build_prompts, summarize

MAX_EVENT_CHARS = 1 << 20  # a token chunk is a few hundred bytes

# --- one request: its body, and the events of its stream -------------------------------------------------


def request_path(cfg: BenchConfig) -> str:
    """The API path the endpoint kind posts to."""
    return "/v1/chat/completions" if cfg.endpoint == "chat" else "/v1/completions"


def request_body(cfg: BenchConfig, prompt: str) -> dict[str, Any]:
    """The JSON body of one streamed request."""
    body: dict[str, Any] = {
        "model": cfg.model,
        "max_tokens": cfg.output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cfg.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if cfg.ignore_eos:
        body["ignore_eos"] = True  # a vLLM extra parameter: always generate output_len tokens
    return body


def headers(cfg: BenchConfig) -> dict[str, str]:
    """Request headers (the bearer token when an API key is set)."""
    return {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}


def is_token_chunk(chunk: Mapping[str, Any]) -> bool:
    """Whether an SSE chunk carries a generated token (see ``bench``'s docstring)."""
    choices = chunk.get("choices")
    if not choices:
        return False
    first = choices[0]
    delta = first.get("delta")
    if isinstance(delta, dict) and "role" in delta:
        return bool(delta.get("content")) or first.get("finish_reason") is not None
    return True


def stream_error(chunk: Mapping[str, Any]) -> str | None:
    """The message of an error event sent inside a stream, or None."""
    if chunk.get("object") == "error":
        return str(chunk.get("message", ""))
    error = chunk.get("error")
    if error is None:
        return None
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)


class SSEDecoder:
    """The ``data`` of each server-sent event, as the stream's bytes arrive in pieces of any size.

    An event ends at a blank line; its ``data:`` lines are joined with newlines, and events
    without one (comments, keep-alives) are skipped. ``flush`` gives an event the stream ended
    without its blank line.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._pending = ""

    def feed(self, data: bytes) -> list[str]:
        """The data of the events that ``data`` completes."""
        text = self._pending + self._decoder.decode(data)
        held = ""
        if "\r" in text:  # CR LF or CR ends a line too; a CR last may be half of a CR LF: hold it
            if text.endswith("\r"):
                text, held = text[:-1], "\r"
            text = _lf(text)
        *events, pending = text.split("\n\n")
        self._pending = pending + held
        if len(self._pending) > MAX_EVENT_CHARS:  # a body that never ends an event must not fill memory
            raise ValueError(f"a stream event longer than {MAX_EVENT_CHARS} characters")
        return [payload for event in events if (payload := event_data(event)) is not None]

    def flush(self) -> list[str]:
        """The data of an event left unterminated when the stream ended."""
        event = _lf(self._pending + self._decoder.decode(b"", final=True)).strip("\n")
        self._pending = ""
        payload = event_data(event)
        return [] if payload is None else [payload]


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def event_data(event: str) -> str | None:
    """The data of one event's lines (None when it has no ``data`` field)."""
    if event.startswith("data: ") and "\n" not in event:
        return event[6:]  # the usual event, one line
    lines = [line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")]
    return "\n".join(lines) if lines else None


# --- the run ---------------------------------------------------------------------------------------------


def run_bench(cfg: BenchConfig, *, on_progress: Callable[[int, int], None] | None = None) -> BenchResult:
    """Run the load test to the end and summarize it (blocking; see ``run_bench_async``)."""
    return asyncio.run(run_bench_async(cfg, on_progress=on_progress))


async def run_bench_async(
    cfg: BenchConfig, *, on_progress: Callable[[int, int], None] | None = None
) -> BenchResult:
    """Send ``cfg.num_requests`` streamed requests and summarize them; failures are counted, not raised."""
    if cfg.num_requests < 1 or cfg.concurrency < 1:
        raise ValueError("num_requests and concurrency must be at least 1")
    # As vLLM's bench: one pooled connection per request in flight, kept alive between requests, and
    # proxy settings from the environment. The deadline is each request's own (measure_request's).
    connector = aiohttp.TCPConnector(limit=cfg.concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=True) as session:
        started, t0 = datetime.now(UTC), time.perf_counter()
        outcomes = await _dispatch(session, cfg, on_progress)
        duration = time.perf_counter() - t0
    return summarize(
        cfg, outcomes, duration_s=duration, started=started, finished=started + timedelta(seconds=duration)
    )


async def _dispatch(
    session: aiohttp.ClientSession, cfg: BenchConfig, on_progress: Callable[[int, int], None] | None
) -> list[RequestOutcome]:
    slots = asyncio.Semaphore(cfg.concurrency)
    done = 0

    async def one(prompt: str) -> RequestOutcome:
        nonlocal done
        async with slots:
            outcome = await measure_request(session, cfg, prompt)
        done += 1
        if on_progress is not None:
            on_progress(done, cfg.num_requests)
        return outcome

    tasks, start = [], time.perf_counter()
    for prompt, offset in zip(build_prompts(cfg), arrival_offsets(cfg), strict=True):
        if (wait := start + offset - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(prompt)))
    return list(await asyncio.gather(*tasks))


async def measure_request(session: aiohttp.ClientSession, cfg: BenchConfig, prompt: str) -> RequestOutcome:
    """Send one streamed request and time its token chunks; every failure becomes an outcome."""
    sent = time.perf_counter()
    try:
        async with asyncio.timeout(cfg.timeout_s):
            return await _stream(session, cfg, prompt, sent)
    except TimeoutError:
        return RequestOutcome(ok=False, error=f"timed out after {cfg.timeout_s:g} s")
    except aiohttp.ClientError as exc:
        return RequestOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")
    # A chunk not JSON (or nested past the parser's depth), or JSON of the wrong shape.
    except (ValueError, LookupError, TypeError, AttributeError, RecursionError) as exc:
        return RequestOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")


async def _stream(
    session: aiohttp.ClientSession, cfg: BenchConfig, prompt: str, sent: float
) -> RequestOutcome:
    url = cfg.base_url.rstrip("/") + request_path(cfg)
    async with session.post(url, json=request_body(cfg, prompt), headers=headers(cfg)) as resp:
        if resp.status != 200:
            text = (await resp.read()).decode(errors="replace").strip()
            return RequestOutcome(ok=False, error=f"HTTP {resp.status}: {text[:200]}")
        events, reading = SSEDecoder(), _Reading(sent)
        # Whatever bytes the socket has, as they come (vLLM's iter_any); each event is timed when read.
        async for data in resp.content.iter_any():
            if not reading.take(events.feed(data)):
                return reading.outcome()
        reading.take(events.flush())
    return reading.outcome()


@dataclass
class _Reading:
    """One stream's token timestamps and usage so far; ``take`` says whether to read on."""

    sent: float
    stamps: list[float] = field(default_factory=list)
    usage: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""
    finished: bool = False

    def take(self, payloads: Iterable[str]) -> bool:
        for data in payloads:
            if self.finished:
                break  # past [DONE]: read to the end only so the connection can be kept
            if data == "[DONE]":
                self.finished = True
                continue
            chunk = json.loads(data)
            if not isinstance(chunk, dict):
                raise ValueError(f"stream chunk is not an object: {data[:100]}")
            if (message := stream_error(chunk)) is not None:
                self.error = f"error in stream: {message[:200]}"
                return False
            if is_token_chunk(chunk):
                self.stamps.append(time.perf_counter())
            self.usage = chunk.get("usage") or self.usage
        return True

    def outcome(self) -> RequestOutcome:
        if self.error:
            return RequestOutcome(ok=False, error=self.error)
        if not self.stamps:
            return RequestOutcome(ok=False, error="the stream carried no token")
        return RequestOutcome(
            ok=True,
            ttft_s=self.stamps[0] - self.sent,
            itl_s=tuple(b - a for a, b in itertools.pairwise(self.stamps)),
            e2e_s=self.stamps[-1] - self.sent,
            output_tokens=int(self.usage.get("completion_tokens") or len(self.stamps)),
            prompt_tokens=int(self.usage.get("prompt_tokens") or 0),
        )
