"""Throw-away test hosts: systemd (PID 1) + OpenSSH in systemd-nspawn, one netns and IP each.

Each host thN is an overlayfs over the template root, booted with
`systemd-nspawn --boot --register=no --keep-unit` inside its own network namespace, joined by
a veth pair to the bridge br-orch (10.77.0.1/16; no forwarding, no default route). The three
fixes this needs on a machine whose PID 1 is not systemd (see docs/testbed.md):
1. `--register=no --keep-unit`, else nspawn wants the system bus;
2. each launcher in its own cgroup, else all containers share one and collide;
3. inotify and keys sysctls raised (restored at teardown), else user@.service fails at scale.
All state lives on disk (run dir, netns, cgroups), so a Testbed object can be made anew by any
process (the CLI, a pytest session) and still find the hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .proc import CommandError, TestbedError, run, tail_of
from .template import BuildReport, cache_dir, discard, ensure_template, template_root

log = logging.getLogger("testbed")

BRIDGE = "br-orch"
BRIDGE_CIDR = "10.77.0.1/16"
PREFIX = "orch-th"  # netns and host-side veth names: orch-th1, orch-th2, ...
CGROUP_GROUP = "orch-testbed"
SYSCTLS = {
    "fs/inotify/max_user_instances": 8192,
    "fs/inotify/max_user_watches": 1048576,
    "kernel/keys/maxkeys": 20000,
    "kernel/keys/maxbytes": 2000000,
}
BOOT_TIMEOUT = 180.0
TERM_AGAIN_AFTER = 20.0
KILL_AFTER = 30.0
DEPLOY_UID = 1000
# /tmp stays on the host's disk, as on a Debian 12 server (nspawn would mount a tmpfs there);
# the template's warm torch compile cache lives in /tmp/torchinductor_USER.
LAUNCH_ENV = {**os.environ, "SYSTEMD_NSPAWN_TMPFS_TMP": "0"}
# One test bed per machine (bridge, namespaces and IPs are machine-wide): whoever changes it
# holds this lock; a pytest session holds it from start to teardown.
LOCK_PATH = Path("/run/lock/orch-testbed.lock")
# Each vLLM CPU server takes 1.5-2.5 GB (TP=1) to 4.8 GB (TP=2): at most three at once here.
MAX_VLLM_SERVERS = 3


@dataclass(frozen=True)
class TestHost:
    """One running test host."""

    __test__ = False  # keep pytest from collecting it

    name: str  # "th1"
    index: int  # 1
    address: str  # "10.77.1.2"


def address_of(index: int) -> str:
    """th1 -> 10.77.1.2, th249 -> 10.77.1.250, th250 -> 10.77.2.1."""
    if not 1 <= index <= 60000:
        raise TestbedError(f"host index {index} out of range")
    return f"10.77.{index // 250 + 1}.{index % 250 + 1}"


def cgroup_roots() -> list[Path]:
    """The cgroup hierarchies a launcher must be moved in (hybrid v1+v2, or pure v2)."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return [base]  # unified (v2 only)
    roots = [base / h for h in ("systemd", "unified") if (base / h / "cgroup.procs").exists()]
    if not roots:
        raise TestbedError("no usable cgroup hierarchy: neither cgroups v2 nor the v1 systemd one")
    return roots


def unified_root() -> Path | None:
    """The cgroups v2 hierarchy (where cgroup.freeze lives), if any."""
    base = Path("/sys/fs/cgroup")
    for root in (base, base / "unified"):
        if (root / "cgroup.controllers").exists() or (root / "cgroup.freeze").exists():
            return root
    return None


def _pids_with_parent(ppid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == ppid:
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _kill(pid: int | None, sig: signal.Signals) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@contextlib.contextmanager
def exclusive(*, wait: float) -> Iterator[None]:
    """Hold the machine-wide test bed lock; wait up to `wait` seconds for another holder."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_PATH.open("a+") as lock:
        deadline, told = time.monotonic() + wait, False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = LOCK_PATH.read_text().strip() or "another process"
                if time.monotonic() >= deadline:
                    raise TestbedError(f"the test bed is in use by {holder} (lock {LOCK_PATH})") from None
                if not told:
                    log.warning("waiting up to %.0f s for the test bed, in use by %s", wait, holder)
                    told = True
                time.sleep(0.05)  # a freed test bed goes on at once
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


class Testbed:
    """The set of test hosts th1..thN on this machine; see the module docstring."""

    __test__ = False  # keep pytest from collecting it

    def __init__(self, base: Path | None = None) -> None:
        self.base = base or cache_dir()
        self.run_dir = self.base / "run"
        self.key_path = self.base / "keys" / "id_ed25519"
        self.known_hosts_path = self.run_dir / "known_hosts"
        self.ssh_config_path = self.run_dir / "ssh_config"
        self.root_dir = template_root(self.base)
        self.timings: list[tuple[str, float]] = []

    # ---- build -------------------------------------------------------------------------------

    def build(self) -> BuildReport:
        """Build the template (if its recipe changed or it is missing) and the client key."""
        started = time.monotonic()
        report = ensure_template(self.base)
        if report.built:
            self.record("template build", time.monotonic() - started)
            for phase, seconds in report.phases.items():
                self.record(f"template build: {phase}", seconds)
        self._ensure_client_key()
        return report

    def record(self, what: str, seconds: float) -> None:
        """Remember a measured time (printed in pytest's summary and by the CLI)."""
        self.timings.append((what, round(seconds, 2)))
        log.info("timing: %s: %.2f s", what, seconds)

    def _ensure_client_key(self) -> None:
        if self.key_path.is_file():
            return
        self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orch-testbed",
             "-f", str(self.key_path)])  # fmt: skip

    # ---- public API ---------------------------------------------------------------------------

    def host(self, i: int) -> TestHost:
        """The host with index i (whether or not it is running)."""
        return TestHost(name=f"th{i}", index=i, address=address_of(i))

    def up(self, n: int) -> list[TestHost]:
        """Ensure th1..thn are running and ready (booted, SSH up); hosts boot in parallel."""
        if n < 1:
            raise TestbedError(f"up needs at least one host, got {n}")
        started = time.monotonic()
        self._prepare_machine()
        todo = [i for i in range(1, n + 1) if not self._running(i)]
        for i in todo:
            self._create(i)
            self._launch(i)
        self._wait_ready_all(range(1, n + 1))
        if todo:
            self.record(f"up {len(todo)} host(s)", time.monotonic() - started)
        return [self.host(i) for i in range(1, n + 1)]

    def boot(self, i: int) -> TestHost:
        """Boot host i (again) with its state kept; no-op if it is running."""
        self._prepare_machine()
        if not self._running(i):
            self._create(i)
            self._launch(i)
        self._wait_ready(i)
        return self.host(i)

    def crash(self, i: int) -> None:
        """SIGKILL the host's PID 1: the whole host dies at once, as on power loss."""
        init = self._init_pid(i)
        if init is None:
            raise TestbedError(f"th{i} is not running")
        _kill(init, signal.SIGKILL)
        if not _wait_until(lambda: not _alive(self._launcher_pid(i)), KILL_AFTER):
            raise TestbedError(f"th{i}: nspawn still running {KILL_AFTER} s after its PID 1 was killed")

    def freeze(self, i: int) -> None:
        """Freeze every process of the host (a hung host: TCP connects, nothing answers)."""
        self._freeze_file(i).write_text("1")

    def thaw(self, i: int) -> None:
        """Undo freeze()."""
        self._freeze_file(i).write_text("0")

    def partition(self, i: int) -> None:
        """Cut the host off the bridge: peers see timeouts, not refusals."""
        run(["ip", "link", "set", f"{PREFIX}{i}", "down"])

    def heal(self, i: int) -> None:
        """Undo partition()."""
        run(["ip", "link", "set", f"{PREFIX}{i}", "up"])

    def reset(self, i: int) -> TestHost:
        """Stop host i, wipe its overlay's upper dir (fresh state, same host key), boot again."""
        self._stop(i)
        d = self._dir(i)
        run(["umount", str(d / "root")], check=False)
        for sub in ("upper", "work"):
            discard(d / sub)
        return self.boot(i)

    def down(self) -> None:
        """Stop every host and remove everything the test bed set up on this machine."""
        started = time.monotonic()
        indexes = self.indexes()
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(indexes)))) as pool:
            list(pool.map(self._remove_host, indexes))
        self._remove_machine_state()
        if indexes:
            self.record(f"down {len(indexes)} host(s)", time.monotonic() - started)

    def ssh(
        self, host: TestHost, command: str, *, user: str = "root", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run command on host via the ssh binary (strict host key checking, key login only).

        Never raises for the remote side: a timeout gives returncode 124, ssh's own failures 255.
        """
        argv = [*self.ssh_argv(user=user, connect_timeout=min(10.0, timeout)), host.address, command]
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
            return subprocess.CompletedProcess(argv, 124, out, f"ssh timed out after {timeout} s")

    def ssh_argv(self, *, user: str = "root", connect_timeout: float = 10) -> list[str]:
        """The ssh command line (without host and command) the test bed uses."""
        return [
            "ssh", "-F", "/dev/null", "-i", str(self.key_path), "-l", user,
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts_path}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"ConnectTimeout={int(connect_timeout)}",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def indexes(self) -> list[int]:
        """Indexes of the hosts that exist on disk (running or not)."""
        hosts = self.run_dir / "hosts"
        found = [int(p.name[2:]) for p in hosts.glob("th*") if p.name[2:].isdigit()]
        return sorted(found)

    def state(self, i: int) -> str:
        """'running', 'frozen', 'partitioned' (joined by '+'), 'stopped' or 'absent'."""
        if not self._dir(i).exists():
            return "absent"
        if not self._running(i):
            return "stopped"
        states = ["running"]
        with contextlib.suppress(TestbedError, OSError):
            if self._freeze_file(i).read_text().strip() == "1":
                states = ["frozen"]
        link = run(["ip", "-o", "link", "show", f"{PREFIX}{i}"], check=False).stdout
        if link and "state DOWN" in link:
            states.append("partitioned")
        return "+".join(states)

    def vllm_servers(self) -> list[int]:
        """PIDs of the vLLM API servers running on this machine (hosts' processes included)."""
        pids = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                argv = cmdline.read_bytes().decode(errors="replace").split("\0")
                # `vllm serve` as the kernel shows it: the script, or its interpreter then the script.
                serve = any(
                    a.endswith("vllm") and argv[i + 1 : i + 2] == ["serve"] for i, a in enumerate(argv[:2])
                )
                if "vllm.entrypoints.openai.api_server" in argv or serve:
                    pids.append(int(cmdline.parent.name))
        return pids

    def require_vllm_slot(self) -> None:
        """Raise unless another vLLM server may start (memory: MAX_VLLM_SERVERS at once)."""
        running = self.vllm_servers()
        if len(running) >= MAX_VLLM_SERVERS:
            raise TestbedError(
                f"{len(running)} vLLM servers already run (PIDs {running}); at most "
                f"{MAX_VLLM_SERVERS} fit in this machine's memory: stop one first"
            )

    def status(self) -> list[tuple[TestHost, str]]:
        """(host, state) for every host on disk."""
        return [(self.host(i), self.state(i)) for i in self.indexes()]

    # ---- machine-wide setup -------------------------------------------------------------------

    def _prepare_machine(self) -> None:
        if not self.root_dir.is_dir():
            self.build()
        self._ensure_client_key()
        (self.run_dir / "hosts").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "hostkeys").mkdir(parents=True, exist_ok=True)
        self._raise_sysctls()
        if run(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
            run(["ip", "link", "add", BRIDGE, "type", "bridge"])
            run(["ip", "addr", "add", BRIDGE_CIDR, "dev", BRIDGE])
            run(["ip", "link", "set", BRIDGE, "up"])
        self._write_ssh_config()

    def _raise_sysctls(self) -> None:
        saved = self.run_dir / "sysctl.orig.json"
        current = {k: int(Path("/proc/sys", k).read_text().split()[0]) for k in SYSCTLS}
        if not saved.exists():
            saved.write_text(json.dumps(current))
        for key, want in SYSCTLS.items():
            if current[key] < want:  # raise only; never lower what someone else raised
                Path("/proc/sys", key).write_text(str(want))

    def _restore_sysctls(self) -> None:
        saved = self.run_dir / "sysctl.orig.json"
        if saved.exists():
            for key, value in json.loads(saved.read_text()).items():
                Path("/proc/sys", key).write_text(str(value))
            saved.unlink()

    def _remove_machine_state(self) -> None:
        for ns in run(["ip", "netns", "list"], check=False).stdout.split("\n"):
            name = ns.split(" ")[0]
            if name.startswith(PREFIX):
                run(["ip", "netns", "del", name], check=False)
        run(["ip", "link", "del", BRIDGE], check=False)
        for root in cgroup_roots():
            _remove_cgroup_tree(root / CGROUP_GROUP)
        self._restore_sysctls()
        discard(self.run_dir)

    def _write_ssh_config(self) -> None:
        self.ssh_config_path.write_text(
            "Host 10.77.*\n  User root\n"
            f"  IdentityFile {self.key_path}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts_path}\n  StrictHostKeyChecking yes\n"
            "  LogLevel ERROR\n"
        )

    # ---- one host -----------------------------------------------------------------------------

    def _dir(self, i: int) -> Path:
        return self.run_dir / "hosts" / f"th{i}"

    def _cgroups(self, i: int) -> list[Path]:
        return [root / CGROUP_GROUP / f"th{i}" for root in cgroup_roots()]

    def _create(self, i: int) -> None:
        """Network namespace, overlay root and per-host files for host i (idempotent)."""
        self._create_netns(i)
        d = self._dir(i)
        for sub in ("upper", "work", "root"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        if run(["mountpoint", "-q", str(d / "root")], check=False).returncode != 0:
            opts = f"lowerdir={self.root_dir},upperdir={d / 'upper'},workdir={d / 'work'}"
            run(["mount", "-t", "overlay", "overlay", "-o", opts, str(d / "root")])
        self._personalize(i, d / "root")

    def _create_netns(self, i: int) -> None:
        ns, host = f"{PREFIX}{i}", self.host(i)
        if Path("/run/netns", ns).exists():
            return
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "link", "set", ns, "master", BRIDGE, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{host.address}/16", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _personalize(self, i: int, root: Path) -> None:
        """Hostname, the host's own SSH host key, and the client key for root and deploy."""
        name = f"th{i}"
        (root / "etc/hostname").write_text(f"{name}\n")
        (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {name}\n")
        key = self._host_key(i)
        for suffix, mode in (("", 0o600), (".pub", 0o644)):
            target = root / f"etc/ssh/ssh_host_ed25519_key{suffix}"
            target.write_bytes(Path(f"{key}{suffix}").read_bytes())
            target.chmod(mode)
        pub = Path(f"{self.key_path}.pub").read_bytes()
        for home, uid in (("root", 0), ("home/deploy", DEPLOY_UID)):
            auth = root / home / ".ssh/authorized_keys"
            auth.write_bytes(pub)
            auth.chmod(0o600)
            os.chown(auth, uid, uid)

    def _host_key(self, i: int) -> Path:
        """Host i's own ed25519 host key, made on the controller, listed in known_hosts."""
        key = self.run_dir / "hostkeys" / f"th{i}" / "ssh_host_ed25519_key"
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@th{i}", "-f", str(key)])
            self._write_known_hosts()
        return key

    def _write_known_hosts(self) -> None:
        lines = []
        for pub in sorted((self.run_dir / "hostkeys").glob("th*/ssh_host_ed25519_key.pub")):
            kind, blob = pub.read_text().split()[:2]
            lines.append(f"{address_of(int(pub.parent.name[2:]))} {kind} {blob}\n")
        tmp = self.known_hosts_path.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        tmp.replace(self.known_hosts_path)

    def _launch(self, i: int) -> None:
        """Start host i's launcher: its own cgroup, then nspawn in a loop that restarts on 133."""
        d, name = self._dir(i), f"th{i}"
        pid_file = d / "launcher.pid"
        pid_file.unlink(missing_ok=True)
        for cg in self._cgroups(i):
            cg.mkdir(parents=True, exist_ok=True)
        nspawn = [
            "systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet",
            f"--machine={PREFIX}{i}", f"--hostname={name}", f"--directory={d / 'root'}",
            f"--network-namespace-path=/run/netns/{PREFIX}{i}", "--console=passive",
        ]  # fmt: skip
        moves = "".join(f"echo $$ > {shlex.quote(str(cg / 'cgroup.procs'))}; " for cg in self._cgroups(i))
        script = (
            f"echo $$ > {shlex.quote(str(pid_file))}; {moves}"
            f'while :; do {shlex.join(nspawn)}; rc=$?; echo "[testbed] nspawn exited $rc"; '
            "[ $rc -eq 133 ] || break; done"
        )
        with (d / "console.log").open("a") as out:
            run_detached(["setsid", "-f", "bash", "-c", script], out, env=LAUNCH_ENV)
        if not _wait_until(lambda: _alive(self._launcher_pid(i)), 10):
            raise TestbedError(f"{name}: launcher did not start; console log:\n{tail_of(d / 'console.log')}")

    def _launcher_pid(self, i: int) -> int | None:
        """The launcher's PID, only if that PID is still our launcher (PIDs get reused)."""
        try:
            pid = int((self._dir(i) / "launcher.pid").read_text())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if any(f"--machine={PREFIX}{i} ".encode() in a for a in argv) else None

    def _nspawn_pid(self, i: int) -> int | None:
        launcher = self._launcher_pid(i)
        if launcher is None or not _alive(launcher):
            return None
        children = [p for p in _pids_with_parent(launcher) if _comm(p) == "systemd-nspawn"]
        return children[0] if children else None

    def _init_pid(self, i: int) -> int | None:
        nspawn = self._nspawn_pid(i)
        children = _pids_with_parent(nspawn) if nspawn else []
        return children[0] if children else None

    def _running(self, i: int) -> bool:
        return _alive(self._launcher_pid(i))

    def _freeze_file(self, i: int) -> Path:
        root = unified_root()
        if root is None:
            raise TestbedError("no cgroups v2 hierarchy: freeze/thaw are not available")
        group = root / CGROUP_GROUP / f"th{i}"
        for candidate in (group / "payload" / "cgroup.freeze", group / "cgroup.freeze"):
            if candidate.exists():
                return candidate
        raise TestbedError(f"th{i}: no cgroup.freeze under {group} (is the host running?)")

    def _wait_ready_all(self, indexes: Iterable[int]) -> None:
        todo = list(indexes)
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(todo)))) as pool:
            list(pool.map(self._wait_ready, todo))

    def _wait_ready(self, i: int) -> None:
        """TCP 22 accepts, then `systemctl is-system-running --wait` says running."""
        host, deadline = self.host(i), time.monotonic() + BOOT_TIMEOUT
        while not _port_open(host.address, 22):
            self._check_alive(i)
            if time.monotonic() > deadline:
                raise TestbedError(f"{host.name}: port 22 not open after {BOOT_TIMEOUT} s")
            time.sleep(0.05)
        while True:
            proc = self.ssh(host, "systemctl is-system-running --wait", timeout=60)
            state = proc.stdout.strip()
            if state == "running":
                return
            if state in ("degraded", "maintenance", "stopping"):
                failed = self.ssh(host, "systemctl --failed --no-legend --plain").stdout
                raise TestbedError(f"{host.name}: system is {state}; failed units:\n{failed}")
            self._check_alive(i)
            if time.monotonic() > deadline:
                raise TestbedError(f"{host.name}: not ready after {BOOT_TIMEOUT} s: {proc.stderr}")
            time.sleep(0.2)

    def _check_alive(self, i: int) -> None:
        if not self._running(i):
            console = tail_of(self._dir(i) / "console.log")
            raise TestbedError(f"th{i}: systemd-nspawn exited during boot; console log:\n{console}")

    def _stop(self, i: int) -> None:
        """Clean poweroff: SIGTERM to nspawn; again after 20 s; SIGKILL everything after 30 s."""
        if not self._running(i):
            return
        with contextlib.suppress(TestbedError, OSError):
            self.thaw(i)  # a frozen host cannot power off

        def stopped() -> bool:
            return not self._running(i)

        _kill(self._nspawn_pid(i), signal.SIGTERM)
        if _wait_until(stopped, TERM_AGAIN_AFTER):
            return
        log.warning("th%d: still up %.0f s after SIGTERM; sending it again", i, TERM_AGAIN_AFTER)
        _kill(self._nspawn_pid(i), signal.SIGTERM)
        if _wait_until(stopped, KILL_AFTER - TERM_AGAIN_AFTER):
            return
        log.warning("th%d: still up %.0f s after SIGTERM; killing it", i, KILL_AFTER)
        _kill(self._launcher_pid(i), signal.SIGKILL)
        for cg in self._cgroups(i):
            _kill_cgroup_tree(cg)
        if not _wait_until(stopped, 10):
            raise TestbedError(f"th{i}: launcher {self._launcher_pid(i)} survived SIGKILL")

    def _remove_host(self, i: int) -> None:
        self._stop(i)
        d = self._dir(i)
        if run(["mountpoint", "-q", str(d / "root")], check=False).returncode == 0:
            run(["umount", str(d / "root")])
        run(["ip", "netns", "del", f"{PREFIX}{i}"], check=False)  # removes the veth pair too
        discard(Path("/run/systemd/nspawn/propagate") / f"{PREFIX}{i}")
        for cg in self._cgroups(i):
            _kill_cgroup_tree(cg)  # stragglers of a host that was killed, not powered off
            _remove_cgroup_tree(cg)
        discard(d)


def run_detached(argv: list[str], out: IO[str], *, env: dict[str, str]) -> None:
    """Start argv detached from us (setsid -f returns at once); its output goes to out."""
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                       check=True, timeout=30, env=env)  # fmt: skip
    except subprocess.CalledProcessError as exc:
        raise CommandError(argv, exc.returncode, "", "setsid failed") from exc


def _port_open(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cgroup_pids(group: Path) -> list[int]:
    pids = []
    for procs in group.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(pid) for pid in procs.read_text().split()]
    return pids


def _kill_cgroup_tree(group: Path) -> None:
    """SIGKILL every process in a cgroup tree and wait (up to 5 s) until it is empty."""
    if not group.is_dir():
        return
    for pid in _cgroup_pids(group):
        _kill(pid, signal.SIGKILL)
    _wait_until(lambda: not _cgroup_pids(group), 5)


def _remove_cgroup_tree(group: Path) -> None:
    """rmdir a cgroup and its children, deepest first (cgroupfs has no rm -r)."""
    if not group.is_dir():
        return
    dirs = sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for d in [*dirs, group]:
        with contextlib.suppress(OSError):
            d.rmdir()
