"""commands.steps: several commands as one script, run here by a real shell."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from orchestrator.host import commands
from orchestrator.host.commands import Command, split_steps, steps, write_file
from orchestrator.host.runners import Systemd


def run(command: Command) -> tuple[int, str]:
    done = subprocess.run(["sh", "-c", command.script], input=command.stdin or b"", capture_output=True)
    return done.returncode, done.stdout.decode()


def test_each_command_reads_exactly_its_own_stdin_and_the_outputs_split_back(tmp_path: Path) -> None:
    cmds = [
        write_file(str(tmp_path / "a.env"), mode=0o600, sudo=False, content=b"A=1\nB=2"),  # no last newline
        Command("head -c 2; echo", stdin=b"xyz-left-unread", label="reads part"),  # the rest is drained
        write_file(str(tmp_path / "empty"), mode=0o644, sudo=False, content=b""),
        Command("echo plain; printf 'no newline'", label="no stdin"),
    ]
    code, out = run(steps(cmds, label="all"))

    assert code == 0
    assert (tmp_path / "a.env").read_bytes() == b"A=1\nB=2"
    assert (tmp_path / "a.env").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "empty").read_bytes() == b""
    start, ended = split_steps(out)
    assert start is not None and start > 0  # the host's uptime
    assert [(s.stdout, s.code) for s in ended] == [("", 0), ("xy\n", 0), ("", 0), ("plain\nno newline", 0)]
    assert all(s.at is not None and s.at >= start for s in ended)


def test_the_first_failure_ends_the_script_with_its_code(tmp_path: Path) -> None:
    cmds = [
        Command("set -e; false; echo never", label="fails"),  # its set -e stays in its own subshell
        Command(f"touch {tmp_path / 'not-run'}", label="after"),
    ]
    code, out = run(steps([Command("set -e; echo one", label="first"), *cmds], label="all"))

    assert code == 1
    _, ended = split_steps(out)
    assert [(s.stdout, s.code) for s in ended] == [("one\n", 0), ("", 1)]
    assert not (tmp_path / "not-run").exists()


def test_a_mixed_sudo_list_wraps_only_the_commands_that_need_it() -> None:
    joined = steps([Command("id -u", sudo=True), Command("true")], label="mixed")
    assert not joined.sudo and "sudo -n sh -c 'id -u'" in joined.script
    assert steps([Command("a", sudo=True), Command("b", sudo=True)], label="both").sudo


def test_a_write_makes_its_missing_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.env"
    code, _ = run(write_file(str(target), mode=0o600, sudo=False, content=b"A=1\n"))
    assert code == 0 and target.read_bytes() == b"A=1\n"


def test_a_write_to_a_bare_file_name_lands_in_the_working_folder(tmp_path: Path) -> None:
    command = write_file("x.env", mode=0o600, sudo=False, content=b"A=1\n")
    done = subprocess.run(["sh", "-c", command.script], input=command.stdin, cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "x.env").read_bytes() == b"A=1\n"


class _Stopped(Systemd):
    """A unit whose main process is ``pid`` and whose stop does nothing (the test ends the process)."""

    def __init__(self, pid: int) -> None:
        super().__init__("system")
        self.pid = pid

    def main_pid(self, unit: str) -> str:
        return f"echo {self.pid}"

    def stop(self, unit: str) -> str:
        return "true"


def test_a_process_in_its_exit_path_is_waited_for_and_is_no_survivor() -> None:
    """A process that ends 0.3 s after the stop is waited for, not reported, and the script goes on
    once it has ended, not after the whole 5 s a survivor gets."""
    proc = subprocess.Popen(["sleep", "0.3"])
    threading.Thread(target=proc.wait).start()  # reaped as it ends, as a unit's process is by systemd
    started = time.monotonic()
    out = subprocess.run(
        ["sh", "-c", commands.stop(_Stopped(proc.pid), "u", sudo=False).script],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    took = time.monotonic() - started
    assert f"{commands.LEFT_MARK}\n" in out or out.rstrip().endswith(commands.LEFT_MARK)
    assert 0.25 <= took < 3


def test_a_zombie_is_no_survivor() -> None:
    """A process that has exited but is not yet reaped (a container's init may take seconds to) holds
    nothing the next start needs: the stop does not wait for it."""
    parent = subprocess.Popen(["sh", "-c", "sleep 0.05 & exec sleep 30"])  # the sleep never reaps its child
    try:
        zombie = 0
        for _ in range(100):
            ps = subprocess.run(
                ["ps", "-o", "pid=,stat=", "--ppid", str(parent.pid)], capture_output=True, text=True
            )
            zombie = next(
                (int(p) for p, st in (line.split() for line in ps.stdout.splitlines()) if st.startswith("Z")),
                0,
            )
            if zombie:
                break
            time.sleep(0.05)
        assert zombie, "no zombie to look at"
        started = time.monotonic()
        script = commands.stop(_Stopped(zombie), "u", sudo=False).script
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
        assert out.rstrip().endswith(commands.LEFT_MARK) and time.monotonic() - started < 1
    finally:
        parent.kill()
        parent.wait()
