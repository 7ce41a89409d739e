"""nvidia-smi CSV -> Gpu / GpuProcess, and the checks on them (real captures + derived variants)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.model import Deployment
from orchestrator.host.procs import Owner
from orchestrator.observe.gpu import (
    QUERY_GPUS,
    QUERY_PROCESSES,
    Check,
    Gpu,
    GpuProcess,
    NvidiaSmiParseError,
    TpBalance,
    check_free_memory,
    check_gpus_exist,
    check_tp_balance,
    parse_gpus,
    parse_processes,
    tp_balance,
)
from orchestrator.observe.sharing import Holder, View, foreign_check, gpu_status, holders

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
IDLE = FIXTURES / "nvidia-smi-h200x2"
SERVING = FIXTURES / "vllm-0.26-gpu-tp2"
U0 = "GPU-4e7cf5eb-7c1e-6c4d-4ee7-6632b9478b21"
U1 = "GPU-410794cd-22a4-f2d8-3d2f-c88780cacf81"
S0 = "GPU-e08cfcc0-562f-4309-7714-063252178651"
S1 = "GPU-f1190c7f-2ce9-2356-17b4-1dbd8efbc418"
WORKERS = frozenset({3161, 3162})


def read(path: Path) -> str:
    return path.read_text()


# Each column nvidia-smi is asked for, with a distinct sample value and the parsed field that must hold it.
GPU_COLUMNS = {
    "index": ("3", "index"),
    "uuid": ("GPU-x", "uuid"),
    "name": ("NVIDIA H200", "name"),
    "memory.total": ("143771", "memory_total_mib"),
    "memory.used": ("133425", "memory_used_mib"),
    "memory.free": ("9732", "memory_free_mib"),
    "utilization.gpu": ("57", "utilization_pct"),
    "pci.bus_id": ("00000000:00:06.0", "pci_bus_id"),
}
PROCESS_COLUMNS = {
    "pid": ("3161", "pid"),
    "process_name": ("VLLM::Worker_TP0", "name"),
    "used_memory": ("133416", "used_memory_mib"),
    "gpu_uuid": ("GPU-x", "gpu_uuid"),
}


def asked_for(command: str, option: str) -> list[str]:
    """The columns a query command asks nvidia-smi for, in the order it prints them."""
    [arg] = [word for word in command.split() if word.startswith(f"{option}=")]
    return arg.split("=", 1)[1].split(",")


@pytest.mark.parametrize(
    ("command", "option", "meaning", "parse", "kind"),
    [
        (QUERY_GPUS, "--query-gpu", GPU_COLUMNS, parse_gpus, Gpu),
        (QUERY_PROCESSES, "--query-compute-apps", PROCESS_COLUMNS, parse_processes, GpuProcess),
    ],
    ids=["gpus", "processes"],
)
def test_commands_ask_for_the_columns_the_parsers_read(
    command: str, option: str, meaning: dict[str, tuple[str, str]], parse: Any, kind: type
) -> None:
    """A line of distinct values in the order the command asks for them: each lands in its column's field.

    A column added to, dropped from or moved in the command, and not in the parser, fails here.
    """
    asked = asked_for(command, option)
    assert sorted(asked) == sorted(meaning)
    [parsed] = parse(", ".join(meaning[column][0] for column in asked))
    assert {name: str(getattr(parsed, name)) for _, name in meaning.values()} == {
        name: value for value, name in meaning.values()
    }
    assert {f.name for f in fields(kind)} == {name for _, name in meaning.values()}


def test_a_real_capture_of_those_queries_fills_every_field() -> None:
    """The serving capture (used != free) parses with no field empty, memory figures consistent."""
    for gpu in parse_gpus(read(SERVING / "nvsmi_query_serving.csv")):
        assert all(getattr(gpu, f.name) not in (None, "") for f in fields(Gpu)), gpu
        assert (
            gpu.memory_total_mib == 143771 and gpu.memory_used_mib == 133425 and gpu.memory_free_mib == 9732
        )
        assert gpu.uuid.startswith("GPU-") and gpu.pci_bus_id.startswith("00000000:")
    for proc in parse_processes(read(SERVING / "nvsmi_apps_serving.csv")):
        assert all(getattr(proc, f.name) not in (None, "") for f in fields(GpuProcess)), proc
        assert proc.name.startswith("VLLM::Worker_TP") and proc.gpu_uuid in (S0, S1)


def test_parse_idle_h200_pair() -> None:
    assert parse_gpus(read(IDLE / "nvsmi_query.csv")) == (
        Gpu(0, U0, "NVIDIA H200", 143771, 0, 143156, 0, "00000000:00:06.0"),
        Gpu(1, U1, "NVIDIA H200", 143771, 0, 143156, 0, "00000000:00:07.0"),
    )


def test_cuda_total_is_used_plus_free() -> None:
    gpu = parse_gpus(read(IDLE / "nvsmi_query.csv"))[0]
    assert gpu.cuda_total_mib == 143156  # vLLM logged 139.8 GiB = 143155 MiB


def test_no_processes_is_empty() -> None:
    assert parse_processes(read(IDLE / "nvsmi_apps.csv")) == ()


def test_parse_serving_processes() -> None:
    assert parse_processes(read(SERVING / "nvsmi_apps_serving.csv")) == (
        GpuProcess(3161, "VLLM::Worker_TP0", 133416, S0),
        GpuProcess(3162, "VLLM::Worker_TP1", 133416, S1),
    )


def test_process_name_with_commas() -> None:
    assert parse_processes(f"7, python -c a,b, 10, {U0}\n") == (GpuProcess(7, "python -c a,b", 10, U0),)


def test_eight_gpus() -> None:
    gpus = parse_gpus(read(IDLE / "derived-h200x8_query.csv"))
    assert [g.index for g in gpus] == list(range(8))
    assert gpus[7].pci_bus_id == "00000000:00:0D.0"


def test_not_available_memory_is_none() -> None:
    (gpu,) = parse_gpus(read(IDLE / "derived-na-memory_query.csv"))
    assert (gpu.name, gpu.memory_total_mib, gpu.memory_free_mib, gpu.cuda_total_mib) == (
        "NVIDIA GB10",
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0, GPU-x, NVIDIA H200, 143771\n", "line 1: expected 8 fields, got 4"),
        ("\n0, GPU-x, H200, lots, 0, 1, 0, 0000:00:06.0\n", "line 2: not an integer: 'lots'"),
    ],
)
def test_malformed_gpu_line(text: str, message: str) -> None:
    with pytest.raises(NvidiaSmiParseError, match=message):
        parse_gpus(text)


def test_malformed_process_line() -> None:
    with pytest.raises(NvidiaSmiParseError, match="line 1: expected pid, process_name"):
        parse_processes("3161 VLLM::Worker_TP0\n")


# --- checks ------------------------------------------------------------------


def test_named_gpus_exist() -> None:
    gpus = parse_gpus(read(IDLE / "derived-h200x8_query.csv"))
    assert check_gpus_exist(gpus, [4, 5, 6, 7]) == Check("gpus-exist", True, "ok", "GPU 4, 5, 6, 7 present")


def test_missing_gpu_index() -> None:
    gpus = parse_gpus(read(IDLE / "derived-missing-index1_query.csv"))
    assert check_gpus_exist(gpus, [0, 1]) == Check(
        "gpus-exist", False, "error", "GPU 1 not found (host has 0)"
    )


def test_free_memory_idle_cards_pass() -> None:
    gpus = parse_gpus(read(IDLE / "nvsmi_query.csv"))
    assert check_free_memory(gpus, [0, 1], gpu_memory_utilization=0.9) == (
        Check(
            "free-memory-gpu0",
            True,
            "ok",
            "GPU 0: 143156 MiB free, gpu_memory_utilization 0.9 needs 128840 of 143156 MiB",
        ),
        Check(
            "free-memory-gpu1",
            True,
            "ok",
            "GPU 1: 143156 MiB free, gpu_memory_utilization 0.9 needs 128840 of 143156 MiB",
        ),
    )


def test_free_memory_busy_gpu_fails() -> None:
    gpus = parse_gpus(read(IDLE / "derived-busy-gpu1_query.csv"))
    checks = check_free_memory(gpus, [0, 1], gpu_memory_utilization=0.9)
    assert [(c.name, c.severity) for c in checks] == [
        ("free-memory-gpu0", "ok"),
        ("free-memory-gpu1", "error"),
    ]
    assert checks[1].message == (
        "GPU 1: 102644 MiB free, gpu_memory_utilization 0.9 needs 128840 of 143156 MiB; "
        "vLLM will refuse to start"
    )


def test_free_memory_busy_gpu_fits_a_smaller_share() -> None:
    gpus = parse_gpus(read(IDLE / "derived-busy-gpu1_query.csv"))
    (check,) = check_free_memory(gpus, [1], gpu_memory_utilization=0.7)
    assert (check.ok, check.severity) == (True, "ok")


def test_free_memory_without_context_headroom_warns() -> None:
    gpus = parse_gpus(read(IDLE / "derived-busy-gpu1_query.csv"))
    # 0.71 x 143156 = 101641 MiB: clears 102644 free by less than one CUDA context.
    (check,) = check_free_memory(gpus, [1], gpu_memory_utilization=0.71)
    assert check == Check(
        "free-memory-gpu1",
        True,
        "warn",
        "GPU 1: 102644 MiB free, gpu_memory_utilization 0.71 needs 101641 of 143156 MiB; "
        "less than 1536 MiB to spare",
    )


def test_free_memory_while_serving_fails_for_a_second_deployment() -> None:
    gpus = parse_gpus(read(SERVING / "nvsmi_query_serving.csv"))
    checks = check_free_memory(gpus, [0, 1], gpu_memory_utilization=0.9)
    assert [c.severity for c in checks] == ["error", "error"]


def test_free_memory_unknown_warns() -> None:
    gpus = parse_gpus(read(IDLE / "derived-na-memory_query.csv"))
    assert check_free_memory(gpus, [0], gpu_memory_utilization=0.9) == (
        Check("free-memory-gpu0", True, "warn", "GPU 0: nvidia-smi reports no memory figures (N/A)"),
    )


def foreign(
    gpus: list[Gpu] | tuple[Gpu, ...], procs: tuple[GpuProcess, ...], own: frozenset[int]
) -> list[Holder]:
    """The processes that neither the deployment (its live PIDs ``own``) nor another orch deployment owns."""
    found = holders(gpus, procs, View(Owner("system", "d"), own))
    return [h for h in found if h.kind == "foreign"]


def test_own_workers_are_not_foreign() -> None:
    gpus = parse_gpus(read(SERVING / "nvsmi_query_serving.csv"))
    procs = parse_processes(read(SERVING / "nvsmi_apps_serving.csv"))
    assert foreign_check(holders(gpus, procs, View(Owner("system", "d"), WORKERS)), [0, 1]) == Check(
        "foreign-processes", True, "ok", "no foreign processes on the deployment's GPUs"
    )


def test_foreign_processes_named_by_pid_and_name() -> None:
    gpus = parse_gpus(read(SERVING / "derived-foreign-process_query.csv"))
    procs = parse_processes(read(SERVING / "derived-foreign-process_apps.csv"))
    assert [(h.gpu, h.pid, h.process, h.mib) for h in foreign(gpus, procs, WORKERS)] == [
        (1, 2999, "VLLM::Worker_TP1", 1024),
        (1, 4242, "python3", 2048),
    ]
    assert foreign_check(holders(gpus, procs, View(Owner("system", "d"), WORKERS)), [0, 1]) == Check(
        "foreign-processes",
        True,
        "warn",
        "foreign processes: GPU 1: pid 2999 VLLM::Worker_TP1 1024 MiB (a leftover vLLM?); "
        "GPU 1: pid 4242 python3 2048 MiB",
    )


def test_foreign_processes_only_on_the_wanted_gpus() -> None:
    gpus = parse_gpus(read(SERVING / "derived-foreign-process_query.csv"))
    procs = parse_processes(read(SERVING / "derived-foreign-process_apps.csv"))
    assert foreign_check(holders(gpus, procs, View(Owner("system", "d"), WORKERS)), [0]).severity == "ok"


def test_without_own_pids_everything_is_foreign() -> None:
    gpus = parse_gpus(read(IDLE / "derived-busy-gpu1_query.csv"))
    procs = parse_processes(read(IDLE / "derived-busy-gpu1_apps.csv"))
    assert [(h.gpu, h.pid, h.mib, h.who) for h in foreign(gpus, procs, frozenset())] == [
        (1, 4242, 40500, "pid 4242 python3")
    ]


def own_memory(gpus: tuple[Gpu, ...], procs: tuple[GpuProcess, ...]) -> dict[int, int]:
    dep = Deployment(name="d", hosts=("h",), model="/m", gpus=(0, 1), tensor_parallel_size=2)
    rows = gpu_status(dep, gpus, holders(gpus, procs, View(Owner("system", "d"), WORKERS)))["gpus"]
    return {row["index"]: row["deployment_mib"] for row in rows}


def test_tp_balance_of_the_real_deployment() -> None:
    gpus = parse_gpus(read(SERVING / "nvsmi_query_serving.csv"))
    procs = parse_processes(read(SERVING / "nvsmi_apps_serving.csv"))
    used = own_memory(gpus, procs)
    assert used == {0: 133416, 1: 133416}
    assert tp_balance(used.values()) == TpBalance(max_mib=133416, min_mib=133416, spread_pct=0.0)
    assert check_tp_balance(used) == Check(
        "tp-balance", True, "ok", "ranks use 133416..133416 MiB (spread 0.0%, limit 10%)"
    )


def test_tp_imbalance_is_flagged() -> None:
    gpus = parse_gpus(read(SERVING / "nvsmi_query_serving.csv"))
    procs = parse_processes(read(SERVING / "derived-tp-imbalance_apps.csv"))
    used = own_memory(gpus, procs)
    balance = tp_balance(used.values())
    assert balance == TpBalance(max_mib=133416, min_mib=118000, spread_pct=11.55)
    assert not balance.balanced
    assert check_tp_balance(used) == Check(
        "tp-balance", True, "warn", "ranks use 118000..133416 MiB (spread 11.6%, limit 10%)"
    )


def test_tp_balance_at_the_limit_is_balanced() -> None:
    assert tp_balance([100, 90]).balanced
    assert not tp_balance([100, 89]).balanced


def test_tp_balance_without_ranks() -> None:
    assert check_tp_balance({}).severity == "warn"
    with pytest.raises(ValueError, match="at least one rank"):
        tp_balance([])
