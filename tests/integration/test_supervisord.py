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

from orchestrator.host import runners
from orchestrator.host.runners import Supervisord

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

    # The state read times the process from /proc: supervisord's uptime to the second, in finer steps.
    read = sh(site, Supervisord().state("orch-sup.service"))
    props = dict(line.split("=", 1) for line in read.splitlines() if "=" in line)
    up, whole = (
        runners._proc_up(props.get("ProcStat", "")),
        runners._seconds(props["SupervisorStatus"].split()[-1]),
    )
    assert up is not None and whole is not None and abs(up - whole) < 1.5, read
    assert Supervisord().parse_state(props).up_s == up

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

    # A crash of the server: supervisord starts it again, and it becomes ready by itself. Its engine
    # process outlives it (under PID 1, outside the new server's tree): status calls it a leftover.
    old_pid = sh(site, "supervisorctl pid orch-sup")
    sh(site, f"kill -9 {old_pid}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        row = status(base)
        if row["ready"] and sh(site, "supervisorctl pid orch-sup") not in ("0", old_pid):
            break
        time.sleep(5)
    assert row["ready"], row
    assert row["orphans"] and "processes that outlived a stop" in row["detail"], row

    # destroy --reap ends them, names them, and leaves no process of the program (by its mark).
    gone = orch("destroy", "-y", "--reap", base)
    assert gone.returncode == 0
    assert "--reap: ended the deployment's leftover processes:" in gone.stderr
    assert all(p in gone.stderr for p in row["orphans"])
    assert "no such process" in sh(site, "supervisorctl status orch-sup || true")
    assert sh(site, "pgrep -f '[v]llm.entrypoints' || true") == ""
    assert sh(site, "grep -l SUPERVISOR_PROCESS_NAME=orch-sup /proc/[0-9]*/environ 2>/dev/null || true") == ""
    assert sh(site, "ls /var/lib/orch/sup/revisions").split() == ["1", "2", "3"]


BROKEN = """\
inventory: inventory.yml
deployments:
  - name: broken
    hosts: [box]
    model: /srv/models/tiny
    accelerator: cpu
    port: 8029
    launcher: {kind: api_server, venv: /opt/no-such-venv}
    service: {start_limit_burst: 2}
"""


def test_a_start_supervisord_refuses_shows_the_programs_log(site: dict[str, Any]) -> None:
    """The launcher does not exist: `supervisorctl start` exits 7 and prints nothing on stderr; the result
    quotes the program's log, and the deployment this apply created is removed again."""
    pb = site["dir"] / "broken.yml"
    pb.write_text(BROKEN)
    apply = orch("apply", "-y", "--force", pb)
    assert apply.returncode == 1
    assert "broken: the start failed: `restart orch-broken.service` exited 7" in apply.stdout
    assert "journal of broken on box" in apply.stdout
    assert "/opt/no-such-venv/bin/python: not found" in apply.stdout  # sh's words, from the log's tail
    assert "rolled back to no deployment" in apply.stdout
    assert sh(site, "test -e /etc/supervisor/conf.d/orch-broken.conf || echo removed") == "removed"


PAIR = """\
inventory: inventory.yml
deployments:
  - name: pair-a
    hosts: [box]
    model: /srv/models/tiny
    served_model_name: tiny-a
    accelerator: cpu
    port: 8020
    max_model_len: 512
    dtype: bfloat16
    launcher: {kind: api_server, venv: /opt/vllm}
    env: {VLLM_CPU_KVCACHE_SPACE: "1"}
    readiness: {timeout_s: 420, interval_s: 2}
  - name: pair-b
    hosts: [box]
    model: /srv/models/tiny
    served_model_name: tiny-b
    accelerator: cpu
    port: 8021
    max_model_len: 512
    dtype: bfloat16
    launcher: {kind: api_server, venv: /opt/vllm}
    env: {VLLM_CPU_KVCACHE_SPACE: "1"}
    readiness: {timeout_s: 420, interval_s: 2}
"""
INTRUDER = """\
inventory: inventory.yml
deployments:
  - name: intruder
    hosts: [box]
    model: /srv/models/tiny
    accelerator: cpu
    port: 8021
    launcher: {kind: api_server, venv: /opt/vllm}
"""


def test_two_deployments_of_one_playbook_under_a_supervisord_whose_folder_is_gone(
    site: dict[str, Any],
) -> None:
    """supervisord started from a folder that was then removed (its children would start in a deleted
    working directory): both deployments of one playbook start and serve; a third on a taken port is
    told whose it is, with and without `ss`; destroying one leaves the other serving."""
    sh(
        site,
        "systemctl stop supervisor; mkdir -p /tmp/orch-gone && cd /tmp/orch-gone && "
        "supervisord -c /etc/supervisor/supervisord.conf </dev/null >/dev/null 2>&1 && cd / && rmdir /tmp/orch-gone",
    )
    pair = site["dir"] / "pair.yml"
    pair.write_text(PAIR)
    try:
        assert "(deleted)" in sh(site, "readlink /proc/$(cat /run/supervisord.pid)/cwd")
        apply = orch("apply", "-y", pair)
        assert apply.returncode == 0, apply.stdout
        rows = {
            row["deployment"]: row for row in json.loads(orch("status", pair, "--json").stdout)["deployments"]
        }
        assert rows["pair-a"]["ready"] and rows["pair-b"]["ready"]
        assert rows["pair-a"]["orphans"] == [] and rows["pair-b"]["orphans"] == []

        intruder = site["dir"] / "intruder.yml"
        intruder.write_text(INTRUDER)
        taken = "port 8021 is in use by deployment pair-b (orch, revision 1)"
        assert taken in orch("preflight", intruder).stdout
        ss = sh(site, "command -v ss")
        sh(site, f"mv {ss} {ss}.off")
        try:
            assert taken in orch("preflight", intruder).stdout  # from /proc/net/tcp
        finally:
            sh(site, f"mv {ss}.off {ss}")

        b_pid = sh(site, "supervisorctl pid orch-pair-b")
        assert orch("destroy", "-y", "-d", "pair-a", pair).returncode == 0
        assert (
            sh(site, "grep -l SUPERVISOR_PROCESS_NAME=orch-pair-a /proc/[0-9]*/environ 2>/dev/null || true")
            == ""
        )
        assert sh(site, "supervisorctl pid orch-pair-b") == b_pid and _row(pair, "pair-b")["ready"]

        assert orch("destroy", "-y", pair).returncode == 0
        assert sh(site, "pgrep -f 'served-model-name tiny-[ab]' || true") == ""
        assert (
            sh(site, "grep -l SUPERVISOR_PROCESS_NAME=orch-pair /proc/[0-9]*/environ 2>/dev/null || true")
            == ""
        )
    finally:
        orch("destroy", "-y", pair)  # after a failure: nothing of the pair left to start again below
        sh(site, "supervisorctl shutdown; sleep 3; systemctl start supervisor")
        sh(site, "for _ in $(seq 30); do supervisorctl version >/dev/null 2>&1 && break; sleep 1; done")


def _row(pb: Path, name: str) -> dict[str, Any]:
    rows = json.loads(orch("status", pb, "--json", "-d", name).stdout)["deployments"]
    return dict(rows[0])
