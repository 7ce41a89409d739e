"""A fleet rolled out behind vLLM's own router, on real hosts with the real vLLM CPU build and vllm-router.

Two replicas of the tiny model (th1, th2) behind vllm-router on th3 (ORCH_ROLLOUT_REPLICAS=N for N
replicas, the router on the host after them). While a steady stream of requests goes through the router
(`orch bench` rounds, one after another), a rolling update with ``batch: 1`` must fail no request, have
at most one replica out of the router at any time, and restart each replica exactly once, in order. A
broken revision must stop at the first batch, be restored there, leave the other replicas untouched,
and still fail no request.

With ORCH_ROLLOUT_RECORD=FILE the timeline (load rounds, router membership) is written there as JSON
(docs/rollout.md is made from it, with three replicas).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from orchcli import orch

from orchestrator.core.fleet import ROUTER_PACKAGE

pytestmark = pytest.mark.testbed

ROUTER_VERSION = "0.1.17"
WHEELS = Path(os.environ.get("ORCH_TESTBED_DIR", "/var/cache/orch-testbed")) / "router-wheels"
PORT, ROUTER_PORT = 8300, 8800
REPLICAS = tuple(f"th{i}" for i in range(1, int(os.environ.get("ORCH_ROLLOUT_REPLICAS", "2")) + 1))
ROUTER_HOST = f"th{len(REPLICAS) + 1}"
FIRST, OTHERS = REPLICAS[0], REPLICAS[1:]

PLAYBOOK = """\
inventory: inventory.yml
deployments:
  - name: fleet
    hosts: [{replicas}]
    model: /srv/models/tiny
    served_model_name: tiny
    accelerator: cpu
    port: {port}
    max_model_len: {max_len}
    dtype: bfloat16
    launcher: {{kind: api_server, venv: /opt/vllm}}
    env: {{VLLM_CPU_KVCACHE_SPACE: "1", ROLL: "{roll}"}}
    readiness: {{timeout_s: 420, interval_s: 1}}
    rollout: {{batch: 1, drain_timeout_s: 60}}
    router:
      host: {router_host}
      port: {router_port}
      version: "{version}"
      no_index: true
      find_links: [/opt/router-wheels, /opt/wheelhouse]
"""


def router_wheels() -> list[Path]:
    """vllm-router and the one dependency the hosts' wheelhouse lacks, fetched once on the controller."""
    if not list(WHEELS.glob("vllm_router-*.whl")) or not list(WHEELS.glob("orjson-*.whl")):
        WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "--python-version", "3.11", "--dest", str(WHEELS),
             f"{ROUTER_PACKAGE}=={ROUTER_VERSION}", "orjson"],
            check=True, capture_output=True,
        )  # fmt: skip
    return sorted(WHEELS.glob("*.whl"))


@pytest.fixture(scope="module")
def site(testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hosts = testbed.up(len(REPLICAS) + 1)
    router_host = hosts[-1]
    for wheel in router_wheels():
        with wheel.open("rb") as fh:
            subprocess.run(
                [*testbed.ssh_argv(), router_host.address, f"mkdir -p /opt/router-wheels && cat >/opt/router-wheels/{wheel.name}"],
                stdin=fh, check=True, capture_output=True, timeout=120,
            )  # fmt: skip
    d = tmp_path_factory.mktemp("rollout")
    lines = "\n".join(f"  {h.name}: {{address: {h.address}}}" for h in hosts)
    (d / "inventory.yml").write_text(
        f"known_hosts: {testbed.known_hosts_path}\nconnect_timeout_s: 5\ndefaults:\n  ssh_key: {testbed.key_path}\n"
        f"hosts:\n{lines}\n"
    )
    made = {"dir": d, "hosts": {h.name: h for h in hosts}, "testbed": testbed, "record": {}}
    yield made
    orch("destroy", playbook(made, "gone"), "-y")
    if os.environ.get("ORCH_ROLLOUT_RECORD"):
        Path(os.environ["ORCH_ROLLOUT_RECORD"]).write_text(json.dumps(made["record"], indent=2))


def playbook(site: dict[str, Any], roll: str, *, max_len: int = 512) -> Path:
    path: Path = site["dir"] / f"fleet-{roll}.yml"
    path.write_text(
        PLAYBOOK.format(
            port=PORT,
            router_port=ROUTER_PORT,
            roll=roll,
            max_len=max_len,
            version=ROUTER_VERSION,
            replicas=", ".join(REPLICAS),
            router_host=ROUTER_HOST,
        )
    )
    return path


def router_url(site: dict[str, Any]) -> str:
    return f"http://{site['hosts'][ROUTER_HOST].address}:{ROUTER_PORT}"


def worker(site: dict[str, Any], host: str) -> str:
    return f"http://{site['hosts'][host].address}:{PORT}"


def main_pids(site: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name in REPLICAS:
        proc = site["testbed"].ssh(
            site["hosts"][name], "systemctl show -p MainPID --value orch-fleet.service"
        )
        out[name] = proc.stdout.strip()
    return out


@dataclass
class Watch:
    """A steady stream of requests through the router (`orch bench` rounds) and the router's membership."""

    site: dict[str, Any]
    book: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)
    members: list[tuple[float, list[str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    t0: float = field(default_factory=time.time)

    def __enter__(self) -> Watch:
        self.threads = [threading.Thread(target=self._load), threading.Thread(target=self._members)]
        for t in self.threads:
            t.start()
        time.sleep(3)  # the stream is flowing before the rollout begins
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(3)  # and still flows after it ends
        self.stop.set()
        for t in self.threads:
            t.join()

    def _load(self) -> None:
        k = 0
        while not self.stop.is_set():
            save = self.site["dir"] / f"round-{self.book.stem}-{k}.json"
            proc = orch(
                "bench", self.book, "-d", "fleet-router", "-n", "12", "-c", "3", "--request-rate", "4",
                "--input-len", "8", "--output-len", "4", "--endpoint", "chat", "--save", save,
            )  # fmt: skip
            assert save.exists(), proc.stderr
            data = json.loads(save.read_text())
            self.rounds.append(
                {"start": time.time() - self.t0, "completed": data["completed"], "failed": data["failed"],
                 "errors": data["errors"], "duration_s": data["duration_s"]}
            )  # fmt: skip
            k += 1

    def _members(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                try:
                    urls = client.get(router_url(self.site) + "/list_workers").json()["urls"]
                except (httpx.HTTPError, ValueError, KeyError):
                    urls = ["?"]
                if not self.members or self.members[-1][1] != sorted(urls):
                    self.members.append((time.time() - self.t0, sorted(urls)))
                time.sleep(0.2)

    def out_of_router(self, site: dict[str, Any]) -> list[str]:
        """The replicas in the order they left the router, once per leave."""
        every = {worker(site, h): h for h in REPLICAS}
        left, before = [], set(every)
        for _, urls in self.members:
            now = set(urls) & set(every)
            left += [every[u] for u in sorted(before - now)]
            before = now
        return left


def test_first_apply_brings_up_the_replicas_then_the_router(site: dict[str, Any]) -> None:
    book = playbook(site, "1")
    proc = orch("apply", book, "-y")
    assert proc.returncode == 0, proc.stderr
    urls = httpx.get(router_url(site) + "/list_workers", timeout=10).json()["urls"]
    assert sorted(urls) == sorted(worker(site, h) for h in REPLICAS)
    answer = httpx.post(
        router_url(site) + "/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text


def test_a_rolling_update_fails_no_request_and_takes_one_replica_at_a_time(site: dict[str, Any]) -> None:
    before = main_pids(site)
    book = playbook(site, "2")
    with Watch(site, book) as watch:
        proc = orch("apply", book, "-y")
    site["record"]["update"] = {"rounds": watch.rounds, "members": watch.members, "output": proc.stdout}
    assert proc.returncode == 0, proc.stderr
    assert sum(r["failed"] for r in watch.rounds) == 0, [r["errors"] for r in watch.rounds if r["failed"]]
    assert sum(r["completed"] for r in watch.rounds) >= 24
    assert watch.out_of_router(site) == list(REPLICAS)
    everyone = {worker(site, h) for h in REPLICAS}
    assert all(len(everyone - set(urls)) <= 1 for _, urls in watch.members if urls != ["?"])
    after = main_pids(site)
    assert all(after[h] != before[h] for h in before), (before, after)
    for h in REPLICAS:
        assert (
            "ROLL=2"
            in site["testbed"]
            .ssh(
                site["hosts"][h],
                "tr '\\0' '\\n' </proc/$(systemctl show -p MainPID --value orch-fleet.service)/environ",
            )
            .stdout
        )


def test_a_broken_revision_stops_at_the_first_batch_and_fails_no_request(site: dict[str, Any]) -> None:
    before = main_pids(site)
    book = playbook(site, "3", max_len=4096)  # beyond the tiny model's 1024 positions: vLLM refuses to start
    with Watch(site, book) as watch:
        proc = orch("apply", book, "-y")
    site["record"]["broken"] = {"rounds": watch.rounds, "members": watch.members, "output": proc.stdout}
    assert proc.returncode == 1
    assert sum(r["failed"] for r in watch.rounds) == 0, [r["errors"] for r in watch.rounds if r["failed"]]
    assert watch.out_of_router(site) == [FIRST]
    after = main_pids(site)
    assert all(after[h] == before[h] for h in OTHERS), (before, after)
    urls = httpx.get(router_url(site) + "/list_workers", timeout=10).json()["urls"]
    assert sorted(urls) == sorted(worker(site, h) for h in REPLICAS)
    status = json.loads(orch("status", book, "--json").stdout)
    rows = {r["host"]: r for r in status["deployments"] if r["deployment"] == "fleet"}
    [fleet] = status["fleets"]
    assert (fleet["revisions"], fleet["in_router"]) == ({"2": list(REPLICAS)}, list(REPLICAS))
    assert {h: rows[h]["revision"] for h in REPLICAS} == dict.fromkeys(REPLICAS, 2)
    assert "not reached: the rollout of fleet stopped after batch 1 failed" in proc.stdout
