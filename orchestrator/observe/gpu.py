"""GPU facts from nvidia-smi, and the pure checks a deployment runs on them.

The commands are constants; ``parse_gpus`` / ``parse_processes`` turn their CSV
output into frozen objects, and the ``check_*`` functions turn those objects into
typed ``Check`` verdicts (whose each process is: ``sharing``). Nothing here runs a
command or touches a host.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

QUERY_GPUS = (
    "nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,memory.free,"
    "utilization.gpu,pci.bus_id --format=csv,noheader,nounits"
)
QUERY_PROCESSES = (
    "nvidia-smi --query-compute-apps=pid,process_name,used_memory,gpu_uuid --format=csv,noheader,nounits"
)

# Memory a worker's own CUDA context takes before vLLM measures free memory.
# Measured on H200 with vLLM 0.26: nvidia-smi showed 143156 MiB free on an idle
# card, vLLM's worker then saw 138.31 GiB (141629 MiB): a gap of about 1.5 GiB.
CUDA_CONTEXT_MIB = 1536
# A TP deployment whose ranks differ by more than this (in % of the largest) is flagged.
TP_SPREAD_LIMIT_PCT = 10.0

Severity = Literal["error", "warn", "ok"]
_NOT_AVAILABLE = {"[N/A]", "N/A", "[Not Supported]", ""}


class NvidiaSmiParseError(ValueError):
    """A line of nvidia-smi CSV output did not have the expected shape."""

    def __init__(self, message: str, *, line_no: int, line: str) -> None:
        self.line_no = line_no
        self.line = line
        super().__init__(f"nvidia-smi output line {line_no}: {message}: {line!r}")


@dataclass(frozen=True)
class Gpu:
    """One GPU as ``QUERY_GPUS`` reports it; memory in MiB, None where nvidia-smi says N/A."""

    index: int
    uuid: str
    name: str
    memory_total_mib: int | None
    memory_used_mib: int | None
    memory_free_mib: int | None
    utilization_pct: int | None
    pci_bus_id: str

    @property
    def cuda_total_mib(self) -> int | None:
        """Memory CUDA can see (used + free): what vLLM calls the card's total.

        nvidia-smi's memory.total also counts memory the driver reserves
        (615 MiB on an H200: 143771 total, 143156 free when idle).
        """
        if self.memory_used_mib is None or self.memory_free_mib is None:
            return None
        return self.memory_used_mib + self.memory_free_mib


@dataclass(frozen=True)
class GpuProcess:
    """One compute process as ``QUERY_PROCESSES`` reports it."""

    pid: int
    name: str
    used_memory_mib: int | None
    gpu_uuid: str


@dataclass(frozen=True)
class Check:
    """The verdict of one check: ``ok`` is False only for severity ``error``."""

    name: str
    ok: bool
    severity: Severity
    message: str


@dataclass(frozen=True)
class TpBalance:
    """How evenly a TP deployment's ranks use their GPUs' memory."""

    max_mib: int
    min_mib: int
    spread_pct: float

    @property
    def balanced(self) -> bool:
        return self.spread_pct <= TP_SPREAD_LIMIT_PCT


# --- parsing ---------------------------------------------------------------


def parse_gpus(text: str) -> tuple[Gpu, ...]:
    """Parse the output of ``QUERY_GPUS``, one GPU per non-empty line."""
    return tuple(_parse_gpu(fields, n, line) for n, line, fields in _csv_lines(text, 8))


def parse_processes(text: str) -> tuple[GpuProcess, ...]:
    """Parse the output of ``QUERY_PROCESSES`` (empty when no process runs)."""
    return tuple(_parse_process(n, line) for n, line in _lines(text))


def _lines(text: str) -> Iterable[tuple[int, str]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield n, line


def _csv_lines(text: str, width: int) -> Iterable[tuple[int, str, list[str]]]:
    for n, line in _lines(text):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != width:
            raise NvidiaSmiParseError(f"expected {width} fields, got {len(fields)}", line_no=n, line=line)
        yield n, line, fields


def _parse_gpu(fields: list[str], n: int, line: str) -> Gpu:
    index, uuid, name, total, used, free, util, bus = fields
    return Gpu(
        index=_int(index, n, line),
        uuid=uuid,
        name=name,
        memory_total_mib=_opt_int(total, n, line),
        memory_used_mib=_opt_int(used, n, line),
        memory_free_mib=_opt_int(free, n, line),
        utilization_pct=_opt_int(util, n, line),
        pci_bus_id=bus,
    )


def _parse_process(n: int, line: str) -> GpuProcess:
    # A process name may hold commas; pid is first and the last two fields are fixed.
    head, sep, rest = line.partition(",")
    parts = rest.rsplit(",", 2)
    if not sep or len(parts) != 3:
        raise NvidiaSmiParseError("expected pid, process_name, used_memory, gpu_uuid", line_no=n, line=line)
    name, memory, uuid = (p.strip() for p in parts)
    return GpuProcess(
        pid=_int(head.strip(), n, line),
        name=name,
        used_memory_mib=_opt_int(memory, n, line),
        gpu_uuid=uuid,
    )


def _int(value: str, n: int, line: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise NvidiaSmiParseError(f"not an integer: {value!r}", line_no=n, line=line) from None


def _opt_int(value: str, n: int, line: str) -> int | None:
    return None if value in _NOT_AVAILABLE else _int(value, n, line)


# --- checks ----------------------------------------------------------------


def _ok(name: str, message: str) -> Check:
    return Check(name=name, ok=True, severity="ok", message=message)


def _warn(name: str, message: str) -> Check:
    return Check(name=name, ok=True, severity="warn", message=message)


def _error(name: str, message: str) -> Check:
    return Check(name=name, ok=False, severity="error", message=message)


def check_gpus_exist(gpus: Sequence[Gpu], wanted: Sequence[int]) -> Check:
    """Every GPU index a deployment names must be present."""
    present = {g.index for g in gpus}
    missing = sorted(set(wanted) - present)
    if missing:
        return _error(
            "gpus-exist",
            f"GPU {_join(missing)} not found (host has {_join(sorted(present)) or 'none'})",
        )
    return _ok("gpus-exist", f"GPU {_join(sorted(set(wanted)))} present")


def check_free_memory(
    gpus: Sequence[Gpu], wanted: Sequence[int], *, gpu_memory_utilization: float
) -> tuple[Check, ...]:
    """vLLM refuses to start when free memory < gpu_memory_utilization x total.

    Error when free memory is below the requested share of the CUDA-visible total;
    warning when it clears that by less than one worker's CUDA context
    (``CUDA_CONTEXT_MIB``), which vLLM has allocated by the time it measures.
    """
    by_index = {g.index: g for g in gpus}
    return tuple(
        _free_memory_check(by_index[i], gpu_memory_utilization) for i in sorted(set(wanted)) if i in by_index
    )


def _free_memory_check(gpu: Gpu, utilization: float) -> Check:
    name = f"free-memory-gpu{gpu.index}"
    total, free = gpu.cuda_total_mib, gpu.memory_free_mib
    if total is None or free is None:
        return _warn(name, f"GPU {gpu.index}: nvidia-smi reports no memory figures (N/A)")
    need = utilization * total
    detail = (
        f"GPU {gpu.index}: {free} MiB free, gpu_memory_utilization {utilization} "
        f"needs {need:.0f} of {total} MiB"
    )
    if free < need:
        return _error(name, f"{detail}; vLLM will refuse to start")
    if free < need + CUDA_CONTEXT_MIB:
        return _warn(name, f"{detail}; less than {CUDA_CONTEXT_MIB} MiB to spare")
    return _ok(name, detail)


def tp_balance(used_mib: Iterable[int]) -> TpBalance:
    """Spread between the most and least loaded rank, in % of the most loaded."""
    values = list(used_mib)
    if not values:
        raise ValueError("tp_balance needs the memory of at least one rank")
    high, low = max(values), min(values)
    spread = 0.0 if high == 0 else (high - low) / high * 100
    return TpBalance(max_mib=high, min_mib=low, spread_pct=round(spread, 2))


def check_tp_balance(used_by_gpu: Mapping[int, int]) -> Check:
    """Flag a TP deployment whose ranks' memory differs by more than ``TP_SPREAD_LIMIT_PCT``."""
    if not used_by_gpu:
        return _warn("tp-balance", "no memory figures for the deployment's ranks")
    balance = tp_balance(used_by_gpu.values())
    message = (
        f"ranks use {balance.min_mib}..{balance.max_mib} MiB "
        f"(spread {balance.spread_pct:.1f}%, limit {TP_SPREAD_LIMIT_PCT:.0f}%)"
    )
    return _ok("tp-balance", message) if balance.balanced else _warn("tp-balance", message)


def _join(values: Iterable[int]) -> str:
    return ", ".join(str(v) for v in values)
