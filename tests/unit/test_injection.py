"""No playbook or inventory value runs as shell: every script builder, fed hostile values, run for real.

Each builder only returns text, so the test runs that text with ``/bin/sh -c`` (and bash, a
login shell's usual choice) in a temp folder, HOME pointed there, with stubs for systemctl,
supervisorctl, journalctl, nvidia-smi, ss and sudo first on PATH; then it checks that the
marker file the payloads try to create does not exist. Values the model rejects are built with
``model_construct``: the builders must be safe without the model's checks.
"""

from __future__ import annotations

import base64
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator import facts
from orchestrator.core.layout import Layout
from orchestrator.core.model import Deployment, Host, Launcher, ModelSource, VllmInstall
from orchestrator.core.render import Desired
from orchestrator.host import commands, pyreads, state
from orchestrator.host.commands import MARK, Command
from orchestrator.host.markers import sections
from orchestrator.host.pyreads import Ask
from orchestrator.host.runners import Supervisord, Systemd
from orchestrator.observe import preflight
from orchestrator.provision import hub, upload

STUBS = ("systemctl", "supervisorctl", "journalctl", "nvidia-smi", "ss", "vllm")
SHELLS = [s for s in ("/bin/sh", "/bin/bash") if Path(s).exists()]
# {m} is the marker's path. Each payload tries to run `touch {m}` from a different position.
PAYLOADS = (
    "$(touch {m})",
    "`touch {m}`",
    "; touch {m}",
    "x' ; touch {m}; '",
    'x" ; touch {m}; "',
    "x\\'; touch {m}; #",
    '\\"; touch {m}; #',
    "~/$(touch {m})",
    "a b $(touch {m})",
    "-$(touch {m})",
    "x | touch {m}",
    "x && touch {m}",
    "x\ntouch {m}",
    "${{IFS}}touch${{IFS}}{m}",
    "$(touch {m})/config.json",
)


class Box:
    """A temp folder to run scripts in: stubs on PATH, its own HOME, a marker nobody may create."""

    def __init__(self, root: Path) -> None:
        self.root, self.bin, self.home, self.work = root, root / "bin", root / "home", root / "work"
        for d in (self.bin, self.home, self.work):
            d.mkdir()
        for name in STUBS:
            self._stub(name, "exit 0")
        self._stub("sudo", '[ "$1" = -n ] && shift; exec "$@"')
        self.marker = root / "pwned"

    def _stub(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)

    def payloads(self) -> list[str]:
        return [p.format(m=self.marker) for p in PAYLOADS]

    def run(self, script: str, *, shell: str = "/bin/sh", stdin: bytes | None = None) -> str:
        proc = subprocess.run(
            [shell, "-c", script],
            cwd=self.work,
            env={"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(self.home)},
            input=stdin or b"",
            capture_output=True,
            timeout=30,
            check=False,
        )
        return proc.stdout.decode(errors="replace")

    def assert_safe(self, script: str, *, stdin: bytes | None = None, what: str = "") -> None:
        for shell in SHELLS:
            self.run(script, shell=shell, stdin=stdin)
            assert not self.marker.exists(), f"{what} ran a payload under {shell}:\n{script}"


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def deployment(value: str, *, kind: str = "serve", accelerator: str = "cuda") -> Deployment:
    """A deployment carrying ``value`` in every field a host script sees (model checks bypassed)."""
    return Deployment.model_construct(
        name=value,
        hosts=("h",),
        model=value,
        served_model_name=value,
        accelerator=accelerator,
        gpus=(0,),
        launcher=Launcher.model_construct(kind=kind, venv=value),
        vllm=VllmInstall.model_construct(package=value, version=value, venv=value, python=value),
    )


def hostile_vllm(value: str) -> VllmInstall:
    return VllmInstall.model_construct(
        package=value,
        version=value,
        venv=value,
        python=value,
        index_url=value,
        no_index=False,
        extra_index_urls=(value,),
        find_links=(value,),
        remove=(value, value),
    )


def runners(value: str) -> list[Systemd | Supervisord]:
    return [Systemd("system"), Systemd("user"), Supervisord(conf_dir=value)]


# ---------------------------------------------------------------- every builder, every payload


def command_builders(value: str) -> list[tuple[str, Command | str]]:
    """Every shell text orch builds, each with ``value`` wherever a playbook or inventory reaches."""
    unit = f"orch-{value}.service"
    out: list[tuple[str, Command | str]] = [
        ("qpath", f"printf %s {commands.qpath(value)}"),
        ("write_file", commands.write_file(value, mode=0o600, sudo=False, content=b"x")),
        ("write_file nested", commands.write_file(f"d/{value}/f", mode=0o600, sudo=False, content=b"x")),
        ("remove_file", commands.remove_file(value, sudo=False)),
        ("read_files", commands.read_files({value: value, "env": f"~/{value}"})),
        ("pyreads.script", pyreads.script([Ask(value, value, shlex.quote(value), value, ((value, value),))])),
        ("install_vllm", commands.install_vllm(hostile_vllm(value), sudo=False)),
        ("place_upload", commands.place_upload(value, f"/nonexistent/{value}", sudo=False)),
        ("hub_fetch", commands.hub_fetch(value, "print(1)", b"{}", sudo=False, label="x")),
        ("wrap_sudo", commands.wrap_sudo(f"printf %s {commands.qpath(value)}")),
        ("upload.remote_script", upload.remote_script(value, value)),
    ]
    for r in runners(value):
        name = type(r).__name__
        out += [
            (f"{name} reload", commands.reload(r, unit, sudo=False)),
            (f"{name} enable", commands.enable(r, unit, sudo=False)),
            (f"{name} disable", commands.disable(r, unit, sudo=False)),
            (f"{name} logs", commands.logs(r, unit, sudo=False, lines=5)),
            (f"{name} unit_state", commands.unit_state(r, unit, sudo=False)),
            (f"{name} unit_state, no log", commands.unit_state(r, unit, sudo=False, journal_lines=0)),
            (f"{name} stop", commands.stop(r, unit, sudo=False)),
            (f"{name} restart", commands.restart(r, unit, sudo=False)),
            (f"{name} main_pid", r.main_pid(unit)),
            (f"{name} processes", r.processes(unit)),
        ]
    holder = state.Holder(by=value, pid=1, verb=value, since=value)
    out += [
        ("state.lock", state.lock([value, f"~/{value}"], holder=holder, wait_s=0, sudo=False)),
        ("state.begin", state.begin(value, tar=b"", meta={"by": value}, sudo=False)),
        ("state.restarting", state.restarting(value)),
        ("state.commit", state.commit(value, 1, sudo=False)),
        ("state.abandon", state.abandon(value, 1, value, sudo=False)),
        ("state.facts_section", state.facts_section(value)),
        ("state.read_revision", state.read_revision(value, 1, sudo=False)),
        ("state.list_revisions", state.list_revisions(value, sudo=False)),
    ]
    return out


def test_command_builders_run_no_payload(box: Box) -> None:
    for value in box.payloads():
        for what, built in command_builders(value):
            script, stdin = (built.script, built.stdin) if isinstance(built, Command) else (built, None)
            box.assert_safe(script, stdin=stdin, what=f"{what} with {value!r}")


def test_fact_gathering_runs_no_payload(box: Box) -> None:
    for value in box.payloads():
        layouts = [
            Layout("system", value),
            Layout("user", value),
            Layout("system", value, "supervisord", value),
        ]
        queries = [facts.FactQuery(lay, value, hostile_vllm(value), value, value) for lay in layouts]
        box.assert_safe(facts.gather(queries, sudo=False).script, what=f"facts.gather with {value!r}")


@pytest.mark.parametrize("kind", ["serve", "api_server"])
def test_preflight_script_runs_no_payload(box: Box, kind: str) -> None:
    for value in box.payloads():
        for host in (
            Host.model_construct(address=value, runner="supervisord", supervisor_conf_dir=value),
            Host.model_construct(address=value, scope="user"),
        ):
            deps = [deployment(value, kind=kind), deployment(value, kind=kind, accelerator="cpu")]
            box.assert_safe(preflight.script(host, deps), what=f"preflight with {value!r}")
            joined = (
                f"{preflight.script(host, deps, after_facts=True)}; {pyreads.script(preflight.asks(deps))}"
            )
            box.assert_safe(joined, what=f"preflight after facts with {value!r}")


def test_preflight_without_venv_runs_no_payload(box: Box) -> None:
    for value in box.payloads():
        dep = deployment(value).model_copy(update={"launcher": Launcher.model_construct(kind="serve")})
        dep = dep.model_copy(update={"vllm": None})
        box.assert_safe(preflight.script(Host(address="h"), [dep]), what=f"preflight with {value!r}")
        box.assert_safe(pyreads.script(preflight.asks([dep])), what=f"its version probe with {value!r}")


def test_hub_command_runs_no_payload(box: Box) -> None:
    for value in box.payloads():
        spec = ModelSource.model_construct(source="hf", dest=value, id=value, revision=value, local=None)
        desired = Desired(Layout("system", value), value, None, fetch=spec, python=value)
        built = hub.command("probe", desired, sudo=False)
        box.assert_safe(built.script, stdin=built.stdin, what=f"hub.command with {value!r}")


# ---------------------------------------------------------------- values read back verbatim


def test_qpath_keeps_every_value_one_word(box: Box) -> None:
    for value in [*box.payloads(), "-rf", "--help", "plain", "with space", "~", "~user/x", ""]:
        expected = str(box.home / value[2:]) if value.startswith("~/") else value
        expected = "./" + expected if expected.startswith("-") else expected
        assert box.run(f"printf %s {commands.qpath(value)}") == expected


def test_leading_dash_paths_are_files_not_options(box: Box) -> None:
    """``-x`` is read as the file ``./-x`` by test, cat, base64, find and the runner's probe."""
    folder = box.work / "-m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "x"}')
    (box.work / "-c").mkdir()
    (box.work / "-c" / "orch-d.conf").write_text("[program:orch-d]\n")
    out = box.run(commands.read_files({"unit": "-m/config.json"}))
    assert f"{MARK}file unit" in out
    assert base64.b64encode(b'{"model_type": "x"}').decode() in out
    listing = box.run(upload.remote_script("-m", ".orch-upload.json"))
    assert "config.json\t19" in listing
    assert "UnitFileState=enabled" in box.run(Supervisord(conf_dir="-c").state("orch-d.service"))
    dep = Deployment.model_construct(
        name="d", hosts=("h",), model="-m", accelerator="cpu", launcher=Launcher(), vllm=None
    )
    probe = preflight.parse(box.run(preflight.script(Host(address="h"), [dep])))
    assert probe.deployments["d"].model_is_dir
    assert probe.deployments["d"].model_config == {"model_type": "x"}


def test_package_name_is_an_argument_of_the_version_probe(box: Box) -> None:
    venv = box.root / "venv"
    (venv / "bin").mkdir(parents=True)
    python = shutil.which("python3")
    assert python is not None
    (venv / "bin" / "python").symlink_to(python)
    spec = VllmInstall.model_construct(package="pip')\nimport os; os.system('touch x", venv=str(venv))
    query = facts.FactQuery(Layout("system", "d"), "orch-d.service", spec)
    box.assert_safe(pyreads.script(facts.asks([query])), what="the pinned version probe")
    assert not (box.work / "x").exists()
    pip = VllmInstall.model_construct(package="pip", venv=str(venv))
    out = box.run(pyreads.script(facts.asks([facts.FactQuery(Layout("system", "d"), "orch-d.service", pip)])))
    assert sections(out.split("@@orchdep d\n", 1)[1])["vllm"][0][:1].isdigit()


def test_hostile_names_come_back_whole(box: Box) -> None:
    """The deployment name is echoed as one word, so the facts parser finds it under its own name."""
    for value in ("a b", "$(id)", "x'y", '"q"', "-n"):
        q = facts.FactQuery(Layout("user", value), f"orch-{value}.service")
        parsed = facts.parse(box.run(facts.gather([q], sudo=False).script), Systemd("user"))
        assert list(parsed) == [value]
