"""Host faults on real hosts: a crash during the gate, a freeze during an upload, a dropped connection while
files are written, a full disk while recording, damaged revisions, a reboot.

Each fault hits th3 while th1 takes the same apply: th1's result must stay intact, and th3 must be left on a
recorded revision (or a pending record that says how far the apply got), then converge on the next apply.
The deployments run the stand-in server (tests/standin) under real systemd.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from orchcli import orch
from trustbed import Site, finish, resume, site_on, start, status, wait_stopped

pytestmark = pytest.mark.testbed
BOTH = ["th1", "th3"]


@pytest.fixture(scope="module")
def site(testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from site_on(testbed, tmp_path_factory.mktemp("faults"))


def _result_lines(out: str) -> dict[str, str]:
    """host → its row of the Result table (in a pipe: its title, a header line, then a line a row)."""
    lines = out.splitlines()
    rows = itertools.takewhile(
        lambda line: line and not line.startswith("──"), lines[lines.index("Result") + 2 :]
    )
    return {line.split()[0]: line for line in rows}


def test_host_crashing_during_the_gate(site: Site, testbed: Any) -> None:
    old = site.playbook("crash-old.yml", "crash", BOTH, port=8140, demo="old")
    assert orch("apply", old, "-y").returncode == 0
    new = site.playbook("crash-new.yml", "crash", BOTH, port=8140, demo="new", delay=3, timeout=60)
    proc = start("apply", new, "-y", env={"ORCH_FAILPOINT": "during-gate:stop"})
    wait_stopped(proc)
    testbed.crash(3)
    resume(proc)
    rc, out, _ = finish(proc)
    rows = _result_lines(out)
    assert rc == 1 and "applied" in rows["th1"] and "failed" in rows["th3"]
    site.assert_truthful("th1", "crash", "new")
    testbed.boot(3)
    t = site.truth("th3", "crash")  # the enabled unit came back with the new files, not yet gated
    assert (t["current"], t["live"], t["process"]) == (1, "new", "new") and t["pending"]
    assert status(site, new)[("th3", "crash")]["runs"] == "revision 2, not confirmed by a readiness gate"
    assert orch("apply", new, "-y").returncode == 0
    assert site.assert_truthful("th3", "crash", "new")["current"] == 3
    assert site.assert_truthful("th1", "crash", "new")["current"] == 2


def test_host_frozen_during_a_model_upload(site: Site, testbed: Any) -> None:
    model = site.dir / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    weights = os.urandom(96 * 2**20)
    (model / "weights.bin").write_bytes(weights)
    copying = f"/tmp/orch-upload-{hashlib.sha256(weights).hexdigest()[:16]}"  # upload.py's temp name
    extra = "    model: {source: upload, local: model, dest: /srv/models/frozen}\n"
    pb = site.playbook("frozen.yml", "frozen", BOTH, port=8141, demo="up")
    pb.write_text(pb.read_text().replace("    model: /srv/models/standin\n", extra))
    proc = start("apply", pb, "-y")
    deadline = time.monotonic() + 60
    while not site.sh("th3", f"ls {copying} 2>/dev/null || true").strip():
        assert time.monotonic() < deadline and proc.poll() is None, "the upload never began"
        time.sleep(0.1)
    testbed.freeze(3)
    t0 = time.monotonic()
    try:
        rc, out, _ = finish(proc, timeout=180)
    finally:
        testbed.thaw(3)
    rows = _result_lines(out)
    assert rc == 1 and "applied" in rows["th1"] and "timed out" in rows["th3"], out
    assert time.monotonic() - t0 < 90  # the stalled copy fails; it does not hang the apply
    site.assert_truthful("th1", "frozen", "up")
    t = site.truth("th3", "frozen")
    assert (t["current"], t["live"], t["active"]) == (None, None, "inactive") and t["pending"]
    assert orch("apply", pb, "-y").returncode == 0  # resumes the copy and converges
    site.assert_truthful("th3", "frozen", "up")


def test_connection_dropped_while_files_are_written(site: Site) -> None:
    old = site.playbook("drop-old.yml", "drop", BOTH, port=8142, demo="old")
    assert orch("apply", old, "-y").returncode == 0
    new = site.playbook("drop-new.yml", "drop", BOTH, port=8142, demo="new", extra="    args: {--seed: 7}\n")
    proc = start("apply", new, "-y", env={"ORCH_FAILPOINT": "between-writes:stop"})
    wait_stopped(proc)
    site.testbed.ssh(site.hosts["th3"], "pkill -KILL -f 'sshd: root@notty'")  # every session of th3 drops
    resume(proc)
    rc, out, _ = finish(proc)
    assert rc == 1 and "failed" in _result_lines(out)["th3"]
    site.assert_truthful("th1", "drop", "new")
    t = site.truth("th3", "drop")
    assert (t["current"], t["process"]) == (1, "old") and t["pending"]
    plan = orch("plan", new)
    assert "was interrupted before restarting; the server runs revision 1's process" in plan.stderr
    assert orch("apply", new, "-y").returncode == 0
    site.assert_truthful("th3", "drop", "new")


def test_state_filesystem_full_while_writing_and_while_recording(site: Site) -> None:
    state = "/var/lib/orch/full"
    site.sh("th3", f"mkdir -p {state} && mount -t tmpfs -o size=96k tmpfs {state}")
    fill = f"head -c 10000000 /dev/zero >{state}/filler 2>/dev/null; true"
    try:
        base = site.playbook("full-0.yml", "full", BOTH, port=8143, demo="base")
        assert orch("apply", base, "-y").returncode == 0
        site.sh("th3", fill)
        one = site.playbook("full-1.yml", "full", BOTH, port=8143, demo="one")
        proc = orch("apply", one, "-y")
        assert proc.returncode == 1 and "No space left on device" in _result_lines(proc.stdout)["th3"]
        site.assert_truthful("th1", "full", "one")
        site.assert_truthful("th3", "full", "base")  # nothing live changed on the full host

        site.sh("th3", f"rm -f {state}/filler")
        two = site.playbook("full-2.yml", "full", BOTH, port=8143, demo="two")
        running = start("apply", two, "-y", env={"ORCH_FAILPOINT": "before-commit:stop"})
        wait_stopped(running)
        site.sh("th3", fill)
        resume(running)
        rc, out, _ = finish(running)
        assert rc == 1 and "could not be made current" in _result_lines(out)["th3"]
        t = site.truth("th3", "full")
        assert (t["current"], t["process"]) == (1, "two") and t["pending"]
        site.sh("th3", f"rm -f {state}/filler")
        assert orch("apply", two, "-y").returncode == 0
        site.assert_truthful("th3", "full", "two")
    finally:
        site.sh("th3", f"umount {state} || true")


def test_damaged_or_removed_revisions(site: Site) -> None:
    for n, demo in enumerate(("one", "two", "three"), 1):
        pb = site.playbook(f"dmg-{n}.yml", "dmg", ["th1"], port=8144, demo=demo)
        assert orch("apply", pb, "-y").returncode == 0
    site.sh("th1", "echo 'DEMO=\"tampered\"' >>/var/lib/orch/dmg/revisions/2/vllm.env")
    proc = orch("rollback", pb, "-y")
    said = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1 and "revision 2 is damaged: vllm.env does not match its checksum" in said
    site.sh("th1", "rm -rf /var/lib/orch/dmg/revisions/1")
    proc = orch("rollback", pb, "-y", "--to", "1")
    assert proc.returncode == 1 and "has no revision 1" in proc.stdout + proc.stderr
    site.assert_truthful("th1", "dmg", "three")
    pid = site.sh("th1", "systemctl show -p MainPID --value orch-dmg.service")
    site.sh("th1", "rm -rf /var/lib/orch/dmg/revisions/3")  # the current one, removed by hand
    assert status(site, pb)[("th1", "dmg")]["ready"] is True
    plan = orch("plan", pb)
    assert plan.returncode == 2 and "record a new revision" in plan.stdout and "~ restart" not in plan.stdout
    assert orch("apply", pb, "-y").returncode == 0
    assert site.assert_truthful("th1", "dmg", "three")["current"] == 4
    assert (
        site.sh("th1", "systemctl show -p MainPID --value orch-dmg.service") == pid
    )  # recorded, not restarted


def test_host_rebooted(site: Site, testbed: Any) -> None:
    pb = site.playbook("boot.yml", "boot", ["th3"], port=8145, demo="boot")
    assert orch("apply", pb, "-y").returncode == 0
    before = status(site, pb)[("th3", "boot")]
    time.sleep(1.1)  # the unit's start time has a resolution of one second
    site.testbed.ssh(site.hosts["th3"], "systemctl reboot")
    time.sleep(2)
    testbed.boot(3)
    deadline = time.monotonic() + 60
    while (row := status(site, pb)[("th3", "boot")]).get("ready") is not True:
        assert time.monotonic() < deadline, row
        time.sleep(1)
    assert (
        row["since"] != before["since"] and row["revision"] == before["revision"] and row["pending"] is None
    )
    site.assert_truthful("th3", "boot", "boot")
