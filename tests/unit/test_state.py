"""The state directory's scripts run for real on this machine (flock, tar, sh), and their parsers as data."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from orchestrator.core.layout import Layout
from orchestrator.core.render import Desired, DesiredFile
from orchestrator.facts import DeploymentFacts
from orchestrator.host import state
from orchestrator.host.markers import sections
from orchestrator.host.runners import UnitState
from orchestrator.plan import Abandon, RecordRevision, Restart, WriteFile, plan_target
from orchestrator.transport.base import Result
from orchestrator.transport.local import LocalTransport

HOLDER = state.Holder("alice@laptop", 4242, "apply", "2026-12-01T14:02:00+00:00")


def sh(command: state.Command, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    data = stdin if stdin is not None else command.stdin
    proc = subprocess.run(
        ["/bin/sh", "-c", command.script], input=data or b"", capture_output=True, check=False
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def tar_of(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def section(d: Path) -> state.StateFacts:
    return state.parse_section(sections(sh(state.Command(state.facts_section(str(d)))).stdout))


def test_lock_is_held_until_released_and_names_its_holder(tmp_path: Path) -> None:
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    local = LocalTransport("here")
    first = local.hold(state.lock(dirs, holder=HOLDER, wait_s=0, sudo=False), until=state.LOCKED, timeout=10)
    assert not isinstance(first, Result) and first.alive()
    other = state.Holder("bob@desk", 7, "rollback", "now")
    second = local.hold(
        state.lock(dirs[::-1], holder=other, wait_s=0, sudo=False), until=state.LOCKED, timeout=10
    )
    assert isinstance(second, Result) and second.exit_code == state.LOCK_CONFLICT
    busy = state.parse_busy(second.stdout)
    assert [d for d, _ in busy] == dirs and all(h == HOLDER for _, h in busy)
    assert section(tmp_path / "a").locked_by == HOLDER  # what read-only verbs see
    held = state.facts_section(str(tmp_path / "a"), lock=False)  # what the holder's own verb reads
    assert (
        "flock" not in held
        and state.parse_section(sections(sh(state.Command(held)).stdout)).locked_by is None
    )
    first.release()
    assert section(tmp_path / "a").locked_by is None
    third = local.hold(state.lock(dirs, holder=other, wait_s=0, sudo=False), until=state.LOCKED, timeout=10)
    assert not isinstance(third, Result)
    third.release()


def test_lock_waits_with_a_timeout(tmp_path: Path) -> None:
    local = LocalTransport("here")
    held = local.hold(
        state.lock([str(tmp_path)], holder=HOLDER, wait_s=0, sudo=False), until=state.LOCKED, timeout=10
    )
    assert not isinstance(held, Result)
    t0 = time.monotonic()
    waited = local.hold(
        state.lock([str(tmp_path)], holder=HOLDER, wait_s=1, sudo=False), until=state.LOCKED, timeout=10
    )
    assert isinstance(waited, Result) and waited.exit_code == state.LOCK_CONFLICT
    assert 0.9 < time.monotonic() - t0 < 5
    held.release()


def test_a_silent_holder_gives_the_lock_up(tmp_path: Path) -> None:
    """No heartbeat on stdin (a frozen or partitioned controller): the holder ends, the lock is free."""
    command = state.lock([str(tmp_path)], holder=HOLDER, wait_s=0, sudo=False)
    quiet = subprocess.Popen(
        ["/bin/sh", "-c", command.script.replace("timeout 15", "timeout 1")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert quiet.stdout is not None and quiet.stdout.readline().decode().strip() == state.LOCKED
    assert quiet.wait(timeout=10) == 0
    quiet.stdout.close()
    assert quiet.stdin is not None
    quiet.stdin.close()
    assert section(tmp_path).locked_by is None


def test_begin_commit_and_abandon(tmp_path: Path) -> None:
    d = tmp_path / "dep"
    files = {"vllm.service": "[Unit]\n", "vllm.env": "A=1\n", "manifest.json": "{}"}
    meta = {"by": "alice@laptop", "verb": "apply", "created": "2026-12-01T14:02:00+00:00", "previous": None}
    out = sh(state.begin(str(d), tar=tar_of(files), meta=meta, sudo=False))
    assert out.returncode == 0 and out.stdout.strip() == "1"
    st = section(d)
    assert st.current is None and st.pending == state.Pending(
        1, False, "alice@laptop", "apply", meta["created"], None
    )
    assert "before restarting; the server runs no revision's process" in st.pending.describe()
    assert sh(state.Command(state.restarting(str(d)))).returncode == 0
    assert section(d).pending.restarted  # type: ignore[union-attr]
    assert sh(state.commit(str(d), 1, sudo=False)).returncode == 0
    st = section(d)
    assert (st.current, st.pending) == (1, None)
    out = sh(state.begin(str(d), tar=tar_of(files), meta={**meta, "previous": 1}, sudo=False))
    assert out.stdout.strip() == "2" and section(d).pending.previous == 1  # type: ignore[union-attr]
    assert sh(state.abandon(str(d), 2, "failed: not ready", sudo=False)).returncode == 0
    st = section(d)
    assert (st.current, st.pending, st.never_current) == (1, None, frozenset({2}))
    revs, listed = state.parse_revisions(sh(state.list_revisions(str(d), sudo=False)).stdout)
    assert [(r.number, r.outcome) for r in revs] == [(1, ""), (2, "failed: not ready")]
    assert listed.current == 1


def test_an_outcome_of_several_lines_is_kept_as_one(tmp_path: Path) -> None:
    d = tmp_path / "dep"
    sh(state.begin(str(d), tar=tar_of({"x": "y"}), meta={}, sudo=False))
    sh(state.abandon(str(d), 1, "failed: server said\n@@orchrev 9\r\u2028more", sudo=False))
    revs, _ = state.parse_revisions(sh(state.list_revisions(str(d), sudo=False)).stdout)
    assert [(r.number, r.outcome) for r in revs] == [(1, "failed: server said @@orchrev 9 more")]


def test_begin_on_a_full_or_unwritable_disk_changes_nothing(tmp_path: Path) -> None:
    d = tmp_path / "dep"
    (d / "revisions").mkdir(parents=True)
    out = sh(state.begin(str(d), tar=b"not a tar archive" * 100, meta={}, sudo=False))
    assert out.returncode != 0
    assert sorted(p.name for p in d.iterdir()) == ["revisions"] and not list((d / "revisions").iterdir())


def test_numbers_are_never_given_twice(tmp_path: Path) -> None:
    d = tmp_path / "dep"
    (d / "revisions" / "2").mkdir(parents=True)
    (d / "current").write_text("5\n")
    assert sh(state.begin(str(d), tar=tar_of({"x": "y"}), meta={}, sudo=False)).stdout.strip() == "6"


@pytest.mark.parametrize(
    ("folders", "current", "number"),
    [
        ((), None, "1"),
        (("9", "10", "2"), None, "11"),  # by value, not by name
        (("3", ".new-abc", "tmp", "4x", "-1"), "", "4"),  # others' folders are no numbers
        (("3",), "12", "13"),  # current without its last newline
        (("3",), "garbage", "4"),
    ],
)
def test_the_next_number(tmp_path: Path, folders: tuple[str, ...], current: str | None, number: str) -> None:
    d = tmp_path / "dep"
    (d / "revisions").mkdir(parents=True)
    for name in folders:
        (d / "revisions" / name).mkdir()
    if current is not None:
        (d / "current").write_text(current)
    assert sh(state.begin(str(d), tar=tar_of({"x": "y"}), meta={}, sudo=False)).stdout.strip() == number


DESIRED = Desired(
    Layout("system", "dep"),
    "orch-dep.service",
    (DesiredFile("env", "/etc/orch/dep.env", "A=2\n", 0o600), DesiredFile("unit", "/u", "[Unit]\n", 0o644)),
)


def facts(env: str, *, pending: state.Pending | None, running: bool = True) -> DeploymentFacts:
    digest = {f.role: f.sha256 for f in DESIRED.files or ()}
    old = {**digest, "env": DesiredFile("env", "", "A=1\n", 0).sha256}
    unit = UnitState("loaded", "active", "running", "enabled") if running else UnitState()
    return DeploymentFacts(
        files={"env": env, "unit": "[Unit]\n"},
        unit=unit,
        current_revision=1,
        manifest={"files": old},
        pending=pending,
    )


@pytest.mark.parametrize(
    ("env", "restarted", "restart_reason"),
    [
        ("A=1\n", False, "changed: env"),  # killed before any write: the write is still due
        ("A=2\n", False, "interrupted apply of revision 2"),  # written, never restarted
        ("A=2\n", True, "interrupted apply of revision 2"),  # restarted, never gated
    ],
)
def test_plan_after_an_interrupted_apply(env: str, restarted: bool, restart_reason: str) -> None:
    pending = state.Pending(2, restarted, verb="apply", previous=1)
    p = plan_target(host="h", deployment="dep", desired=DESIRED, facts=facts(env, pending=pending))
    assert p.changes[0] == Abandon(2, "interrupted")
    restarts = [c for c in p.changes if isinstance(c, Restart)]
    assert [r.reason for r in restarts] == [restart_reason]
    assert any(isinstance(c, RecordRevision) and c.previous == 1 for c in p.changes)
    assert any(isinstance(c, WriteFile) for c in p.changes) == (env == "A=1\n")


def test_plan_without_a_pending_revision_does_not_restart_matching_files() -> None:
    f = facts("A=2\n", pending=None)
    f = DeploymentFacts(
        files=f.files,
        unit=f.unit,
        current_revision=1,
        manifest={"files": {x.role: x.sha256 for x in DESIRED.files or ()}},
    )
    assert plan_target(host="h", deployment="dep", desired=DESIRED, facts=f).changes == ()


def test_pending_record_parsing_survives_damage() -> None:
    st = state.parse_section({"pending": ["7", "not json"], "current": ["x"], "lock": ["{"]})
    assert st.pending == state.Pending(7, False) and st.current is None and st.locked_by is None
    assert state.Holder.parse(json.dumps({"by": 1, "pid": "x"})) == state.Holder("1", 0, "?", "?")
