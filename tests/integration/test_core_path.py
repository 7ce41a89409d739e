"""The core path against real hosts: OpenSSH, systemd as PID 1, and the real vLLM CPU server.

One deployment with tensor parallelism 2 as root (system unit), one as the
unprivileged ``deploy`` user (``systemctl --user``). The tests run in order and
build on each other, as a person would use orch: plan → apply → no-op →
change → rollback → a broken revision rolled back → a host unreachable →
the ``serve`` launcher (``vllm serve``) → destroy.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from orchcli import orch

pytestmark = pytest.mark.testbed

ROOT = Path(__file__).resolve().parents[2]
IDLE_UNIT = ROOT / "benchmarks" / "templates" / "idle.service.j2"
VLLM_CONSOLE = ROOT / "tests" / "testbed" / "vllm_console.py"


INVENTORY = """\
known_hosts: {known_hosts}
connect_timeout_s: 5
defaults:
  ssh_key: {key}
hosts:
  th1:
    address: {ip1}
  th2-deploy:
    address: {ip2}
    user: deploy
    scope: user
"""

PLAYBOOK = """\
inventory: inventory.yml
deployments:
  - name: tp2
    hosts: [th1]
    model: /srv/models/tiny
    served_model_name: tiny
    accelerator: cpu
    tensor_parallel_size: 2
    port: 8000
    max_model_len: 512
    dtype: bfloat16
    launcher: {{kind: api_server, venv: /opt/vllm}}
    env: {{VLLM_CPU_KVCACHE_SPACE: "1", VLLM_CPU_OMP_THREADS_BIND: "0|1"}}
    readiness: {{timeout_s: 420, interval_s: 2}}
  - name: solo
    hosts: [th2-deploy]
    model: /srv/models/tiny
    served_model_name: tiny-solo
    accelerator: cpu
    port: 8001
    max_model_len: {solo_len}
    dtype: bfloat16
    launcher: {{kind: {solo_launcher}, venv: /opt/vllm}}
    env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
    args: {solo_args}
    api_key: {{env: ORCH_TEST_API_KEY}}
    readiness: {{timeout_s: 420, interval_s: 2}}
"""

SECRET = "sk-orch-test-7f3a9c"
ENV = {"ORCH_TEST_API_KEY": SECRET}


@pytest.fixture(scope="module")
def site(testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    hosts = testbed.up(3)
    d = tmp_path_factory.mktemp("site")
    (d / "inventory.yml").write_text(
        INVENTORY.format(
            known_hosts=testbed.known_hosts_path,
            key=testbed.key_path,
            ip1=hosts[0].address,
            ip2=hosts[1].address,
        )
    )
    return {"dir": d, "hosts": hosts, "testbed": testbed}


def playbook_text(*, solo_len: int = 512, solo_args: str = "{}", solo_launcher: str = "api_server") -> str:
    return PLAYBOOK.format(solo_len=solo_len, solo_args=solo_args, solo_launcher=solo_launcher)


def playbook(site: dict[str, Any], name: str, **solo: Any) -> Path:
    path: Path = site["dir"] / f"{name}.yml"
    path.write_text(playbook_text(**solo))
    return path


def status(pb: Path) -> dict[str, dict[str, Any]]:
    proc = orch("status", pb, "--json", env=ENV)
    assert proc.returncode == 0, proc.stderr
    return {row["deployment"]: row for row in json.loads(proc.stdout)["deployments"]}


def main_pid(site: dict[str, Any], deployment: str) -> str:
    tb, (h1, h2, _) = site["testbed"], site["hosts"]
    if deployment == "tp2":
        out = tb.ssh(h1, "systemctl show -p MainPID --value orch-tp2.service")
    else:
        out = tb.ssh(h2, "systemctl --user show -p MainPID --value orch-solo.service", user="deploy")
    return str(out.stdout.strip())


def command_line(site: dict[str, Any], deployment: str) -> list[str]:
    """The arguments of the deployment's main process, as the host's kernel has them."""
    tb, (h1, h2, _) = site["testbed"], site["hosts"]
    pid = main_pid(site, deployment)
    assert pid.isdigit() and pid != "0", f"{deployment} has no main process"
    out = tb.ssh(h1 if deployment == "tp2" else h2, f"tr '\\0' '\\n' </proc/{pid}/cmdline")
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def summary(stdout: str) -> dict[tuple[str, str], tuple[str, str]]:
    """The result table of apply: (host, deployment) → (status, revision).

    In a pipe the table is plain: its title, a header line, then one line a row, cells two spaces apart.
    """
    lines = stdout.splitlines()
    rows = {}
    for line in itertools.takewhile(
        lambda x: x and not x.startswith("──"), lines[lines.index("Result") + 2 :]
    ):
        host, deployment, status, revision = line.split()[:4]
        rows.setdefault((host, deployment), (status, revision))
    return rows


def test_plan_apply_and_idempotence(site: dict[str, Any]) -> None:
    pb = playbook(site, "base")
    plan = orch("plan", pb, env=ENV)
    assert plan.returncode == 2
    assert (
        "+ExecStart=/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server --model /srv/models/tiny"
        in plan.stdout
    )
    assert SECRET not in plan.stdout + plan.stderr
    assert "VLLM_API_KEY=***" in plan.stdout

    apply = orch("apply", pb, "-y", env=ENV)
    assert apply.returncode == 0, apply.stdout
    assert SECRET not in apply.stdout + apply.stderr
    rows = status(pb)
    assert rows["tp2"]["ready"] and rows["solo"]["ready"]
    assert (rows["tp2"]["revision"], rows["solo"]["revision"]) == (1, 1)
    assert rows["solo"]["scope"] == "user"

    for verb in ("status", "logs", "revisions"):
        seen = orch(verb, pb, env=ENV)
        assert seen.returncode == 0 and SECRET not in seen.stdout + seen.stderr

    pids = (main_pid(site, "tp2"), main_pid(site, "solo"))
    assert orch("plan", pb, env=ENV).returncode == 0
    again = orch("apply", pb, "-y", env=ENV)
    assert again.returncode == 0 and "Nothing to do" in again.stdout
    assert (main_pid(site, "tp2"), main_pid(site, "solo")) == pids

    tb, (h1, h2, _) = site["testbed"], site["hosts"]
    assert tb.ssh(h1, "stat -c %a /etc/orch/tp2.env").stdout.strip() == "600"
    assert tb.ssh(h2, "stat -c %a .config/orch/solo.env", user="deploy").stdout.strip() == "600"
    workers = tb.ssh(h1, "ps -eo comm | grep -c '^VLLM::Worker_TP' || true").stdout.strip()
    assert workers == "2"


def test_verbose_read_verbs_show_each_command_and_never_the_secret(site: dict[str, Any]) -> None:
    """-v/-vv against the deployed hosts: each command's label and host on stderr; the API key nowhere,
    though the env file holding it comes back with the facts; logs, bench and metrics as JSON."""
    pb = playbook(site, "base")
    since = status(pb)["tp2"]["since"]
    seen = orch("status", pb, "-vv", env={**ENV, "COLUMNS": "60"})
    assert seen.returncode == 0, seen.stderr
    for host in ("th1", "th2-deploy"):
        assert f"[{host}] start: gather facts and preflight probes\n    script: " in seen.stderr
        assert f"[{host}] gather facts and preflight probes → exit 0 (" in seen.stderr
    assert "[th1] readiness probe of http://" in seen.stderr and ":8000 → ready (" in seen.stderr
    assert SECRET not in seen.stdout + seen.stderr
    # A pipe gets plain columns, one line a deployment, whole values, whatever COLUMNS says.
    [row] = [line for line in seen.stdout.splitlines() if line.startswith("th1 ")]
    assert row.split()[:3] == ["th1", "tp2", "active/running"] and since in row

    plan = orch("plan", pb, "-v", env=ENV)
    assert plan.returncode == 0, plan.stderr
    assert "[th2-deploy] gather facts → exit 0 (" in plan.stderr
    assert "preflight probes" not in plan.stderr  # nothing changes: nothing for preflight to judge
    assert "script:" not in plan.stderr and SECRET not in plan.stdout + plan.stderr

    again = orch("apply", pb, "-y", "-vv", env=ENV)
    assert again.returncode == 0 and "Nothing to do" in again.stdout
    assert "[th1] lock /var/lib/orch/tp2 → held (" in again.stderr
    assert SECRET not in again.stdout + again.stderr

    logs = orch("logs", pb, "-d", "tp2", "-n", "5", "--json", "-v", env=ENV)
    assert logs.returncode == 0, logs.stderr
    lines = [json.loads(line) for line in logs.stdout.splitlines()]
    assert lines and {(x["host"], x["deployment"]) for x in lines} == {("th1", "tp2")}
    assert "[th1] logs of orch-tp2.service → exit 0 (" in logs.stderr

    args = ("-n", "2", "-c", "1", "--input-len", "8", "--output-len", "4")
    bench = orch("bench", pb, "-d", "solo", *args, "--json", "-vv", env=ENV)  # the key is read from th2
    assert bench.returncode == 0, bench.stderr
    result = json.loads(bench.stdout)
    assert result["completed"] == 2 and result["tags"]["host"] == "th2-deploy"
    assert "[th2-deploy] gather facts → exit 0 (" in bench.stderr
    assert SECRET not in bench.stdout + bench.stderr

    metrics = orch("metrics", pb, "-d", "solo", "--json", "-v", env=ENV)
    assert metrics.returncode == 0 and json.loads(metrics.stdout)["metrics"][0]["host"] == "th2-deploy"
    assert "[th2-deploy] GET http://" in metrics.stderr and ":8001/metrics → read (" in metrics.stderr


SQUATTERS = """\
inventory: inventory.yml
deployments:
  - name: squat-root
    hosts: [th1]
    model: /srv/models/tiny
    accelerator: cpu
    port: 8000
    launcher: {kind: api_server, venv: /opt/vllm}
  - name: squat-user
    hosts: [th2-deploy]
    model: /srv/models/tiny
    accelerator: cpu
    port: 8001
    launcher: {kind: api_server, venv: /opt/vllm}
"""


def test_a_port_held_by_another_deployment_is_named(site: dict[str, Any]) -> None:
    """Another playbook's deployments on the ports tp2 and solo hold: preflight names them by their units'
    cgroups (a system unit; a user unit of deploy's) and their revisions, read from the hosts."""
    pb = site["dir"] / "squatters.yml"
    pb.write_text(SQUATTERS)
    pre = orch("preflight", pb)
    assert pre.returncode == 1
    assert "port 8000 is in use by deployment tp2 (orch, revision 1)" in pre.stdout
    assert "port 8001 is in use by deployment solo (orch, user 1000, revision 1)" in pre.stdout
    assert all(row["orphans"] == [] for row in status(playbook(site, "base")).values())


def apply_to_solo_only(pb: Path, shown: str) -> subprocess.CompletedProcess[str]:
    """Plan (solo's diff shows ``shown``, tp2 has no change), then apply; apply's run."""
    plan = orch("plan", pb, env=ENV)
    assert plan.returncode == 2
    assert shown in plan.stdout
    assert "th1 · tp2" in plan.stdout and "no changes" in plan.stdout
    apply = orch("apply", pb, "-y", env=ENV)
    assert apply.returncode == 0, apply.stdout
    return apply


def test_changed_flag_restarts_only_that_deployment(site: dict[str, Any]) -> None:
    pb = playbook(site, "changed", solo_args="{--max-num-seqs: 8}")
    before_tp2, before_solo = main_pid(site, "tp2"), main_pid(site, "solo")
    assert "--max-num-seqs" not in command_line(site, "solo")
    apply_to_solo_only(pb, "--max-num-seqs 8")
    # The restarted server is a new process that was given the new flag; tp2's process is the one it was.
    assert main_pid(site, "solo") != before_solo
    solo_argv = command_line(site, "solo")
    assert solo_argv[solo_argv.index("--max-num-seqs") + 1] == "8"
    assert main_pid(site, "tp2") == before_tp2
    assert "--max-num-seqs" not in command_line(site, "tp2")
    rows = status(pb)
    assert rows["solo"]["ready"] and rows["solo"]["revision"] == 2 and rows["tp2"]["revision"] == 1


def test_rollback_returns_to_previous_revision(site: dict[str, Any]) -> None:
    pb = playbook(site, "changed", solo_args="{--max-num-seqs: 8}")
    back = orch("rollback", pb, "-d", "solo", "-y", env=ENV)
    assert back.returncode == 0, back.stdout
    assert "-ExecStart=" in back.stdout and "--max-num-seqs 8" in back.stdout
    rows = status(pb)
    assert rows["solo"]["ready"] and rows["solo"]["revision"] == 3
    revs = json.loads(orch("revisions", pb, "-d", "solo", "--json").stdout)["revisions"]
    assert [(r["revision"], r["source"]) for r in revs] == [(1, "apply"), (2, "apply"), (3, "rollback to 1")]
    # The live state is the base playbook's again.
    assert orch("plan", playbook(site, "base"), env=ENV).returncode == 0


def test_broken_revision_is_rolled_back_automatically(site: dict[str, Any]) -> None:
    pb = playbook(site, "broken", solo_len=100000)  # beyond the model's 1024 positions: vLLM refuses
    apply = orch("apply", pb, "-y", env=ENV)
    assert apply.returncode == 1
    assert "the unit died" in apply.stdout
    assert "rolled back to revision 3" in apply.stdout
    assert "journal of solo on th2-deploy" in apply.stdout
    assert "max_model_len" in apply.stdout  # vLLM's own words, from the journal tail
    assert "cause: --max-model-len is larger than the model allows (max_position_embeddings)." in apply.stdout
    assert SECRET not in apply.stdout + apply.stderr
    rows = status(pb)
    assert rows["solo"]["ready"] and rows["solo"]["revision"] == 3
    assert orch("plan", playbook(site, "base"), env=ENV).returncode == 0


NEAR = """\
  - name: near
    hosts: [th1, th2-deploy]
    model: /srv/models/tiny
    accelerator: cpu
    port: 8003
    launcher: {kind: api_server, venv: /opt/vllm}
    readiness: {enabled: false}
    templates: {unit: idle.service.j2}
"""
FAR = """\
  - name: far
    hosts: [th3]
    model: /srv/models/tiny
    accelerator: cpu
    port: 8002
    launcher: {kind: api_server, venv: /opt/vllm}
"""


def test_unreachable_host_fails_alone(site: dict[str, Any]) -> None:
    """th3 cannot be reached; th1 and th2 get a new deployment (a stand-in unit: the test is about the
    hosts, not vLLM), applied and recorded there, while their vLLM deployments are left as they are."""
    tb, (h1, h2, h3) = site["testbed"], site["hosts"]
    inv = (site["dir"] / "inventory.yml").read_text() + f"  th3:\n    address: {h3.address}\n"
    d = site["dir"] / "with-th3"
    d.mkdir(exist_ok=True)
    (d / "inventory.yml").write_text(inv)
    (d / "idle.service.j2").write_text(IDLE_UNIT.read_text())
    pb = d / "pb.yml"
    pb.write_text(playbook_text() + NEAR + FAR)
    pids = (main_pid(site, "tp2"), main_pid(site, "solo"))
    tb.partition(3)
    try:
        plan = orch("plan", pb, env=ENV)
        apply = orch("apply", pb, "-y", env=ENV)
    finally:
        tb.heal(3)
    assert plan.returncode == 1
    assert "th3" in plan.stdout and "timed out" in plan.stdout
    # The reachable hosts were planned, with their changes.
    assert "th1 · near" in plan.stdout and "th2-deploy · near" in plan.stdout
    assert apply.returncode == 1
    rows = summary(apply.stdout)
    assert rows[("th3", "far")][0] == "error"
    assert rows[("th1", "near")] == rows[("th2-deploy", "near")] == ("applied", "1")
    assert rows[("th1", "tp2")][0] == rows[("th2-deploy", "solo")][0] == "unchanged"
    # What the reachable hosts hold now: the unit running, its files, revision 1 current.
    assert tb.ssh(h1, "systemctl is-active orch-near").stdout.strip() == "active"
    system = "cat /var/lib/orch/near/current; test -f /etc/orch/near.env && echo env"
    assert tb.ssh(h1, system).stdout.split() == ["1", "env"]
    user = (
        "systemctl --user is-active orch-near; cat .local/state/orch/near/current; "
        "test -f .config/orch/near.env && echo env"
    )
    assert tb.ssh(h2, user, user="deploy").stdout.split() == ["active", "1", "env"]
    assert (main_pid(site, "tp2"), main_pid(site, "solo")) == pids
    assert tb.ssh(h3, "ls /etc/systemd/system/orch-far.service /var/lib/orch 2>/dev/null").stdout == ""

    near_only = d / "near.yml"
    near_only.write_text(f"inventory: inventory.yml\ndeployments:\n{NEAR}")
    assert orch("destroy", near_only, "-y").returncode == 0


def install_vllm_console(tb: Any, host: Any) -> None:
    """A ``vllm`` command that works with the CPU wheel (tests/testbed/vllm_console.py says why)."""
    source = base64.b64encode(VLLM_CONSOLE.read_bytes()).decode()
    out = tb.ssh(host, f"echo {source} | base64 -d >/opt/vllm/bin/vllm && chmod 755 /opt/vllm/bin/vllm")
    assert out.returncode == 0, out.stderr


def test_serve_launcher_runs_vllm_serve(site: dict[str, Any]) -> None:
    """The playbook's default launcher, the runbook's own command: ``vllm serve MODEL`` from the venv."""
    tb, (_, h2, _) = site["testbed"], site["hosts"]
    install_vllm_console(tb, h2)
    before = status(playbook(site, "base"))["solo"]["revision"]
    pb = playbook(site, "serve", solo_launcher="serve")
    apply = apply_to_solo_only(
        pb, "+ExecStart=/opt/vllm/bin/vllm serve /srv/models/tiny --served-model-name tiny-solo"
    )
    assert re.search(r"solo: ready after \d", apply.stderr)  # the gate: /health, /v1/models, two completions
    assert command_line(site, "solo")[1:4] == ["/opt/vllm/bin/vllm", "serve", "/srv/models/tiny"]

    reply = httpx.post(
        f"http://{h2.address}:8001/v1/chat/completions",
        json={"model": "tiny-solo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {SECRET}"},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["model"] == "tiny-solo" and answer["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= answer["usage"]["completion_tokens"] <= 4
    rows = status(pb)
    assert rows["solo"]["ready"] and rows["solo"]["revision"] > before


def test_host_keys_are_verified(site: dict[str, Any]) -> None:
    tb, (h1, h2, _) = site["testbed"], site["hosts"]
    d = site["dir"] / "keys"
    d.mkdir(exist_ok=True)
    pb = d / "pb.yml"
    pb.write_text(playbook_text())
    base_inv = (site["dir"] / "inventory.yml").read_text()
    known = Path(tb.known_hosts_path).read_text().splitlines()
    key_of = {line.split()[0]: line.split(None, 1)[1] for line in known if line.strip()}

    (d / "known").write_text("")
    (d / "inventory.yml").write_text(base_inv.replace(str(tb.known_hosts_path), str(d / "known")))
    unknown = orch("plan", pb, "--limit", "th1", env=ENV)
    assert unknown.returncode == 1 and "unknown host key" in unknown.stdout

    (d / "known").write_text(f"{h1.address} {key_of[h2.address]}\n")  # th2's key claimed for th1
    mismatch = orch("plan", pb, "--limit", "th1", env=ENV)
    assert mismatch.returncode == 1 and "MISMATCH" in mismatch.stdout

    (d / "known").write_text("")
    (d / "inventory.yml").write_text(
        "host_key_policy: accept-new\n" + base_inv.replace(str(tb.known_hosts_path), str(d / "known"))
    )
    learnt = orch("plan", pb, "--limit", "th1", env=ENV)
    assert learnt.returncode == 0
    assert key_of[h1.address].split()[1] in (d / "known").read_text()


def test_destroy_stops_and_removes_but_keeps_revisions(site: dict[str, Any]) -> None:
    pb = playbook(site, "base")
    gone = orch("destroy", pb, "-y", env=ENV)
    assert gone.returncode == 0, gone.stdout
    tb, (h1, h2, _) = site["testbed"], site["hosts"]
    assert tb.ssh(h1, "test -e /etc/systemd/system/orch-tp2.service; echo $?").stdout.strip() == "1"
    assert tb.ssh(h1, "pgrep -f '[v]llm.entrypoints' || true").stdout.strip() == ""
    assert tb.ssh(h2, "pgrep -u deploy -f '[v]llm.entrypoints|bin/[v]llm serve' || true").stdout.strip() == ""
    assert tb.ssh(h1, "ls /var/lib/orch/tp2/revisions").stdout.split() == ["1"]
    assert orch("destroy", pb, "-y", env=ENV).returncode == 0  # idempotent


def test_become_sudo_manages_system_units(site: dict[str, Any]) -> None:
    """A non-root login with passwordless sudo (become: true) writes root's files and system units."""
    tb, (h1, _, _) = site["testbed"], site["hosts"]
    tb.ssh(
        h1, "echo 'deploy ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/deploy && chmod 0440 /etc/sudoers.d/deploy"
    )
    d = site["dir"] / "sudo"
    d.mkdir(exist_ok=True)
    (d / "inventory.yml").write_text(
        f"known_hosts: {tb.known_hosts_path}\nhosts:\n  th1-sudo:\n    address: {h1.address}\n"
        f"    user: deploy\n    become: true\n    ssh_key: {tb.key_path}\n"
    )
    # Template overrides are files below the playbook's folder: the stand-in unit is copied there.
    (d / "idle.service.j2").write_text(IDLE_UNIT.read_text())
    pb = d / "pb.yml"
    pb.write_text(
        "inventory: inventory.yml\ndeployments:\n  - name: viasudo\n    hosts: [th1-sudo]\n"
        "    model: /srv/models/tiny\n    accelerator: cpu\n    port: 8009\n"
        "    launcher: {kind: api_server, venv: /opt/vllm}\n"
        "    readiness: {enabled: false}\n    templates: {unit: idle.service.j2}\n    env: {HF_HOME: /tmp/hf}\n"
    )
    try:
        assert orch("plan", pb).returncode == 2
        assert orch("apply", "-y", pb).returncode == 0
        assert tb.ssh(h1, "systemctl is-active orch-viasudo").stdout.strip() == "active"
        assert tb.ssh(h1, "stat -c '%U %a' /etc/orch/viasudo.env").stdout.strip() == "root 600"
        assert tb.ssh(h1, "cat /var/lib/orch/viasudo/current").stdout.strip() == "1"
        assert orch("plan", pb).returncode == 0
        assert orch("destroy", "-y", pb).returncode == 0
        assert tb.ssh(h1, "systemctl is-active orch-viasudo || true").stdout.strip() == "inactive"
    finally:
        tb.ssh(h1, "rm -f /etc/sudoers.d/deploy")
