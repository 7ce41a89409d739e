"""``-v``/``-vv``: every command a verb runs on a host is seen as it ends (and, at -vv, with its script as
it starts), secrets hidden and stdin never shown; the verbs' ``--json`` forms for logs and monitoring.

The transports are FakeTransports (``fakehost``); the observing transport, the trace and the CLI are real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakehost import deployment, facts_output, holding, ok, on_fake_hosts, playbook

from orchestrator import session as sessions
from orchestrator.cli.args import parser
from orchestrator.cli.main import VERBS, main
from orchestrator.errors import CommandError, UnreachableError
from orchestrator.facts import DeploymentFacts
from orchestrator.host.commands import Command
from orchestrator.trace import Trace
from orchestrator.transport import Observed
from orchestrator.transport.base import Result
from orchestrator.transport.fake import FakeTransport

SECRET = "tok-5b1e-very-secret"
OLD_SECRET = "tok-0ld-from-the-host"


def traced(level: int) -> tuple[Trace, list[str]]:
    lines: list[str] = []
    return Trace(level, lines.append), lines


def test_each_kind_of_call_is_seen_as_it_ends_with_host_label_outcome_and_time(tmp_path: Path) -> None:
    trace, lines = traced(1)
    fake = FakeTransport("h1").on("fails", Result("", "no such unit", 3))
    fake.on("lost", UnreachableError("h1", "connection lost"))
    host = Observed(fake, trace)

    assert host.run(Command("true", label="say yes")).exit_code == 0
    with pytest.raises(CommandError):  # checked as before, after the exit code was seen
        host.run(Command("false", label="it fails"))
    assert host.run(Command("false", label="it fails"), check=False).exit_code == 3
    with pytest.raises(UnreachableError):
        host.run(Command("x", label="connection lost"))
    assert host.stream(Command("journalctl", label="logs of u"), lambda line: None) == 0
    host.hold(Command("flock", label="lock /var/lib/orch/x"), until="@@locked", timeout=5)
    (tmp_path / "f").write_text("data")
    host.put(tmp_path / "f", "/tmp/f")

    outcomes = [line.split(" (")[0] for line in lines]
    assert outcomes == [
        "[h1] say yes → exit 0",
        "[h1] it fails → exit 3",
        "[h1] it fails → exit 3",
        "[h1] connection lost → error: connection lost",
        "[h1] logs of u → exit 0",
        "[h1] lock /var/lib/orch/x → held",
        f"[h1] upload {tmp_path / 'f'} to /tmp/f → done",
    ]
    assert all(line.endswith("s)") for line in lines)  # every line ends with its time
    assert [c.label for c in fake.sent][-1] == "put /tmp/f"  # the copy reached the host


def test_very_verbose_shows_the_script_as_it_starts_never_the_stdin_and_hides_secrets() -> None:
    trace, lines = traced(2)
    trace.hide([SECRET])
    host = Observed(FakeTransport("h1"), trace)
    host.run(Command(f"echo {SECRET} | wc -c", label="count", sudo=True))
    host.run(Command("cat >/etc/orch/x.env", stdin=f"MY_TOKEN={SECRET}\n".encode(), label="write x.env"))

    text = "\n".join(lines)
    assert SECRET not in text
    assert lines[0] == "[h1] start: count\n    script (as root through sudo -n): echo *** | wc -c"
    assert lines[2] == (
        "[h1] start: write x.env\n    script: cat >/etc/orch/x.env\n    stdin: 30 bytes (not shown)"
    )
    assert lines[3].startswith("[h1] write x.env → exit 0 (")


def test_at_one_v_no_script_is_shown() -> None:
    trace, lines = traced(1)
    Observed(FakeTransport("h1"), trace).run(Command("echo hello", label="greet"))
    [line] = lines
    assert line.startswith("[h1] greet → exit 0") and "echo hello" not in line


def test_an_apply_shows_every_command_it_runs_and_hides_the_secrets_it_learns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = playbook(tmp_path, deployment("x", gate=False, secrets="{MY_TOKEN: {env: MY_TOKEN}}"))
    [target] = loaded.targets()
    before = sessions.rendered(loaded, {"x": {"MY_TOKEN": OLD_SECRET}})(None, target)  # type: ignore[arg-type]
    fake = FakeTransport("alpha").on("gather facts", ok(facts_output({"x": holding(before)})))
    on_fake_hosts(monkeypatch, fake.on("record pending", ok("2\n")))
    trace, lines = traced(2)

    with sessions.Session(loaded, loaded.targets(), trace=trace) as session:
        session.lock("apply")
        session.gather()
        plans = session.plans(sessions.rendered(loaded, {"x": {"MY_TOKEN": SECRET}}), meta={})
        [result] = session.execute(plans)
    assert result.status == "applied", result.message

    text = "\n".join(lines)
    assert fake.labels and all(fake.labels)  # every command has a label…
    starts = [line for line in lines if line.startswith("[alpha] start: ")]
    ends = [line for line in lines if " → " in line and not line.startswith("[alpha] start: ")]
    for label in fake.labels:  # …and each was seen starting and ending (alone, or in a joined script)
        assert any(label in line for line in starts), label
        assert any(label in line for line in ends), label
    assert "[alpha] lock /var/lib/orch/x → held" in text
    assert any("write /etc/orch/x.env" in line for line in starts) and " bytes (not shown)" in text
    assert SECRET not in text and OLD_SECRET not in text
    # Both values are hidden from now on: the one the playbook gave, and the one read from the host.
    trace.started("alpha", Command(f"echo {SECRET} {OLD_SECRET}", label="leak?"))
    assert lines[-1].endswith("script: echo *** ***")


def test_without_a_trace_the_session_uses_the_transports_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = playbook(tmp_path, deployment("x", gate=False))
    fake = FakeTransport("alpha")
    on_fake_hosts(monkeypatch, fake)
    with sessions.Session(loaded, loaded.targets()) as session:
        assert session.runs["alpha"].transport is fake


@pytest.mark.parametrize("verb", sorted(set(VERBS) - {"validate", "import"}))  # import reads no host
def test_every_verb_that_may_reach_a_host_takes_v_and_vv(verb: str) -> None:
    extra = ["--out", "d"] if verb == "monitoring" else []
    assert parser().parse_args([verb, "pb.yml", "-vv", *extra]).verbose == 2
    assert parser().parse_args([verb, "pb.yml", "-v", *extra]).verbose == 1
    assert parser().parse_args([verb, "pb.yml", *extra]).verbose == 0


def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, FakeTransport]:
    loaded = playbook(tmp_path, deployment("x", gate=False))
    fake = FakeTransport("alpha").on("gather facts", ok(facts_output({"x": DeploymentFacts()})))
    on_fake_hosts(monkeypatch, fake)
    return loaded.path, fake


def test_status_v_prints_each_command_on_stderr_and_nothing_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = fake_site(tmp_path, monkeypatch)
    assert main(["status", str(path)]) == 0
    assert capsys.readouterr().err == ""
    assert main(["status", str(path), "-v"]) == 0
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("[alpha] gather facts and preflight probes → exit 0 (")
    assert main(["status", str(path), "-vv"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("[alpha] start: gather facts and preflight probes\n    script: ")
    assert "echo '@@orchdep x';" in err


def test_logs_json_is_one_object_a_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, fake = fake_site(tmp_path, monkeypatch)
    fake.on("logs of", ok('INFO started\n[bold]not markup[/bold] "quoted"\n'))
    assert main(["logs", str(path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        {"host": "alpha", "deployment": "x", "line": "INFO started"},
        {"host": "alpha", "deployment": "x", "line": '[bold]not markup[/bold] "quoted"'},
    ]


def test_monitoring_json_lists_the_files_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = fake_site(tmp_path, monkeypatch)
    assert main(["monitoring", str(path), "--out", str(tmp_path / "mon"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["targets"] == 1 and data["errors"] == []
    assert data["written"] and all(Path(p).is_file() for p in data["written"])
    assert {Path(p).parent for p in data["written"]} == {tmp_path / "mon"}
