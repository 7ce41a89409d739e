"""The readiness gate's decisions, on canned HTTP answers (httpx.MockTransport) and unit states."""

from __future__ import annotations

import json

import httpx

from orchestrator.health import Endpoint, probe, wait_ready
from orchestrator.runners import UnitState

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
