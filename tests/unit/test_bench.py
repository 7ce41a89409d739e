"""The load test against a real streaming HTTP server on 127.0.0.1, and its pure arithmetic."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from rich.console import Console

from orchestrator.observe.bench import (
    BenchConfig,
    BenchResult,
    RequestOutcome,
    Stats,
    arrival_offsets,
    build_prompts,
    percentile,
    summarize,
)
from orchestrator.observe.benchclient import SSEDecoder, event_data, run_bench
from orchestrator.observe.benchreport import change_pct, compare, format_compare, format_table, from_vllm_json

CFG = BenchConfig(
    base_url="http://h:8000", model="tiny", num_requests=3, concurrency=1, input_len=16, output_len=4
)
T0 = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 24, 7, 0, 2, tzinfo=UTC)
# The real `vllm bench serve` result captured on the GPU test bed (shared/fixtures/vllm-0.26-gpu-tp2).
VLLM_RESULT = """{"date": "20261124-073114", "endpoint_type": "openai", "backend": "openai", "label": null, "model_id": "qwen2.5-14b", "tokenizer_id": "/models/qwen14b-shape", "num_prompts": 100, "request_rate": "inf", "burstiness": 1.0, "max_concurrency": 32, "duration": 4.548431011000048, "completed": 7, "failed": 93, "total_input_tokens": 7, "total_output_tokens": 896, "request_throughput": 1.5389922333813597, "request_goodput": null, "output_throughput": 196.99100587281404, "total_token_throughput": 198.52999810619542, "max_output_tokens_per_s": 252.0, "max_concurrent_requests": 7, "rtfx": 0.0, "mean_ttft_ms": 206.5768804285426, "median_ttft_ms": 220.97350299998197, "std_ttft_ms": 34.86310042682416, "p99_ttft_ms": 232.00858269994114, "mean_tpot_ms": 32.513500119235154, "median_tpot_ms": 32.42012107086597, "std_tpot_ms": 0.30920997300836645, "p99_tpot_ms": 33.0503997844094, "mean_itl_ms": 32.51350286276723, "median_itl_ms": 27.534208000020044, "std_itl_ms": 9.971641113194455, "p99_itl_ms": 68.31397207999089}"""

# An event is sent after its delay (seconds): a chunk object, a raw data string, or raw bytes as they are.
Event = tuple[float, dict[str, object] | str | bytes]


# --- a scripted server: real sockets, real HTTP/1.1 with chunked streaming ----------------------------


@dataclass
class Reply:
    """What the server answers one request with: an event stream, an error status, or a dropped connection."""

    events: list[Event] = field(default_factory=list)
    status: int = 200
    text: str = ""
    drop: bool = False
    tail: float = 0.0  # seconds between [DONE] and the end of the body


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    peer: tuple[str, int]


class Server(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 (a thread per connection); ``script(n)`` answers the n-th request (1-based)."""

    daemon_threads = True

    def __init__(self, script: Callable[[int], Reply]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script = script
        self.seen: list[Seen] = []
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (a timeout test) leaves a broken pipe behind: not the test's business


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, chunked streaming, as uvicorn serves vLLM
    disable_nagle_algorithm = True
    server: Server

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.seen.append(Seen(self.path, dict(self.headers), body, self.client_address))
            n = len(self.server.seen)
            self.server.in_flight += 1
            self.server.peak = max(self.server.peak, self.server.in_flight)
        try:
            self.answer(self.server.script(n))
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def answer(self, reply: Reply) -> None:
        if reply.drop:
            self.close_connection = True
            return
        if reply.status != 200:
            data = reply.text.encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for delay, event in [*reply.events, (0, "[DONE]")]:
            if delay:
                time.sleep(delay)
            self.chunk(event if isinstance(event, bytes) else sse(event))
        time.sleep(reply.tail)
        self.wfile.write(b"0\r\n\r\n")

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[int], Reply]], Server]]:
    """Start a scripted server (stopped after the test): ``server = serve(script)``."""
    started: list[Server] = []

    def start(script: Callable[[int], Reply]) -> Server:
        server = Server(script)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def sse(event: dict[str, object] | str) -> bytes:
    return f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode()


def text_chunk(text: str, *, chat: bool = False, finish: str | None = None) -> dict[str, object]:
    choice: dict[str, object] = {"index": 0, "finish_reason": finish}
    choice.update({"delta": {"content": text}} if chat else {"text": text})
    return {"object": "chunk", "choices": [choice]}


def usage_chunk(prompt: int, completion: int) -> dict[str, object]:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


def steady(ttft: float, gap: float, tokens: int, *, usage: bool = True) -> Reply:
    """A completion stream: first token after ``ttft``, the others ``gap`` apart, then usage."""
    events: list[Event] = [(ttft, text_chunk(" a"))]
    events += [(gap, text_chunk(" b")) for _ in range(tokens - 1)]
    return Reply([*events, (0, usage_chunk(16, tokens))] if usage else events)


def at(server: Server, **changes: Any) -> BenchConfig:
    return replace(CFG, base_url=server.url, **changes)


def ms(value: float | None) -> float:
    assert value is not None
    return value


# --- timing against the scripted server -----------------------------------------------------------------


def test_latencies_and_throughput_come_out_as_scripted(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: steady(0.05, 0.02, 4))

    result = run_bench(at(server))

    assert (result.completed, result.failed, result.errors) == (3, 0, ())
    # The server sleeps 50 ms, then 20 ms between tokens; timers and the loop add jitter both ways.
    assert 45 <= ms(result.ttft.median) < 75
    assert 16 <= ms(result.itl.median) < 35
    assert result.itl.count == 3 * 3
    assert 16 <= ms(result.tpot.mean) < 35
    assert 100 <= ms(result.e2el.mean) < 150
    # Strictly one at a time: the run lasts three requests, end to end.
    assert 0.33 <= result.duration_s < 0.55
    assert result.total_output_tokens == 12
    assert result.total_input_tokens == 48
    assert result.output_throughput == pytest.approx(12 / result.duration_s)
    assert result.total_token_throughput == pytest.approx(60 / result.duration_s)
    assert result.request_throughput == pytest.approx(3 / result.duration_s)


def test_concurrency_caps_requests_in_flight_on_kept_connections(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: replace(steady(0.03, 0.01, 3), tail=0.01))

    result = run_bench(at(server, num_requests=6, concurrency=2))

    assert server.peak == 2
    assert result.completed == 6
    assert 0.18 <= result.duration_s < 0.33  # three rounds of ~60 ms
    # Each stream is read to its end, past [DONE], so its connection serves the next request
    # (as vLLM's client does); a client that stops at [DONE] closes it and connects anew.
    assert len({s.peer for s in server.seen}) == 2


def test_the_request_is_streamed_with_usage_and_vllm_extras(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: steady(0, 0, 2))

    run_bench(at(server, num_requests=1, api_key="k"))

    [seen] = server.seen
    assert seen.path == "/v1/completions"
    assert seen.headers["Authorization"] == "Bearer k"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.body["model"] == "tiny"
    assert seen.body["stream"] is True
    assert seen.body["stream_options"] == {"include_usage": True}
    assert seen.body["max_tokens"] == 4
    assert seen.body["ignore_eos"] is True
    assert len(seen.body["prompt"].split()) == 16


def test_no_api_key_no_authorization_header(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: steady(0, 0, 2))

    run_bench(at(server, num_requests=1))

    assert "Authorization" not in server.seen[0].headers


def test_chat_role_preamble_is_not_the_first_token(serve: Callable[..., Server]) -> None:
    role: dict[str, object] = {
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    }
    server = serve(
        lambda n: Reply(
            [
                (0, role),
                (0.04, text_chunk("x", chat=True)),
                (0.02, text_chunk("y", chat=True, finish="length")),
                (0, usage_chunk(5, 2)),
            ]
        )
    )

    result = run_bench(at(server, num_requests=1, endpoint="chat", ignore_eos=False, prompt="hello"))

    assert server.seen[0].path == "/v1/chat/completions"
    assert server.seen[0].body["messages"] == [{"role": "user", "content": "hello"}]
    assert "ignore_eos" not in server.seen[0].body
    assert ms(result.ttft.mean) >= 40
    assert result.itl.count == 1
    assert ms(result.tpot.mean) == pytest.approx(ms(result.e2el.mean) - ms(result.ttft.mean))


def test_an_event_split_across_reads_is_timed_when_it_completes(serve: Callable[..., Server]) -> None:
    first = sse(text_chunk(" a"))
    server = serve(
        lambda n: Reply(
            [
                (0.02, first[:9]),
                (0.04, first[9:-1]),  # all but the blank line that ends the event
                (0.04, b"\n"),  # the first token is complete at 100 ms
                (0.08, b": a comment, then a token and the usage in one write\n\n" + sse(text_chunk(" b"))),
                (0, sse(usage_chunk(16, 2))),
            ]
        )
    )

    result = run_bench(at(server, num_requests=1))

    assert (result.completed, result.errors) == (1, ())
    assert 100 <= ms(result.ttft.mean) < 160  # not at 20 ms (first bytes), nor at 180 (next event)
    assert 60 <= ms(result.itl.mean) < 100
    assert result.total_output_tokens == 2


def test_without_usage_chunk_tokens_are_counted_by_chunk(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: steady(0, 0, 5, usage=False))

    result = run_bench(at(server, num_requests=2))

    assert result.total_output_tokens == 10
    assert result.total_input_tokens == 0


def test_failures_are_counted_with_their_errors(serve: Callable[..., Server]) -> None:
    def script(n: int) -> Reply:
        match n:
            case 1:
                return Reply(status=500, text='{"error": "EngineDeadError"}')
            case 2:
                return Reply(drop=True)
            case 3:
                return Reply([(0, {"error": {"message": "engine died", "code": 500}})])
            case 4:
                return Reply([(0, usage_chunk(3, 0))])
            case 5:
                return Reply([(0, "not json")])
            case 6:
                return Reply(status=500, text='{"error": "EngineDeadError"}')
            case _:
                return steady(0, 0, 2)

    server = serve(script)

    result = run_bench(at(server, num_requests=8))

    assert (result.completed, result.failed) == (2, 6)
    assert result.errors == (
        'HTTP 500: {"error": "EngineDeadError"}',
        "ServerDisconnectedError: Server disconnected",
        "error in stream: engine died",
        "the stream carried no token",
        "JSONDecodeError: Expecting value: line 1 column 1 (char 0)",
    )
    assert result.total_output_tokens == 4


def test_hostile_streams_are_failed_requests_with_one_line_errors(serve: Callable[..., Server]) -> None:
    def script(n: int) -> Reply:
        match n:
            case 1:
                return Reply([(0, b"data: " + b"[" * 100_000 + b"\n\n")])  # nested past the parser
            case 2:
                return Reply([(0, b"data: \xff\xfe\n\n")])  # not UTF-8
            case 3:
                return Reply([(0, b"x" * 65536)] * 20)  # an event that never ends
            case _:
                return Reply([(0, b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>")])

    result = run_bench(at(serve(script), num_requests=4, concurrency=1))

    assert (result.completed, result.failed) == (0, 4)
    assert [e.split(":")[0] for e in result.errors] == [
        "RecursionError",
        "UnicodeDecodeError",
        "ValueError",
        "the stream carried no token",
    ]
    assert result.errors[2] == "ValueError: a stream event longer than 1048576 characters"
    assert all("\n" not in e for e in result.errors)


def test_a_server_that_is_not_there_fails_every_request() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there

    result = run_bench(replace(CFG, base_url=f"http://127.0.0.1:{port}", num_requests=2))

    assert (result.completed, result.failed) == (0, 2)
    assert result.errors[0].startswith("ClientConnectorError: Cannot connect to host 127.0.0.1")


def test_a_request_past_its_timeout_fails(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: steady(1.0, 0, 2))

    result = run_bench(at(server, num_requests=1, timeout_s=0.05))

    assert result.failed == 1
    assert result.errors == ("timed out after 0.05 s",)
    assert result.ttft == Stats(0, 0.0, 0.0, 0.0, 0.0)


def test_progress_is_reported_per_request(serve: Callable[..., Server]) -> None:
    ticks: list[tuple[int, int]] = []
    server = serve(lambda n: steady(0, 0, 2))

    run_bench(at(server), on_progress=lambda done, total: ticks.append((done, total)))

    assert ticks == [(1, 3), (2, 3), (3, 3)]


def test_request_rate_spreads_arrivals(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: steady(0, 0, 2))

    result = run_bench(at(server, num_requests=5, concurrency=5, request_rate=50))

    assert result.completed == 5
    assert result.duration_s >= 0.1 - 0.002  # the last arrival falls at 5 / 50 s


# --- the pure parts -------------------------------------------------------------------------------------


def test_sse_events_are_cut_at_blank_lines_whatever_the_reads() -> None:
    stream = b'data: {"a": 1}\n\n: ping\n\nevent: x\ndata: one\ndata:two\n\ndata: [DONE]\n\n'
    expected = ['{"a": 1}', "one\ntwo", "[DONE]"]

    whole = SSEDecoder()
    assert [*whole.feed(stream), *whole.flush()] == expected
    for size in (1, 2, 3, 7):
        decoder, got = SSEDecoder(), []
        for i in range(0, len(stream), size):
            got += decoder.feed(stream[i : i + size])
        assert [*got, *decoder.flush()] == expected, size


def test_sse_decoder_keeps_utf8_and_crlf_split_between_reads() -> None:
    decoder = SSEDecoder()
    data = "data: é\r\n\r\ndata: x\r\ndata: y\r\n\r\n".encode()
    cut = data.index("é".encode()) + 1  # between the two bytes of é
    crlf = data.index(b"x\r") + 2  # between the CR and the LF that end the line "data: x"

    assert decoder.feed(data[:cut]) == []
    assert decoder.feed(data[cut:crlf]) == ["é"]
    assert decoder.feed(data[crlf:]) == ["x\ny"]


def test_sse_decoder_flushes_an_event_the_stream_did_not_end() -> None:
    decoder = SSEDecoder()

    assert decoder.feed(b'data: {"a": 1}\n\ndata: {"b"') == ['{"a": 1}']
    assert decoder.feed(b": 2}\n") == []
    assert decoder.flush() == ['{"b": 2}']
    assert decoder.flush() == []


def test_event_data_reads_only_data_fields() -> None:
    assert event_data("data: x") == "x"
    assert event_data("data:x") == "x"
    assert event_data("data:  x") == " x"  # one space after the colon is dropped, no more
    assert event_data("id: 3\ndata: x") == "x"
    assert event_data(": comment") is None
    assert event_data("") is None


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
