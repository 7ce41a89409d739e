"""The supervisord runner against a real host: the same verbs, the same stop semantics, the real vLLM.

The host boots systemd (the test bed's hosts all do) but the deployment is handed
to Debian's supervisord, as on a container host without systemd.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from orchcli import orch

pytestmark = pytest.mark.testbed

PLAYBOOK = """\
inventory: inventory.yml
deployments:
  - name: sup
    hosts: [box]
    model: /srv/models/tiny
    served_model_name: tiny
    accelerator: cpu
    port: 8020
    max_model_len: 512
    dtype: bfloat16
    launcher: {{kind: api_server, venv: /opt/vllm}}
    env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
    args: {args}
    service: {{timeout_stop_s: 30}}
    readiness: {{timeout_s: 420, interval_s: 2}}
"""


@pytest.fixture(scope="module")
def site(testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    [h1] = testbed.up(1)
    d = tmp_path_factory.mktemp("supervisord")
    (d / "inventory.yml").write_text(
        f"known_hosts: {testbed.known_hosts_path}\nhosts:\n  box:\n    address: {h1.address}\n"
        f"    ssh_key: {testbed.key_path}\n    runner: supervisord\n"
    )
    assert testbed.ssh(h1, "supervisorctl version").returncode == 0
    return {"dir": d, "host": h1, "testbed": testbed}


def playbook(site: dict[str, Any], name: str, args: str = "{}") -> Path:
    path: Path = site["dir"] / f"{name}.yml"
    path.write_text(PLAYBOOK.format(args=args))
    return path


def status(pb: Path) -> dict[str, Any]:
    [row] = json.loads(orch("status", pb, "--json").stdout)["deployments"]
    return dict(row)


def sh(site: dict[str, Any], command: str) -> str:
    return str(site["testbed"].ssh(site["host"], command).stdout.strip())


def test_apply_change_rollback_crash_destroy(site: dict[str, Any]) -> None:
    base = playbook(site, "base")
    assert orch("plan", base).returncode == 2
    assert orch("apply", "-y", base).returncode == 0
    row = status(base)
    assert row["ready"] and row["revision"] == 1 and row["state"] == "active/running"
    assert "RUNNING" in sh(site, "supervisorctl status orch-sup")
    assert orch("plan", base).returncode == 0

    changed = playbook(site, "changed", "{--max-num-seqs: 4}")
    assert orch("apply", "-y", changed).returncode == 0
    assert "--max-num-seqs 4" in sh(site, "cat /etc/supervisor/conf.d/orch-sup.conf")
    assert status(changed)["revision"] == 2

    back = orch("rollback", "-y", changed)
    assert back.returncode == 0
    assert "--max-num-seqs" not in sh(site, "cat /etc/supervisor/conf.d/orch-sup.conf")
    assert status(base)["revision"] == 3 and orch("plan", base).returncode == 0

    logs = orch("logs", base, "-n", "400")
    assert "box sup | " in logs.stdout and "Application startup complete" in logs.stdout

    # A crash of the server: supervisord starts it again, and it becomes ready by itself.
    old_pid = sh(site, "supervisorctl pid orch-sup")
    sh(site, f"kill -9 {old_pid}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        row = status(base)
        if row["ready"] and sh(site, "supervisorctl pid orch-sup") not in ("0", old_pid):
            break
        time.sleep(5)
    assert row["ready"], row

    assert orch("destroy", "-y", base).returncode == 0
    assert "no such process" in sh(site, "supervisorctl status orch-sup || true")
    assert sh(site, "pgrep -f '[v]llm.entrypoints' || true") == ""
    assert sh(site, "ls /var/lib/orch/sup/revisions").split() == ["1", "2", "3"]
