"""Rendering is pure: golden files for the shipped playbooks, and quoting that systemd reads back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator import converge, session
from orchestrator.core.layout import Layout, Role
from orchestrator.core.load import load
from orchestrator.core.model import Deployment, Host
from orchestrator.core.render import (
    TemplateSources,
    argv,
    env_quote,
    from_revision,
    parse_env,
    render,
    systemd_quote,
)
from orchestrator.core.sources import shipped
from orchestrator.provision import hub

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
SECRETS = {"qwen14b": {"HF_TOKEN": "hf_test_token"}, "qwen7b": {}}


@pytest.mark.parametrize("name", ["day3", "day4"])
@pytest.mark.parametrize("role", ["unit", "env"])
def test_golden(name: str, role: str) -> None:
    loaded = load(ROOT / "playbooks" / f"{name}.yml")
    [target] = loaded.targets()
    desired = session.renderer(loaded, SECRETS)(target)
    file = desired.file(role)  # type: ignore[arg-type]
    assert file is not None
    golden = GOLDEN / f"{name}.{'service' if role == 'unit' else 'env'}"
    if os.environ.get("ORCH_UPDATE_GOLDEN"):
        golden.write_text(file.content)
    assert file.content == golden.read_text()


def dep(**kw: object) -> Deployment:
    base: dict[str, object] = {"name": "d", "hosts": ["h"], "model": "/m/x", "gpus": [0]}
    return Deployment.model_validate(base | kw)


def test_argv_cpu_api_server() -> None:
    d = dep(
        accelerator="cpu", gpus=[], launcher={"kind": "api_server", "venv": "/opt/vllm"}, max_model_len=512
    )
    assert argv(d) == [
        "/opt/vllm/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/m/x",
        "--served-model-name",
        "x",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--tensor-parallel-size",
        "1",
        "--max-model-len",
        "512",
    ]


def test_args_booleans_and_values() -> None:
    d = dep(
        args={"--enforce-eager": True, "--disable-log-stats": False, "--seed": 3, "--kv-cache-dtype": None}
    )
    words = argv(d)
    assert words[-3:] == ["--enforce-eager", "--seed", "3"]


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("plain", "plain"),
        ("/a/b-c_d.e", "/a/b-c_d.e"),
        ("two words", '"two words"'),
        ("50%", "50%%"),
        ("$HOME", '"$$HOME"'),
        ('say "hi"', '"say \\"hi\\""'),
        ('{"a": 1}', '"{\\"a\\": 1}"'),
    ],
)
def test_systemd_quote(word: str, quoted: str) -> None:
    assert systemd_quote(word) == quoted


def test_env_quote_round_trips() -> None:
    value = 'a "b" $c `d` \\e'
    assert parse_env(f"K={env_quote(value)}\n") == {"K": value}


def test_user_scope_layout() -> None:
    layout = Layout("user", "tiny")
    assert layout.unit_path == "~/.config/systemd/user/orch-tiny.service"
    assert layout.env_file_directive == "%h/.config/orch/tiny.env"


def sources() -> TemplateSources:
    return TemplateSources(
        unit=shipped("vllm.service.j2"), env=shipped("vllm.env.j2"), supervisor=shipped("vllm.supervisor.j2")
    )


def test_the_env_as_a_mapping_is_what_the_env_file_says() -> None:
    """The gate's API key and the hub fetch's env come from the mapping, never re-read from the text."""
    d = dep(
        env={"HF_ENDPOINT": "http://hub:8080", "ODD": 'a "b" $c'},
        model={"source": "hf", "id": "org/x", "dest": "/m/x"},
        api_key={"env": "K"},
    )
    secrets = {"HF_TOKEN": "s3cret-token", "VLLM_API_KEY": "sk-key"}
    desired = render(d, Host(address="h"), secrets=secrets, templates=sources())
    env_file = desired.file("env")
    assert env_file is not None
    assert desired.env == parse_env(env_file.content)
    assert desired.env == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "0",
        "HF_ENDPOINT": "http://hub:8080",
        "ODD": 'a "b" $c',
        "HF_TOKEN": "s3cret-token",
        "VLLM_API_KEY": "sk-key",
    }
    assert converge.endpoint(Host(address="h"), d, desired.env).api_key == "sk-key"
    request = hub.command("fetch", desired, sudo=False).stdin
    assert request is not None and json.loads(request)["env"] == desired.env


def test_a_revision_env_is_read_from_the_hosts_file() -> None:
    contents: dict[Role, str] = {
        "unit": "[Service]\n",
        "env": 'PLAIN="p"\nOLD_TOKEN="t0k3n"\nVLLM_API_KEY="k1"\n',
    }
    back = from_revision(dep(env={"PLAIN": "x"}), Host(address="h"), contents, origin="rollback to 1")
    assert back.env == {"PLAIN": "p", "OLD_TOKEN": "t0k3n", "VLLM_API_KEY": "k1"}
    assert back.secret_keys == {"OLD_TOKEN", "VLLM_API_KEY"}  # every key but the declared plain ones
    assert sorted(back.secret_values) == ["k1", "t0k3n"]


def test_user_scope_unit_targets_default() -> None:
    host = Host(address="x", user="deploy", scope="user")
    desired = render(dep(accelerator="cpu", gpus=[]), host, secrets={}, templates=sources())
    unit = desired.file("unit")
    assert unit is not None
    assert "WantedBy=default.target" in unit.content
    assert "EnvironmentFile=%h/.config/orch/d.env" in unit.content
    assert "After=network-online.target" not in unit.content


def test_secret_never_in_unit() -> None:
    loaded = load(ROOT / "playbooks" / "day4.yml")
    [target] = loaded.targets()
    desired = session.renderer(loaded, SECRETS)(target)
    unit, env = desired.file("unit"), desired.file("env")
    assert unit is not None and env is not None
    assert "hf_test_token" not in unit.content
    assert 'HF_TOKEN="hf_test_token"' in env.content
    assert env.mode == 0o600


def test_supervisord_program() -> None:
    host = Host(address="x", runner="supervisord")
    d = dep(accelerator="cpu", gpus=[], args={"--chat-template": "/t/100% {x}.jinja"})
    desired = render(d, host, secrets={"HF_TOKEN": "s3cret"}, templates=sources())
    unit = desired.file("unit")
    assert unit is not None and unit.path == "/etc/supervisor/conf.d/orch-d.conf"
    assert "[program:orch-d]" in unit.content
    assert "stopasgroup=true" in unit.content and "killasgroup=true" in unit.content
    # vLLM starts in a folder that exists whatever supervisord's own working directory has become.
    assert "directory=/" in unit.content.splitlines()
    assert "s3cret" not in unit.content
    [command] = [line for line in unit.content.splitlines() if line.startswith("command=")]
    # supervisord expands %(...)s, so % is doubled; sh reads the env file, then execs vLLM.
    import shlex

    words = shlex.split(command.removeprefix("command=").replace("%%", "%"))
    assert words[:2] == ["/bin/sh", "-c"]
    assert words[2].startswith("set -a; . /etc/orch/d.env; set +a; exec vllm serve /m/x ")
    assert shlex.split(words[2].split("exec ", 1)[1])[-2:] == ["--chat-template", "/t/100% {x}.jinja"]
