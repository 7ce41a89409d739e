"""Will a model fit? An estimate of vLLM's memory plan from a HF ``config.json``.

Follows what vLLM does at start-up, per tensor-parallel rank: it takes
``gpu_memory_utilization`` x the card's CUDA-visible memory, subtracts the
weights, the peak activation of a profile run, non-torch memory and CUDA-graph
memory, and fills the rest with KV-cache blocks. The non-KV share is an explicit
``Allowance`` so its assumptions can be read and changed.

Checked against vLLM 0.26 on an H200 (Qwen2.5-14B shape, TP=2, 0.9, eager):
vLLM logged weights 13.93 GiB, peak activation 0.85 GiB, non-torch 0.06 GiB,
110.98 GiB of KV cache, 1,212,160 tokens. Dense decoder-only models with
Qwen2/Llama-style keys only: no MoE, MLA, sliding-window or quantized weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

MIB = 1024**2
GIB = 1024**3
# vLLM's default KV block size on CUDA; the KV cache holds whole blocks.
BLOCK_SIZE = 16
# vLLM pads the vocabulary to a multiple of 64 before sharding embeddings (DEFAULT_VOCAB_PADDING_SIZE).
VOCAB_PADDING = 64
# Fewer full-length sequences than this at once and the verdict is "tight".
TIGHT_CONCURRENCY = 4.0

DTYPE_BYTES: Mapping[str, int] = {
    "float32": 4,
    "float": 4,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
}

Verdict = Literal["fit", "tight", "no-fit"]


class FitConfigError(ValueError):
    """A config.json lacks a key the estimate needs, or holds a value it cannot use."""


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a dense decoder the memory plan depends on."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool
    dtype_bytes: int
    max_position_embeddings: int | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Read a HF ``config.json`` dict; raises FitConfigError on a missing key."""
        heads = _int_key(config, "num_attention_heads")
        hidden = _int_key(config, "hidden_size")
        max_pos = config.get("max_position_embeddings")
        return cls(
            hidden_size=hidden,
            intermediate_size=_int_key(config, "intermediate_size"),
            num_layers=_int_key(config, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab_size=_int_key(config, "vocab_size"),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases; Llama-style configs say so in attention_bias.
            attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
            dtype_bytes=dtype_bytes(str(config.get("torch_dtype", "bfloat16"))),
            max_position_embeddings=None if max_pos is None else int(max_pos),
        )


@dataclass(frozen=True)
class Allowance:
    """Memory per rank that is neither weights nor KV cache. All figures are bytes.

    - Peak activation of vLLM's profile run: one forward pass over
      ``max_num_batched_tokens`` tokens, estimated as residual + norm + attention
      in/out (4 x hidden) and the MLP's gate/up/act (3 x intermediate / TP) at the
      model dtype, plus the sampler's float32 logits and one working copy for
      ``max_num_seqs`` sequences over the padded vocabulary. For the 14B shape at
      TP=2 and 8192 tokens this gives 0.92 GiB; vLLM 0.26 measured 0.85 GiB.
    - ``non_torch_bytes``: NCCL and other allocations outside PyTorch (0.06 GiB
      measured with custom all-reduce off; more with it on).
    - ``cuda_graph_bytes``: CUDA-graph pools when not ``--enforce-eager``. Not
      measured here (the H200 run was eager); 1 GiB is a cautious guess.
    """

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    non_torch_bytes: int = 256 * MIB
    cuda_graph_bytes: int = 1 * GIB

    def activation_bytes(self, shape: ModelShape, tp: int) -> int:
        per_token = 4 * shape.hidden_size + 3 * _ceil_div(shape.intermediate_size, tp)
        forward = self.max_num_batched_tokens * per_token * shape.dtype_bytes
        sampler = self.max_num_seqs * _padded_vocab(shape.vocab_size) * 4 * 2
        return forward + sampler

    def total_bytes(self, shape: ModelShape, tp: int, *, enforce_eager: bool) -> int:
        graphs = 0 if enforce_eager else self.cuda_graph_bytes
        return self.activation_bytes(shape, tp) + self.non_torch_bytes + graphs


@dataclass(frozen=True)
class FitEstimate:
    """The memory plan of one rank, and what it allows."""

    tensor_parallel_size: int
    parameters: int
    weight_bytes_per_rank: int
    kv_bytes_per_token_per_rank: int
    budget_bytes: int
    overhead_bytes: int
    kv_budget_bytes: int
    kv_tokens: int
    max_model_len: int
    max_concurrency: float
    largest_max_model_len: int
    verdict: Verdict
    reasons: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output, with GiB figures added for people."""
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        for key in ("weight_bytes_per_rank", "budget_bytes", "overhead_bytes", "kv_budget_bytes"):
            data[key.replace("bytes", "gib")] = round(getattr(self, key) / GIB, 2)
        return data


def dtype_bytes(name: str) -> int:
    """Bytes per element of a torch dtype name as config.json or ``--dtype`` spell it."""
    key = name.removeprefix("torch.").lower()
    if key not in DTYPE_BYTES:
        raise FitConfigError(f"unknown dtype {name!r}")
    return DTYPE_BYTES[key]


def tp_problem(shape: ModelShape, tp: int) -> str | None:
    """Why vLLM would refuse this tensor-parallel size, or None.

    vLLM's rules (vllm/config/model.py verify_with_parallel_config;
    vllm/model_executor/layers/linear.py QKVParallelLinear): TP must divide the
    attention heads; KV heads are split when TP < KV heads (TP must divide them)
    and replicated when TP >= KV heads (KV heads must divide TP).
    """
    if tp < 1:
        return f"tensor_parallel_size must be at least 1, got {tp}"
    if shape.num_heads % tp:
        return f"TP={tp} does not divide the {shape.num_heads} attention heads"
    kv = shape.num_kv_heads
    if (tp < kv and kv % tp) or (tp >= kv and tp % kv):
        return f"TP={tp} and {kv} KV heads: one must divide the other"
    return None


def kv_heads_per_rank(shape: ModelShape, tp: int) -> int:
    """KV heads each rank holds; vLLM replicates them when TP exceeds their number."""
    return max(1, shape.num_kv_heads // tp)


def parameter_count(shape: ModelShape) -> int:
    """Parameters of the whole model (vocabulary unpadded), as model cards count them."""
    embeddings = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
    layers = shape.num_layers * _layer_parameters(shape, 1, shape.num_kv_heads)
    return embeddings + layers + shape.hidden_size


def weight_bytes_per_rank(shape: ModelShape, tp: int) -> int:
    """Bytes of weights one TP rank holds, sharded the way vLLM shards them."""
    vocab_shard = _ceil_div(_padded_vocab(shape.vocab_size), tp) * shape.hidden_size
    embeddings = vocab_shard * (1 if shape.tie_word_embeddings else 2)
    layers = shape.num_layers * _layer_parameters(shape, tp, kv_heads_per_rank(shape, tp))
    return (embeddings + layers + shape.hidden_size) * shape.dtype_bytes


def kv_bytes_per_token(shape: ModelShape, tp: int, *, kv_dtype_bytes: int | None = None) -> int:
    """KV-cache bytes one token takes on one rank: K and V for every layer."""
    element = shape.dtype_bytes if kv_dtype_bytes is None else kv_dtype_bytes
    return 2 * shape.num_layers * kv_heads_per_rank(shape, tp) * shape.head_dim * element


def _layer_parameters(shape: ModelShape, tp: int, kv_heads: int) -> int:
    q = _ceil_div(shape.num_heads, tp) * shape.head_dim
    kv = 2 * kv_heads * shape.head_dim
    attention = shape.hidden_size * (q + kv) + q * shape.hidden_size
    bias = q + kv if shape.attention_bias else 0
    mlp = 3 * shape.hidden_size * _ceil_div(shape.intermediate_size, tp)
    norms = 2 * shape.hidden_size
    return attention + bias + mlp + norms


def estimate_fit(
    config: Mapping[str, Any],
    *,
    card_memory_bytes: int,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    kv_cache_dtype: str = "auto",
    enforce_eager: bool = False,
    allowance: Allowance | None = None,
) -> FitEstimate:
    """Estimate vLLM's memory plan for ``config`` on cards of ``card_memory_bytes``.

    ``card_memory_bytes`` is the CUDA-visible memory of one card (nvidia-smi's
    used + free, ``gpu.Gpu.cuda_total_mib``), which is what vLLM multiplies by
    ``gpu_memory_utilization``. ``max_model_len`` defaults to the model's own
    ``max_position_embeddings``, as vLLM does.
    """
    shape = ModelShape.from_config(config)
    tp = tensor_parallel_size
    kv_dtype = None if kv_cache_dtype == "auto" else dtype_bytes(kv_cache_dtype)
    weights = weight_bytes_per_rank(shape, max(tp, 1))
    per_token = kv_bytes_per_token(shape, max(tp, 1), kv_dtype_bytes=kv_dtype)
    budget = int(gpu_memory_utilization * card_memory_bytes)
    overhead = (allowance or Allowance()).total_bytes(shape, max(tp, 1), enforce_eager=enforce_eager)
    kv_budget = budget - weights - overhead
    tokens = _kv_tokens(kv_budget, per_token)
    length = max_model_len or shape.max_position_embeddings or tokens
    reasons = _reasons(shape, tp, tokens, length, weights + overhead, budget)
    return FitEstimate(
        tensor_parallel_size=tp,
        parameters=parameter_count(shape),
        weight_bytes_per_rank=weights,
        kv_bytes_per_token_per_rank=per_token,
        budget_bytes=budget,
        overhead_bytes=overhead,
        kv_budget_bytes=kv_budget,
        kv_tokens=tokens,
        max_model_len=length,
        max_concurrency=round(tokens / length, 2) if length else 0.0,
        largest_max_model_len=_largest_len(shape, tokens),
        verdict=_verdict(reasons, tokens, length),
        reasons=reasons,
    )


def _kv_tokens(kv_budget: int, per_token: int) -> int:
    if kv_budget <= 0:
        return 0
    return kv_budget // (per_token * BLOCK_SIZE) * BLOCK_SIZE


def _largest_len(shape: ModelShape, tokens: int) -> int:
    limit = shape.max_position_embeddings
    return tokens if limit is None else min(tokens, limit)


def _reasons(
    shape: ModelShape, tp: int, tokens: int, length: int, fixed: int, budget: int
) -> tuple[str, ...]:
    found = [tp_problem(shape, tp)]
    limit = shape.max_position_embeddings
    if limit is not None and length > limit:
        found.append(f"max_model_len {length} exceeds the model's max_position_embeddings {limit}")
    if fixed >= budget:
        found.append(
            f"weights and overhead ({fixed / GIB:.2f} GiB) leave no room "
            f"in the {budget / GIB:.2f} GiB budget per rank"
        )
    elif tokens < length:
        found.append(f"KV cache holds {tokens} tokens, fewer than one max_model_len ({length})")
    return tuple(r for r in found if r)


def _verdict(reasons: tuple[str, ...], tokens: int, length: int) -> Verdict:
    if reasons:
        return "no-fit"
    return "tight" if tokens < TIGHT_CONCURRENCY * length else "fit"


def _padded_vocab(vocab: int) -> int:
    return _ceil_div(vocab, VOCAB_PADDING) * VOCAB_PADDING


def _ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)


def _int_key(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise FitConfigError(f"config.json: {key} must be a positive integer, got {value!r}")
    return value
