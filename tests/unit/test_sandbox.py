"""A playbook's templates cannot run code or read files on the controller.

Each hostile template is one ConfigError line naming the template file (and its line), nothing
it tries runs (no marker file appears) and nothing of a file is printed. Overrides are regular
UTF-8 files below the playbook's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from orchcli import orch

from orchestrator import session
from orchestrator.core.load import load
from orchestrator.core.model import Deployment, Host
from orchestrator.core.render import TemplateSource, TemplateSources, render
from orchestrator.core.sources import MAX_TEMPLATE_BYTES, override_problem, shipped, templates_for
from orchestrator.errors import ConfigError

FILE_TEXT = "FILE-CONTENT-NEVER-SHOWN"
SECRET = "sEcReT-value-42"

# {marker} is a file the payload would create, {file} one it would print.
HOSTILE = {
    "mro subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler globals os.popen": "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "joiner globals os.system": "{{ joiner.__init__.__globals__.os.system('touch {marker}') }}",
    "namespace globals": "{{ namespace.__init__.__globals__['os'].system('touch {marker}') }}",
    "lipsum globals": "{{ lipsum.__globals__ }}",
    "lipsum os via item": "{{ lipsum['__globals__']['os'].system('touch {marker}') }}",
    "self reference": "{{ self.__init__.__globals__ }}",
    "format string": "{{ '{0.__class__.__mro__}'.format('') }}",
    "attr filter": "{{ ''|attr('__class__') }}",
    "include": "{% include '{file}' %}",
    "import": "{% import '{file}' as x %}",
    "from import": "{% from '{file}' import x %}",
    "extends": "{% extends '{file}' %}",
    "pydantic parse_file": "{{ deployment.parse_file('{file}') }}",
    "pydantic parse_raw via attr": "{{ (deployment|attr('parse_raw'))('{{}}') }}",
    "pydantic model_dump": "{{ host.model_dump() }}",
    "list mutation": "{% set _ = env.append(1) %}",
    "huge string": "{{ 'x' * 10**9 }}",
    "huge power": "{{ 7 ** 99999999 }}",
    "huge range": "{{ range(10**9)|list }}",
    "endless recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "division by zero": "line 1\n{{ 1 // 0 }}",
    "undefined": "{{ config }}",
    "syntax": "{{ x",
}


def dep(**kw: object) -> Deployment:
    base: dict[str, object] = {"name": "d", "hosts": ["h"], "model": "/m/x", "gpus": [0]}
    return Deployment.model_validate(base | kw)


def with_unit(text: str) -> TemplateSources:
    return TemplateSources(
        unit=TemplateSource("/pb/evil.service.j2", text),
        env=shipped("vllm.env.j2"),
        supervisor=shipped("vllm.supervisor.j2"),
    )


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_is_one_config_error(
    name: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    marker, file = tmp_path / "PWNED", tmp_path / "private.txt"
    file.write_text(FILE_TEXT)
    text = HOSTILE[name].replace("{marker}", str(marker)).replace("{file}", str(file))
    with pytest.raises(ConfigError) as info:
        render(dep(), Host(address="x"), secrets={"HF_TOKEN": SECRET}, templates=with_unit(text))
    message = str(info.value)
    assert info.value.file == "/pb/evil.service.j2"
    assert message.startswith("/pb/evil.service.j2") and "\n" not in message
    assert not marker.exists()
    assert FILE_TEXT not in message and SECRET not in message
    assert capfd.readouterr() == ("", "")


def test_a_refusal_holds_when_the_attribute_was_read_before() -> None:
    """The sandbox keeps its answers per (type, name): one name allowed does not let another through,
    and a name refused once is refused again."""
    fine = render(dep(), Host(address="x"), secrets={}, templates=with_unit("{{ host.address }}\n"))
    assert fine.file("unit") is not None
    for _ in range(2):
        with pytest.raises(ConfigError, match="model_dump"):
            render(dep(), Host(address="x"), secrets={}, templates=with_unit("{{ host.model_dump() }}"))


def test_error_names_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        render(dep(), Host(address="x"), secrets={}, templates=with_unit("a\nb\n{{ 1 // 0 }}\n"))
    assert info.value.line == 3
    assert (
        str(info.value)
        == "/pb/evil.service.j2:3: template: ZeroDivisionError: integer division or modulo by zero"
    )


def test_error_message_masks_secrets() -> None:
    with pytest.raises(ConfigError) as info:
        render(
            dep(),
            Host(address="x"),
            secrets={"HF_TOKEN": SECRET},
            templates=with_unit("{{ {}[env[-1][1]] }}"),
        )
    assert SECRET not in str(info.value) and "***" in str(info.value)


def test_models_keep_their_fields_and_properties() -> None:
    text = (
        "{{ deployment.served_name }} {{ deployment.unit_name }} {{ deployment.service.restart_sec }} "
        "{{ host.sudo }} {{ host.vars.get('k', 'none') }} {{ deployment.fetch.describe() }} "
        "{{ env|map(attribute=0)|join(',') }} {{ argv|shjoin|shquote }}\n"
    )
    d = dep(model={"source": "hf", "id": "org/m", "dest": "/srv/m"})
    desired = render(d, Host(address="x"), secrets={}, templates=with_unit(text))
    unit = desired.file("unit")
    assert unit is not None and unit.content.startswith("m orch-d.service 10 False none ")


# ------------------------------------------------------------------ overrides on disk


def playbook(folder: Path, template: str) -> Path:
    (folder / "inv.yml").write_text("hosts:\n  h: {address: 10.0.0.1}\n")
    path = folder / "pb.yml"
    path.write_text(
        "inventory: inv.yml\ndeployments:\n  - name: d\n    hosts: [h]\n    model: /m/x\n    gpus: [0]\n"
        f"    templates: {{unit: '{template}'}}\n"
    )
    return path


def error_of(pb: Path) -> str:
    """The one-line error of a bad override: from load (file:line) when it can tell, else from reading it."""
    with pytest.raises(ConfigError) as info:
        loaded = load(pb)
        templates_for(loaded, loaded.playbook.deployments[0])
    assert "\n" not in str(info.value)
    return str(info.value)


def test_override_outside_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.j2"
    outside.write_text(FILE_TEXT)
    (tmp_path / "pb").mkdir()
    message = error_of(playbook(tmp_path / "pb", str(outside)))
    assert "is not below the playbook's folder" in message and FILE_TEXT not in message


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.j2").write_text(FILE_TEXT)
    (tmp_path / "pb").mkdir()
    (tmp_path / "pb" / "link.j2").symlink_to(tmp_path / "outside.j2")
    message = error_of(playbook(tmp_path / "pb", "link.j2"))
    assert "is not below the playbook's folder" in message and FILE_TEXT not in message


def test_dotdot_is_refused_even_back_inside(tmp_path: Path) -> None:
    (tmp_path / "pb").mkdir()
    (tmp_path / "pb" / "u.j2").write_text("x\n")
    assert "'..' is not allowed" in error_of(playbook(tmp_path / "pb", "../pb/u.j2"))


def test_non_utf8_template_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "u.j2").write_bytes(b"ok\n\xff\xfe{{ x }}\n")
    assert (
        error_of(playbook(tmp_path, "u.j2"))
        == f"{tmp_path / 'u.j2'}: the template is not UTF-8 text (byte 3)"
    )


def test_oversized_template_is_refused(tmp_path: Path) -> None:
    (tmp_path / "u.j2").write_text("a" * (MAX_TEMPLATE_BYTES + 1))
    assert "u.j2 is over 256 KiB" in error_of(playbook(tmp_path, "u.j2"))


def test_fifo_is_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "u.j2")
    assert override_problem(tmp_path, "u.j2") == "u.j2 is not a regular file"


def test_overrides_below_the_folder_are_read(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "real.j2").write_text("unit of {{ deployment.name }}\n")
    (tmp_path / "link.j2").symlink_to(tmp_path / "t" / "real.j2")
    for name in ("t/real.j2", "link.j2", str(tmp_path / "t" / "real.j2")):
        assert override_problem(tmp_path, name) is None
    loaded = load(playbook(tmp_path, "link.j2"))
    desired = session.renderer(loaded, {"d": {}})(loaded.targets()[0])
    unit = desired.file("unit")
    assert unit is not None and unit.content == "unit of d\n"


def test_validate_prints_one_line_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    (tmp_path / "u.j2").write_text(
        f"{{{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}}}\n"
    )
    proc = orch("validate", playbook(tmp_path, "u.j2"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (
        f"error: {tmp_path / 'u.j2'}:1: template: access to attribute '__init__' of 'type' object is unsafe.\n"
    )
    assert not marker.exists()
