"""Shared pytest fixtures: the session-wide `testbed` (real hosts; tests marked `testbed`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from testbed import Testbed
from testbed.hosts import exclusive

REQUIRED_TOOLS = ("systemd-nspawn", "debootstrap", "ip", "ssh", "ssh-keygen", "mount", "setsid")


def _missing_prerequisite() -> str | None:
    """Why the test bed cannot run here, or None."""
    if os.geteuid() != 0:
        return "the test bed needs root (systemd-nspawn, network namespaces, mounts)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools {missing}: apt-get install systemd-container debootstrap iproute2"
    return None


def _skip_or_fail(reason: str) -> None:
    """Skip locally; in CI (CI=true) a missing prerequisite is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"testbed prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def testbed(pytestconfig: pytest.Config) -> Iterator[Testbed]:
    """The test bed: template built if needed, hosts brought up lazily by `up(n)`, all torn down."""
    if os.environ.get("ORCH_TESTBED") == "0":
        pytest.skip("ORCH_TESTBED=0: test bed disabled")
    reason = _missing_prerequisite()
    if reason:
        _skip_or_fail(reason)
    bed = Testbed()
    with exclusive(wait=float(os.environ.get("ORCH_TESTBED_LOCK_WAIT", "1800"))):
        bed.down()  # leftovers of an interrupted run: start clean
        bed.build()
        pytestconfig.stash[_TIMINGS] = bed.timings
        try:
            yield bed
        finally:
            bed.down()


_TIMINGS = pytest.StashKey[list[tuple[str, float]]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Print the test bed's measured times (build, boot, vLLM ready, teardown)."""
    timings = config.stash.get(_TIMINGS, [])
    if timings:
        terminalreporter.section("testbed timings")
        for what, seconds in timings:
            terminalreporter.write_line(f"{what:<40} {seconds:8.2f} s")
