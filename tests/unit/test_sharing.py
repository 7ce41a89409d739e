"""Deployments sharing a GPU: who holds what, named; the share check; leftovers; each one's memory in status.

Two vLLM servers at ``gpu_memory_utilization: 0.3`` on GPU 0 of an H200 (fixtures/nvidia-smi-h200x2/
derived-two-vllm-gpu0_*, composed from real lines and figures, see fixtures/README.md), run by
supervisord as on the lent GPU machine: ``tiny-a`` (API server 43100, EngineCore 43210) and ``tiny-b``
(43700, 43877). Their marks (host.procs) and files (host.siblings) are written as the host prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from test_preflight import output

from orchestrator.cli.output import status_table
from orchestrator.core.model import Deployment, Host
from orchestrator.observe import preflight

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi-h200x2"
QUERY = (FIX / "derived-two-vllm-gpu0_query.csv").read_text()
APPS = (FIX / "derived-two-vllm-gpu0_apps.csv").read_text()
IDLE = (FIX / "nvsmi_query.csv").read_text()
GPUBOX = Host(address="127.0.0.1", connection="local", runner="supervisord")
PS = "900 1\n43100 900\n43210 43100\n43700 900\n43877 43700\n"
MARKED = """\
T 43100 supervisord tiny-a
T 43210 supervisord tiny-a
T 43700 supervisord tiny-b
T 43877 supervisord tiny-b
P 43100 900 Sl python3
P 43210 43100 Sl VLLM::EngineCor
P 43700 900 Sl python3
P 43877 43700 Sl VLLM::EngineCor"""
SIBLINGS = """\
@@orchsib supervisord tiny-a
CUDA_VISIBLE_DEVICES=0
--gpu-memory-utilization 0.3
rev=1
@@orchsib supervisord tiny-b
CUDA_VISIBLE_DEVICES=0
--gpu-memory-utilization 0.3
rev=1"""
A = "deployment tiny-a (orch, revision 1)"
B = "deployment tiny-b (orch, revision 1)"


def tiny(name: str, share: float = 0.3, port: int = 8000) -> Deployment:
    return Deployment.model_validate(
        {
            "name": name,
            "hosts": ["gpubox"],
            "model": "/tmp/models/tiny",
            "gpus": [0],
            "gpu_memory_utilization": share,
            "port": port,
            "launcher": {"kind": "api_server"},
        }
    )


def host_output(name: str, *, main_pid: int = 0, **kw: Any) -> str:
    base: dict[str, Any] = {"query": QUERY, "apps": APPS, "ps": PS, "marked": MARKED, "siblings": SIBLINGS}
    return output(**(base | kw), main_pid=main_pid, name=name)


def verdicts(dep: Deployment, text: str, **kw: Any) -> dict[str, tuple[str, str]]:
    checks = preflight.checks(dep, preflight.parse(text), host=kw.pop("host", GPUBOX), **kw)
    return {c.name: (c.severity, c.message) for c in checks}


def test_each_of_two_deployments_on_a_gpu_names_the_other() -> None:
    v = verdicts(tiny("tiny-a"), host_output("tiny-a", main_pid=43100))
    assert v["free-memory-gpu0"] == (
        "ok",
        "GPU 0: 99646 MiB free, gpu_memory_utilization 0.3 needs 42947 of 143157 MiB; "
        f"in use by {B} 43496 MiB (pid 43877 VLLM::EngineCore)",
    )
    assert v["gpu-share-gpu0"] == ("ok", f"GPU 0: 0.30 this deployment + 0.30 {B} = 0.60 of the card")
    assert v["foreign-processes"] == ("ok", "no foreign processes on the deployment's GPUs")
    assert "orphans" not in v


def test_a_third_at_06_is_refused_naming_free_memory_and_both_siblings() -> None:
    v = verdicts(tiny("tiny-c", 0.6, port=8002), host_output("tiny-c"))
    assert v["free-memory-gpu0"] == (
        "error",
        "GPU 0: 56150 MiB free, gpu_memory_utilization 0.6 needs 85894 of 143157 MiB; "
        f"in use by {A} 43496 MiB (pid 43210 VLLM::EngineCore), {B} 43496 MiB (pid 43877 VLLM::EngineCore); "
        "vLLM will refuse to start",
    )
    assert v["gpu-share-gpu0"] == (
        "error",
        f"GPU 0: 0.60 this deployment + 0.30 {A} + 0.30 {B} = 1.20 of the card: over-committed (at most 1)",
    )
    assert v["foreign-processes"][0] == "ok"


def test_a_third_that_fits_is_accepted() -> None:
    v = verdicts(tiny("tiny-c", 0.35, port=8002), host_output("tiny-c"))
    assert v["free-memory-gpu0"][0] == "ok" and v["gpu-share-gpu0"][0] == "ok"


def test_without_marks_the_other_vllm_is_foreign() -> None:
    """What preflight said before processes were told apart (and still says where marks cannot be read)."""
    v = verdicts(tiny("tiny-a"), host_output("tiny-a", main_pid=43100, marked="", siblings=""))
    assert v["foreign-processes"] == (
        "warn",
        "foreign processes: GPU 0: pid 43877 VLLM::EngineCore 43496 MiB (a leftover vLLM?)",
    )


def test_a_leftover_of_this_deployment_is_an_orphan_and_reap_frees_it() -> None:
    """tiny-a's API server was killed and started again (44000); its old EngineCore lives on under PID 1."""
    ps = PS.replace("43100 900", "44000 900").replace("43210 43100", "43210 1")
    marked = MARKED.replace("T 43100", "T 44000").replace("P 43100 900", "P 44000 900")
    marked = marked.replace("P 43210 43100", "P 43210 1")
    text = host_output("tiny-a", main_pid=44000, ps=ps, marked=marked)
    v = verdicts(tiny("tiny-a", 0.45), text)
    assert v["orphans"] == (
        "warn",
        "processes of this deployment outlived a stop: pid 43210 VLLM::EngineCor (GPU 0: 43496 MiB); "
        "`orch apply --reap` or `orch destroy --reap` ends them",
    )
    assert v["free-memory-gpu0"] == (
        "error",
        "GPU 0: 56150 MiB free, gpu_memory_utilization 0.45 needs 64421 of 143157 MiB; "
        "in use by this deployment's leftover 43496 MiB (pid 43210 VLLM::EngineCore), "
        f"{B} 43496 MiB (pid 43877 VLLM::EngineCore); vLLM will refuse to start",
    )
    reaped = verdicts(tiny("tiny-a", 0.45), text, reap=True)
    assert reaped["orphans"][0] == "ok"
    assert reaped["free-memory-gpu0"][0] == "ok" and reaped["free-memory-gpu0"][1].startswith(
        "GPU 0: 99646 MiB free"
    )
    assert reaped["gpu-share-gpu0"] == ("ok", f"GPU 0: 0.45 this deployment + 0.30 {B} = 0.75 of the card")


def test_a_stopped_deployment_keeps_its_share() -> None:
    """Its files are on the host, so it starts again (a reboot, an apply): its share is taken."""
    siblings = "@@orchsib system tiny-x\nCUDA_VISIBLE_DEVICES=0\n--gpu-memory-utilization 0.5\nrev=2"
    text = host_output("new", query=IDLE, apps="", ps="", marked="", siblings=siblings)
    v = verdicts(tiny("new", 0.6), text, host=Host(address="gpu1"))
    assert v["free-memory-gpu0"][0] == "ok"
    assert v["gpu-share-gpu0"] == (
        "error",
        "GPU 0: 0.60 this deployment + 0.50 deployment tiny-x (orch, revision 2) = 1.10 of the card: "
        "over-committed (at most 1)",
    )


def test_the_verbs_other_deployments_count_with_their_playbook_share() -> None:
    """tiny-a runs at 0.8 now; the playbook being applied sets it to 0.3, and adds tiny-n at 0.3."""
    siblings = SIBLINGS.replace(
        "0.3\nrev=1\n@@orchsib supervisord tiny-b", "0.8\nrev=1\n@@orchsib supervisord tiny-b"
    )
    text = host_output("tiny-b", main_pid=43700, siblings=siblings)
    alone = verdicts(tiny("tiny-b"), text)
    assert alone["gpu-share-gpu0"][0] == "error"
    peers = [tiny("tiny-a"), tiny("tiny-b"), tiny("tiny-n", 0.3, port=8009)]
    v = verdicts(tiny("tiny-b"), text, peers=peers)
    assert v["gpu-share-gpu0"] == (
        "ok",
        f"GPU 0: 0.30 this deployment + 0.30 {A} + 0.30 deployment tiny-n (orch, new) = 0.90 of the card",
    )


def test_a_port_held_by_another_deployment_names_it() -> None:
    listen = 'LISTEN 0 2048 0.0.0.0:8001 0.0.0.0:* users:(("python3",pid=43700,fd=20))'
    v = verdicts(tiny("tiny-c", 0.1, port=8001), host_output("tiny-c", listen=listen))
    assert v["port"] == ("error", f"port 8001 is in use by {B}; choose another port or stop it")


def test_a_port_held_by_a_leftover_is_freed_by_reap() -> None:
    listen = 'LISTEN 0 2048 0.0.0.0:8000 0.0.0.0:* users:(("python3",pid=43100,fd=20))'
    text = host_output("tiny-a", main_pid=0, listen=listen)  # stopped, but its API server lives on
    assert verdicts(tiny("tiny-a"), text)["port"] == (
        "error",
        "port 8000 is held by pid 43100, left over by this deployment: --reap ends it",
    )
    assert verdicts(tiny("tiny-a"), text, reap=True)["port"][0] == "ok"


def test_status_shows_each_deployments_memory_beside_the_gpus() -> None:
    for name, main, mine, other, other_pid in (
        ("tiny-a", 43100, 43210, B, 43877),
        ("tiny-b", 43700, 43877, A, 43210),
    ):
        probe = preflight.parse(host_output(name, main_pid=main))
        status = preflight.gpu_status(tiny(name), probe, GPUBOX)
        assert status == {
            "gpus": [
                {
                    "index": 0,
                    "used_mib": 87007,
                    "total_mib": 143771,
                    "utilization_pct": 0,
                    "deployment_mib": 43496,
                    "others": [
                        {
                            "who": other,
                            "kind": "sibling",
                            "pid": other_pid,
                            "process": "VLLM::EngineCore",
                            "mib": 43496,
                        }
                    ],
                }
            ]
        }, name
        assert mine in probe.descendants(main)


def test_a_user_units_mark_names_its_uid() -> None:
    """systemd user units are marked user-UID: the login's own are its own, another user's are siblings."""
    marked = "T 43100 user-1000 tiny-a\nT 43210 user-1000 tiny-a\nP 43100 900 S python3\nP 43210 43100 S VLLM::EngineCor"
    text = host_output("tiny-a", main_pid=43100, marked=marked, siblings="").replace(
        "@@orchuid\n0", "@@orchuid\n1000"
    )
    text_other = text.replace("\n43100\n@@orchlauncher", "\n0\n@@orchlauncher")
    user = Host(address="gpu1", scope="user", user="deploy")
    probe = preflight.parse(text)
    assert preflight.view(tiny("tiny-a"), probe, user).kind(43210) == "own"
    other = preflight.view(
        tiny("tiny-a"), preflight.parse(text_other.replace("@@orchuid\n1000", "@@orchuid\n1001")), user
    )
    assert (other.kind(43210), other.who(43210)) == (
        "sibling",
        "deployment tiny-a (orch, user 1000, no files found)",
    )


def test_the_status_table_shows_both_memories_and_the_other_deployment() -> None:
    probe = preflight.parse(host_output("tiny-a", main_pid=43100))
    row = {
        "host": "gpubox",
        "deployment": "tiny-a",
        "state": "active/running",
        "revision": 1,
        "pending": None,
        "vllm": "0.26.0",
        "ready": True,
        "restarts": 0,
        "detail": "",
        "since": "0:05:00",
        **preflight.gpu_status(tiny("tiny-a"), probe, GPUBOX),
    }
    console = Console(width=250, record=True, color_system=None)
    console.print(status_table([row]))
    text = console.export_text()
    assert "0: 43496 · 87007/143771 0%" in text
    assert f"+ {B} 43496" in text
