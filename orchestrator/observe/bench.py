"""A streaming load test of an OpenAI-compatible vLLM endpoint, measured as ``vllm bench serve`` does.

Every request streams (``stream_options.include_usage``), so each yields its
time to first token, the gaps between token chunks and its token counts. The
definitions follow vLLM's ``vllm/benchmarks/serve.py`` (``calculate_metrics``)
and ``vllm/benchmarks/lib/endpoint_request_func.py``:

- A *token chunk* is an SSE chunk with a non-empty ``choices`` list (its text
  may be empty, e.g. a special token). One exception: the role-only delta a
  chat stream opens with is not a token; vLLM's bench counts it as the first
  token, which puts one ~0 ms gap per request into its chat ITL.
- TTFT: request sent -> first token chunk. E2E latency: request sent -> last
  token chunk (the usage chunk and ``[DONE]`` are not tokens).
- ITL: every gap between consecutive token chunks, pooled over all requests.
- TPOT: per request ``(e2e - ttft) / (output_tokens - 1)``, only for requests
  with more than one output token.
- Output tokens: ``usage.completion_tokens``, else the number of token chunks
  (vLLM re-tokenizes the text instead). Prompt tokens: ``usage.prompt_tokens``,
  else 0.
- Only successful requests enter the statistics. Throughputs divide by the
  benchmark's wall time, from the first dispatch until the last request ends:
  request throughput = completed / duration, output throughput = output tokens
  / duration, total token throughput = (prompt + output tokens) / duration.
- Mean, median and percentiles as numpy's defaults (linear interpolation);
  a metric without samples reads 0, as in vLLM.
- With ``request_rate`` set, arrivals are a Poisson process whose cumulative
  delays are rescaled so the last one falls at ``num_requests / request_rate``
  (as vLLM's ``get_request`` does); ``concurrency`` caps requests in flight, and
  a request's clock starts when it gets a slot.

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
import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp
from rich.table import Table

FORMAT = "orch-bench/1"
MAX_ERRORS = 5
MAX_EVENT_CHARS = 1 << 20  # a token chunk is a few hundred bytes
LATENCIES = ("ttft", "tpot", "itl", "e2el")
# Common one-token English words, so a prompt of N words is about N tokens.
_WORDS_TEXT = (
    "the of and to in is that it for on was with as be at by this have from or one had not but what "
    "all were when we there can an your which their said if do will each about how up out them then "
    "she many some so these would other into has more her two like him see time could no make than "
    "first been its who now people my made over did down only way find use may water long little "
    "very after words called just where most know get through back much before go good new write our "
    "used me man too any day same right look think also around another came come work three word must "
    "because does part even place well such here take why things help put years different away again "
    "off went old number great tell men say small every found still between name should home big give "
    "air line set own under read last never us left end along while might next sound below saw "
    "something thought both few those always looked show large often together asked house world going "
    "want school important until form food keep children feet land side without boy once animals life "
    "enough took sometimes four head above kind began almost live page got earth need far hand high "
    "year mother light parts country father let night following picture being study second eyes soon"
)
WORDS = tuple(_WORDS_TEXT.split())


@dataclass(frozen=True)
class BenchConfig:
    """What to send: how many requests, how fast, how long each one is."""

    base_url: str
    model: str
    num_requests: int = 100
    concurrency: int = 8
    request_rate: float | None = None  # requests/s, Poisson arrivals; None sends all at once
    input_len: int = 128  # words of a random prompt, about as many tokens
    output_len: int = 64
    prompt: str | None = None  # one fixed prompt instead of random words
    seed: int = 0
    api_key: str | None = None
    timeout_s: float = 300
    endpoint: Literal["chat", "completions"] = "completions"
    ignore_eos: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain data, the API key left out."""
        data = asdict(self)
        data["api_key"] = None
        return data


@dataclass(frozen=True)
class RequestOutcome:
    """One request as measured (seconds); ``error`` is empty on success."""

    ok: bool
    ttft_s: float = 0.0
    itl_s: tuple[float, ...] = ()
    e2e_s: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""


@dataclass(frozen=True)
class Stats:
    """Distribution of one latency in milliseconds over ``count`` samples (None: not reported)."""

    count: int
    mean: float | None
    median: float | None
    p90: float | None
    p99: float | None

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        """Stats of samples given in seconds; all zero when there are none (as vLLM reports)."""
        if not seconds:
            return cls(0, 0.0, 0.0, 0.0, 0.0)
        ms = sorted(s * 1000 for s in seconds)
        return cls(len(ms), statistics.fmean(ms), percentile(ms, 50), percentile(ms, 90), percentile(ms, 99))


@dataclass(frozen=True)
class BenchResult:
    """A load test's outcome: counts, throughputs (per second) and latency statistics (ms)."""

    config: BenchConfig
    started: datetime
    finished: datetime
    duration_s: float
    completed: int
    failed: int
    errors: tuple[str, ...]
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft: Stats
    tpot: Stats
    itl: Stats
    e2el: Stats
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        """The result as JSON (times in ISO 8601)."""
        data = asdict(self)
        data["config"] = self.config.to_dict()
        data["started"] = self.started.isoformat()
        data["finished"] = self.finished.isoformat()
        data["errors"] = list(self.errors)
        return json.dumps({"format": FORMAT, **data}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> BenchResult:
        """Read what ``to_json`` wrote."""
        data = json.loads(text)
        data.pop("format", None)
        data["config"] = BenchConfig(**data["config"])
        data["started"] = datetime.fromisoformat(data["started"])
        data["finished"] = datetime.fromisoformat(data["finished"])
        data["errors"] = tuple(data["errors"])
        for name in LATENCIES:
            data[name] = Stats(**data[name])
        return cls(**data)


# --- the pure part: prompts, arrivals, requests, chunks, statistics ------------------------------------


def build_prompts(cfg: BenchConfig) -> list[str]:
    """One prompt per request: the fixed prompt, or ``input_len`` random words drawn with ``seed``."""
    if cfg.prompt is not None:
        return [cfg.prompt] * cfg.num_requests
    rng = random.Random(cfg.seed)
    return [" ".join(rng.choices(WORDS, k=cfg.input_len)) for _ in range(cfg.num_requests)]


def arrival_offsets(cfg: BenchConfig) -> list[float]:
    """Seconds after the start at which each request arrives (all 0 without a request rate)."""
    if cfg.request_rate is None or math.isinf(cfg.request_rate):
        return [0.0] * cfg.num_requests
    rng = random.Random(cfg.seed)
    offsets, total = [], 0.0
    for _ in range(cfg.num_requests):
        total += rng.expovariate(cfg.request_rate)
        offsets.append(total)
    scale = (cfg.num_requests / cfg.request_rate) / total if total else 1.0
    return [offset * scale for offset in offsets]


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
    """Whether an SSE chunk carries a generated token (see the module docstring)."""
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


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile of sorted values, interpolated linearly (numpy's default)."""
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(
    cfg: BenchConfig,
    outcomes: Sequence[RequestOutcome],
    *,
    duration_s: float,
    started: datetime,
    finished: datetime,
    tags: Mapping[str, str] | None = None,
) -> BenchResult:
    """Aggregate per-request outcomes as ``vllm bench serve``'s ``calculate_metrics`` does."""
    ok = [o for o in outcomes if o.ok]
    prompt_tokens = sum(o.prompt_tokens for o in ok)
    output_tokens = sum(o.output_tokens for o in ok)
    per_s = 1 / duration_s if duration_s > 0 else 0.0
    return BenchResult(
        config=cfg,
        started=started,
        finished=finished,
        duration_s=duration_s,
        completed=len(ok),
        failed=len(outcomes) - len(ok),
        errors=distinct_errors(outcomes),
        total_input_tokens=prompt_tokens,
        total_output_tokens=output_tokens,
        request_throughput=len(ok) * per_s,
        output_throughput=output_tokens * per_s,
        total_token_throughput=(prompt_tokens + output_tokens) * per_s,
        ttft=Stats.of([o.ttft_s for o in ok]),
        tpot=Stats.of([(o.e2e_s - o.ttft_s) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1]),
        itl=Stats.of([gap for o in ok for gap in o.itl_s]),
        e2el=Stats.of([o.e2e_s for o in ok]),
        tags=dict(tags or {}),
    )


def distinct_errors(outcomes: Iterable[RequestOutcome], limit: int = MAX_ERRORS) -> tuple[str, ...]:
    """The first ``limit`` distinct error texts, in order of first appearance."""
    seen = dict.fromkeys(o.error for o in outcomes if not o.ok)
    return tuple(seen)[:limit]


# --- the I/O part ----------------------------------------------------------------------------------------


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


# --- vLLM's own result file ------------------------------------------------------------------------------


def from_vllm_json(text: str, *, base_url: str = "") -> BenchResult:
    """Read the JSON ``vllm bench serve --save-result`` writes, to compare it with orch's.

    Percentiles vLLM did not report (it writes the ones named by
    ``--metric-percentiles``, default 99) read None; ``count`` is unknown (0).
    """
    data = json.loads(text)
    rate = float(data.get("request_rate", "inf"))
    cfg = BenchConfig(
        base_url=base_url,
        model=str(data.get("model_id", "")),
        num_requests=int(data.get("num_prompts", data["completed"] + data["failed"])),
        concurrency=int(data.get("max_concurrency") or data.get("num_prompts") or 1),
        request_rate=None if math.isinf(rate) else rate,
        endpoint="chat" if "chat" in str(data.get("backend", "")) else "completions",
    )
    finished = datetime.strptime(data["date"], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    duration = float(data["duration"])
    return BenchResult(
        config=cfg,
        started=finished - timedelta(seconds=duration),
        finished=finished,
        duration_s=duration,
        completed=int(data["completed"]),
        failed=int(data["failed"]),
        errors=tuple(str(e) for e in data.get("errors", []) if e)[:MAX_ERRORS],
        total_input_tokens=int(data["total_input_tokens"]),
        total_output_tokens=int(data["total_output_tokens"]),
        request_throughput=float(data["request_throughput"]),
        output_throughput=float(data["output_throughput"]),
        total_token_throughput=float(data["total_token_throughput"]),
        ttft=_vllm_stats(data, "ttft"),
        tpot=_vllm_stats(data, "tpot"),
        itl=_vllm_stats(data, "itl"),
        e2el=_vllm_stats(data, "e2el"),
        tags={"tool": "vllm bench serve", "label": str(data.get("label") or data.get("backend", ""))},
    )


def _vllm_stats(data: Mapping[str, Any], name: str) -> Stats:
    def get(key: str) -> float | None:
        value = data.get(f"{key}_{name}_ms")
        return None if value is None else float(value)

    return Stats(count=0, mean=get("mean"), median=get("median"), p90=get("p90"), p99=get("p99"))


# --- comparison and tables -------------------------------------------------------------------------------

THROUGHPUTS = ("request_throughput", "output_throughput", "total_token_throughput")
STAT_FIELDS = tuple(f.name for f in fields(Stats) if f.name != "count")
UNITS = {"request_throughput": "req/s", "output_throughput": "tok/s", "total_token_throughput": "tok/s"}


def metrics(result: BenchResult) -> dict[str, float | None]:
    """The comparable numbers of a result by name: throughputs, then ``<latency>_<stat>`` in ms."""
    values: dict[str, float | None] = {name: getattr(result, name) for name in THROUGHPUTS}
    for name in LATENCIES:
        stats: Stats = getattr(result, name)
        values.update({f"{name}_{stat}_ms": getattr(stats, stat) for stat in STAT_FIELDS})
    return values


def change_pct(a: float, b: float) -> float:
    """Relative change from a to b in percent (0 when equal, ±inf from 0)."""
    if a == b:
        return 0.0
    if a == 0:
        return math.copysign(math.inf, b)
    return (b - a) / abs(a) * 100


def compare(a: BenchResult, b: BenchResult) -> list[tuple[str, float, float, float]]:
    """(metric, a, b, change % from a to b) for every metric both results report."""
    mb = metrics(b)
    return [
        (name, va, vb, change_pct(va, vb))
        for name, va in metrics(a).items()
        if va is not None and (vb := mb[name]) is not None
    ]


def higher_is_better(metric: str) -> bool:
    """Throughputs improve upwards, latencies downwards."""
    return metric in THROUGHPUTS


def format_table(result: BenchResult, *, title: str | None = None) -> Table:
    """A rich table of one result: counts and throughputs, then one row per latency."""
    table = Table(title=title or f"bench {result.config.model} @ {result.config.base_url}")
    for column in ("metric", "mean", "median", "p90", "p99"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    table.add_row("requests ok / failed", f"{result.completed} / {result.failed}", "", "", "")
    table.add_row("duration s", f"{result.duration_s:.2f}", "", "", "")
    for name in THROUGHPUTS:
        table.add_row(f"{name.replace('_', ' ')} {UNITS[name]}", f"{getattr(result, name):.2f}", "", "", "")
    for name in LATENCIES:
        stats: Stats = getattr(result, name)
        table.add_row(f"{name} ms", *(_num(getattr(stats, stat)) for stat in STAT_FIELDS))
    return table


def format_compare(a: BenchResult, b: BenchResult, *, labels: tuple[str, str] = ("a", "b")) -> Table:
    """A rich table of ``compare(a, b)``; a change for the better is green, for the worse red."""
    table = Table(title=f"{labels[0]} -> {labels[1]}")
    table.add_column("metric")
    for column in (*labels, "change"):
        table.add_column(column, justify="right")
    for metric, va, vb, pct in compare(a, b):
        table.add_row(metric, _num(va), _num(vb), _change(metric, pct))
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _change(metric: str, pct: float) -> str:
    if pct == 0 or math.isnan(pct):
        return f"{pct:+.1f}%"
    better = (pct > 0) == higher_is_better(metric)
    return f"[{'green' if better else 'red'}]{pct:+.1f}%[/]"


def with_tags(result: BenchResult, **tags: str) -> BenchResult:
    """The result with ``tags`` added (deployment, host, revision, orch version ...)."""
    return replace(result, tags={**result.tags, **tags})
