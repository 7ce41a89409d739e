"""Rollouts as data: batches, waves, the stop rule, and the router's part, on plain values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from orchestrator import rollout, waves
from orchestrator.core import render
from orchestrator.core.fleet import Rollout, RouterSpec, worker_url
from orchestrator.core.layout import Layout
from orchestrator.core.model import Deployment, Host
from orchestrator.core.render import Desired, DesiredFile
from orchestrator.facts import DeploymentFacts
from orchestrator.hostrun import QuietReporter, Result
from orchestrator.observe.router import Drained, Router, drain
from orchestrator.plan import TargetPlan, plan_target


def dep(name: str, hosts: list[str], **extra: Any) -> Deployment:
    return Deployment(name=name, hosts=tuple(hosts), model="/m", accelerator="cpu", **extra)


def target(host: str, name: str, *, changed: bool = True, revision: int = 3) -> TargetPlan:
    layout = Layout("system", name)
    files = (DesiredFile("unit", layout.unit_path, "[Service]\n", 0o644),)
    facts = DeploymentFacts(current_revision=revision)
    if not changed:
        return TargetPlan(host, name, Desired(layout, f"orch-{name}.service", files), facts, (), ())
    return plan_target(
        host=host, deployment=name, desired=Desired(layout, f"orch-{name}.service", files), facts=facts
    )


@pytest.mark.parametrize(
    ("batch", "n", "sizes"),
    [(1, 3, [1, 1, 1]), (2, 5, [2, 2, 1]), ("100%", 4, [4]), ("25%", 8, [2, 2, 2, 2]), ("10%", 3, [1, 1, 1])],
)
def test_batches_keep_the_hosts_order(batch: int | str, n: int, sizes: list[int]) -> None:
    hosts = [f"h{i}" for i in range(n)]
    got = Rollout(batch=batch).batches(hosts)
    assert [len(b) for b in got] == sizes and [h for b in got for h in b] == hosts


def test_max_failed_counts_or_takes_a_share() -> None:
    assert Rollout(max_failed=2).allowed_failures(10) == 2
    assert Rollout(max_failed="25%").allowed_failures(10) == 2
    assert Rollout().allowed_failures(10) == 0


@pytest.mark.parametrize(
    "bad", [{"batch": 0}, {"batch": "0%"}, {"batch": "150%"}, {"max_failed": -1}, {"pause_s": -1.0}]
)
def test_a_bad_rollout_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Rollout(**bad)


def test_waves_take_each_deployment_in_its_batches_and_the_router_last() -> None:
    fleet = dep("tiny", ["a", "b", "c"], rollout=Rollout(batch=1), router=RouterSpec(host="lb"))
    other = dep("big", ["a", "b"])  # no rollout: one batch
    router = dep("tiny-router", ["lb"])
    deployments = {d.name: d for d in (fleet, other, router)}
    plans = [
        target("a", "tiny"),
        target("b", "tiny"),
        target("c", "tiny"),
        target("a", "big"),
        target("b", "big"),
    ]
    plans += [target("lb", "tiny-router")]
    got = [[(p.host, p.deployment) for p in w] for w in waves.waves(plans, deployments)]
    assert got == [
        [("a", "tiny"), ("a", "big"), ("b", "big")],
        [("b", "tiny")],
        [("c", "tiny")],
        [("lb", "tiny-router")],
    ]


def test_targets_with_nothing_to_do_take_no_batch_of_their_own() -> None:
    fleet = dep("tiny", ["a", "b", "c"], rollout=Rollout(batch=1))
    plans = [target("a", "tiny", changed=False), target("b", "tiny"), target("c", "tiny")]
    got = [[p.host for p in w] for w in waves.waves(plans, {"tiny": fleet})]
    assert got == [["a", "b"], ["c"]]


class Executed:
    """Stands in for converge.execute: records the order and fails the hosts it is told to."""

    def __init__(self, failing: set[str]) -> None:
        self.order: list[str] = []
        self.failing = failing

    def __call__(self, run: Any, p: TargetPlan, reporter: Any, *, gate: bool, restore: bool) -> Result:
        self.order.append(p.host)
        if p.host in self.failing:
            return Result(p.host, p.deployment, "rolled-back", "gate failed", revision=3)
        return Result(p.host, p.deployment, "applied", revision=4)


def rolled(
    monkeypatch: pytest.MonkeyPatch, spec: Rollout, failing: set[str], n: int = 4
) -> tuple[list[Result], Executed, list[float]]:
    hosts = [f"h{i}" for i in range(1, n + 1)]
    fake = Executed(failing)
    monkeypatch.setattr(rollout, "execute", fake)
    slept: list[float] = []
    results = rollout.run(
        {h: None for h in hosts},  # type: ignore[misc]
        [target(h, "tiny") for h in hosts],
        deployments={"tiny": dep("tiny", hosts, rollout=spec)},
        hosts={h: Host(address=f"10.0.0.{i}") for i, h in enumerate(hosts, 1)},
        reporter=QuietReporter(),
        gate=True,
        restore=True,
        sleep=slept.append,
    )
    return results, fake, slept


def test_a_failed_batch_stops_the_rollout_and_the_rest_stay_untouched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    results, fake, _ = rolled(monkeypatch, Rollout(batch=1), failing={"h2"})
    assert fake.order == ["h1", "h2"]
    assert [(r.host, r.status, r.revision) for r in results] == [
        ("h1", "applied", 4),
        ("h2", "rolled-back", 3),
        ("h3", "skipped", 3),
        ("h4", "skipped", 3),
    ]
    assert results[2].message == "not reached: the rollout of tiny stopped after batch 2 failed"


def test_max_failed_lets_the_rollout_go_on_until_it_is_exceeded(monkeypatch: pytest.MonkeyPatch) -> None:
    results, fake, _ = rolled(monkeypatch, Rollout(batch=1, max_failed=1), failing={"h1", "h3"})
    assert fake.order == ["h1", "h2", "h3"]
    assert [r.status for r in results] == ["rolled-back", "applied", "rolled-back", "skipped"]


def test_pause_comes_between_batches_only(monkeypatch: pytest.MonkeyPatch) -> None:
    _, fake, slept = rolled(monkeypatch, Rollout(batch=2, pause_s=1.5), failing=set())
    assert fake.order == ["h1", "h2", "h3", "h4"] and slept == [1.5]


def test_without_rollout_settings_every_host_goes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    results, fake, slept = rolled(monkeypatch, Rollout(), failing={"h1"})
    assert sorted(fake.order) == ["h1", "h2", "h3", "h4"] and slept == []
    assert [r.status for r in results] == ["rolled-back", "applied", "applied", "applied"]


class FakeRouter:
    """vllm-router's worker API on httpx's MockTransport, with the replica's /metrics beside it."""

    def __init__(self, workers: list[str], running: list[int], load: list[int] | None = None) -> None:
        self.workers, self.running, self.calls = list(workers), list(running), []  # type: list[str]
        self.load = load  # /load's answers; None: a vLLM without /load

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, url = request.url.path, request.url.params.get("url", "")
        self.calls.append(f"{request.method} {path} {url}".strip())
        if path == "/list_workers":
            return httpx.Response(200, json={"urls": self.workers})
        if path == "/remove_worker":
            self.workers.remove(url)
            return httpx.Response(200, text=f"Successfully removed worker: {url}")
        if path == "/add_worker":
            self.workers.append(url)
            return httpx.Response(200, text=f"Successfully added worker: {url}")
        if path == "/metrics":
            n = self.running.pop(0) if self.running else 0
            return httpx.Response(
                200,
                text=f'vllm:num_requests_running{{model_name="m"}} {n}\nvllm:num_requests_waiting{{model_name="m"}} 0\n',
            )
        if path == "/load" and self.load is not None:
            return httpx.Response(200, json={"server_load": self.load.pop(0) if self.load else 0})
        return httpx.Response(404)


def test_the_router_api_names_workers_by_their_url() -> None:
    fake = FakeRouter([worker_url("10.0.0.1", 8000), worker_url("10.0.0.2", 8000)], [])
    r = Router("http://lb:8800", transport=httpx.MockTransport(fake))
    r.remove("http://10.0.0.2:8000")
    assert r.workers() == ["http://10.0.0.1:8000"]
    r.add("http://10.0.0.2:8000")
    assert fake.calls == [
        "POST /remove_worker http://10.0.0.2:8000",
        "GET /list_workers",
        "POST /add_worker http://10.0.0.2:8000",
    ]


def drained(fake: Callable[[httpx.Request], httpx.Response], timeout_s: float = 60) -> tuple[Drained, float]:
    now = [0.0]
    got = drain(
        "http://10.0.0.1:8000",
        timeout_s=timeout_s,
        transport=httpx.MockTransport(fake),
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    return got, now[0]


def test_drain_waits_until_the_engine_has_had_no_request_for_a_second() -> None:
    got, at = drained(FakeRouter([], running=[3, 1, 0, 2, 0, 0, 0, 0, 0, 0]))
    assert got.done and at == 2.0  # 2 requests at 0.75 s; quiet from the read at 1.0 s to the one at 2.0 s


def test_drain_counts_requests_the_handlers_hold_before_the_engine_sees_them() -> None:
    fake = FakeRouter([], running=[0] * 20, load=[1, 1, 1, 0, 0, 0, 0, 0])
    got, at = drained(fake)
    assert got.done and at == 1.75
    assert fake.calls[:2] == ["GET /metrics", "GET /load"]


def test_drain_reads_the_engine_alone_where_load_is_not_served_or_garbage() -> None:
    got, at = drained(FakeRouter([], running=[2, 0, 0, 0, 0, 0]))
    assert got.done and at == 1.25

    def html(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/load":
            return httpx.Response(200, text="<html>")
        return FakeRouter([], running=[0])(request)

    got, at = drained(html)
    assert got.done and at == 1.0


def test_drain_gives_up_at_its_deadline_saying_what_is_left() -> None:
    got, _ = drained(FakeRouter([], running=[5] * 100, load=[6] * 100), timeout_s=2)
    assert (got.done, got.left) == (False, 6) and got.waited_s >= 2


def test_a_router_that_answers_garbage_is_one_error() -> None:
    r = Router(
        "http://lb:8800", transport=httpx.MockTransport(lambda req: httpx.Response(200, text="<html>"))
    )
    with pytest.raises(Exception, match=r"^http://lb:8800/list_workers: not JSON"):
        r.workers()


def test_the_plan_says_how_a_fleet_rolls_out() -> None:
    fleet = dep("tiny", ["a", "b", "c"], rollout=Rollout(batch=2), router=RouterSpec(host="lb"))
    alone = dep("big", ["a", "b"])
    plans = [target("a", "tiny"), target("b", "tiny"), target("c", "tiny"), target("a", "big")]
    assert waves.describe(plans, {"tiny": fleet, "big": alone}) == [
        "rollout of tiny: 2 batch(es) [a, b] → [c], each gated before the next, stops after 1 failed host(s); "
        "behind tiny-router: each replica leaves it and drains before it stops"
    ]


@pytest.mark.parametrize("value", ["--port=9999", "-x", "--worker-urls"])
def test_a_router_arg_whose_value_looks_like_a_flag_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="looks like a flag"):
        RouterSpec(host="lb", args={"--retry-max-retries": value})


def test_a_replica_behind_a_router_counts_its_requests_for_the_drain() -> None:
    behind = dep("tiny", ["a", "b"], router=RouterSpec(host="lb"))
    alone = dep("big", ["a", "b"])
    off = dep("tiny", ["a"], router=RouterSpec(host="lb"), args={"--enable-server-load-tracking": False})
    assert "--enable-server-load-tracking" in render.argv(behind)
    assert "--enable-server-load-tracking" not in render.argv(alone)
    assert "--enable-server-load-tracking" not in render.argv(off)


def test_a_change_without_a_router_loads_no_router_client() -> None:
    """The router's client brings prometheus_client (1.3 MiB): a deployment without a router never needs it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from orchestrator import rollout\n"
        "from orchestrator.core.layout import Layout\n"
        "from orchestrator.core.model import Deployment, Host\n"
        "from orchestrator.core.render import Desired, DesiredFile\n"
        "from orchestrator.facts import DeploymentFacts\n"
        "from orchestrator.plan import plan_target\n"
        "layout = Layout('system', 'a')\n"
        "files = (DesiredFile('unit', layout.unit_path, '[Service]', 0o644),)\n"
        "desired = Desired(layout, 'orch-a.service', files)\n"
        "p = plan_target(host='h1', deployment='a', desired=desired, facts=DeploymentFacts())\n"
        "d = Deployment(name='a', hosts=('h1',), model='/m', accelerator='cpu')\n"
        "assert rollout.fences([p], {'a': d}, {'h1': Host(address='h')}) == {}\n"
        "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'orchestrator.observe.router', 'httpx'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
