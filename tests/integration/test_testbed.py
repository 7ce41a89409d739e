"""Tests of the test bed itself: real hosts boot, SSH works as designed, faults and vLLM work."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from testbed import Testbed, TestHost

pytestmark = pytest.mark.testbed
log = logging.getLogger("testbed")

VLLM_UNIT = "orch-tb-vllm"
VLLM_PORT = 8000
VLLM_READY_TIMEOUT = 600.0


def ok(testbed: Testbed, host: TestHost, command: str, *, user: str = "root") -> str:
    """Run command on host, assert it succeeded, return its stripped stdout."""
    proc = testbed.ssh(host, command, user=user)
    assert proc.returncode == 0, f"{host.name} ({user}): {command!r} -> {proc.returncode}: {proc.stderr}"
    return proc.stdout.strip()


def known_hosts(testbed: Testbed) -> dict[str, str]:
    """address -> 'type blob' from the generated known_hosts file."""
    entries = {}
    for line in testbed.known_hosts_path.read_text().splitlines():
        address, kind, blob = line.split()[:3]
        entries[address] = f"{kind} {blob}"
    return entries


def test_hosts_boot_with_systemd_and_key_login(testbed: Testbed) -> None:
    hosts = testbed.up(2)
    assert [h.address for h in hosts] == ["10.77.1.2", "10.77.1.3"]
    for host in hosts:
        assert ok(testbed, host, "ps -o comm= -p 1") == "systemd"
        assert ok(testbed, host, "systemctl is-system-running") == "running"
        assert ok(testbed, host, "hostname") == host.name
        assert ok(testbed, host, "id -u", user="deploy") == "1000"


def test_password_login_is_refused(testbed: Testbed) -> None:
    host = testbed.up(1)[0]
    config = ok(testbed, host, "sshd -T | grep -E '^(passwordauthentication|permitrootlogin) '")
    assert "passwordauthentication no" in config
    assert "permitrootlogin without-password" in config or "prohibit-password" in config


def test_each_host_has_its_own_host_key_matching_known_hosts(testbed: Testbed) -> None:
    hosts = testbed.up(2)
    entries = known_hosts(testbed)
    served = {h.address: ok(testbed, h, "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub") for h in hosts}
    for host in hosts:
        assert served[host.address] == entries[host.address]
    assert served[hosts[0].address] != served[hosts[1].address]


def test_wrong_host_key_is_rejected(testbed: Testbed, tmp_path: Path) -> None:
    first, second = testbed.up(2)
    entries = known_hosts(testbed)
    swapped = tmp_path / "known_hosts"
    swapped.write_text(f"{second.address} {entries[first.address]}\n")
    argv = [
        a if not a.startswith("UserKnownHostsFile=") else f"UserKnownHostsFile={swapped}"
        for a in testbed.ssh_argv()
    ]
    proc = subprocess.run([*argv, second.address, "true"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr or "verification failed" in proc.stderr


def test_deploy_user_manager_lingers(testbed: Testbed) -> None:
    host = testbed.up(1)[0]
    assert ok(testbed, host, "loginctl show-user deploy -p Linger --value") == "yes"
    ok(testbed, host, "systemd-run --user --unit orch-tb-linger sleep 600", user="deploy")
    # a new SSH session: the unit outlived the one that started it
    assert ok(testbed, host, "systemctl --user is-active orch-tb-linger", user="deploy") == "active"
    ok(testbed, host, "journalctl --user -u orch-tb-linger --no-pager -n 5", user="deploy")
    ok(testbed, host, "systemctl --user stop orch-tb-linger", user="deploy")


def test_crash_refuses_connections_then_boot_keeps_state(testbed: Testbed) -> None:
    host = testbed.up(2)[1]
    ok(testbed, host, "echo before-crash > /root/marker && sync")
    testbed.crash(host.index)
    assert testbed.state(host.index) == "stopped"
    proc = testbed.ssh(host, "true", timeout=15)
    assert proc.returncode == 255 and "Connection refused" in proc.stderr, proc.stderr
    started = time.monotonic()
    testbed.boot(host.index)
    testbed.record("boot again after crash", time.monotonic() - started)
    assert ok(testbed, host, "cat /root/marker") == "before-crash"


def test_partition_times_out_then_heals(testbed: Testbed) -> None:
    host = testbed.up(2)[1]
    testbed.partition(host.index)
    try:
        assert "partitioned" in testbed.state(host.index)
        proc = testbed.ssh(host, "true", timeout=4)
        assert proc.returncode in (124, 255) and "timed out" in proc.stderr, proc.stderr
    finally:
        testbed.heal(host.index)
    assert ok(testbed, host, "echo healed") == "healed"


def test_freeze_hangs_then_thaw(testbed: Testbed) -> None:
    host = testbed.up(2)[1]
    testbed.freeze(host.index)
    try:
        assert testbed.state(host.index).startswith("frozen")
        proc = testbed.ssh(host, "true", timeout=4)
        assert proc.returncode in (124, 255) and "timed out" in proc.stderr, proc.stderr
    finally:
        testbed.thaw(host.index)
    assert ok(testbed, host, "echo thawed") == "thawed"


def test_reset_wipes_state_but_keeps_host_key(testbed: Testbed) -> None:
    host = testbed.up(2)[1]
    ok(testbed, host, "touch /root/dirty")
    testbed.reset(host.index)
    assert ok(testbed, host, "test -e /root/dirty && echo dirty || echo clean") == "clean"


def test_hosts_have_separate_cgroups(testbed: Testbed) -> None:
    """Fix 2: stopping a unit on one host must not touch another host's processes."""
    first, second = testbed.up(2)
    ok(testbed, first, "systemd-run --unit orch-tb-sleep sleep 600")
    ok(testbed, second, "systemd-run --unit orch-tb-sleep sleep 600")
    ok(testbed, first, "systemctl stop orch-tb-sleep")
    assert ok(testbed, second, "systemctl is-active orch-tb-sleep") == "active"
    ok(testbed, second, "systemctl stop orch-tb-sleep")


def test_reboot_inside_a_host_comes_back(testbed: Testbed) -> None:
    """nspawn exits 133 on `systemctl reboot`; the launcher loop boots the host again."""
    host = testbed.up(2)[1]
    ok(testbed, host, "touch /run/before-reboot")  # /run is a tmpfs: gone after a reboot
    testbed.ssh(host, "systemctl reboot", timeout=15)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        probe = testbed.ssh(host, "test -e /run/before-reboot || systemctl is-system-running --wait")
        if probe.stdout.strip() == "running":
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"{host.name} did not come back from reboot: {probe.stderr}")
    assert testbed.state(host.index) == "running"


def _start_vllm(testbed: Testbed, host: TestHost) -> None:
    testbed.require_vllm_slot()
    command = (
        f"systemd-run --unit {VLLM_UNIT} --property KillMode=mixed "
        "--setenv VLLM_CPU_KVCACHE_SPACE=1 "
        "/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server --model /srv/models/tiny "
        "--served-model-name tiny --max-model-len 512 --dtype bfloat16 "
        f"--host 0.0.0.0 --port {VLLM_PORT}"
    )
    ok(testbed, host, command)


def _journal(testbed: Testbed, host: TestHost) -> str:
    return testbed.ssh(host, f"journalctl -u {VLLM_UNIT} --no-pager -n 60").stdout


def _wait_health(testbed: Testbed, host: TestHost, client: httpx.Client) -> None:
    base, deadline, checked = f"http://{host.address}:{VLLM_PORT}", time.monotonic() + VLLM_READY_TIMEOUT, 0.0
    while time.monotonic() < deadline:
        try:
            if client.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() - checked > 5:
            checked = time.monotonic()
            state = testbed.ssh(host, f"systemctl is-active {VLLM_UNIT}").stdout.strip()
            if state not in ("active", "activating"):
                pytest.fail(f"vLLM unit is {state}:\n{_journal(testbed, host)}")
        time.sleep(0.5)
    pytest.fail(f"vLLM not healthy after {VLLM_READY_TIMEOUT} s:\n{_journal(testbed, host)}")


def test_vllm_cpu_server_in_a_host_answers_chat(testbed: Testbed) -> None:
    host = testbed.up(1)[0]
    base = f"http://{host.address}:{VLLM_PORT}"
    started = time.monotonic()
    _start_vllm(testbed, host)
    try:
        with httpx.Client(trust_env=False, timeout=60) as client:
            _wait_health(testbed, host, client)
            ready = time.monotonic() - started
            models = client.get(f"{base}/v1/models").json()
            assert [m["id"] for m in models["data"]] == ["tiny"]
            t0 = time.monotonic()
            body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
            reply = client.post(f"{base}/v1/chat/completions", json=body)
            chat = time.monotonic() - t0
            assert reply.status_code == 200, reply.text
            assert reply.json()["usage"]["completion_tokens"] >= 1
            stream = client.post(f"{base}/v1/chat/completions", json={**body, "stream": True})
            assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
    finally:
        t0 = time.monotonic()
        testbed.ssh(host, f"systemctl stop {VLLM_UNIT}; systemctl reset-failed {VLLM_UNIT}", timeout=120)
        stop = time.monotonic() - t0
    for what, seconds in (("vllm: start to /health 200", ready), ("vllm: first chat completion", chat),
                          ("vllm: systemctl stop", stop)):  # fmt: skip
        testbed.record(what, seconds)
        print(f"{what}: {seconds:.2f} s")
