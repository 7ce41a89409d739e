"""Models downloaded on the host from a hub, with the hubs' real client libraries.

One test host runs a stand-in hub (tests/hubstub.py: the Hugging Face and ModelScope
file APIs over a folder, a token required); the other fetches the tiny Qwen2 from it
with huggingface_hub and modelscope in the vLLM venv, pointed there by HF_ENDPOINT and
MODELSCOPE_ENDPOINT, the token a secret from the controller's environment. vLLM then
serves each downloaded copy. No test reaches beyond the test bed.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from orchcli import orch

pytestmark = pytest.mark.testbed

TOKEN = "hub-token-8c1f4e0b7d"
REPO = "orch-test/tiny-qwen2"
HUB_PORT = 8900
STUB = Path(__file__).resolve().parent.parent / "hubstub.py"

PLAYBOOK = """\
inventory: inventory.yml
deployments:
  - name: from-hf
    hosts: [th1]
    model: {{source: hf, id: {repo}, revision: main, dest: /srv/models/from-hf}}
    served_model_name: tiny
    accelerator: cpu
    port: 8040
    max_model_len: 512
    dtype: bfloat16
    launcher: {{kind: api_server, venv: /opt/vllm}}
    env: {{HF_ENDPOINT: "{hub}", VLLM_CPU_KVCACHE_SPACE: "1"}}
    secrets: {{HF_TOKEN: {{env: ORCH_TEST_HUB_TOKEN}}}}
    readiness: {{timeout_s: 420, interval_s: 2}}
  - name: from-ms
    hosts: [th1]
    model: {{source: modelscope, id: {repo}, dest: /srv/models/from-ms}}
    served_model_name: tiny
    accelerator: cpu
    port: 8041
    max_model_len: 512
    dtype: bfloat16
    launcher: {{kind: api_server, venv: /opt/vllm}}
    env: {{MODELSCOPE_ENDPOINT: "{hub}", VLLM_CPU_KVCACHE_SPACE: "1"}}
    secrets: {{MODELSCOPE_API_TOKEN: {{env: ORCH_TEST_HUB_TOKEN}}}}
    readiness: {{timeout_s: 420, interval_s: 2}}
"""


@pytest.fixture(scope="module")
def site(testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    h1, h2 = testbed.up(2)
    d = tmp_path_factory.mktemp("hub")
    (d / "inventory.yml").write_text(
        f"known_hosts: {testbed.known_hosts_path}\ndefaults:\n  ssh_key: {testbed.key_path}\nhosts:\n"
        f"  th1:\n    address: {h1.address}\n"
    )
    hub = f"http://{h2.address}:{HUB_PORT}"
    (d / "pb.yml").write_text(PLAYBOOK.format(repo=REPO, hub=hub))
    _start_hub(testbed, h2)
    return {"dir": d, "pb": d / "pb.yml", "fetcher": h1, "hub": h2, "testbed": testbed}


def _start_hub(tb: Any, host: Any) -> None:
    """Copy the stand-in onto the hub host, give it the tiny model as a repo, and start it there."""
    put = subprocess.run(
        [*tb.ssh_argv(), host.address, "cat > /srv/hubstub.py"],
        input=STUB.read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert put.returncode == 0, put.stderr
    start = tb.ssh(
        host,
        f"mkdir -p /srv/hub/{REPO.split('/')[0]} && cp -r /srv/models/tiny /srv/hub/{REPO} && "
        f"(setsid nohup python3 /srv/hubstub.py --root /srv/hub --bind 0.0.0.0 --port {HUB_PORT} "
        f"--token {TOKEN} --log /srv/hub.log >/srv/hubstub.out 2>&1 </dev/null &)",
    )
    assert start.returncode == 0, start.stderr
    deadline = time.monotonic() + 30
    while tb.ssh(host, f"curl -s -o /dev/null 127.0.0.1:{HUB_PORT}/").returncode != 0:
        assert time.monotonic() < deadline, tb.ssh(host, "cat /srv/hubstub.out").stdout
        time.sleep(0.5)


def hub_log(site: dict[str, Any]) -> list[dict[str, Any]]:
    out = site["testbed"].ssh(site["hub"], "cat /srv/hub.log").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def downloads(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """File bodies the hub sent (HF resolve and ModelScope repo?FilePath GETs)."""
    return [
        e
        for e in entries
        if e["method"] == "GET"
        and e["status"] in (200, 206)
        and ("/resolve/" in e["path"] or "FilePath=" in e["path"])
    ]


def run(site: dict[str, Any], *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    proc = orch(*args, env={"ORCH_TEST_HUB_TOKEN": token})
    assert token not in proc.stdout + proc.stderr, f"the token leaked in `orch {' '.join(args)}`"
    return proc


def sha256(site: dict[str, Any], path: str) -> str:
    return str(site["testbed"].ssh(site["fetcher"], f"sha256sum {path} | cut -d' ' -f1").stdout.strip())


def test_fetch_serve_skip_and_refetch_a_truncated_file(site: dict[str, Any]) -> None:
    pb, tb, h1 = site["pb"], site["testbed"], site["fetcher"]
    size = int(tb.ssh(h1, "du -cb /srv/models/tiny/* | tail -1 | cut -f1").stdout.strip() or 0)
    plan = run(site, "plan", pb)
    assert plan.returncode == 2, plan.stderr
    for source, dest in (("hf", "from-hf"), ("modelscope", "from-ms")):
        fetch = next(line for line in plan.stdout.splitlines() if f"fetch {source}:{REPO}" in line)
        assert f"into /srv/models/{dest}" in fetch and "not fetched yet" in fetch
        assert f"{size / 2**20:.1f} MiB" in fetch, (fetch, size)

    apply = run(site, "apply", "-y", pb)
    assert apply.returncode == 0, apply.stdout + apply.stderr
    rows = {r["deployment"]: r for r in json.loads(run(site, "status", pb, "--json").stdout)["deployments"]}
    assert rows["from-hf"]["ready"] and rows["from-ms"]["ready"]
    weights = "model.safetensors"
    original = sha256(site, f"/srv/models/tiny/{weights}")
    assert sha256(site, f"/srv/models/from-hf/{weights}") == original
    assert sha256(site, f"/srv/models/from-ms/{weights}") == original
    entries = hub_log(site)
    assert {e["api"] for e in downloads(entries)} == {"hf", "ms"}
    fetches = [e for e in entries if e["path"] != "/"]  # "/" is the fixture's own readiness poll
    assert fetches and all(e["auth_ok"] for e in fetches), "every request to the hub carried the token"

    # Converged: plan says nothing, and a second apply downloads nothing.
    again = run(site, "plan", pb)
    assert again.returncode == 0 and "fetch" not in again.stdout
    before = len(downloads(hub_log(site)))
    assert "Nothing to do" in run(site, "apply", "-y", pb).stdout
    assert len(downloads(hub_log(site))) == before

    # A damaged file on the host: plan names it, apply fetches again and restarts that deployment only.
    tb.ssh(h1, f"truncate -s 1000 /srv/models/from-hf/{weights}")
    plan = run(site, "plan", pb)
    assert plan.returncode == 2
    assert f"1 file(s) missing or truncated, e.g. {weights}" in plan.stdout
    assert "restart orch-from-hf.service (changed: model)" in plan.stdout
    assert "restart orch-from-ms.service" not in plan.stdout and "Plan: 1 of 2 to change" in plan.stdout
    assert run(site, "apply", "-y", pb).returncode == 0
    assert sha256(site, f"/srv/models/from-hf/{weights}") == original
    assert run(site, "plan", pb).returncode == 0


def test_hub_errors_are_one_line_and_change_nothing(site: dict[str, Any]) -> None:
    pb, tb, h1 = site["pb"], site["testbed"], site["fetcher"]
    tb.ssh(h1, "rm -rf /srv/models/from-hf")
    wrong = run(site, "plan", pb, token="not-the-token")
    assert wrong.returncode == 1
    [line] = [x for x in wrong.stdout.splitlines() if x.startswith("✗ th1 from-hf")]
    assert f"model hf:{REPO}@main" in line and "401" in line, line
    applied = run(site, "apply", "-y", pb, token="not-the-token")
    assert applied.returncode == 1
    assert tb.ssh(h1, "test -e /srv/models/from-hf").returncode != 0, "nothing fetched with a refused token"

    missing = site["dir"] / "missing.yml"
    missing.write_text(
        pb.read_text().replace(f"id: {REPO}, revision: main", "id: orch-test/nope, revision: main")
    )
    proc = run(site, "plan", missing)
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("✗ th1 from-hf")]
    assert proc.returncode == 1 and "orch-test/nope" in line and "not found" in line.lower(), line
    assert "Traceback" not in proc.stdout + proc.stderr
    assert run(site, "apply", "-y", pb).returncode == 0  # the right token: fetched again, served
    assert run(site, "destroy", "-y", pb).returncode == 0
