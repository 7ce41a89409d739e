"""SSH through Fabric: one lazily opened, reused connection per host.

Fabric's ``Connection`` opens it; each command runs on a Paramiko channel of its own, read in the thread
that runs it (no reader threads per command). Host keys are checked against a known_hosts file: an
unknown key is refused unless the inventory says ``host_key_policy: accept-new``, in which case it is
added to the file and reported. Paramiko's errors become HostErrors here, and Paramiko's own log
(tracebacks from its transport thread) is kept off stderr.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
from fabric import Config, Connection

from ..core.model import Host
from ..errors import CommandError, HostKeyError, UnreachableError
from ..host.commands import Command
from ..host.state import HEARTBEAT_S
from .base import Heartbeat, Held, LineWriter, Result, checked, shell_of

# Paramiko's transport thread logs what ended a connection, with its traceback (a host that accepts the TCP
# connection but speaks no SSH): the verb reports it as the host's one-line error, so the log stays quiet.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
_KNOWN_HOSTS_LOCK = threading.Lock()
# A transfer that moves no byte for this long has stalled (a frozen or partitioned host).
STALL_S = 30.0
_CHUNK = 65536


class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """OpenSSH's ``StrictHostKeyChecking=accept-new``: learn unknown keys, never replace known ones."""

    def __init__(self, path: Path, on_new: list[str]) -> None:
        self.path = path
        self.on_new = on_new

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        with _KNOWN_HOSTS_LOCK:
            client.get_host_keys().add(hostname, key.get_name(), key)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        self.on_new.append(f"{hostname} {key.get_name()} SHA256:{key.fingerprint.split(':', 1)[-1]}")


_KNOWN: dict[tuple[str, int, int], paramiko.HostKeys] = {}


def known_keys(path: Path, name: str) -> dict[str, paramiko.PKey]:
    """The keys ``path`` (a known_hosts file) holds for ``name``, by key type.

    The file is parsed once per process (again if it changes), not once for every host: Paramiko's read
    checks each line against all those before it, 3 ms for 64 lines, so 64 hosts each reading it cost a
    fifth of a CPU-second. A host's transport then holds only its own keys.
    """
    st = path.stat()
    stamp = (str(path), st.st_mtime_ns, st.st_size)
    with _KNOWN_HOSTS_LOCK:
        keys = _KNOWN.get(stamp)
        if keys is None:
            for stale in [k for k in _KNOWN if k[0] == stamp[0]]:
                del _KNOWN[stale]
            keys = _KNOWN[stamp] = paramiko.HostKeys(str(path))
        found = keys.lookup(name)
    return dict(found) if found is not None else {}


class SSHTransport:
    def __init__(
        self,
        name: str,
        host: Host,
        *,
        key_file: Path | None,
        known_hosts: Path,
        accept_new: bool,
        connect_timeout: float,
    ) -> None:
        self.name = name
        self.accepted_keys: list[str] = []
        self._opened = False
        self._open_lock = threading.Lock()
        self._conn = Connection(
            host.address,
            user=host.user,
            port=host.port,
            config=Config(ssh_config=paramiko.SSHConfig()),
            connect_timeout=max(1, int(connect_timeout)),
            connect_kwargs=_connect_kwargs(key_file, connect_timeout),
        )
        client: paramiko.SSHClient = self._conn.client
        if known_hosts.is_file():
            # The name Paramiko looks the server's key up by (OpenSSH's, with a port other than 22).
            name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
            for keytype, key in known_keys(known_hosts, name).items():
                client.get_host_keys().add(name, keytype, key)
        policy = AcceptNewPolicy(known_hosts, self.accepted_keys) if accept_new else paramiko.RejectPolicy()
        client.set_missing_host_key_policy(policy)

    def run(self, command: Command, *, timeout: float | None = None, check: bool = True) -> Result:
        out, err = bytearray(), bytearray()
        code = self._exec(command, out.extend, err.extend, timeout)
        result = Result(out.decode(errors="replace"), err.decode(errors="replace"), code)
        return checked(self.name, command, result, check=check)

    def put(self, local: Path, remote: str, *, progress: Callable[[int, int], None] | None = None) -> None:
        with self._translated(Command("", label=f"sftp put {remote}"), STALL_S):
            self._open()
            sftp = self._conn.client.open_sftp()
            sftp.get_channel().settimeout(STALL_S)  # a frozen host fails the copy instead of hanging it
            try:
                sftp.put(str(local), remote, callback=progress)
            finally:
                sftp.close()

    def stream(self, command: Command, on_line: Callable[[str], None]) -> int:
        lines = LineWriter(on_line)
        code = self._exec(command, lines.write, lambda _: None, None)
        lines.close()
        return code

    def open(self) -> None:
        with self._translated(Command("connect", label="connect"), None):
            self._open()

    def hold(self, command: Command, *, until: str, timeout: float) -> Held | Result:
        with self._translated(command, timeout):
            channel = self._session(command, timeout)
            seen: list[str] = []
            for raw in channel.makefile("rb"):
                line = raw.decode(errors="replace").rstrip("\n")
                if line == until:
                    channel.settimeout(None)
                    return ChannelHold(channel)
                seen.append(line)
            code = channel.recv_exit_status()
            err = channel.makefile_stderr("rb").read().decode(errors="replace")
        return Result("\n".join(seen), err, code)

    def _exec(
        self,
        command: Command,
        on_out: Callable[[bytes], object],
        on_err: Callable[[bytes], object],
        timeout: float | None,
    ) -> int:
        """Run ``command`` to its end, its stdin sent first, stdout and stderr passed on as they come.

        Both are read in this thread, together (neither can fill the channel's window while the other is
        waited on); ``timeout`` bounds the whole command. Returns the exit code.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._translated(command, timeout):
            channel = self._session(command, timeout)
            try:
                if command.stdin is not None:
                    channel.sendall(command.stdin)  # its timeout bounds a host that does not read it
                channel.shutdown_write()
                _drain(channel, on_out, on_err, deadline)
                if not channel.status_event.wait(_left(deadline)):
                    raise TimeoutError
                return channel.recv_exit_status()
            finally:
                channel.close()

    def _session(self, command: Command, timeout: float | None) -> paramiko.Channel:
        """``command`` started on a channel of its own, whose reads and writes time out after ``timeout``."""
        self._open()
        transport = self._conn.client.get_transport()
        if transport is None:
            raise UnreachableError(self.name, "the connection dropped during the verb")
        channel: paramiko.Channel = transport.open_session(timeout=timeout)
        try:
            channel.settimeout(timeout)
            channel.exec_command(shell_of(command))
        except BaseException:
            channel.close()
            raise
        return channel

    @contextlib.contextmanager
    def _translated(self, command: Command, timeout: float | None) -> Iterator[None]:
        """Paramiko's errors, as the HostError they mean."""
        try:
            yield
        except TimeoutError as exc:
            if not self._conn.is_connected:
                raise UnreachableError(self.name, "cannot connect: timed out") from exc
            raise CommandError(
                self.name, command=command.describe(), exit_code=-1, stderr=f"timed out after {timeout}s"
            ) from exc
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                self.name, f"host key MISMATCH for {exc.hostname}: refusing to connect"
            ) from exc
        except paramiko.SSHException as exc:
            raise self._ssh_error(exc) from exc
        except (OSError, EOFError) as exc:
            raise UnreachableError(self.name, f"cannot connect: {_reason(exc)}") from exc

    def _ssh_error(self, exc: paramiko.SSHException) -> Exception:
        text = str(exc)
        if "not found in known_hosts" in text:
            return HostKeyError(
                self.name,
                "unknown host key (not in known_hosts); add it, or set host_key_policy: accept-new",
            )
        if isinstance(exc, paramiko.AuthenticationException):
            return UnreachableError(self.name, f"authentication failed: {text}")
        return UnreachableError(self.name, f"SSH error: {text or type(exc).__name__}")

    def _open(self) -> None:
        """Connect once; a connection that drops is not opened again behind the verb's back.

        The verb's lock lives on that connection: a new one would carry on without it.
        """
        with self._open_lock:
            if self._opened:
                if not self._conn.is_connected:
                    raise UnreachableError(self.name, "the connection dropped during the verb")
                return
            sock = _nodelay_socket(self._conn.host, self._conn.port, self._conn.connect_timeout)
            self._conn.connect_kwargs["sock"] = sock
            try:
                self._conn.open()
            except BaseException:
                sock.close()
                raise
            self._opened = True

    def close(self) -> None:
        self._conn.close()


class ChannelHold:
    """A command held open on its own SSH channel; stdin gets the heartbeat, EOF releases it."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel
        self._beat = Heartbeat(lambda: self._channel.sendall(b"\n"), HEARTBEAT_S)

    def alive(self) -> bool:
        return not (self._beat.failed or self._channel.closed or self._channel.exit_status_ready())

    def release(self) -> None:
        self._beat.stop()
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self._channel.shutdown_write()
            deadline = time.monotonic() + 5
            done = self._channel.exit_status_ready
            while not (done() or self._channel.closed) and time.monotonic() < deadline:
                time.sleep(0.02)
        self._channel.close()


def _nodelay_socket(address: str, port: int, timeout: float) -> socket.socket:
    """The TCP connection for Paramiko, with Nagle's algorithm off. Paramiko leaves it on, and SSH's small
    writes then wait for the peer's delayed ACK: about 40 ms in the handshake and in every command's round
    trip (48 ms against 5.5 ms for a command's round trip to a test host; OpenSSH sets TCP_NODELAY too)."""
    sock = socket.create_connection((address, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _Wake(threading.Event):
    """Set by either of a channel's two buffers (stdout, stderr) when data, their EOF or the channel's end
    arrives; cleared only by the reader, before it looks (a buffer clears its event when a read empties
    it, while the other may still hold data: that clear is ignored). A plain event, where the channel's
    own ``fileno`` would make a pipe that Paramiko's thread may still write to as the channel closes
    (a command cut off at its timeout while it writes): the EPIPE there ends the whole connection."""

    def clear(self) -> None:
        return None

    def rearm(self) -> None:
        super().clear()


def _drain(
    channel: paramiko.Channel,
    on_out: Callable[[bytes], object],
    on_err: Callable[[bytes], object],
    deadline: float | None,
) -> None:
    """Pass ``channel``'s stdout and stderr on as they come, until its EOF.

    Raises TimeoutError at ``deadline``, which every pass looks at: a command that never stops writing ends
    there too.
    """
    wake = _Wake()
    channel.in_buffer.set_event(wake)
    channel.in_stderr_buffer.set_event(wake)
    while True:
        left = _left(deadline)
        if left == 0.0:
            raise TimeoutError
        wake.rearm()  # before looking: whatever arrives after the look sets it again
        if channel.recv_ready():
            on_out(channel.recv(_CHUNK))
        elif channel.recv_stderr_ready():
            on_err(channel.recv_stderr(_CHUNK))
        elif channel.eof_received or channel.closed:
            break
        else:
            wake.wait(left)
    # What came between the last look and the EOF: both buffers are closed now, so these reads end.
    for chunk in iter(lambda: channel.recv(_CHUNK), b""):
        on_out(chunk)
    for chunk in iter(lambda: channel.recv_stderr(_CHUNK), b""):
        on_err(chunk)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _connect_kwargs(key_file: Path | None, timeout: float) -> dict[str, object]:
    kwargs: dict[str, object] = {"banner_timeout": timeout, "auth_timeout": timeout}
    if key_file is not None:
        kwargs.update(key_filename=str(key_file), allow_agent=False, look_for_keys=False)
    return kwargs


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
