"""The readiness gate's decisions, on canned HTTP answers (httpx.MockTransport) and unit states."""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from orchestrator.host.runners import UnitState
from orchestrator.observe.health import pause, probe, wait_ready
from orchestrator.observe.probe import Endpoint, Probe

EP = Endpoint("http://h:8000", "tiny", api_key="k")
RUNNING = UnitState(active_state="active", sub_state="running", main_pid=100)
SSE = 'data: {"choices": [{"delta": {"content": "x"}}]}\n\ndata: [DONE]\n\n'


def server(
    *, health: int = 200, models: list[str] | None = None, chat: int = 200, sse: str = SSE
) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(health)
        assert request.headers["authorization"] == "Bearer k"
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": m} for m in (models or ["tiny"])]})
        body = json.loads(request.content)
        assert body["max_tokens"] == 1
        if chat != 200:
            return httpx.Response(chat, text='{"error": "EngineDeadError"}')
        if body["stream"]:
            return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"choices": [{"message": {"content": "x"}}]})

    return httpx.MockTransport(handle)


def run_probe(transport: httpx.MockTransport) -> tuple[bool, str, str]:
    with httpx.Client(transport=transport) as client:
        p = probe(client, EP)
    return p.ready, p.stage, p.detail


def test_ready_when_all_four_pass() -> None:
    assert run_probe(server()) == (True, "ready", "")


def test_health_200_is_not_enough() -> None:
    assert run_probe(server(chat=500)) == (
        False,
        "chat",
        'chat completion answered 500: {"error": "EngineDeadError"}',
    )


def test_served_name_must_be_listed() -> None:
    assert run_probe(server(models=["other"])) == (False, "models", "/v1/models lists ['other'], not 'tiny'")


def test_stream_must_end_with_done() -> None:
    assert run_probe(server(sse='data: {"choices": [{}]}\n\n')) == (
        False,
        "stream",
        "streamed chat did not end with data: [DONE]",
    )


def test_loading_server() -> None:
    assert run_probe(server(health=503)) == (False, "health", "/health answered 503")


def test_gate_stops_early_when_the_unit_crashes() -> None:
    states = iter([RUNNING, UnitState(active_state="activating", sub_state="auto-restart", n_restarts=1)])
    outcome = wait_ready(
        EP,
        timeout_s=30,
        interval_s=0.01,
        request_timeout_s=1,
        unit_state=lambda: next(states),
        baseline=RUNNING,
        transport=server(health=503),
    )
    assert not outcome.ready
    assert outcome.reason == "the unit died: unit activating/auto-restart (restarts 1)"
    assert outcome.elapsed_s < 5


def test_gate_deadline() -> None:
    outcome = wait_ready(
        EP,
        timeout_s=0.2,
        interval_s=0.05,
        request_timeout_s=1,
        unit_state=lambda: RUNNING,
        baseline=RUNNING,
        transport=server(health=503),
    )
    assert (outcome.ready, outcome.reason) == (False, "not ready after 0s: health: /health answered 503")


def test_gate_passes() -> None:
    outcome = wait_ready(
        EP,
        timeout_s=5,
        interval_s=0.01,
        request_timeout_s=1,
        unit_state=lambda: RUNNING,
        baseline=RUNNING,
        transport=server(),
    )
    assert outcome.ready


def test_gate_notices_a_new_main_pid() -> None:
    """supervisord has no restart counter: a changed main PID means the server died and came back."""
    states = iter([RUNNING, UnitState(active_state="active", sub_state="running", main_pid=222)])
    outcome = wait_ready(
        EP,
        timeout_s=30,
        interval_s=0.01,
        request_timeout_s=1,
        unit_state=lambda: next(states),
        baseline=RUNNING,
        transport=server(health=503),
    )
    assert outcome.reason == "the unit died: unit active/running (restarts 0)"


# ---------------------------------------------------------------- how often the gate polls


@pytest.mark.parametrize(
    ("stage", "wait"),
    [("connect", 0.1), ("health", 0.1), ("models", 2.0), ("chat", 2.0), ("stream", 2.0)],
)
def test_a_probe_that_sent_no_completion_is_followed_at_once(stage: str, wait: float) -> None:
    assert pause(Probe(False, stage), poll_s=0.1, interval_s=2.0) == wait


def test_the_poll_never_waits_longer_than_the_interval() -> None:
    assert pause(Probe(False, "connect"), poll_s=0.1, interval_s=0.05) == 0.05


class Counting:
    """A server whose /health answers 503 ``loading`` times before all four checks pass."""

    def __init__(self, loading: int, *, chat: int = 200, on_ready: Callable[[], None] = lambda: None) -> None:
        self.loading, self.requests = loading, {"/health": 0, "/v1/models": 0, "/v1/chat/completions": 0}
        self.ready, self.on_ready, self.lock = server(chat=chat), on_ready, threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests[request.url.path] += 1
            loading = request.url.path == "/health" and self.requests["/health"] <= self.loading
        if loading:
            return httpx.Response(503)
        self.on_ready()
        return self.ready.handle_request(request)


def test_a_loading_server_is_polled_cheaply_and_seen_as_soon_as_it_answers() -> None:
    """Twenty cheap probes, not twenty intervals: the unit's state (a round trip to the host) is read
    once, alongside the completions, not at every probe (the restart's own reading is the first)."""
    srv, reads = Counting(loading=20), []

    def unit_state() -> UnitState:
        reads.append(time.monotonic())
        return RUNNING

    outcome = wait_ready(
        EP,
        timeout_s=600,
        interval_s=60,
        request_timeout_s=1,
        unit_state=unit_state,
        baseline=RUNNING,
        transport=httpx.MockTransport(srv),
        poll_s=0.001,
    )
    assert outcome.ready
    assert outcome.elapsed_s < 60  # one interval would be 60 s
    assert srv.requests == {"/health": 21, "/v1/models": 1, "/v1/chat/completions": 2}
    assert len(reads) == 1
    assert outcome.up_s is not None and outcome.up_s <= outcome.elapsed_s


@pytest.mark.parametrize("baseline", [UnitState(), UnitState(active_state="failed", sub_state="failed")])
def test_without_a_running_baseline_the_state_is_read_before_the_first_probe(baseline: UnitState) -> None:
    """A restart that printed no state, or one that shows the unit down, is no first reading: the gate
    reads the state (with its log line) before it probes."""
    srv, order = Counting(loading=0), []

    def unit_state() -> UnitState:
        order.append(("state", sum(srv.requests.values())))
        return RUNNING

    outcome = wait_ready(
        EP,
        timeout_s=30,
        interval_s=60,
        request_timeout_s=1,
        unit_state=unit_state,
        baseline=baseline,
        transport=httpx.MockTransport(srv),
    )
    assert outcome.ready
    assert order[0] == ("state", 0) and len(order) == 2


def test_after_a_failed_completion_the_gate_waits_the_interval_or_the_deadline() -> None:
    srv = Counting(loading=0, chat=500)
    outcome = wait_ready(
        EP,
        timeout_s=1,
        interval_s=10,
        request_timeout_s=1,
        unit_state=lambda: RUNNING,
        baseline=RUNNING,
        transport=httpx.MockTransport(srv),
        poll_s=0.001,
    )
    assert not outcome.ready and outcome.reason.startswith("not ready after 1s: chat: ")
    # Plain and streamed, at the start and at the deadline (not 10 s later).
    assert srv.requests["/v1/chat/completions"] == 4
    assert outcome.elapsed_s < 5


def test_no_probe_waits_for_a_state_read() -> None:
    """The unit's state is read in the background: here every read after the first hangs until the
    server answers, which it does only after 20 more probes; a probe that waited would never get there."""
    answered = threading.Event()
    srv = Counting(loading=20, on_ready=answered.set)

    def unit_state() -> UnitState:
        if not answered.is_set() and srv.requests["/health"]:
            assert answered.wait(10), "the server was never polled again"
        return RUNNING

    outcome = wait_ready(
        EP,
        timeout_s=30,
        interval_s=0.001,
        request_timeout_s=1,
        unit_state=unit_state,
        baseline=RUNNING,
        transport=httpx.MockTransport(srv),
        poll_s=0.001,
    )
    assert outcome.ready and srv.requests["/health"] == 21


def test_the_completions_after_health_run_at_once() -> None:
    """The plain and the streamed completion are sent together: each waits here for the other."""
    both = threading.Barrier(2, timeout=5)
    ready = server()

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/chat/completions":
            try:
                both.wait()
            except threading.BrokenBarrierError:
                return httpx.Response(500, text="alone")
        return ready.handle_request(request)

    outcome = wait_ready(
        EP,
        timeout_s=30,
        interval_s=1,
        request_timeout_s=10,
        unit_state=lambda: RUNNING,
        baseline=RUNNING,
        transport=httpx.MockTransport(handle),
    )
    assert outcome.ready


def test_times_count_from_the_restart() -> None:
    restart = time.monotonic() - 5
    outcome = wait_ready(
        EP,
        timeout_s=5,
        interval_s=1,
        request_timeout_s=1,
        unit_state=lambda: RUNNING,
        baseline=RUNNING,
        transport=server(),
        since=restart,
    )
    assert outcome.ready and outcome.up_s is not None
    assert 5 <= outcome.up_s <= outcome.elapsed_s


def test_a_unit_that_restarts_while_the_completions_run_is_not_ready() -> None:
    """The state read alongside the completions decides: a server that answers is not enough."""
    restarted = UnitState(active_state="active", sub_state="running", main_pid=100, n_restarts=1)
    states = iter([restarted])
    outcome = wait_ready(
        EP,
        timeout_s=30,
        interval_s=10,
        request_timeout_s=1,
        unit_state=lambda: next(states),
        baseline=RUNNING,
        transport=server(),
    )
    assert (outcome.ready, outcome.reason) == (False, "the unit died: unit active/running (restarts 1)")


# ---------------------------------------------------------------- hostile answers (MockTransport)

Handler = Callable[[httpx.Request], httpx.Response]


def _forever(chunk: bytes, pause_s: float = 0.0) -> Iterator[bytes]:
    while True:
        if pause_s:
            time.sleep(pause_s)
        yield chunk


def _reset_after(first: bytes) -> Iterator[bytes]:
    yield first
    raise httpx.ReadError("[Errno 104] Connection reset by peer")


def _raise(exc: Exception) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        raise exc

    return handle


def _answer(status: int = 200, **kw: Any) -> Handler:
    return lambda request: httpx.Response(status, **kw)


def hostile(path: str, stream: bool | None, handler: Handler) -> httpx.MockTransport:
    """The good server, but ``path`` (plain or streamed chat, when ``stream`` says which) answers ``handler``."""
    good = server()

    def handle(request: httpx.Request) -> httpx.Response:
        is_stream = json.loads(request.content).get("stream") if request.content else None
        if request.url.path == path and (stream is None or is_stream == stream):
            return handler(request)
        return good.handle_request(request)

    return httpx.MockTransport(handle)


HTML = b"<!DOCTYPE html>\n<html><body><h1>502 Bad Gateway</h1>\n</body></html>"
CHAT = "/v1/chat/completions"
# (case, path, streamed?, answer, stage, what the one-line reason holds)
HOSTILE: list[tuple[str, str, bool | None, Handler, str, str]] = [
    ("models HTML", "/v1/models", None, _answer(content=HTML), "models", "/v1/models: not JSON: <!DOCTYPE"),
    ("models a list", "/v1/models", None, _answer(json=[1]), "models", "no list of models: [1]"),
    ("data not a list", "/v1/models", None, _answer(json={"data": "tiny"}), "models", "no list of models"),
    ("items not objects", "/v1/models", None, _answer(json={"data": ["tiny", 3]}), "models", "lists [], not"),
    ("models not UTF-8", "/v1/models", None, _answer(content=b'{"data": "\xff\xfe"}'), "models", "not UTF-8"),
    ("nested JSON", "/v1/models", None, _answer(content=b"[" * 200_000), "models", "nested too deeply"),
    ("empty body", "/v1/models", None, _answer(content=b""), "models", "not JSON: (an empty body)"),
    ("models reset", "/v1/models", None, _answer(content=_reset_after(b'{"da')), "models", "connection lost"),
    ("models huge", "/v1/models", None, _answer(content=_forever(b"x" * 65536)), "models", "larger than 1 MiB"),
    ("health trickle", "/health", None, _answer(content=_forever(b"o", 0.05)), "health", "still coming after 1 s"),
    ("health gzip lie", "/health", None, _answer(content=b"zz", headers={"content-encoding": "gzip"}), "health",
     "not decodable"),
    ("refused", "/health", None, _raise(httpx.ConnectError("[Errno 111] Connection refused")), "connect",
     "cannot connect: [Errno 111] Connection refused"),
    ("read timeout", "/v1/models", None, _raise(httpx.ReadTimeout("timed out")), "models", "no answer within"),
    ("dropped", "/health", None, _raise(httpx.RemoteProtocolError("Server disconnected")), "health",
     "broken HTTP answer: Server disconnected"),
    ("chat no choices", CHAT, False, _answer(json={"id": "x"}), "chat", "answered 200 without choices"),
    ("chat a list", CHAT, False, _answer(json=[{"choices": [1]}]), "chat", "without choices"),
    ("chat HTML", CHAT, False, _answer(content=HTML), "chat", "not JSON: <!DOCTYPE html>"),
    ("stream garbage", CHAT, True, _answer(text="data: <html>\n\ndata: [DONE]\n\n"), "stream", "not JSON: <html>"),
    ("stream list chunk", CHAT, True, _answer(text="data: [1]\n\ndata: [DONE]\n\n"), "stream", "not an object: [1]"),
    ("stream bad bytes", CHAT, True, _answer(content=b"data: \xff{\n\ndata: [DONE]\n\n"), "stream", "not JSON"),
    ("stream no DONE", CHAT, True, _answer(text="data: {}\n\n"), "stream", "did not end with data: [DONE]"),
    ("stream HTML", CHAT, True, _answer(content=HTML), "stream", "did not end with data: [DONE]"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "stream", "handler", "stage", "reason"), [c[1:] for c in HOSTILE],
                         ids=[c[0] for c in HOSTILE])  # fmt: skip
def test_hostile_answer_is_a_not_ready_probe(
    path: str, stream: bool | None, handler: Handler, stage: str, reason: str
) -> None:
    started = time.monotonic()
    with httpx.Client(transport=hostile(path, stream, handler), timeout=1) as client:
        p = probe(client, EP)
    assert (p.ready, p.stage) == (False, stage)
    assert reason in p.detail
    assert "\n" not in p.detail and len(p.detail) < 300
    assert time.monotonic() - started < 3


def test_a_non_ascii_api_key_is_a_reason_that_does_not_quote_it() -> None:
    with httpx.Client(transport=server()) as client:
        p = probe(client, Endpoint("http://h:8000", "tiny", api_key="sk-é-secret"))
    assert (p.ready, p.stage) == (False, "models")
    assert p.detail == "/v1/models: a header is not ASCII (the API key?)"


def test_gate_keeps_polling_an_html_server_until_its_deadline() -> None:
    outcome = wait_ready(
        EP,
        timeout_s=0.3,
        interval_s=0.05,
        request_timeout_s=1,
        unit_state=lambda: RUNNING,
        baseline=RUNNING,
        transport=hostile("/v1/models", None, _answer(content=HTML)),
    )
    assert not outcome.ready
    assert outcome.reason.startswith("not ready after 0s: models: /v1/models: not JSON: <!DOCTYPE html>")


# ---------------------------------------------------------------- hostile answers on a real socket


class _Raw(socketserver.BaseRequestHandler):
    """Reads one request, then misbehaves as the server's ``mode`` says."""

    server: _RawServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head and (data := sock.recv(65536)):
            head += data
        mode = self.server.mode
        with contextlib.suppress(OSError):
            if mode == "html":
                # It answers one request per connection, and says so: a client that reused the connection
                # after the close would race it (httpx then reports the server disconnected).
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(HTML)
                )
                sock.sendall(HTML)
            elif mode == "close":
                pass  # no answer at all
            elif mode == "reset":
                sock.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"data": [')
                time.sleep(0.05)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:  # trickle or huge: a body that never ends
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
                chunk, pause = (b"x", 0.05) if mode == "trickle" else (b"x" * 65536, 0.0)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    sock.sendall(chunk)
                    time.sleep(pause)


class _RawServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    mode = "html"


@pytest.fixture
def raw_server() -> Iterator[_RawServer]:
    srv = _RawServer(("127.0.0.1", 0), _Raw)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize(
    ("mode", "stage", "reasons"),
    [
        ("html", "models", ["/v1/models: not JSON: <!DOCTYPE html> <html><body><h1>502 Bad Gateway</h1>"]),
        ("close", "health", ["/health: broken HTTP answer: Server disconnected without sending a response."]),
        ("reset", "health", ["/health: connection lost mid-answer", "/health: broken HTTP answer"]),
        ("trickle", "health", ["/health: answer still coming after 1 s: xxx"]),
        ("huge", "health", ["/health: answer larger than 1 MiB: xxx"]),
    ],
)
def test_real_socket_misbehaviour_is_one_line(
    raw_server: _RawServer, mode: str, stage: str, reasons: list[str]
) -> None:
    raw_server.mode = mode
    ep = Endpoint(f"http://127.0.0.1:{raw_server.server_address[1]}", "tiny")
    started = time.monotonic()
    with httpx.Client(timeout=1) as client:
        p = probe(client, ep)
    assert (p.ready, p.stage) == (False, stage)
    assert any(p.detail.startswith(r) for r in reasons), p.detail
    assert "\n" not in p.detail and len(p.detail) < 300
    assert time.monotonic() - started < 3


def test_real_socket_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the port refuses
        with httpx.Client(timeout=1) as client:
            p = probe(client, Endpoint(f"http://127.0.0.1:{port}", "tiny"))
    assert (p.ready, p.stage) == (False, "connect")
    assert p.detail == "/health: cannot connect: [Errno 111] Connection refused"
