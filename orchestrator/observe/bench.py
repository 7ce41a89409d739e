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

The client that sends the requests and times them is ``benchclient``; vLLM's own result file,
comparisons and tables are ``benchreport``.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

FORMAT = "orch-bench/1"
MAX_ERRORS = 5
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


# --- the workload: prompts and arrivals ------------------------------------------------------------------


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


# --- statistics ------------------------------------------------------------------------------------------


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


def with_tags(result: BenchResult, **tags: str) -> BenchResult:
    """The result with ``tags`` added (deployment, host, revision, orch version ...)."""
    return replace(result, tags={**result.tags, **tags})
