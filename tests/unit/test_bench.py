"""The load test against a scripted streaming server (httpx.MockTransport), and its pure arithmetic."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import astuple, replace
from datetime import UTC, datetime

import httpx
import pytest
from rich.console import Console

from orchestrator.bench import (
    BenchConfig,
    BenchResult,
    RequestOutcome,
    Stats,
    arrival_offsets,
    build_prompts,
    change_pct,
    compare,
    format_compare,
    format_table,
    from_vllm_json,
    percentile,
    run_bench,
    summarize,
)

CFG = BenchConfig(
    base_url="http://h:8000", model="tiny", num_requests=3, concurrency=1, input_len=16, output_len=4
)
T0 = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 24, 7, 0, 2, tzinfo=UTC)
# The real `vllm bench serve` result captured on the GPU test bed (shared/fixtures/vllm-0.26-gpu-tp2).
VLLM_RESULT = """{"date": "20261124-073114", "endpoint_type": "openai", "backend": "openai", "label": null, "model_id": "qwen2.5-14b", "tokenizer_id": "/models/qwen14b-shape", "num_prompts": 100, "request_rate": "inf", "burstiness": 1.0, "max_concurrency": 32, "duration": 4.548431011000048, "completed": 7, "failed": 93, "total_input_tokens": 7, "total_output_tokens": 896, "request_throughput": 1.5389922333813597, "request_goodput": null, "output_throughput": 196.99100587281404, "total_token_throughput": 198.52999810619542, "max_output_tokens_per_s": 252.0, "max_concurrent_requests": 7, "rtfx": 0.0, "mean_ttft_ms": 206.5768804285426, "median_ttft_ms": 220.97350299998197, "std_ttft_ms": 34.86310042682416, "p99_ttft_ms": 232.00858269994114, "mean_tpot_ms": 32.513500119235154, "median_tpot_ms": 32.42012107086597, "std_tpot_ms": 0.30920997300836645, "p99_tpot_ms": 33.0503997844094, "mean_itl_ms": 32.51350286276723, "median_itl_ms": 27.534208000020044, "std_itl_ms": 9.971641113194455, "p99_itl_ms": 68.31397207999089}"""

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


# --- a scripted server ------------------------------------------------------------------------------------


def text_chunk(text: str, *, chat: bool = False, finish: str | None = None) -> dict[str, object]:
    choice: dict[str, object] = {"index": 0, "finish_reason": finish}
    choice.update({"delta": {"content": text}} if chat else {"text": text})
    return {"object": "chunk", "choices": [choice]}


def usage_chunk(prompt: int, completion: int) -> dict[str, object]:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


def sse_response(events: list[tuple[float, dict[str, object] | str]]) -> httpx.Response:
    """A 200 event stream sending each event after its delay (seconds), then ``[DONE]``."""

    async def body() -> AsyncIterator[bytes]:
        for delay, event in events:
            if delay:
                await asyncio.sleep(delay)
            data = event if isinstance(event, str) else json.dumps(event)
            yield f"data: {data}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})


def steady(
    ttft: float, gap: float, tokens: int, *, usage: bool = True
) -> list[tuple[float, dict[str, object] | str]]:
    """A completion stream: first token after ``ttft``, the others ``gap`` apart, then usage."""
    events: list[tuple[float, dict[str, object] | str]] = [(ttft, text_chunk(" a"))]
    events += [(gap, text_chunk(" b")) for _ in range(tokens - 1)]
    return [*events, (0, usage_chunk(16, tokens))] if usage else events


def ms(value: float | None) -> float:
    assert value is not None
    return value


def transport(handler: Handler) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


# --- timing against the scripted server -----------------------------------------------------------------


def test_latencies_and_throughput_come_out_as_scripted() -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        return sse_response(steady(0.05, 0.02, 4))

    result = run_bench(CFG, transport=transport(handle))

    assert (result.completed, result.failed, result.errors) == (3, 0, ())
    assert 50 <= ms(result.ttft.median) < 65
    assert 20 <= ms(result.itl.median) < 30
    assert result.itl.count == 3 * 3
    assert 20 <= ms(result.tpot.mean) < 30
    assert 110 <= ms(result.e2el.mean) < 135
    # Strictly one at a time: the run lasts three requests, end to end.
    assert 0.33 <= result.duration_s < 0.5
    assert result.total_output_tokens == 12
    assert result.total_input_tokens == 48
    assert result.output_throughput == pytest.approx(12 / result.duration_s)
    assert result.total_token_throughput == pytest.approx(60 / result.duration_s)
    assert result.request_throughput == pytest.approx(3 / result.duration_s)


def test_concurrency_caps_requests_in_flight_and_shortens_the_run() -> None:
    in_flight, peak = 0, 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)

        async def body() -> AsyncIterator[bytes]:
            nonlocal in_flight
            for delay, event in steady(0.03, 0.01, 3):
                await asyncio.sleep(delay)
                yield f"data: {json.dumps(event)}\n\n".encode()
            in_flight -= 1
            yield b"data: [DONE]\n\n"

        return httpx.Response(200, content=body())

    result = run_bench(replace(CFG, num_requests=6, concurrency=2), transport=transport(handle))

    assert peak == 2
    assert result.completed == 6
    assert 0.15 <= result.duration_s < 0.3  # three rounds of ~50 ms


def test_the_request_is_streamed_with_usage_and_vllm_extras() -> None:
    seen: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return sse_response(steady(0, 0, 2))

    run_bench(replace(CFG, num_requests=1, api_key="k"), transport=transport(handle))

    request = seen[0]
    body = json.loads(request.content)
    assert request.url == "http://h:8000/v1/completions"
    assert request.headers["authorization"] == "Bearer k"
    assert body["model"] == "tiny"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 4
    assert body["ignore_eos"] is True
    assert len(body["prompt"].split()) == 16


def test_chat_role_preamble_is_not_the_first_token() -> None:
    seen: list[dict[str, object]] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        role: dict[str, object] = {
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        }
        return sse_response(
            [
                (0, role),
                (0.04, text_chunk("x", chat=True)),
                (0.02, text_chunk("y", chat=True, finish="length")),
                (0, usage_chunk(5, 2)),
            ]
        )

    cfg = replace(CFG, num_requests=1, endpoint="chat", ignore_eos=False, prompt="hello")
    result = run_bench(cfg, transport=transport(handle))

    assert seen[0]["messages"] == [{"role": "user", "content": "hello"}]
    assert "ignore_eos" not in seen[0]
    assert ms(result.ttft.mean) >= 40
    assert result.itl.count == 1
    assert ms(result.tpot.mean) == pytest.approx(ms(result.e2el.mean) - ms(result.ttft.mean))


def test_without_usage_chunk_tokens_are_counted_by_chunk() -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        return sse_response(steady(0, 0, 5, usage=False))

    result = run_bench(replace(CFG, num_requests=2), transport=transport(handle))

    assert result.total_output_tokens == 10
    assert result.total_input_tokens == 0


def test_failures_are_counted_with_their_errors() -> None:
    calls = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        match calls:
            case 1:
                return httpx.Response(500, text='{"error": "EngineDeadError"}')
            case 2:
                raise httpx.ConnectError("connection refused", request=request)
            case 3:
                return sse_response([(0, {"error": {"message": "engine died", "code": 500}})])
            case 4:
                return sse_response([(0, usage_chunk(3, 0))])
            case 5:
                return sse_response([(0, "not json")])
            case 6:
                return httpx.Response(500, text='{"error": "EngineDeadError"}')
            case _:
                return sse_response(steady(0, 0, 2))

    result = run_bench(replace(CFG, num_requests=8), transport=transport(handle))

    assert (result.completed, result.failed) == (2, 6)
    assert result.errors == (
        'HTTP 500: {"error": "EngineDeadError"}',
        "ConnectError: connection refused",
        "error in stream: engine died",
        "the stream carried no token",
        "JSONDecodeError: Expecting value: line 1 column 1 (char 0)",
    )
    assert result.total_output_tokens == 4


def test_a_request_past_its_timeout_fails() -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        return sse_response(steady(1.0, 0, 2))

    result = run_bench(replace(CFG, num_requests=1, timeout_s=0.05), transport=transport(handle))

    assert result.failed == 1
    assert result.errors == ("timed out after 0.05 s",)
    assert result.ttft == Stats(0, 0.0, 0.0, 0.0, 0.0)


def test_progress_is_reported_per_request() -> None:
    ticks: list[tuple[int, int]] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        return sse_response(steady(0, 0, 2))

    run_bench(CFG, on_progress=lambda done, total: ticks.append((done, total)), transport=transport(handle))

    assert ticks == [(1, 3), (2, 3), (3, 3)]


def test_request_rate_spreads_arrivals() -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        return sse_response(steady(0, 0, 2))

    result = run_bench(
        replace(CFG, num_requests=5, concurrency=5, request_rate=50), transport=transport(handle)
    )

    assert result.completed == 5
    assert result.duration_s >= 0.1 - 0.002  # the last arrival falls at 5 / 50 s


# --- the pure parts -------------------------------------------------------------------------------------


def test_arrivals_are_poisson_rescaled_to_n_over_rate_and_seeded() -> None:
    cfg = replace(CFG, num_requests=100, request_rate=20)
    offsets = arrival_offsets(cfg)

    assert offsets == sorted(offsets)
    assert offsets[-1] == pytest.approx(100 / 20)
    assert offsets == arrival_offsets(cfg)
    assert offsets != arrival_offsets(replace(cfg, seed=1))
    assert arrival_offsets(CFG) == [0.0, 0.0, 0.0]


def test_prompts_are_seeded_random_words_or_the_fixed_prompt() -> None:
    prompts = build_prompts(replace(CFG, input_len=128))

    assert all(len(p.split()) == 128 for p in prompts)
    assert len(set(prompts)) == 3  # distinct, so the prefix cache does not flatter the run
    assert prompts == build_prompts(replace(CFG, input_len=128))
    assert prompts != build_prompts(replace(CFG, input_len=128, seed=7))
    assert build_prompts(replace(CFG, prompt="hi")) == ["hi", "hi", "hi"]


def test_percentiles_interpolate_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    # numpy.percentile(values, [50, 90, 99]) == [3.0, 7.6, 9.76]
    assert [percentile(values, q) for q in (50, 90, 99)] == pytest.approx([3.0, 7.6, 9.76])
    assert percentile([5.0], 99) == 5.0


def test_summary_follows_vllm_definitions() -> None:
    outcomes = [
        RequestOutcome(
            ok=True, ttft_s=0.1, itl_s=(0.02, 0.04), e2e_s=0.16, output_tokens=3, prompt_tokens=10
        ),
        RequestOutcome(ok=True, ttft_s=0.3, itl_s=(), e2e_s=0.3, output_tokens=1, prompt_tokens=20),
        RequestOutcome(ok=False, error="HTTP 500: boom"),
        RequestOutcome(ok=False, error="HTTP 500: boom"),
    ]
    result = summarize(CFG, outcomes, duration_s=2.0, started=T0, finished=T1)

    assert (result.completed, result.failed, result.errors) == (2, 2, ("HTTP 500: boom",))
    assert result.request_throughput == 1.0
    assert result.output_throughput == 2.0  # (3 + 1) tokens / 2 s
    assert result.total_token_throughput == 17.0  # (30 + 4) / 2
    assert astuple(result.ttft) == pytest.approx((2, 200, 200, 280, 298))
    # TPOT only for requests with more than one token: (160 - 100) / (3 - 1) ms.
    assert astuple(result.tpot) == pytest.approx((1, 30, 30, 30, 30))
    assert result.itl.count == 2 and result.itl.mean == pytest.approx(30)
    assert result.e2el.median == pytest.approx(230)


def test_json_round_trip_keeps_everything_but_the_api_key() -> None:
    outcomes = [
        RequestOutcome(ok=True, ttft_s=0.1, itl_s=(0.02,), e2e_s=0.12, output_tokens=2, prompt_tokens=7)
    ]
    result = summarize(
        replace(CFG, api_key="secret", request_rate=2.5, endpoint="chat"),
        [*outcomes, RequestOutcome(ok=False, error="x")],
        duration_s=1.5,
        started=T0,
        finished=T1,
        tags={"deployment": "qwen", "revision": "3"},
    )

    text = result.to_json()

    assert "secret" not in text
    assert json.loads(text)["format"] == "orch-bench/1"
    assert BenchResult.from_json(text) == replace(result, config=replace(result.config, api_key=None))


def result_with(output_throughput: float, ttft_mean: float) -> BenchResult:
    base = summarize(CFG, [], duration_s=1.0, started=T0, finished=T1)
    return replace(
        base, output_throughput=output_throughput, ttft=Stats(10, ttft_mean, ttft_mean, ttft_mean, ttft_mean)
    )


def test_compare_gives_percent_change_from_a_to_b() -> None:
    rows = {name: (a, b, pct) for name, a, b, pct in compare(result_with(100, 50), result_with(120, 40))}

    assert rows["output_throughput"] == pytest.approx((100, 120, 20.0))
    assert rows["ttft_mean_ms"] == pytest.approx((50, 40, -20.0))
    assert rows["request_throughput"] == (0.0, 0.0, 0.0)
    assert change_pct(0, 5) == math.inf
    assert change_pct(-4, -2) == pytest.approx(50.0)


def test_vllm_result_file_reads_and_compares() -> None:
    theirs = from_vllm_json(VLLM_RESULT)

    assert (theirs.completed, theirs.failed, theirs.config.concurrency) == (7, 93, 32)
    assert theirs.config.request_rate is None
    assert theirs.output_throughput == pytest.approx(196.991, abs=1e-3)
    assert theirs.tpot.mean == pytest.approx(32.5135, abs=1e-4)
    assert theirs.ttft.p90 is None and theirs.e2el.mean is None
    assert theirs.finished == datetime(2026, 11, 24, 7, 31, 14, tzinfo=UTC)

    names = [row[0] for row in compare(result_with(200, 210), theirs)]
    assert "ttft_p99_ms" in names
    assert "ttft_p90_ms" not in names  # vLLM did not report it
    assert not any(name.startswith("e2el") for name in names)


def render(table: object) -> str:
    console = Console(record=True, width=140, color_system=None)
    console.print(table)
    return console.export_text()


def test_tables_render() -> None:
    a, b = result_with(100, 50), result_with(120, 40)

    single = render(format_table(a))
    assert "output throughput tok/s" in single and "100.00" in single and "ttft ms" in single

    both = render(format_compare(a, b, labels=("rev 2", "rev 3")))
    assert "rev 2" in both and "+20.0%" in both and "-20.0%" in both
