"""One model across two real hosts: vLLM's own multi-node runtime (native backend) with the CPU build.

th1 is the head (rank 0, the API), th2 a headless node (rank 1): pipeline parallelism 2 across them. The
tests run in order, as a person would: plan → apply (gated on the head) → status → bench → a change and a
rollback across both → a node killed during the gate (both restored) → destroy (no vLLM left on either).
Time to ready and bench figures against one host are benchmarks/multinode.py's (docs/multinode.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from orchcli import orch
from trustbed import finish, resume, start, wait_stopped

pytestmark = pytest.mark.testbed

INVENTORY = """\
known_hosts: {known_hosts}
connect_timeout_s: 5
defaults:
  ssh_key: {key}
  interface: eth0
hosts:
  th1:
    address: {ip1}
  th2:
    address: {ip2}
"""

PLAYBOOK = """\
inventory: inventory.yml
deployments:
  - name: mn
    nodes:  # each rank on a core of its own (the test hosts share the machine's cores)
      - {{host: th1, env: {{VLLM_CPU_OMP_THREADS_BIND: "0"}}}}
      - {{host: th2, env: {{VLLM_CPU_OMP_THREADS_BIND: "1"}}}}
    model: /srv/models/tiny
    served_model_name: tiny
    accelerator: cpu
    port: 8000
    max_model_len: {max_len}
    dtype: bfloat16
    launcher: {{kind: api_server, venv: /opt/vllm}}
    env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
    readiness: {{timeout_s: {timeout}, interval_s: 2}}
"""

BENCH = ["-n", "24", "-c", "4", "--input-len", "32", "--output-len", "16"]


@pytest.fixture(scope="module")
def site(testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    hosts = testbed.up(2)
    d = tmp_path_factory.mktemp("multinode")
    (d / "inventory.yml").write_text(
        INVENTORY.format(
            known_hosts=testbed.known_hosts_path,
            key=testbed.key_path,
            ip1=hosts[0].address,
            ip2=hosts[1].address,
        )
    )
    return {"dir": d, "hosts": hosts, "testbed": testbed}


def playbook(site: dict[str, Any], name: str, *, max_len: int = 512, timeout: int = 600) -> Path:
    path: Path = site["dir"] / f"{name}.yml"
    path.write_text(PLAYBOOK.format(max_len=max_len, timeout=timeout))
    return path


def rows(pb: Path) -> dict[str, dict[str, Any]]:
    proc = orch("status", pb, "--json")
    assert proc.returncode == 0, proc.stderr
    return {row["host"]: row for row in json.loads(proc.stdout)["deployments"]}


def sh(site: dict[str, Any], i: int, command: str) -> str:
    return str(site["testbed"].ssh(site["hosts"][i], command).stdout)


def served_len(site: dict[str, Any], port: int = 8000) -> int:
    """max_model_len as the head serves it (vLLM's /v1/models)."""
    answer = httpx.get(f"http://{site['hosts'][0].address}:{port}/v1/models", timeout=10).json()
    return int(answer["data"][0]["max_model_len"])


def vllm_processes(site: dict[str, Any], i: int) -> list[str]:
    listed = sh(site, i, "ps -eo args= | grep -E '^VLLM::|vllm' | grep -v grep || true")
    return [line for line in listed.splitlines() if line.strip()]


def test_plan_says_where_each_rank_runs(site: dict[str, Any]) -> None:
    plan = orch("plan", playbook(site, "base"))
    assert plan.returncode == 2, plan.stdout
    assert "mn across 2 nodes (th1: head, rank 0 of 2; th2: rank 1 of 2, headless" in plan.stdout
    assert "backend native (vLLM 0.32.0 has --nnodes" in plan.stdout
    assert "--nnodes 2 --node-rank 1 --master-addr 10.77.1.2 --master-port 29501 --headless" in plan.stdout
    assert '+VLLM_HOST_IP="10.77.1.3"' in plan.stdout and '+GLOO_SOCKET_IFNAME="eth0"' in plan.stdout
    pre = json.loads(orch("preflight", playbook(site, "base"), "--json").stdout)["preflight"]
    said = {c["message"] for row in pre for c in row["checks"]}
    assert {"the same vLLM on every node", "the same model files on every node"} <= said
    assert "10.77.1.2:29501 reached" in said and "10.77.1.3:29501 reached" in said


def test_apply_starts_both_and_gates_on_the_head(site: dict[str, Any]) -> None:
    pb = playbook(site, "base")
    apply = orch("apply", pb, "-y")
    assert apply.returncode == 0, apply.stdout
    events = apply.stderr  # the reporter's lines: the headless node starts before the head is gated
    assert events.index("th2 mn: started: rank 1 of 2") < events.index("th1 mn: ready after")
    got = rows(pb)
    assert (got["th1"]["revision"], got["th2"]["revision"]) == (1, 1)
    assert got["th1"]["ready"] and got["th2"]["ready"]
    assert got["th1"]["node"]["rank"] == 0 and got["th2"]["node"]["rank"] == 1
    assert any(p.startswith("VLLM::Worker_PP0") for p in vllm_processes(site, 0))
    assert any(p.startswith("VLLM::Worker_PP1") for p in vllm_processes(site, 1))
    assert "headless" in sh(site, 1, "systemctl show -p ExecStart --value orch-mn.service")
    again = orch("apply", pb, "-y")
    assert again.returncode == 0 and "Nothing to do" in again.stdout


def test_bench_through_the_head(site: dict[str, Any]) -> None:
    saved = site["dir"] / "bench-mn.json"
    bench = orch("bench", playbook(site, "base"), "-d", "mn", *BENCH, "--save", saved)
    assert bench.returncode == 0, bench.stdout
    assert "mn on th1, revision 1" in bench.stdout
    assert json.loads(saved.read_text())["completed"] == 24


def test_change_and_rollback_take_both_nodes(site: dict[str, Any]) -> None:
    changed = playbook(site, "changed", max_len=384)
    plan = orch("plan", changed)
    assert plan.stdout.count("restart orch-mn.service") == 2
    apply = orch("apply", changed, "-y")
    assert apply.returncode == 0, apply.stdout
    got = rows(changed)
    assert (got["th1"]["revision"], got["th2"]["revision"]) == (2, 2) and served_len(site) == 384
    assert "--max-model-len 384" in sh(site, 1, "systemctl show -p ExecStart --value orch-mn.service")
    back = orch("rollback", changed, "-y")
    assert back.returncode == 0, back.stdout
    got = rows(changed)
    assert (got["th1"]["revision"], got["th2"]["revision"]) == (3, 3) and served_len(site) == 512
    assert "--max-model-len 512" in sh(site, 1, "systemctl show -p ExecStart --value orch-mn.service")
    assert orch("plan", playbook(site, "base")).returncode == 0


def test_a_node_killed_during_the_gate_restores_both(site: dict[str, Any]) -> None:
    new = playbook(site, "crash", max_len=448, timeout=300)
    proc = start("apply", new, "-y", env={"ORCH_FAILPOINT": "during-gate:stop"})
    wait_stopped(proc, timeout=300)
    sh(site, 1, "systemctl kill -s KILL orch-mn.service")
    resume(proc)
    rc, out, _ = finish(proc, timeout=900)
    assert rc == 1, out
    assert out.count("rolled-back") >= 2 and "rolled back to revision 3" in out
    assert "th2 restarted" in out or "th2 stopped" in out or "the unit died" in out
    got = rows(playbook(site, "base"))
    assert (got["th1"]["revision"], got["th2"]["revision"]) == (3, 3)
    assert got["th1"]["ready"] and got["th2"]["ready"] and served_len(site) == 512
    assert "--max-model-len 512" in sh(site, 1, "systemctl show -p ExecStart --value orch-mn.service")
    revs = json.loads(orch("revisions", new, "--json").stdout)["revisions"]
    assert {(r["host"], r["revision"], r["state"].split(":")[0]) for r in revs if r["revision"] == 4} == {
        ("th1", 4, "failed"),
        ("th2", 4, "failed"),
    }
    assert orch("plan", playbook(site, "base")).returncode == 0


def test_destroy_leaves_no_vllm_on_either(site: dict[str, Any]) -> None:
    gone = orch("destroy", playbook(site, "base"), "-y")
    assert gone.returncode == 0, gone.stdout
    assert vllm_processes(site, 0) == [] and vllm_processes(site, 1) == []
    assert sh(site, 1, "ls /etc/systemd/system/orch-mn.service 2>/dev/null || echo none").strip() == "none"
