"""The SSH transport against a local socket: what a host that speaks no SSH turns into, and the TCP options."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.transport.ssh import _nodelay_socket


@pytest.fixture
def mute_port() -> Iterator[int]:
    """A port that accepts TCP connections and closes them at once (no SSH banner)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


def test_a_host_that_speaks_no_ssh_is_one_line_and_no_traceback(mute_port: int, tmp_path: Path) -> None:
    """In a process of its own, as a user runs it: pytest's log capture would hide what Paramiko prints."""
    (tmp_path / "inv.yml").write_text(f"hosts:\n  h1: {{address: 127.0.0.1, port: {mute_port}}}\n")
    (tmp_path / "pb.yml").write_text(
        "inventory: inv.yml\ndeployments:\n  - name: demo\n    hosts: [all]\n    model: /srv/m\n"
        "    accelerator: cpu\n    launcher: {kind: api_server, venv: /opt/vllm}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "plan", str(tmp_path / "pb.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "h1: SSH error: Error reading SSH protocol banner" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Exception (client)" not in done.stderr, done.stderr


def test_the_connection_sends_small_writes_at_once(mute_port: int) -> None:
    sock = _nodelay_socket("127.0.0.1", mute_port, 5)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()


def test_known_hosts_is_read_once_and_each_host_gets_its_own_keys(tmp_path: Path) -> None:
    import paramiko

    from orchestrator.transport import ssh

    a, b, c = (paramiko.ECDSAKey.generate() for _ in range(3))
    known = tmp_path / "known_hosts"
    hashed = paramiko.HostKeys.hash_host("10.0.0.2")
    known.write_text(
        f"10.0.0.1 {a.get_name()} {a.get_base64()}\n"
        f"{hashed} {b.get_name()} {b.get_base64()}\n"
        f"[10.0.0.3]:2222 {c.get_name()} {c.get_base64()}\n"
    )
    assert ssh.known_keys(known, "10.0.0.1") == {a.get_name(): a}
    assert ssh.known_keys(known, "10.0.0.2") == {b.get_name(): b}  # a hashed name
    assert ssh.known_keys(known, "[10.0.0.3]:2222") == {c.get_name(): c}
    assert ssh.known_keys(known, "10.0.0.3") == {}
    assert len([k for k in ssh._KNOWN if k[0] == str(known)]) == 1  # read once for the four

    with known.open("a") as fh:  # a key learned (accept-new) changes the file: read again
        fh.write(f"10.0.0.4 {a.get_name()} {a.get_base64()}\n")
    assert ssh.known_keys(known, "10.0.0.4") == {a.get_name(): a}
    assert len([k for k in ssh._KNOWN if k[0] == str(known)]) == 1  # the old read is dropped


def test_a_transport_checks_the_key_known_hosts_holds_for_its_host(tmp_path: Path) -> None:
    import paramiko

    from orchestrator.core.model import Host
    from orchestrator.transport.ssh import SSHTransport

    key, other = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    known = tmp_path / "known_hosts"
    known.write_text(
        f"[127.0.0.1]:2201 {key.get_name()} {key.get_base64()}\n10.9.9.9 {other.get_name()} {other.get_base64()}\n"
    )
    t = SSHTransport(
        "h1",
        Host(address="127.0.0.1", port=2201),
        key_file=None,
        known_hosts=known,
        accept_new=False,
        connect_timeout=5,
    )
    held = t._conn.client.get_host_keys()
    assert held.lookup("[127.0.0.1]:2201") == {key.get_name(): key}
    assert held.lookup("10.9.9.9") is None
