"""Bad playbooks and inventories: each gets one exact line naming file and line."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.core.load import load
from orchestrator.core.yamlread import MAX_BYTES
from orchestrator.errors import ConfigError

INVENTORY = """\
hosts:
  h1:
    address: 10.0.0.1
    groups: [gpu]
  h2:
    address: 10.0.0.2
    groups: [gpu]
"""

GOOD = """\
inventory: inv.yml
deployments:
  - name: a
    hosts: [h1]
    model: /models/m
    gpus: [0, 1]
    tensor_parallel_size: 2
"""


def write(tmp: Path, playbook: str, inventory: str = INVENTORY) -> Path:
    (tmp / "inv.yml").write_text(textwrap.dedent(inventory))
    path = tmp / "pb.yml"
    path.write_text(textwrap.dedent(playbook))
    return path


def error_of(tmp: Path, playbook: str, inventory: str = INVENTORY) -> str:
    path = write(tmp, playbook, inventory)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    return message.replace(str(tmp) + "/", "")


def test_good_playbook_loads(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, GOOD))
    [target] = loaded.targets()
    assert (target.host_name, target.deployment.served_name) == ("h1", "m")


def test_group_expands_to_its_hosts(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, GOOD.replace("hosts: [h1]", "hosts: [gpu]")))
    assert [t.host_name for t in loaded.targets()] == ["h1", "h2"]


BAD_PLAYBOOKS = [
    (
        "tp_pp_mismatch",
        GOOD.replace("gpus: [0, 1]", "gpus: [0, 1, 2]"),
        "pb.yml:3: deployments[0]: tensor_parallel_size × pipeline_parallel_size = 2 but 3 GPU(s) are listed in gpus",
    ),
    (
        "mem_util_high",
        GOOD + "    gpu_memory_utilization: 1.5\n",
        "pb.yml:8: deployments[0].gpu_memory_utilization: gpu_memory_utilization must be in (0, 1], got 1.5",
    ),
    (
        "mem_util_zero",
        GOOD + "    gpu_memory_utilization: 0\n",
        "pb.yml:8: deployments[0].gpu_memory_utilization: gpu_memory_utilization must be in (0, 1], got 0.0",
    ),
    (
        "unknown_host",
        GOOD.replace("hosts: [h1]", "hosts: [h1, nope]"),
        "pb.yml:4: deployments[0].hosts[1]: unknown host or group 'nope' (inventory inv.yml)",
    ),
    (
        "relative_model",
        GOOD.replace("/models/m", "./models/m"),
        "pb.yml:5: deployments[0].model: model './models/m' must be an absolute path on the host or a hub id like org/name",
    ),
    (
        "unknown_field",
        GOOD + "    tensor_paralel_size: 2\n",
        "pb.yml:8: deployments[0].tensor_paralel_size: unknown field",
    ),
    (
        "missing_model",
        GOOD.replace("    model: /models/m\n", ""),
        "pb.yml:3: deployments[0].model: required field missing",
    ),
    (
        "bad_port",
        GOOD + "    port: 70000\n",
        "pb.yml:8: deployments[0].port: Input should be less than or equal to 65535",
    ),
    (
        "gpu_twice_in_list",
        GOOD.replace("gpus: [0, 1]", "gpus: [1, 1]"),
        "pb.yml:3: deployments[0]: gpus lists a GPU twice: [1, 1]",
    ),
    (
        "owned_flag",
        GOOD + "    args: {--port: 9000}\n",
        "pb.yml:8: deployments[0].args: --port is set by the field port, not in args",
    ),
    (
        "owned_env",
        GOOD + "    env: {CUDA_VISIBLE_DEVICES: '3'}\n",
        "pb.yml:8: deployments[0].env: CUDA_VISIBLE_DEVICES is set by the field gpus, not in env",
    ),
    (
        "bad_env_name",
        GOOD + "    env: {1BAD: x}\n",
        "pb.yml:8: deployments[0].env: '1BAD' is not a valid environment variable name",
    ),
    (
        "bad_flag",
        GOOD + "    args: {enforce-eager: true}\n",
        "pb.yml:8: deployments[0].args: argument 'enforce-eager' is not a vllm serve flag like --enforce-eager",
    ),
    (
        "cpu_with_gpus",
        GOOD + "    accelerator: cpu\n",
        "pb.yml:3: deployments[0]: a cpu deployment takes no gpus",
    ),
    (
        "bad_name",
        GOOD.replace("name: a", "name: My Model"),
        "pb.yml:3: deployments[0].name: String should match pattern '^[a-z0-9][a-z0-9_-]{0,62}$'",
    ),
    (
        "secret_twice",
        GOOD + "    env: {HF_TOKEN: x}\n    secrets: {HF_TOKEN: {env: T}}\n",
        "pb.yml:3: deployments[0]: HF_TOKEN is set both in env and in secrets",
    ),
    (
        "secret_two_sources",
        GOOD + "    secrets: {HF_TOKEN: {env: T, file: /t}}\n",
        "pb.yml:8: deployments[0].secrets.HF_TOKEN: a secret needs exactly one of env: or file:",
    ),
    (
        "relative_venv",
        GOOD + "    launcher: {venv: opt/vllm}\n",
        "pb.yml:8: deployments[0].launcher.venv: venv must be an absolute path on the host, got 'opt/vllm'",
    ),
    (
        "no_deployments",
        "inventory: inv.yml\ndeployments: []\n",
        "pb.yml:2: deployments: List should have at least 1 item after validation, not 0",
    ),
    (
        "yaml_syntax",
        "inventory: inv.yml\ndeployments: [\n  - name: a\n",
        "pb.yml:3: invalid YAML: did not find expected node content",
    ),
    ("duplicate_key", GOOD + "    port: 1\n    port: 2\n", "pb.yml:9: duplicate key 'port'"),
    (
        "missing_inventory",
        GOOD.replace("inv.yml", "missing.yml"),
        "pb.yml:1: inventory: no such file missing.yml",
    ),
    (
        "template_missing",
        GOOD + "    templates: {unit: my.service.j2}\n",
        "pb.yml:8: deployments[0].templates.unit: template not found: my.service.j2",
    ),
    ("empty", "", "pb.yml:1: the file is empty"),
]


@pytest.mark.parametrize(
    ("playbook", "expected"), [c[1:] for c in BAD_PLAYBOOKS], ids=[c[0] for c in BAD_PLAYBOOKS]
)
def test_bad_playbook(tmp_path: Path, playbook: str, expected: str) -> None:
    assert error_of(tmp_path, playbook) == expected.replace("{tmp}", str(tmp_path))


TWO = (
    GOOD
    + """\
  - name: b
    hosts: [gpu]
    model: /models/n
    gpus: [1]
    port: 8001
"""
)


def test_a_gpu_shared_by_defaults_is_over_committed(tmp_path: Path) -> None:
    """Both at vLLM's default 0.9: GPU 1 would be asked for 1.8 of itself (no line sets the share: the
    deployment's own line is named)."""
    assert error_of(tmp_path, TWO) == (
        "pb.yml:8: deployments[1].gpu_memory_utilization: GPU 1 on host h1 is over-committed: "
        "'a' 0.9 + 'b' 0.9 = 1.8 of the card "
        "(the gpu_memory_utilization of the deployments on one GPU may add up to at most 1)"
    )


SHARED = """\
inventory: inv.yml
deployments:
  - name: tiny-a
    hosts: [h1]
    model: /models/m
    gpus: [0]
    gpu_memory_utilization: 0.3
    port: 8000
  - name: tiny-b
    hosts: [gpu]
    model: /models/m
    gpus: [0]
    gpu_memory_utilization: 0.3
    port: 8001
"""


def test_deployments_share_a_gpu_within_its_memory(tmp_path: Path) -> None:
    """0.3 + 0.3 of GPU 0 on h1 (and 0.3 alone on h2); 0.3 + 0.3 + 0.4 is exactly the card."""
    loaded = load(write(tmp_path, SHARED))
    assert [(t.deployment.name, t.host_name) for t in loaded.targets()] == [
        ("tiny-a", "h1"),
        ("tiny-b", "h1"),
        ("tiny-b", "h2"),
    ]
    third = "  - name: tiny-c\n    hosts: [h1]\n    model: /models/m\n    gpus: [0]\n    port: 8002\n"
    full = SHARED + third + "    gpu_memory_utilization: 0.4\n"
    assert len(load(write(tmp_path, full)).targets()) == 4


def test_a_third_deployment_over_commits_the_gpu(tmp_path: Path) -> None:
    third = "  - name: big\n    hosts: [h1]\n    model: /models/m\n    gpus: [0]\n    port: 8002\n"
    playbook = SHARED + third + "    gpu_memory_utilization: 0.6\n"
    assert error_of(tmp_path, playbook) == (
        "pb.yml:20: deployments[2].gpu_memory_utilization: GPU 0 on host h1 is over-committed: "
        "'tiny-a' 0.3 + 'tiny-b' 0.3 + 'big' 0.6 = 1.2 of the card "
        "(the gpu_memory_utilization of the deployments on one GPU may add up to at most 1)"
    )


def test_sharing_deployments_still_need_their_own_ports(tmp_path: Path) -> None:
    playbook = SHARED.replace("port: 8001", "port: 8000")
    assert error_of(tmp_path, playbook) == (
        "pb.yml:14: deployments[1].port: port 8000 on host h1 is also used by 'tiny-a'"
    )


def test_port_used_twice_on_one_host(tmp_path: Path) -> None:
    playbook = TWO.replace("gpus: [1]", "gpus: [2]").replace("port: 8001", "port: 8000")
    assert (
        error_of(tmp_path, playbook)
        == "pb.yml:12: deployments[1].port: port 8000 on host h1 is also used by 'a'"
    )


def test_deployment_name_twice(tmp_path: Path) -> None:
    playbook = TWO.replace("name: b", "name: a").replace("gpus: [1]", "gpus: [2]")
    assert error_of(tmp_path, playbook) == "pb.yml:8: deployments[1].name: deployment name 'a' is used twice"


BAD_INVENTORIES = [
    ("no_address", "hosts:\n  h1:\n    port: 22\n", "inv.yml:2: hosts.h1.address: required field missing"),
    (
        "user_without_root",
        "hosts:\n  h1:\n    address: x\n    user: bob\n",
        "inv.yml:2: hosts.h1: user 'bob' cannot manage system units: set become: true (sudo) or scope: user",
    ),
    (
        "bad_scope",
        "hosts:\n  h1:\n    address: x\n    scope: global\n",
        "inv.yml:4: hosts.h1.scope: Input should be 'system' or 'user'",
    ),
    (
        "bad_default",
        "defaults:\n  usr: x\nhosts:\n  h1:\n    address: x\n",
        "inv.yml:2: defaults.usr: unknown field",
    ),
    (
        "bad_policy",
        "host_key_policy: yolo\nhosts:\n  h1:\n    address: x\n",
        "inv.yml:1: host_key_policy: Input should be 'strict' or 'accept-new'",
    ),
    (
        "no_hosts",
        "hosts: {}\n",
        "inv.yml:1: hosts: Dictionary should have at least 1 item after validation, not 0",
    ),
]


@pytest.mark.parametrize(
    ("inventory", "expected"), [c[1:] for c in BAD_INVENTORIES], ids=[c[0] for c in BAD_INVENTORIES]
)
def test_bad_inventory(tmp_path: Path, inventory: str, expected: str) -> None:
    playbook = GOOD.replace("gpus: [0, 1]\n    tensor_parallel_size: 2", "gpus: [0]")
    assert error_of(tmp_path, playbook, inventory) == expected


def test_defaults_apply_to_hosts(tmp_path: Path) -> None:
    inventory = "defaults:\n  user: deploy\n  scope: user\nhosts:\n  h1:\n    address: x\n"
    loaded = load(write(tmp_path, GOOD.replace("hosts: [h1]", "hosts: [h1]"), inventory))
    host = loaded.inventory.hosts["h1"]
    assert (host.user, host.scope, host.sudo) == ("deploy", "user", False)


def test_shipped_playbooks_validate() -> None:
    root = Path(__file__).resolve().parents[2] / "playbooks"
    for name in ("day3.yml", "day4.yml"):
        assert load(root / name).playbook.deployments


def test_mapping_as_key_is_a_config_error(tmp_path: Path) -> None:
    assert error_of(tmp_path, GOOD + "    env: {{A: b}}\n") == "pb.yml:8: a key must be a plain value"


MODEL_AT = """\
inventory: inv.yml
deployments:
  - name: a
    hosts: [h1]
    accelerator: cpu
    model:
      source: {source}
"""


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "      dest: /m\n",
            "pb.yml:6: deployments[0].model: source hf needs id: the repository, like Qwen/Qwen2.5-14B-Instruct",
        ),
        (
            "      id: Qwen/Q\n      dest: models/q\n",
            "pb.yml:9: deployments[0].model.dest: dest must be an absolute path on the host, got 'models/q'",
        ),
        (
            "      id: Qwen/Q\n      dest: /m\n      revision: 'a b'\n",
            "pb.yml:10: deployments[0].model.revision: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._/-]*$'",
        ),
        (
            "      id: Qwen/Q\n      dest: /m\n      local: ./m\n",
            "pb.yml:6: deployments[0].model: local (the controller folder) goes with source upload, and only with it",
        ),
        (
            "      id: Qwen/Q\n      dest: /m\n      token: x\n",
            "pb.yml:10: deployments[0].model.token: unknown field",
        ),
    ],
)
def test_hub_model_errors_name_the_line(tmp_path: Path, body: str, expected: str) -> None:
    assert error_of(tmp_path, MODEL_AT.format(source="hf") + body) == expected


def test_upload_folder_must_exist(tmp_path: Path) -> None:
    pb = MODEL_AT.format(source="upload") + "      local: ./nope\n      dest: /m\n"
    assert error_of(tmp_path, pb) == "pb.yml:8: deployments[0].model.local: no such folder ./nope"


def test_model_source_forms(tmp_path: Path) -> None:
    pb = MODEL_AT.format(source="modelscope") + "      id: Qwen/Q\n      revision: v1.0\n      dest: /m/q/\n"
    dep = load(write(tmp_path, pb)).playbook.deployments[0]
    assert (dep.model_path, dep.served_name, dep.fetch and dep.fetch.describe()) == (
        "/m/q",
        "q",
        "modelscope:Qwen/Q@v1.0",
    )
    path_only = MODEL_AT.format(source="path") + "      dest: /srv/m\n"
    dep = load(write(tmp_path, path_only)).playbook.deployments[0]
    assert (dep.model_path, dep.fetch) == ("/srv/m", None)


# ---------------------------------------------------------------- bytes read, merge keys, size


def test_merged_deployments_load(tmp_path: Path) -> None:
    playbook = GOOD.replace("  - name: a", "  - &base\n    name: a") + (
        "  - <<: *base\n    name: b\n    hosts: [h2]\n"
    )
    loaded = load(write(tmp_path, playbook))
    assert [(t.deployment.name, t.host_name, t.deployment.gpus) for t in loaded.targets()] == [
        ("a", "h1", (0, 1)),
        ("b", "h2", (0, 1)),
    ]


def test_digest_covers_the_bytes_read(tmp_path: Path) -> None:
    first = load(write(tmp_path, GOOD)).digest
    assert load(write(tmp_path, GOOD + "# a comment\n")).digest != first
    assert load(write(tmp_path, GOOD)).digest == first


def near_cap_playbook(tmp: Path) -> Path:
    """Deployments like playbooks/day4.yml, as many as fit under the byte cap."""
    one = textwrap.dedent("""\
          - name: d{i}
            hosts: [h{i}]
            model: /models/Qwen2.5-14B-Instruct
            served_model_name: qwen-{i}
            gpus: [6, 7]
            tensor_parallel_size: 2
            port: 8000
            gpu_memory_utilization: 0.9
            max_model_len: 2048
            launcher: {{venv: /opt/vllm}}
            args: {{--enable-prefix-caching: true, --shutdown-timeout: 30}}
            env: {{HF_ENDPOINT: "https://hf-mirror.com", HF_HOME: /data/hf}}
            secrets: {{HF_TOKEN: {{env: HF_TOKEN}}}}
            readiness: {{timeout_s: 1800}}
        """)
    body, inventory, i = "inventory: inv.yml\ndeployments:\n", "hosts:\n", 0
    while len(body) + len(one) + 20 < MAX_BYTES:
        body += one.format(i=i)
        inventory += f"  h{i}: {{address: 10.0.{i // 250}.{i % 250}}}\n"
        i += 1
    return write(tmp, body, inventory)


def test_a_playbook_just_under_the_cap_loads_well_under_a_second(tmp_path: Path) -> None:
    path = near_cap_playbook(tmp_path)
    assert MAX_BYTES - 1000 < path.stat().st_size <= MAX_BYTES
    start = time.perf_counter()
    loaded = load(path)
    elapsed = time.perf_counter() - start
    assert len(loaded.playbook.deployments) > 500
    assert elapsed < 0.5, f"{elapsed:.2f} s"
