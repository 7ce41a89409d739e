"""Known vLLM start-up and runtime failures, recognised in journal or log text.

``diagnose`` reads a log and returns one ``Diagnosis`` per known failure it
finds, in the order the failures first appear, each with the line that showed
it. The patterns are data (``PATTERNS``); each quotes text that vLLM, PyTorch,
NCCL or the C library really print (see tests/unit/test_diagnose.py for the
sources).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# Evidence longer than this is cut: some vLLM lines carry a whole config dump.
EVIDENCE_LIMIT = 400


@dataclass(frozen=True)
class Diagnosis:
    """A likely cause, what to do about it, and the log line that shows it."""

    cause: str
    fix: str
    evidence: str


@dataclass(frozen=True)
class Pattern:
    """One known failure: a stable key, the regex that finds it, cause and fix."""

    key: str
    regex: re.Pattern[str]
    cause: str
    fix: str


def _p(key: str, regex: str, cause: str, fix: str) -> Pattern:
    return Pattern(key=key, regex=re.compile(regex, re.IGNORECASE), cause=cause, fix=fix)


PATTERNS: tuple[Pattern, ...] = (
    _p(
        "gpu_memory_in_use",
        r"is less than desired GPU memory utilization",
        "Free GPU memory at start-up was below gpu_memory_utilization x the card's total: "
        "other processes hold GPU memory.",
        "Stop the other processes on the GPU (nvidia-smi shows them; a leftover vLLM worker "
        "means the unit lacks KillMode=mixed) or lower --gpu-memory-utilization.",
    ),
    _p(
        "cuda_out_of_memory",
        r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory",
        "The GPU ran out of memory.",
        "Lower --gpu-memory-utilization, --max-model-len or --max-num-seqs, "
        "or add GPUs (--tensor-parallel-size).",
    ),
    _p(
        "kv_cache_too_small",
        r"larger than the available KV cache memory|No available memory for the cache blocks",
        "The KV cache left after the weights cannot hold one sequence of max_model_len.",
        "Lower --max-model-len (the log gives the largest that fits) or raise --gpu-memory-utilization.",
    ),
    _p(
        "max_model_len_too_large",
        r"max_model_len \(\d+\) is greater than the derived max_model_len",
        "--max-model-len is larger than the model allows (max_position_embeddings).",
        "Lower --max-model-len to the model's limit; VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 "
        "only for a model whose RoPE scaling supports the length.",
    ),
    _p(
        "port_in_use",
        # vLLM's own "Address already in use. Retrying with a new port." is for an
        # internal port it then changes; it is not a failure.
        r"Errno 98\]|address already in use(?!\. Retrying)",
        "The API port is already in use by another process.",
        "Stop what listens on the port (ss -ltnp) or give the deployment another port.",
    ),
    _p(
        "no_cuda_device",
        r"No CUDA GPUs are available|Failed to infer device type|invalid device ordinal"
        r"|no CUDA-capable device is detected",
        "No usable CUDA device: CUDA_VISIBLE_DEVICES names a GPU that does not exist, "
        "or the driver or device files are not reachable.",
        "Check CUDA_VISIBLE_DEVICES (with CUDA_DEVICE_ORDER=PCI_BUS_ID) against nvidia-smi, "
        "and that the service user can open /dev/nvidia*.",
    ),
    _p(
        "nccl_error",
        r"NCCL error|ncclInternalError|ncclSystemError|ncclUnhandledCudaError",
        "NCCL communication between tensor-parallel workers failed.",
        "Set NCCL_P2P_DISABLE=1 or pass --disable-custom-all-reduce (PCIe-only cards); "
        "NCCL_DEBUG=INFO shows more; multi-node needs NCCL_SOCKET_IFNAME.",
    ),
    _p(
        "illegal_memory_access",
        r"an illegal memory access was encountered",
        "A CUDA kernel made an illegal memory access, typically while capturing CUDA graphs "
        "or in a fused all-reduce kernel.",
        "Start with --enforce-eager (no CUDA graphs); if it persists, add --disable-custom-all-reduce.",
    ),
    _p(
        "model_path_missing",
        r"Invalid repository ID or local directory specified|Could not detect config format"
        r"|does not appear to have a file named config\.json",
        "The model path does not exist or is not a model directory (no config.json).",
        "Check that the model directory exists on the host and holds config.json and the "
        "weights, or that the hub id and HF_TOKEN are right.",
    ),
    _p(
        "engine_start_failed",
        r"EngineCore failed to start|Engine core initialization failed",
        "The engine core failed during start-up.",
        "The first error above this line is the cause; fix it and restart.",
    ),
    _p(
        "engine_dead",
        r"EngineDeadError|EngineCore encountered an issue",
        "The engine core died; the API server may still answer /health.",
        "Read the first error before it in the log (the root cause), then restart the unit.",
    ),
    _p(
        "cpu_head_dim_unsupported",
        r"Unsupported CPU attention configuration: head_dim=\d+",
        "The CPU attention kernel does not support this model's head_dim.",
        "Use a model whose head_dim (hidden_size / num_attention_heads) is supported on CPU "
        "(vLLM 0.32: 32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512; 64 and up tested).",
    ),
    _p(
        "libnuma_missing",
        r"libnuma\.so[.\d]*: cannot open shared object file",
        "The CPU build of vLLM needs libnuma, which is not installed.",
        "Install libnuma (apt-get install libnuma1, or numactl-libs on RHEL).",
    ),
    _p(
        "no_cxx_compiler",
        r"No working C\+\+ compiler found|InvalidCxxCompiler|Compiler: \S+ is not found",
        "torch.compile on CPU needs a C++ compiler and found none.",
        "Install g++ (apt-get install g++ or build-essential) on the host.",
    ),
    _p(
        "working_directory_gone",
        r"getcwd\(\) failed|error retrieving current directory",
        "The server was started in a working directory that no longer exists (a supervisord started "
        "from a folder removed since): its shell and Python fail at start-up.",
        "Render the program with orch (it starts programs in /), or set directory= in the program's "
        "section, or restart supervisord from an existing folder.",
    ),
    _p(
        "cpu_numa_binding",
        r"Not enough allowed NUMA nodes to bind threads",
        "CPU tensor parallelism binds each worker to a NUMA node, and there are fewer "
        "NUMA nodes than workers.",
        "Set VLLM_CPU_OMP_THREADS_BIND to one CPU list per rank, e.g. '0-15|16-31', "
        "or lower the tensor-parallel size.",
    ),
)

PATTERNS_BY_KEY: Mapping[str, Pattern] = {p.key: p for p in PATTERNS}


def diagnose(text: str) -> list[Diagnosis]:
    """Known failures in ``text``, once each, in the order they first appear."""
    found: dict[str, tuple[int, Diagnosis]] = {}
    for number, line in enumerate(text.splitlines()):
        for pattern in _unseen(found):
            if pattern.regex.search(line):
                found[pattern.key] = (number, _diagnosis(pattern, line))
    return [d for _, d in sorted(found.values(), key=lambda item: item[0])]


def _unseen(found: Mapping[str, object]) -> list[Pattern]:
    return [p for p in PATTERNS if p.key not in found]


def _diagnosis(pattern: Pattern, line: str) -> Diagnosis:
    evidence = line.strip()
    if len(evidence) > EVIDENCE_LIMIT:
        evidence = evidence[: EVIDENCE_LIMIT - 1] + "…"
    return Diagnosis(cause=pattern.cause, fix=pattern.fix, evidence=evidence)
