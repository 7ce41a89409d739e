"""Preflight failures that are real, and the observe verbs (logs, metrics, bench, monitoring), on the test bed.

A real process holds the port; the model path is really absent; the server that
logs, metrics and bench read is the real vLLM CPU build.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from orchcli import orch

pytestmark = pytest.mark.testbed

PLAYBOOK = """\
inventory: inventory.yml
deployments:
  - name: obs
    hosts: [th1]
    model: {model}
    served_model_name: tiny
    accelerator: cpu
    port: {port}
    max_model_len: 512
    dtype: bfloat16
    launcher: {{kind: api_server, venv: /opt/vllm}}
    env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
    readiness: {{timeout_s: 420, interval_s: 2}}
"""


@pytest.fixture(scope="module")
def site(testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    [h1] = testbed.up(1)
    d = tmp_path_factory.mktemp("observe")
    (d / "inventory.yml").write_text(
        f"known_hosts: {testbed.known_hosts_path}\nhosts:\n  th1:\n    address: {h1.address}\n"
        f"    ssh_key: {testbed.key_path}\n"
    )
    return {"dir": d, "host": h1, "testbed": testbed}


def playbook(site: dict[str, Any], name: str, *, model: str = "/srv/models/tiny", port: int = 8010) -> Path:
    path: Path = site["dir"] / f"{name}.yml"
    path.write_text(PLAYBOOK.format(model=model, port=port))
    return path


def checks(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    [entry] = json.loads(proc.stdout)["preflight"]
    return {c["name"]: c for c in entry["checks"]}


def test_preflight_sees_a_real_process_on_the_port(site: dict[str, Any]) -> None:
    tb, host = site["testbed"], site["host"]
    tb.ssh(host, "systemd-run --unit squatter python3 -m http.server 8011")
    try:
        proc = orch("preflight", playbook(site, "port", port=8011), "--json")
        apply = orch("apply", "-y", playbook(site, "port", port=8011))
    finally:
        tb.ssh(host, "systemctl stop squatter")
    assert proc.returncode == 1
    port = checks(proc)["port"]
    assert port["severity"] == "error" and port["message"].startswith("port 8011 is in use by pid ")
    assert apply.returncode == 1 and "preflight failed" in apply.stderr
    assert tb.ssh(host, "test -e /etc/systemd/system/orch-obs.service; echo $?").stdout.strip() == "1"


def test_preflight_sees_a_missing_model(site: dict[str, Any]) -> None:
    proc = orch("preflight", playbook(site, "nomodel", model="/srv/models/absent"), "--json")
    assert proc.returncode == 1
    assert checks(proc)["model"]["message"] == "model path /srv/models/absent does not exist on the host"


def test_observe_a_running_deployment(site: dict[str, Any]) -> None:
    pb = playbook(site, "obs")
    assert orch("preflight", pb).returncode == 0
    assert orch("apply", "-y", pb).returncode == 0

    logs = orch("logs", pb, "-n", "200")
    assert logs.returncode == 0
    assert "th1 obs | " in logs.stdout and "Application startup complete" in logs.stdout

    bench_file = site["dir"] / "bench.json"
    bench = orch(
        "bench", pb, "-n", "12", "-c", "3", "--input-len", "32", "--output-len", "16", "--save", bench_file
    )
    assert bench.returncode == 0
    result = json.loads(bench_file.read_text())
    # orch tags with orchestrator.__version__; the installed distribution's metadata is an independent source.
    assert result["tags"] == {
        "deployment": "obs",
        "host": "th1",
        "revision": "1",
        "orch_version": importlib.metadata.version("orch"),
    }
    assert result["completed"] == 12 and result["failed"] == 0
    assert result["output_throughput"] > 0

    metrics = json.loads(orch("metrics", pb, "--json").stdout)["metrics"][0]
    assert metrics["found_names"]["kv_cache_usage"] == "vllm:kv_cache_usage_perc"
    assert metrics["request_success"]["length"] >= 12  # bench's requests, ignore_eos: all stop on length
    assert metrics["ttft"]["count"] >= 12

    out = site["dir"] / "monitoring"
    assert orch("monitoring", pb, "--out", out).returncode == 0
    targets = json.loads((out / "targets.json").read_text())
    assert targets[0]["labels"]["revision"] == "1"
    if shutil.which("promtool"):
        check = subprocess.run(
            ["promtool", "check", "config", str(out / "prometheus.yml")], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr

    assert orch("destroy", "-y", pb).returncode == 0
