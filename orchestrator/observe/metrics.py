"""A summary of vLLM's ``/metrics`` text, parsed with prometheus_client.

Values are aggregated over label sets (``model_name``, ``engine``): counts and
gauges of requests are summed, KV-cache usage is the highest engine's (a mean
would hide one full engine), and histograms are summed bucket by bucket before
their quantiles are estimated as Prometheus' ``histogram_quantile`` does.
Metric names changed across vLLM versions; each logical metric lists its names,
newest first, and the summary records which one it found.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from ..errors import AnswerError
from . import httpio

# Logical metric -> names across vLLM versions, newest first.
# gpu_cache_usage_perc and gpu_prefix_cache_* were deprecated in 0.9.2;
# time_per_output_token_seconds was deprecated in 0.11 and hidden in 0.12.
NAMES: Mapping[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prefix_cache_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
    "request_success": ("vllm:request_success",),
    "prompt_tokens": ("vllm:prompt_tokens",),
    "generation_tokens": ("vllm:generation_tokens",),
    "ttft": ("vllm:time_to_first_token_seconds",),
    "inter_token_latency": (
        "vllm:inter_token_latency_seconds",
        "vllm:time_per_output_token_seconds",
    ),
    "e2e_latency": ("vllm:e2e_request_latency_seconds",),
}
QUANTILES = (0.5, 0.9, 0.99)
# vLLM's /metrics is ~50 KiB for one model; a few hundred LoRA adapters stay well below this.
MAX_METRICS_BYTES = 32 << 20


@dataclass(frozen=True)
class HistogramSummary:
    """Count, mean and estimated quantiles of one histogram (None when it is empty)."""

    count: float
    total: float
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None


@dataclass(frozen=True)
class MetricsSummary:
    """What orch reports of a vLLM server's metrics; None where a metric is absent."""

    running: float | None
    waiting: float | None
    kv_cache_usage: float | None
    prefix_cache_queries: float | None
    prefix_cache_hits: float | None
    prefix_cache_hit_rate: float | None
    request_success: dict[str, float]
    prompt_tokens: float | None
    generation_tokens: float | None
    ttft: HistogramSummary | None
    inter_token_latency: HistogramSummary | None
    e2e_latency: HistogramSummary | None
    models: tuple[str, ...]
    engines: tuple[str, ...]
    found_names: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        data = asdict(self)
        data["models"] = list(self.models)
        data["engines"] = list(self.engines)
        return data


def scrape(
    url: str, *, timeout_s: float = 10, transport: httpx.BaseTransport | None = None
) -> MetricsSummary:
    """GET a ``/metrics`` URL and summarize it; every failure is one AnswerError naming the URL."""
    with httpio.client(timeout=timeout_s, transport=transport) as client:
        answer = httpio.fetch(client, "GET", url, limit=MAX_METRICS_BYTES)
    if answer.status != 200:
        raise AnswerError(url, f"answered {answer.status}: {httpio.snippet(answer.body)}")
    return summarize(answer.text, source=url)


def parse_families(text: str, *, source: str = "/metrics") -> dict[str, Metric]:
    """Metric families of a Prometheus text exposition, by family name.

    prometheus_client drops a counter's ``_total`` suffix from the family name. Text it cannot
    parse (an HTML error page, JSON) is an AnswerError naming ``source``.
    """
    try:
        return {family.name: family for family in text_string_to_metric_families(text)}
    except ValueError as exc:
        raise AnswerError(source, f"not Prometheus text ({httpio.one_line(str(exc))[:120]})") from exc


def summarize(text: str, *, source: str = "/metrics") -> MetricsSummary:
    """Summarize the text of a vLLM ``/metrics`` response (``source`` names it in errors)."""
    families = parse_families(text, source=source)
    found = {key: name for key in NAMES if (name := _find(families, key)) is not None}

    def get(key: str) -> Metric | None:
        return families[found[key]] if key in found else None

    queries, hits = _sum(get("prefix_cache_queries")), _sum(get("prefix_cache_hits"))
    return MetricsSummary(
        running=_sum(get("running")),
        waiting=_sum(get("waiting")),
        kv_cache_usage=_max(get("kv_cache_usage")),
        prefix_cache_queries=queries,
        prefix_cache_hits=hits,
        prefix_cache_hit_rate=_ratio(hits, queries),
        request_success=_by_label(get("request_success"), "finished_reason"),
        prompt_tokens=_sum(get("prompt_tokens")),
        generation_tokens=_sum(get("generation_tokens")),
        ttft=_histogram(get("ttft")),
        inter_token_latency=_histogram(get("inter_token_latency")),
        e2e_latency=_histogram(get("e2e_latency")),
        models=_label_values(families, "model_name"),
        engines=_label_values(families, "engine"),
        found_names=found,
    )


def _find(families: Mapping[str, Metric], key: str) -> str | None:
    # Without a TYPE line a counter keeps its _total suffix in the family name.
    for name in NAMES[key]:
        for candidate in (name, f"{name}_total"):
            if candidate in families:
                return candidate
    return None


def _values(family: Metric | None) -> list[float]:
    if family is None:
        return []
    return [s.value for s in family.samples if not s.name.endswith("_created")]


def _sum(family: Metric | None) -> float | None:
    values = _values(family)
    return math.fsum(values) if values else None


def _max(family: Metric | None) -> float | None:
    values = _values(family)
    return max(values) if values else None


def _ratio(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return part / whole


def _by_label(family: Metric | None, label: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for sample in family.samples if family is not None else ():
        if label in sample.labels and not sample.name.endswith("_created"):
            key = sample.labels[label]
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def _label_values(families: Mapping[str, Metric], label: str) -> tuple[str, ...]:
    values = {
        sample.labels[label]
        for family in families.values()
        if family.name.startswith("vllm:")
        for sample in family.samples
        if label in sample.labels
    }
    return tuple(sorted(values))


# --- histograms --------------------------------------------------------------


def _histogram(family: Metric | None) -> HistogramSummary | None:
    if family is None:
        return None
    buckets = _buckets(family)
    count = _suffix_sum(family, "_count")
    total = _suffix_sum(family, "_sum")
    q50, q90, q99 = (histogram_quantile(q, buckets) for q in QUANTILES)
    return HistogramSummary(
        count=count,
        total=total,
        mean=total / count if count else None,
        p50=q50,
        p90=q90,
        p99=q99,
    )


def _suffix_sum(family: Metric, suffix: str) -> float:
    return math.fsum(s.value for s in family.samples if s.name == family.name + suffix)


def _buckets(family: Metric) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs summed over label sets, sorted by bound."""
    counts: dict[float, float] = {}
    for sample in family.samples:
        if sample.name == family.name + "_bucket" and (bound := _bound(sample.labels.get("le"))) is not None:
            counts[bound] = counts.get(bound, 0.0) + sample.value
    return sorted(counts.items())


def _bound(le: str | None) -> float | None:
    """A bucket's upper bound; None for a bucket without a number there (skipped)."""
    try:
        return float(le) if le is not None else None
    except ValueError:
        return None


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Estimate the q-quantile from cumulative buckets, as Prometheus does.

    The bucket holding rank q x count is found and the value interpolated
    linearly inside it (from 0 for the first bucket). A rank in the +Inf bucket
    yields the largest finite bound. None when there are no observations.
    """
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        return None
    observations = buckets[-1][1]
    if observations <= 0 or not math.isfinite(observations):
        return None
    rank = q * observations
    # Buckets that are not cumulative (a broken exporter) may hold no count >= rank: use the last.
    index = next((i for i, (_, count) in enumerate(buckets) if count >= rank), len(buckets) - 1)
    if index == len(buckets) - 1:
        return buckets[-2][0]
    return _interpolate(buckets, index, rank)


def _interpolate(buckets: Sequence[tuple[float, float]], index: int, rank: float) -> float:
    upper, count = buckets[index]
    if index == 0 and upper <= 0:
        return upper
    lower, below = buckets[index - 1] if index > 0 else (0.0, 0.0)
    in_bucket = count - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket
