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
