"""Preflight on real nvidia-smi captures: raw host output → probe → verdicts."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.model import Deployment, Host
from orchestrator.host import pyreads
from orchestrator.observe import preflight

FIX = Path(__file__).resolve().parents[1] / "fixtures"
CONFIG_14B = (FIX / "configs" / "Qwen2.5-14B-Instruct.json").read_text()
HOST = Host(address="gpu1")


def day4(**kw: object) -> Deployment:
    base: dict[str, object] = {
        "name": "qwen14b",
        "hosts": ["gpu1"],
        "model": "/models/q14",
        "gpus": [0, 1],
        "tensor_parallel_size": 2,
        "max_model_len": 2048,
        "launcher": {"venv": "/opt/vllm"},
    }
    return Deployment.model_validate(base | kw)


def output(
    *,
    query: str,
    apps: str,
    main_pid: int = 0,
    ps: str = "",
    listen: str = "",
    model: bool = True,
    runners: str = "systemd",
    marked: str = "",
    siblings: str = "",
    name: str = "qwen14b",
) -> str:
    """What ``preflight.script`` prints on a host, assembled from captured command output.

    ``marked``: host.procs.LISTING's lines; ``siblings``: host.siblings.script's.
    """
    config = base64.b64encode(CONFIG_14B.encode()).decode() if model else ""
    return "\n".join(
        [
            "@@orchgpus",
            query.strip(),
            "@@orchapps",
            apps.strip(),
            "@@orchps",
            ps,
            "@@orchlisten",
            listen,
            "@@orchrunners",
            runners,
            "@@orchuid",
            "0",
            "@@orchmarked",
            marked,
            "@@orchsiblings",
            siblings,
            f"@@orchdep {name}",
            "@@orchmainpid",
            str(main_pid),
            "@@orchlauncher",
            "ok",
            "@@orchversion",
            "0.26.0",
            "@@orchmodel",
            "dir" if model else "",
            "@@orchconfig",
            config,
        ]
    )


def verdicts(dep: Deployment, text: str, **kw: Any) -> dict[str, tuple[str, str]]:
    checks = preflight.checks(dep, preflight.parse(text), host=kw.pop("host", HOST), **kw)
    return {c.name: (c.severity, c.message) for c in checks}


IDLE_Q = (FIX / "nvidia-smi-h200x2" / "nvsmi_query.csv").read_text()
IDLE_A = (FIX / "nvidia-smi-h200x2" / "nvsmi_apps.csv").read_text()
SERVING_Q = (FIX / "vllm-0.26-gpu-tp2" / "nvsmi_query_serving.csv").read_text()
SERVING_A = (FIX / "vllm-0.26-gpu-tp2" / "nvsmi_apps_serving.csv").read_text()


def test_idle_h200_pair_passes() -> None:
    v = verdicts(day4(), output(query=IDLE_Q, apps=IDLE_A))
    assert {k: s for k, (s, _) in v.items()} == {
        "runner": "ok",
        "port": "ok",
        "launcher": "ok",
        "model": "ok",
        "gpus-exist": "ok",
        "free-memory-gpu0": "ok",
        "free-memory-gpu1": "ok",
        "foreign-processes": "ok",
        "fit": "ok",
    }
    assert v["launcher"][1] == "/opt/vllm/bin/vllm: vLLM 0.26.0"


def test_gpus_held_by_a_foreign_vllm_block_the_start() -> None:
    v = verdicts(day4(), output(query=SERVING_Q, apps=SERVING_A))
    assert v["free-memory-gpu0"][0] == "error"
    assert v["foreign-processes"] == (
        "warn",
        "foreign processes: GPU 0: pid 3161 VLLM::Worker_TP0 133416 MiB (a leftover vLLM?); "
        "GPU 1: pid 3162 VLLM::Worker_TP1 133416 MiB (a leftover vLLM?)",
    )


def test_own_workers_do_not_count_against_a_restart() -> None:
    ps = "3000 1\n3161 3000\n3162 3000\n"  # the unit's main process and its two TP workers
    listen = 'LISTEN 0 2048 0.0.0.0:8000 0.0.0.0:* users:(("python3",pid=3000,fd=20))'
    v = verdicts(day4(), output(query=SERVING_Q, apps=SERVING_A, main_pid=3000, ps=ps, listen=listen))
    assert v["free-memory-gpu0"][0] == "ok"
    assert v["foreign-processes"][0] == "ok"
    assert v["port"] == ("ok", "port 8000 is held by this deployment")


def test_port_held_by_someone_else() -> None:
    listen = 'LISTEN 0 5 0.0.0.0:8000 0.0.0.0:* users:(("nginx",pid=77,fd=6))'
    v = verdicts(day4(), output(query=IDLE_Q, apps=IDLE_A, listen=listen))
    assert v["port"] == ("error", "port 8000 is in use by pid 77; choose another port or stop it")


def test_missing_gpu_index() -> None:
    v = verdicts(day4(gpus=[6, 7]), output(query=IDLE_Q, apps=IDLE_A))
    assert v["gpus-exist"] == ("error", "GPU 6, 7 not found (host has 0, 1)")


def test_fit_refuses_what_cannot_fit() -> None:
    v = verdicts(day4(max_model_len=1_000_000), output(query=IDLE_Q, apps=IDLE_A))
    assert v["fit"][0] == "error"


def test_tp_must_divide_heads() -> None:
    dep = day4(gpus=[0, 1, 2], tensor_parallel_size=3)
    query = IDLE_Q + IDLE_Q.splitlines()[0].replace("0, GPU-e08", "2, GPU-e09") + "\n"
    v = verdicts(dep, output(query=query, apps=IDLE_A))
    assert v["fit"][0] == "error" and "40" in v["fit"][1]


def test_missing_model_and_nvidia_smi() -> None:
    text = output(query="NVIDIA-SMI has failed\n@@orchsmi-failed 9", apps="", model=False)
    v = verdicts(day4(), text)
    assert v["model"] == ("error", "model path /models/q14 does not exist on the host")
    assert v["gpus-exist"][0] == "error" and "NVIDIA-SMI has failed" in v["gpus-exist"][1]


def test_cpu_deployment_skips_gpu_checks() -> None:
    dep = day4(accelerator="cpu", gpus=[], tensor_parallel_size=1)
    text = output(query="", apps="").replace("@@orchgpus\n\n@@orchapps\n\n", "")
    assert set(verdicts(dep, text)) == {"runner", "port", "launcher", "model"}


def test_the_model_config_the_host_prints_becomes_the_probes() -> None:
    """The config section (config.json base64-encoded by the host) becomes the probe's model_config."""
    own = preflight.parse(output(query=IDLE_Q, apps=IDLE_A)).deployments["qwen14b"]
    assert own.model_config is not None
    shape = {
        k: own.model_config[k] for k in ("num_attention_heads", "num_key_value_heads", "num_hidden_layers")
    }
    assert shape == {"num_attention_heads": 40, "num_key_value_heads": 8, "num_hidden_layers": 48}
    assert own.model_is_dir and own.launcher_ok and own.vllm_version == "0.26.0"


def test_an_unreadable_model_config_is_no_model() -> None:
    """A config.json that is not JSON (or not an object) reads as none: the model check refuses the folder."""
    for damaged in ("{not json", "[1, 2]"):
        config = base64.b64encode(damaged.encode()).decode()
        text = output(query=IDLE_Q, apps=IDLE_A).replace(
            base64.b64encode(CONFIG_14B.encode()).decode(), config
        )
        assert preflight.parse(text).deployments["qwen14b"].model_config is None
        assert verdicts(day4(), text)["model"] == (
            "error",
            "/models/q14 has no readable config.json: not a model folder",
        )


def test_status_shows_gpus_and_tp_balance_from_real_capture() -> None:
    ps = "3000 1\n3161 3000\n3162 3000\n"
    probe = preflight.parse(output(query=SERVING_Q, apps=SERVING_A, main_pid=3000, ps=ps))
    status = preflight.gpu_status(day4(), probe, HOST)
    assert status["gpus"] == [
        {
            "index": 0,
            "used_mib": 133425,
            "total_mib": 143771,
            "utilization_pct": 0,
            "deployment_mib": 133416,
            "others": [],
        },
        {
            "index": 1,
            "used_mib": 133425,
            "total_mib": 143771,
            "utilization_pct": 0,
            "deployment_mib": 133416,
            "others": [],
        },
    ]
    assert status["tp_balance"] == {"max_mib": 133416, "min_mib": 133416, "spread_pct": 0.0, "balanced": True}


def test_status_flags_tp_imbalance() -> None:
    apps = (FIX / "vllm-0.26-gpu-tp2" / "derived-tp-imbalance_apps.csv").read_text()
    ps = "3000 1\n3161 3000\n3162 3000\n"
    probe = preflight.parse(output(query=SERVING_Q, apps=apps, main_pid=3000, ps=ps))
    assert preflight.gpu_status(day4(), probe, HOST)["tp_balance"]["balanced"] is False


def test_h100_with_a_real_foreign_process() -> None:
    """apps-busy.csv is verbatim from the lent H100 (a python3 holding 40 GiB); the query line is rebuilt
    from the same run's nvidia-smi table (docs/gpu-preflight-h100/nvsmi-busy.txt)."""
    h100 = FIX / "nvidia-smi-h100"
    text = output(
        query=(h100 / "query-busy-reconstructed.csv").read_text(), apps=(h100 / "apps-busy.csv").read_text()
    )
    v = verdicts(day4(gpus=[0], tensor_parallel_size=1), text)
    assert v["free-memory-gpu0"] == (
        "error",
        "GPU 0: 39501 MiB free, gpu_memory_utilization 0.9 needs 72972 of 81080 MiB; "
        "in use by pid 464 python3 41570 MiB; vLLM will refuse to start",
    )
    assert v["foreign-processes"] == ("warn", "foreign processes: GPU 0: pid 464 python3 41570 MiB")
    assert v["gpu-share-gpu0"] == (
        "error",
        "GPU 0: 0.90 this deployment + 0.51 pid 464 python3 41570 MiB = 1.41 of the card: over-committed (at most 1)",
    )


def test_port_unchecked_without_ss_or_proc() -> None:
    text = output(query=IDLE_Q, apps=IDLE_A).replace("@@orchlisten\n", "@@orchno-ss\n")
    assert verdicts(day4(), text)["port"] == (
        "warn",
        "port 8000 not checked: the host has no `ss` and no /proc/net/tcp",
    )


def test_port_read_from_proc_without_ss() -> None:
    """No ss: /proc/net/tcp6 lists 8000 (0x1F40) listening as socket inode 5123, held by pid 77."""
    listening = "00000000000000000000000000000000:1F40 5123\n0100007F:0016 6000"
    text = output(query=IDLE_Q, apps=IDLE_A).replace(
        "@@orchlisten\n", f"@@orchno-ss\n@@orchlisten-proc\n{listening}\n@@orchsockets\n77 5123\n"
    )
    assert verdicts(day4(), text)["port"] == (
        "error",
        "port 8000 is in use by pid 77; choose another port or stop it",
    )
    free = text.replace(":1F40 ", ":1F41 ")
    assert verdicts(day4(), free)["port"] == ("ok", "port 8000 is free")


def test_model_to_be_uploaded_is_not_missing() -> None:
    dep = day4(model={"source": "upload", "local": "models/q14", "dest": "/models/q14"})
    v = verdicts(dep, output(query=IDLE_Q, apps=IDLE_A, model=False))
    assert v["model"] == ("ok", "model /models/q14 will come from upload of models/q14")


def test_model_to_be_downloaded_is_not_missing() -> None:
    dep = day4(model={"source": "hf", "id": "Qwen/Qwen2.5-14B-Instruct", "dest": "/models/q14"})
    v = verdicts(dep, output(query=IDLE_Q, apps=IDLE_A, model=False))
    assert v["model"] == ("ok", "model /models/q14 will come from hf:Qwen/Qwen2.5-14B-Instruct")


def test_no_systemd_says_which_runner_to_use() -> None:
    """The lent GPU machine: no systemd as PID 1; supervisorctl present once supervisor is installed."""
    text = output(query=IDLE_Q, apps=IDLE_A, runners="supervisord")
    assert verdicts(day4(), text)["runner"] == (
        "error",
        "systemd is not PID 1 on this host; set runner: supervisord for this host in the inventory",
    )
    assert verdicts(day4(), text, host=Host(address="gpu1", runner="supervisord"))["runner"][0] == "ok"


def run_script(dep: Deployment) -> preflight.DeploymentProbe:
    """The probes as gather_host sends them: the script, then the version asked of the launcher's Python."""
    script = f"{preflight.script(HOST, [dep])}; {pyreads.script(preflight.asks([dep]))}"
    proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True)
    body, _, versions = proc.stdout.partition(pyreads.PY_MARK)
    return preflight.parse(body + versions).deployments[dep.name]


def fake_vllm(site: Path, *, metadata: bool) -> None:
    """vLLM as a folder on PYTHONPATH: installed (dist-info) or a checkout (only _version.py). Importing it
    fails, so a version read means it was read without importing vLLM (and torch with it)."""
    (site / "vllm").mkdir(parents=True)
    (site / "vllm" / "__init__.py").write_text(
        "raise ImportError('importing vLLM is too slow for a probe')\n"
    )
    if metadata:
        (site / "vllm-0.26.0.dist-info").mkdir()
        (site / "vllm-0.26.0.dist-info" / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: vllm\nVersion: 0.26.0\n"
        )
    else:
        (site / "vllm" / "_version.py").write_text("__version__ = version = '0.26.1.dev5'\n")


@pytest.mark.parametrize(("metadata", "version"), [(True, "0.26.0"), (False, "0.26.1.dev5")])
def test_the_launchers_python_reads_vllms_version_in_the_deployments_env(
    tmp_path: Path, metadata: bool, version: str
) -> None:
    """No venv: `python3 -m vllm…` finds vLLM only through the PYTHONPATH the deployment's env sets."""
    fake_vllm(tmp_path / "site", metadata=metadata)
    dep = day4(accelerator="cpu", gpus=[], tensor_parallel_size=1, launcher={"kind": "api_server"})
    assert run_script(dep).vllm_version == ""
    with_env = dep.model_copy(update={"env": {"PYTHONPATH": str(tmp_path / "site")}})
    assert run_script(with_env).vllm_version == version


def test_a_vllm_scripts_own_interpreter_is_asked(tmp_path: Path) -> None:
    """`vllm serve` with no venv: the `vllm` script the deployment's PATH finds names its Python."""
    fake_vllm(tmp_path / "site", metadata=True)
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "vllm"
    script.write_text("#!/usr/bin/env python3\nraise SystemExit('not run by the probe')\n")
    script.chmod(0o755)
    env = {"PATH": f"{tmp_path}/bin:/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")}
    dep = day4(accelerator="cpu", gpus=[], tensor_parallel_size=1, launcher={"kind": "serve"}, env=env)
    own = run_script(dep)
    assert own.launcher_ok and own.vllm_version == "0.26.0"


def test_a_model_folder_is_read_once_and_its_digest_only_for_nodes(tmp_path: Path) -> None:
    """Deployments serving one folder share its reads; the digest of its files, which only the nodes of a
    multi-node deployment compare, is not computed for the others."""
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    cpu = {"accelerator": "cpu", "gpus": [], "tensor_parallel_size": 1, "model": str(model)}
    a, b = day4(name="a", **cpu), day4(name="b", port=8001, **cpu)
    text = preflight.script(HOST, [a, b])
    assert text.count("config.json") == 1 and "sha256sum" not in text
    probe = preflight.parse(subprocess.run(["/bin/sh", "-c", text], capture_output=True, text=True).stdout)
    for name in ("a", "b"):
        own = probe.deployments[name]
        assert own.model_is_dir and own.model_config == {"model_type": "qwen2"} and own.model_files == ""
    node = a.model_copy(update={"nodes": ({"host": "x"}, {"host": "y"})})
    assert own_files(node) == own_files(node) != ""


def own_files(dep: Deployment) -> str:
    text = preflight.script(HOST, [dep])
    out = subprocess.run(["/bin/sh", "-c", text], capture_output=True, text=True).stdout
    return preflight.parse(out).deployments[dep.name].model_files
