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
from orchestrator.observe.health import Endpoint, probe, wait_ready

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
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(HTML)
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
