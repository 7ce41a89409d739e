"""``orch import``: runbook lines and units → a playbook whose rendered ExecStart carries the same server.

The round trip reads the original line with shlex here, independently of the importer, and the
rendered unit back the way systemd quotes it.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.core import importer, runbook
from orchestrator.core.load import Loaded, load
from orchestrator.core.render import TemplateSources, parse_env, render
from orchestrator.core.sources import shipped
from orchestrator.errors import ConfigError

# The two runbook lines of the issue that asked for `orch import`, as written there.
DAY3 = """CUDA_VISIBLE_DEVICES=6 vllm serve /home/zzy/weitiao/models/Qwen2.5-7B-Instruct \\
  --host 0.0.0.0 --port 8000 --gpu-memory-utilization 0.9 --max-model-len 2048
"""
DAY4 = """CUDA_VISIBLE_DEVICES=6,7 vllm serve /home/zzy/weitiao/models/Qwen2.5-14B-Instruct \\
  --tensor-parallel-size 2 --gpu-memory-utilization 0.9 --max-model-len 2048 --port 8000
"""
# What orch always passes and vLLM would assume anyway: its defaults (the host None binds every
# interface, the served name is the model as given, TP 1, port 8000).
IMPLIED = {"--host": "0.0.0.0", "--tensor-parallel-size": "1", "--port": "8000"}


def sources() -> TemplateSources:
    return TemplateSources(
        unit=shipped("vllm.service.j2"), env=shipped("vllm.env.j2"), supervisor=shipped("vllm.supervisor.j2")
    )


def imported(tmp_path: Path, text: str, *, file: str = "runbook.sh") -> Loaded:
    """Import ``text``, write the playbook and a one-host inventory, and load them as orch does."""
    result = importer.import_commands(runbook.parse_text(text, file=file), host="gpu1")
    (tmp_path / "inv.yml").write_text(importer.inventory_yaml(host="gpu1", address="192.0.2.7"))
    (tmp_path / "pb.yml").write_text(importer.playbook_yaml(result, inventory="inv.yml"))
    return load(tmp_path / "pb.yml")


def rendered(loaded: Loaded, secrets: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The ExecStart words and the env file of the first target, as systemd would read them."""
    target = loaded.targets()[0]
    desired = render(target.deployment, target.host, secrets=secrets or {}, templates=sources())
    unit, env = desired.file("unit"), desired.file("env")
    assert unit is not None and env is not None
    [line] = [ln for ln in unit.content.splitlines() if ln.startswith("ExecStart=")]
    words = shlex.split(line.removeprefix("ExecStart="))
    return [w.replace("%%", "%").replace("$$", "$") for w in words], parse_env(env.content)


def pairs(words: list[str]) -> dict[str, str]:
    """Flags of the runbook lines, each with its value (every flag in them takes one)."""
    assert all(w.startswith("--") for w in words[::2]) and len(words) % 2 == 0
    return dict(zip(words[::2], words[1::2], strict=True))


@pytest.mark.parametrize("text", [DAY3, DAY4], ids=["day3", "day4"])
def test_round_trip_of_the_runbook_lines(tmp_path: Path, text: str) -> None:
    words = shlex.split(text.replace("\\\n", " "))
    [assignment, vllm, serve, model, *flags] = words
    original = pairs(flags)
    argv, env = rendered(imported(tmp_path, text))
    assert argv[:3] == [vllm, serve, model]
    assert env["CUDA_VISIBLE_DEVICES"] == assignment.removeprefix("CUDA_VISIBLE_DEVICES=")
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    out = pairs(argv[3:])
    assert {flag: out.get(flag) for flag in original} == original
    extra = {flag: value for flag, value in out.items() if flag not in original}
    assert extra == {"--served-model-name": model} | {
        flag: value for flag, value in IMPLIED.items() if flag not in original
    }


def test_the_runbook_lines_fields(tmp_path: Path) -> None:
    dep = imported(tmp_path, DAY4).playbook.deployments[0]
    assert (dep.name, dep.gpus, dep.tensor_parallel_size, dep.port) == (
        "qwen2-5-14b-instruct",
        (6, 7),
        2,
        8000,
    )
    assert (dep.gpu_memory_utilization, dep.max_model_len, dep.args) == (0.9, 2048, {})
    assert dep.model == "/home/zzy/weitiao/models/Qwen2.5-14B-Instruct"  # a path on the host, served as is
    assert imported(tmp_path, DAY3).playbook.deployments[0].bind == "0.0.0.0"


def test_both_runbook_lines_on_one_host_conflict() -> None:
    with pytest.raises(ConfigError) as caught:
        importer.import_commands(runbook.parse_text(DAY3 + "\n" + DAY4, file="rb"), host="gpu1")
    assert str(caught.value) == (
        "rb:4: GPU 6 on host gpu1 is also used by qwen2-5-7b-instruct: import the two for different hosts"
    )


RUNBOOK = """# Day 5: two models on one server
export HF_ENDPOINT=https://hf-mirror.com
export HF_TOKEN=hf_runbook_secret   # never copied

source /opt/vllm/bin/activate
CUDA_VISIBLE_DEVICES=0 vllm serve Qwen/Qwen2.5-7B-Instruct --port 8001 \\
    --served-model-name qwen7b --enable-prefix-caching --max_num_seqs=64 \\
    --chat-template /t/a#b.jinja  # the flags above go to args
nohup env CUDA_VISIBLE_DEVICES=1,2 vllm serve /models/Qwen2.5-14B-Instruct -tp 2 --port 8002 \\
    --dtype bfloat16 --api-key sk-runbook-key > /var/log/q14.log 2>&1 &
"""


def test_several_lines_in_one_file(tmp_path: Path) -> None:
    loaded = imported(tmp_path, RUNBOOK)
    text = (tmp_path / "pb.yml").read_text()
    assert "hf_runbook_secret" not in text and "sk-runbook-key" not in text
    first, second = loaded.playbook.deployments
    assert (first.name, first.model, first.served_name, first.gpus, first.port) == (
        "qwen7b", "Qwen/Qwen2.5-7B-Instruct", "qwen7b", (0,), 8001
    )  # fmt: skip
    assert first.args == {
        "--enable-prefix-caching": True,
        "--max-num-seqs": 64,
        "--chat-template": "/t/a#b.jinja",
    }
    assert first.env == {"HF_ENDPOINT": "https://hf-mirror.com"}
    assert {k: v.env for k, v in first.secrets.items()} == {"HF_TOKEN": "HF_TOKEN"}
    assert first.venv == second.venv == "/opt/vllm"
    assert (second.name, second.gpus, second.tensor_parallel_size, second.dtype) == (
        "qwen2-5-14b-instruct", (1, 2), 2, "bfloat16"
    )  # fmt: skip
    assert second.api_key is not None and second.api_key.env == "VLLM_API_KEY"
    argv, env = rendered(loaded, {"HF_TOKEN": "t"})
    assert argv[0] == "/opt/vllm/bin/vllm" and env["HF_TOKEN"] == "t"


def test_notes_say_what_was_not_copied() -> None:
    result = importer.import_commands(runbook.parse_text(RUNBOOK, file="rb"), host="gpu1")
    assert (
        "rb:6: HF_TOKEN: its value is not copied; orch reads it from $HF_TOKEN on the controller"
        in result.notes
    )
    assert "rb:9: --api-key: not copied; orch reads it from $VLLM_API_KEY on the controller" in result.notes
    assert "rb:9: dropped `> /var/log/q14.log 2>&1 &`: systemd keeps the process, the journal its output" in (
        result.notes
    )


UNIT = """[Unit]
Description=Qwen 14B by hand
[Service]
User=vllm
Environment="CUDA_VISIBLE_DEVICES=2,3" HF_HOME=/data/hf
Environment=HF_TOKEN=hf_unit_secret
EnvironmentFile=-/etc/default/vllm
ExecStart=/opt/venv/bin/python -m vllm.entrypoints.openai.api_server \\
    --model /models/Qwen2.5-14B-Instruct --served-model-name qwen14b -tp 2 \\
    --enforce-eager --max-num-seqs 64 --chat-template "/t/100%%.jinja"
Restart=always
[Install]
WantedBy=multi-user.target
"""


def test_from_unit(tmp_path: Path) -> None:
    command = runbook.parse_unit(UNIT, file="/etc/systemd/system/vllm-qwen.service")
    result = importer.import_commands([command], host="gpu1")
    [entry] = result.entries
    dep = entry.deployment
    assert (dep.name, dep.run_as, dep.launcher.kind, dep.venv) == (
        "vllm-qwen",
        "vllm",
        "api_server",
        "/opt/venv",
    )
    assert (dep.gpus, dep.tensor_parallel_size, dep.served_name, dep.env) == (
        (2, 3), 2, "qwen14b", {"HF_HOME": "/data/hf"}
    )  # fmt: skip
    assert dep.args == {"--enforce-eager": True, "--max-num-seqs": 64, "--chat-template": "/t/100%.jinja"}
    assert "hf_unit_secret" not in importer.playbook_yaml(result, inventory="inv.yml")
    assert (
        "/etc/systemd/system/vllm-qwen.service:8: EnvironmentFile=-/etc/default/vllm (line 7) is not read"
        in (" ".join(result.notes))
    )
    assert entry.where == runbook.Where("/etc/systemd/system/vllm-qwen.service", 8)
    (tmp_path / "inv.yml").write_text(importer.inventory_yaml(host="gpu1", address="192.0.2.7"))
    (tmp_path / "pb.yml").write_text(importer.playbook_yaml(result, inventory="inv.yml"))
    argv, env = rendered(load(tmp_path / "pb.yml"), {"HF_TOKEN": "t"})
    assert argv[:5] == [
        "/opt/venv/bin/python",
        "-m",
        runbook.API_SERVER,
        "--model",
        "/models/Qwen2.5-14B-Instruct",
    ]
    # The unit's flags (-tp is --tensor-parallel-size), then orch's implied ones; % survives both quotings.
    assert argv[5:] == [
        *("--served-model-name", "qwen14b", "--host", "0.0.0.0", "--port", "8000"),
        *("--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.9"),
        *("--enforce-eager", "--max-num-seqs", "64", "--chat-template", "/t/100%.jinja"),
    ]
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_api_server_words() -> None:
    # A secret's value may be a variable: it is not copied anyway.
    words = ["HF_TOKEN=$HF_TOKEN", "python3", "-m", runbook.API_SERVER, "--model", "Qwen/Qwen2.5-7B-Instruct"]
    words += ["--port", "9000"]
    result = importer.import_commands([runbook.parse_words(words, where=runbook.Where("cli"))], host="h")
    data = result.entries[0].data
    assert data["launcher"] == {"kind": "api_server"} and "venv" not in data["launcher"]
    assert (data["model"], data["port"], data["gpus"]) == ("Qwen/Qwen2.5-7B-Instruct", 9000, [0])
    assert data["secrets"] == {"HF_TOKEN": {"env": "HF_TOKEN"}}
    assert "cli: no CUDA_VISIBLE_DEVICES: gpus [0], the first 1 in nvidia-smi's order" in result.notes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cd /srv/models\n", "x:1: `cd /srv/models` is not a vLLM server command"),
        ("\n\nvllm serve '/m\n", "x:3: cannot split the line into words: No closing quotation"),
        ("vllm serve /m --port eighty\n", "x:1: --port 'eighty': a whole number expected (orch's port)"),
        ("vllm serve /m --lora-modules a=/x b=/y\n", "x:1: unexpected word 'b=/y' after --lora-modules a=/x"),
        ("vllm serve ./models/q\n", "x:1: model: model './models/q' must be an absolute path on the host"),
        ("CUDA_VISIBLE_DEVICES=GPU-1f2e vllm serve /m\n", "x:1: CUDA_VISIBLE_DEVICES='GPU-1f2e': orch names"),
        (
            "CUDA_VISIBLE_DEVICES=6,7 vllm serve /m\n",
            "x:1: tensor_parallel_size × pipeline_parallel_size = 1",
        ),
        ("vllm serve /m | tee log\n", "x:1: '|' is shell syntax"),
        ("HF_HOME=$HOME/hf vllm serve /m\n", "x:1: HF_HOME '$HOME/hf': the shell would expand this"),
        ("vllm serve /m --port 1 --port 2\n", "x:1: --port is given twice (as port)"),
        ("vllm serve /m --max-model-len 32k\n", "x:1: --max-model-len '32k': a whole number expected"),
        ("vllm serve --port 8000\n", "x:1: no model: give it as `vllm serve MODEL`"),
        ("export HF_HOME\n", "x:1: export 'HF_HOME': only `export NAME=VALUE` is understood"),
        ("# only a comment\n", "x: no vllm serve or api_server command line found"),
    ],
)
def test_bad_runbook_lines(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        importer.import_commands(runbook.parse_text(text, file="x"), host="gpu1")
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        ("[Service]\nType=simple\n", "u: no ExecStart= in a [Service] section"),
        ("[Service]\nExecStart=/usr/bin/vllm serve %h/m\n", "u:2: '%h/m' uses a systemd specifier"),
        (
            "[Service]\nExecStart=/bin/sh -c 'vllm serve /m'\n",
            "u:2: `/bin/sh -c vllm serve /m` is not a vLLM",
        ),
    ],
)
def test_bad_units(unit: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        runbook.parse_unit(unit, file="u")
    assert str(caught.value).startswith(message)


# ---------------------------------------------------------------- the verb, run as a user would

ROOT = Path(__file__).resolve().parents[2]


def orch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "orchestrator", "import", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)


def test_verb_prints_a_playbook_that_loads(tmp_path: Path) -> None:
    proc = orch("--", *shlex.split(DAY4.replace("\\\n", " ")))
    assert proc.returncode == 0, proc.stderr
    assert "note: hosts: [gpu1]: name the server with --host NAME[=ADDRESS]" in proc.stderr
    (tmp_path / "pb.yml").write_text(proc.stdout)
    (tmp_path / "inventory.yml").write_text("hosts:\n  gpu1: {address: 192.0.2.7}\n")
    assert load(tmp_path / "pb.yml").playbook.deployments[0].gpus == (6, 7)


def test_verb_writes_playbook_and_inventory(tmp_path: Path) -> None:
    (tmp_path / "rb.sh").write_text("HF_TOKEN=hf_cli_secret " + DAY3)
    pb, inv = tmp_path / "pb.yml", tmp_path / "inv" / "hosts.yml"
    proc = orch("--host", "box=192.0.2.9", "--out", pb, "--inventory-out", inv, "--file", tmp_path / "rb.sh")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"wrote {inv} (host box)",
        f"wrote {pb} (1 deployment(s))",
        f"ok: orch validate {pb} passes",
    ]
    assert f"note: {tmp_path}/rb.sh:1: HF_TOKEN: its value is not copied" in proc.stderr
    assert "hf_cli_secret" not in pb.read_text() + inv.read_text() + proc.stdout
    loaded = load(pb)
    assert (loaded.inventory.hosts["box"].address, loaded.targets()[0].host_name) == ("192.0.2.9", "box")
    again = orch("--host", "box=192.0.2.9", "--out", pb, "--inventory-out", inv, "--file", tmp_path / "rb.sh")
    assert again.returncode == 1
    assert again.stderr.splitlines() == [
        f"error: {pb}: cannot write: the file exists; orch import writes only new files"
    ]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--", "vllm", "serve", "/m", "--port", "x"],
            "the command line: --port 'x': a whole number expected (orch's port)",
        ),
        ([], "orch import: give one of: -- COMMAND…, --file RUNBOOK, --from-unit UNIT"),
        (
            ["--host", "h=192.0.2.1", "--", "vllm", "serve", "/m"],
            "orch import: --host NAME=ADDRESS and --inventory-out FILE go together",
        ),
        (
            ["--from-unit", "/nonexistent/x.service"],
            "/nonexistent/x.service: cannot read: No such file or directory",
        ),
    ],
)
def test_verb_errors_are_one_line(args: list[str], line: str) -> None:
    proc = orch(*args)
    assert (proc.returncode, proc.stderr.splitlines(), proc.stdout) == (1, [f"error: {line}"], "")


def test_verb_prints_the_playbook_and_writes_the_inventory(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.yml"
    proc = orch("--host", "box=192.0.2.9", "--inventory-out", inv, "--", "vllm", "serve", "/m")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {inv} (host box)" in proc.stderr
    (tmp_path / "pb.yml").write_text(proc.stdout)
    assert load(tmp_path / "pb.yml").targets()[0].host.address == "192.0.2.9"
