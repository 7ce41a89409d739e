"""Trust on shared servers, on real hosts: the lock, applies killed at every stage, records that never lie.

The deployments run the stand-in server (tests/standin) under real systemd on real test hosts over real
SSH: what is tested is orch's control path, not vLLM. Each test reads the hosts' truth without orch
(trustbed.Site.truth) and checks that what runs, what the files say and what the records call current
agree.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from orchcli import orch
from trustbed import Site, finish, site_on, start, status

from orchestrator.failpoints import POINTS

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def site(testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from site_on(testbed, tmp_path_factory.mktemp("trust"))


def test_two_applies_at_once_exactly_one_changes_the_hosts(site: Site) -> None:
    hosts = ["th1", "th2"]
    base = site.playbook("race0.yml", "race", hosts, port=8101, demo="base")
    assert orch("apply", base, "-y").returncode == 0
    a = site.playbook("race-a.yml", "race", hosts, port=8101, demo="a", delay=2)
    b = site.playbook("race-b.yml", "race", hosts, port=8101, demo="b", delay=2)
    runs = [start("apply", a, "-y"), start("apply", b, "-y")]
    (rc_a, _, err_a), (rc_b, _, err_b) = (finish(p) for p in runs)
    assert sorted([rc_a, rc_b]) == [0, 1]
    winner, loser_err = ("a", err_b) if rc_a == 0 else ("b", err_a)
    assert "race is locked by" in loser_err and "orch apply since" in loser_err
    assert len([line for line in loser_err.splitlines() if line.strip()]) == 1, loser_err
    for h in hosts:
        assert site.assert_truthful(h, "race", winner)["current"] == 2


def test_lock_timeout_waits_then_plans_against_the_new_state(site: Site) -> None:
    hosts = ["th1", "th2"]
    base = site.playbook("wait0.yml", "wait", hosts, port=8102, demo="base")
    assert orch("apply", base, "-y").returncode == 0
    first = start("apply", site.playbook("wait-a.yml", "wait", hosts, port=8102, demo="a", delay=3), "-y")
    time.sleep(1.5)
    second = start(
        "apply", site.playbook("wait-b.yml", "wait", hosts, port=8102, demo="b"), "-y", "--lock-timeout", "2m"
    )
    rc_first, _, _ = finish(first)
    rc_second, out_second, _ = finish(second)
    assert (rc_first, rc_second) == (0, 0)
    assert '-DEMO="a"' in out_second and '+DEMO="b"' in out_second  # planned against the first one's result
    for h in hosts:
        assert site.assert_truthful(h, "wait", "b")["current"] == 3


def test_a_busy_lock_is_refused_at_once_and_names_its_holder(site: Site) -> None:
    pb = site.playbook("busy.yml", "busy", ["th1"], port=8103, demo="a", delay=4)
    first = start("apply", pb, "-y")
    time.sleep(1.5)
    t0 = time.monotonic()
    other = orch("rollback", pb, "-y")
    assert other.returncode == 1 and time.monotonic() - t0 < 5
    assert "th1: busy is locked by" in other.stderr and "orch apply" in other.stderr
    plan = orch("plan", pb)  # read-only verbs take no lock, and say what runs now
    assert "in progress now:" in plan.stderr
    assert finish(first)[0] == 0


@pytest.mark.parametrize("point", [p for p in POINTS if p != "after-lock"])
def test_apply_killed_at_each_stage_leaves_the_truth_and_converges(site: Site, point: str) -> None:
    """One host, so that the kill falls exactly at ``point`` (on two hosts the other one may be anywhere)."""
    name = f"kill-{point}"
    port = 8110 + POINTS.index(point)
    old = site.playbook(f"{name}-old.yml", name, ["th1"], port=port, demo="old")
    assert orch("apply", old, "-y").returncode == 0
    # Both files change (the env file, and the unit's flags): "between-writes" falls between the two.
    extra = "    args: {--seed: 7}\n"
    new = site.playbook(f"{name}-new.yml", name, ["th1"], port=port, demo="new", delay=1, extra=extra)

    killed = start("apply", new, "-y", env={"ORCH_FAILPOINT": point})
    assert finish(killed)[0] == -9

    changed_files = point not in ("after-facts", "after-pending")
    restarted = point in ("after-restart", "during-gate", "before-commit")
    truth = site.truth("th1", name)
    assert truth["current"] == 1  # the old revision is still the one that passed a gate
    assert (truth["pending"] is not None) == (point != "after-facts")
    if changed_files:
        assert truth["live"] == "new"  # the env file is written first
    assert truth["process"] == ("new" if restarted else "old")
    row = status(site, old)[("th1", name)]
    assert row["revision"] == 1
    if point == "after-facts":
        assert row["pending"] is None and row["runs"] == "revision 1"
    else:
        assert row["pending"]["revision"] == 2 and "was interrupted" in row["detail"]
        assert row["runs"] == ("revision 2, not confirmed by a readiness gate" if restarted else "revision 1")

    plan = orch("plan", new)  # no lock is left behind: the host answers at once
    assert plan.returncode == 2
    if point != "after-facts":
        assert "was interrupted" in plan.stderr
    if restarted or point == "before-restart":
        assert (
            "interrupted apply of revision 2" in plan.stdout
        )  # files already match: the restart is still due

    assert orch("apply", new, "-y").returncode == 0
    assert site.assert_truthful("th1", name, "new")["current"] == (2 if point == "after-facts" else 3)
    assert orch("rollback", new, "-y").returncode == 0  # back to the last revision that served: 1
    site.assert_truthful("th1", name, "old")
    listed = json.loads(orch("revisions", new, "--json").stdout)["revisions"]
    if point != "after-facts":
        assert {r["revision"]: r["state"] for r in listed}[2].startswith("interrupted")


def test_apply_killed_on_two_hosts_leaves_each_status_truthful(site: Site) -> None:
    """Killed while two hosts are at different stages: whatever each reached, status says it."""
    hosts = ["th1", "th2"]
    old = site.playbook("kill2-old.yml", "kill2", hosts, port=8120, demo="old")
    assert orch("apply", old, "-y").returncode == 0
    new = site.playbook(
        "kill2-new.yml", "kill2", hosts, port=8120, demo="new", extra="    args: {--seed: 7}\n"
    )
    assert finish(start("apply", new, "-y", env={"ORCH_FAILPOINT": "after-restart"}))[0] == -9
    rows = status(site, old)
    for h in hosts:
        truth, row = site.truth(h, "kill2"), rows[(h, "kill2")]
        assert truth["current"] == row["revision"] == 1 and truth["pending"] and row["pending"]
        if row["pending"]["restarted"]:
            assert truth["process"] in ("new", None)  # None: killed between the stop and the start
            # What runs, as status says it: the unconfirmed revision, or nothing when the kill came
            # between the stop and the start.
            runs = "nothing" if truth["process"] is None else "revision 2, not confirmed by a readiness gate"
            assert row["runs"] == runs
        else:
            assert row["runs"] == "revision 1" and truth["process"] == "old"
    assert orch("apply", new, "-y").returncode == 0
    for h in hosts:
        site.assert_truthful(h, "kill2", "new")


def test_failed_gate_restores_only_what_this_apply_changed(site: Site) -> None:
    hosts = ["th1", "th2"]
    good = site.playbook("restore-good.yml", "restore", hosts, port=8130, demo="good")
    assert orch("apply", good, "-y").returncode == 0
    bad = site.playbook("restore-bad.yml", "restore", hosts, port=8130, demo="bad", broken=True, timeout=4)
    proc = orch("apply", bad, "-y")
    assert proc.returncode == 1 and "rolling back to revision 1" in proc.stderr
    for h in hosts:
        site.assert_truthful(h, "restore", "good")
    states = orch("revisions", good, "--json").stdout
    assert '"state": "failed:' in states


def test_a_first_apply_that_fails_leaves_no_deployment_but_spares_files_it_did_not_write(site: Site) -> None:
    bad = site.playbook("first-bad.yml", "first", ["th1"], port=8131, demo="bad", broken=True, timeout=4)
    proc = orch("apply", bad, "-y")
    assert proc.returncode == 1 and "rolling back to no deployment (this verb created it)" in proc.stderr
    assert site.truth("th1", "first")["live"] is None
    # Files someone put there by hand (no revision) are restored, not removed, when the first apply fails.
    good = site.playbook("first-good.yml", "first", ["th1"], port=8131, demo="hand")
    assert orch("apply", good, "-y").returncode == 0
    site.sh("th1", "rm -rf /var/lib/orch/first")
    proc = orch("apply", bad, "-y")
    assert proc.returncode == 1 and "rolling back to the files that were there before" in proc.stderr
    t = site.truth("th1", "first")
    assert (t["live"], t["process"], t["active"]) == ("hand", "hand", "active")


def test_a_saved_plan_is_carried_out_exactly_and_refused_once_a_host_changed(site: Site) -> None:
    hosts = ["th1", "th2"]
    assert (
        orch("apply", site.playbook("saved0.yml", "saved", hosts, port=8150, demo="base"), "-y").returncode
        == 0
    )
    one = site.dir / "one.plan.json"
    assert (
        orch(
            "plan", site.playbook("saved1.yml", "saved", hosts, port=8150, demo="one"), "--out", one
        ).returncode
        == 2
    )
    applied = orch("apply", one)  # a saved plan was reviewed when it was made: no question asked
    assert applied.returncode == 0, applied.stderr
    for h in hosts:
        assert site.assert_truthful(h, "saved", "one")["current"] == 2
    again = orch("apply", one)  # what it relied on is gone: it was carried out
    assert again.returncode == 1
    assert "th1 saved: the env file changed since the plan was made" in again.stderr

    two = site.dir / "two.plan.json"
    assert (
        orch(
            "plan", site.playbook("saved2.yml", "saved", hosts, port=8150, demo="two"), "--out", two
        ).returncode
        == 2
    )
    site.sh("th2", "sed -i 's/^DEMO=.*/DEMO=\"hand\"/' /etc/orch/saved.env")
    refused = orch("apply", two)
    assert refused.returncode == 1
    assert "th2 saved: the env file changed since the plan was made" in refused.stderr
    assert "th1 saved:" not in refused.stderr and "nothing was changed" in refused.stderr
    assert site.assert_truthful("th1", "saved", "one")["current"] == 2  # no host was touched
    assert site.truth("th2", "saved")["live"] == "hand"
