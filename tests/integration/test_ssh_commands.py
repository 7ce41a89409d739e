"""The SSH transport's commands on a real host: both streams whole, stdin byte-exact, the timeout, streaming.

Each command runs on a channel of its own, read in the calling thread: a command that fills stderr while
stdout is still open must not hang, and no thread is started per command.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import pytest
from testbed import Testbed

from orchestrator.core.model import Host
from orchestrator.errors import CommandError
from orchestrator.host.commands import Command
from orchestrator.transport.ssh import SSHTransport

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def ssh(testbed: Testbed) -> Iterator[SSHTransport]:
    host = testbed.up(1)[0]
    transport = SSHTransport(
        host.name,
        Host(address=host.address, user="root"),
        key_file=testbed.key_path,
        known_hosts=testbed.known_hosts_path,
        accept_new=False,
        connect_timeout=10,
    )
    yield transport
    transport.close()


def test_both_streams_come_whole_however_they_interleave(ssh: SSHTransport) -> None:
    """3 MB on each stream, stderr first: more than the channel's window (2 MiB) on the one not read first."""
    script = (
        "for i in 1 2 3; do head -c 1000000 /dev/zero | tr '\\0' e >&2; head -c 1000000 /dev/zero | tr '\\0' o; "
        "done; echo; exit 7"
    )
    result = ssh.run(Command(script), check=False)
    assert result.exit_code == 7
    assert result.stdout == "o" * 3_000_000 + "\n"
    assert result.stderr == "e" * 3_000_000


def test_stdin_arrives_byte_exact_and_output_decodes_across_reads(ssh: SSHTransport) -> None:
    data = bytes(range(256)) * 4096 + "é€\n".encode()
    result = ssh.run(Command("sha256sum | cut -d' ' -f1; printf 'é%.0s' $(seq 50000)", stdin=data))
    digest, text = result.stdout[:64], result.stdout[65:]
    assert digest == hashlib.sha256(data).hexdigest()
    assert text == "é" * 50000  # 100 kB of two-byte characters: the reads' edges fall inside some


def test_a_command_past_its_timeout_fails_and_the_connection_carries_on(ssh: SSHTransport) -> None:
    started = time.monotonic()
    with pytest.raises(CommandError, match=r"timed out after 1\.5s"):
        ssh.run(Command("sleep 30"), timeout=1.5)
    assert time.monotonic() - started < 5
    for _ in range(20):  # one that never stops writing, its channel closed while data still comes in
        started = time.monotonic()
        with pytest.raises(CommandError, match=r"timed out after 0\.25s"):
            ssh.run(Command("while :; do echo more; done"), timeout=0.25)
        assert time.monotonic() - started < 3
        assert ssh.run(Command("echo still here")).stdout == "still here\n"


def test_a_stream_passes_lines_as_they_come_and_the_last_one_without_newline(ssh: SSHTransport) -> None:
    ssh.open()
    before = {thread.ident for thread in threading.enumerate()}  # the connection's own included
    seen: list[tuple[float, str, set[int | None]]] = []
    started = time.monotonic()

    def on_line(line: str) -> None:
        new = {thread.ident for thread in threading.enumerate()} - before  # threads that end do not count
        seen.append((time.monotonic() - started, line, new))

    code = ssh.stream(Command("echo one; sleep 1; echo two >&2; echo three; printf last; exit 3"), on_line)
    assert code == 3
    assert [line for _, line, _ in seen] == ["one", "three", "last"]
    assert seen[0][0] < 0.9 < seen[1][0]  # "one" before the sleep ended, not at the command's end
    assert all(not new for _, _, new in seen)  # read in this thread: no reader thread started


def test_a_command_killed_by_a_signal_has_no_exit_status(ssh: SSHTransport) -> None:
    result = ssh.run(Command("echo before; kill -9 $$"), check=False)
    assert (result.stdout, result.exit_code) == ("before\n", -1)
