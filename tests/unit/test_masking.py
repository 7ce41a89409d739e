"""No displayed diff holds a secret: masking is by value, in every form a file gives it, in every role.

Each secret is made of distinctive words (``tokA1`` …) joined by the characters that broke
masking by key (CR, U+2028, quotes, ``$``, backslashes); no word may reach the displayed text.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from orchcli import orch

from orchestrator.core.masking import Masker, encodings
from orchestrator.core.model import Deployment, Host
from orchestrator.core.render import Desired, TemplateSource, TemplateSources, absent, from_revision, render
from orchestrator.core.sources import shipped
from orchestrator.facts import DeploymentFacts
from orchestrator.plan import TargetPlan, plan_target

SECRETS = {
    "cr": "tokA1\rtokA2",
    "line separator": "tokB1\u2028tokB2\u2029tokB3\x85tokB4",
    "quotes": "tokC1\"tokC2'tokC3",
    "shell": "tokD1$HOME`tokD2`$(tokD3)",
    "backslashes": 'tokE1\\tokE2\\\\"tokE3\\',
    "percent and html": "tokF1%<&>tokF2%%",
    "spaces and unicode": "tokG1 tokG2\ttokG3 é✓",
}
WORDS = re.compile(r"tok[A-Z]\d")

# A custom unit that prints the secret in every way a template can.
LEAKY_UNIT = """[Service]
{% for key, value in env %}{% if key == 'MY_CRED' %}
raw={{ value }}
env={{ value|envquote }}
sd={{ value|sdquote }}
sh={{ value|shquote }}
supervisor={{ [value]|shjoin|shquote|replace('%', '%%') }}
json={{ value|tojson }}
html={{ value|e }}
url={{ value|urlencode }}
{% endif %}{% endfor %}
repr={{ env }}
dict={{ env|list }}
ExecStart={{ argv|map("sdquote")|join(" ") }}
"""


def dep(**kw: object) -> Deployment:
    base: dict[str, object] = {
        "name": "d",
        "hosts": ["h"],
        "model": "/m/x",
        "gpus": [0],
        "env": {"PLAIN": "visible-value"},
        "secrets": {"MY_CRED": {"env": "X"}},
    }
    return Deployment.model_validate(base | kw)


def sources(unit: str = LEAKY_UNIT) -> TemplateSources:
    return TemplateSources(
        unit=TemplateSource("leaky.j2", unit),
        env=shipped("vllm.env.j2"),
        supervisor=TemplateSource("s", unit),
    )


def desired(secret: str, *, host: Host | None = None) -> Desired:
    return render(dep(), host or Host(address="x"), secrets={"MY_CRED": secret}, templates=sources())


def shown(p: TargetPlan) -> str:
    return "".join(d.text for d in p.diffs)


def plan(want: Desired, facts: DeploymentFacts | None = None) -> TargetPlan:
    return plan_target(host="h", deployment="d", desired=want, facts=facts or DeploymentFacts())


@pytest.mark.parametrize("runner", ["systemd", "supervisord"])
@pytest.mark.parametrize("name", list(SECRETS))
def test_secret_printed_by_a_custom_unit_is_masked(name: str, runner: str) -> None:
    want = desired(SECRETS[name], host=Host(address="x", runner=runner))  # type: ignore[arg-type]
    unit = want.file("unit")
    assert unit is not None and len(WORDS.findall(unit.content)) >= 20  # the template did print it
    text = shown(plan(want))
    assert WORDS.findall(text) == []
    assert "visible-value" in text and "MY_CRED=***" in text


@pytest.mark.parametrize("name", list(SECRETS))
def test_rotated_secret_in_the_hosts_files_is_masked_and_secret_only(name: str) -> None:
    old = desired(SECRETS[name].replace("tok", "old"))
    new = desired(SECRETS[name])
    facts = DeploymentFacts(files={f.role: f.content for f in old.files or ()})
    p = plan(new, facts)
    assert [d.role for d in p.diffs] == ["env", "unit"]
    assert all(d.secret_only and d.text == "" for d in p.diffs)
    assert re.findall(r"(tok|old)[A-Z]\d", shown(p)) == []


def test_a_changed_plain_value_shows_and_the_secret_does_not() -> None:
    old = desired(SECRETS["quotes"])
    new = render(
        dep(env={"PLAIN": "new-visible"}),
        Host(address="x"),
        secrets={"MY_CRED": SECRETS["quotes"]},
        templates=sources(),
    )
    p = plan(new, DeploymentFacts(files={f.role: f.content for f in old.files or ()}))
    assert not any(d.secret_only for d in p.diffs)
    assert '+PLAIN="new-visible"' in shown(p) and WORDS.findall(shown(p)) == []


def test_removed_secret_of_any_name_is_masked() -> None:
    """The host's files hold a secret the playbook no longer names (and whose name says nothing)."""
    new = desired("tokA1")
    env = 'GONE_THING="tokZ9"\nPLAIN="visible-value"\n'
    p = plan(new, DeploymentFacts(files={"env": env, "unit": "ExecStart=/bin/x --key tokZ9\n"}))
    text = shown(p)
    assert "-GONE_THING=***" in text and "-ExecStart=/bin/x --key ***" in text
    assert "tokA1" not in text and "tokZ9" not in text
    assert ' PLAIN="visible-value"' in text  # context: unchanged, shown


def test_destroy_masks_the_removed_files() -> None:
    old = desired(SECRETS["backslashes"])
    p = plan(
        absent(dep(), Host(address="x")), DeploymentFacts(files={f.role: f.content for f in old.files or ()})
    )
    assert [d.role for d in p.diffs] == ["env", "unit"]
    assert WORDS.findall(shown(p)) == [] and "-raw=***" in shown(p)


def test_rollback_masks_the_revisions_secrets_and_shows_plain_values() -> None:
    old = desired(SECRETS["shell"])
    contents = {f.role: f.content for f in old.files or ()}
    keys = frozenset(
        {"CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES", "PLAIN", "MY_CRED"}
    )  # as deploy passes them
    back = from_revision(dep(), Host(address="x"), contents, secret_keys=keys, origin="rollback to 1")
    now = desired(SECRETS["quotes"])
    p = plan(back, DeploymentFacts(files={f.role: f.content for f in now.files or ()}))
    assert WORDS.findall(shown(p)) == []
    assert back.secret_keys == {"MY_CRED"} and back.plain_keys is not None and "PLAIN" in back.plain_keys
    assert 'CUDA_VISIBLE_DEVICES="0"' in contents["env"]  # plain values are not masked as secrets


def test_overlapping_secrets_mask_their_union() -> None:
    hide = Masker.build(["abcd", "cdef"])
    assert hide.text("xxabcdefyy abcd cdef") == "xx***yy *** ***"


def test_short_and_empty_values() -> None:
    assert Masker.build(["", "q"]).text("a q b") == "a *** b"
    assert Masker.build([]).text("unchanged") == "unchanged"


def test_encodings_cover_the_quoting_of_rendered_files() -> None:
    forms = encodings('a"b$c\\d%e')
    assert {'a\\"b\\$c\\\\d%e', 'a\\"b$$c\\\\d%%e', "a\\u0022b$c\\\\d%e"} & forms
    assert 'a\\"b\\$c\\\\d%e' in forms  # env_quote
    assert 'a\\"b$$c\\\\d%%e' in forms  # systemd_quote
    assert "a%22b%24c%5Cd%25e" in forms  # urlencode


def test_reprs_hold_no_secret_value() -> None:
    want = replace(desired("tokA1"), files=None)
    assert "tokA1" not in repr(Masker.build(["tokA1"])) + repr(want) and want.secret_values == ("tokA1",)


# ------------------------------------------------------------------ the CLI prints what will be written


def test_plan_prints_markup_emoji_and_invisible_characters_literally(tmp_path: Path) -> None:
    (tmp_path / "inv.yml").write_text("hosts:\n  h: {address: 10.0.0.1}\n")
    (tmp_path / "u.j2").write_text(
        "[Service]\nDescription=:x: [bold]b[/bold] \x1b[31mred\u2028next\u200b\nSecret={{ env[-1][1] }}\n",
        encoding="utf-8",
    )
    (tmp_path / "pb.yml").write_text(
        "inventory: inv.yml\ndeployments:\n  - name: d\n    hosts: [h]\n    model: /m/x\n    gpus: [0]\n"
        "    env: {EMOJI: ':x: :thumbs_up:', MARKUP: '[bold]b[/bold] [red]r[/] \\[red]'}\n"
        "    secrets: {MY_CRED: {env: ORCH_TEST_CRED}}\n    templates: {unit: u.j2}\n"
    )
    proc = orch("plan", "--offline", tmp_path / "pb.yml", env={"ORCH_TEST_CRED": "tokA1 [red]$'\"\\:x:"})
    assert proc.returncode == 2, proc.stderr
    out = proc.stdout
    assert '+EMOJI=":x: :thumbs_up:"' in out and "❌" not in out and "👍" not in out
    assert '+MARKUP="[bold]b[/bold] [red]r[/] \\\\[red]"' in out
    assert "+Description=:x: [bold]b[/bold] \\x1b[31mred\\u2028next\\u200b" in out
    assert "\x1b" not in out and "\u2028" not in out
    assert "tokA1" not in out and "+Secret=***" in out and "+MY_CRED=***" in out
