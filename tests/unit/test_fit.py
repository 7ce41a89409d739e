"""config.json -> memory plan per rank, checked against what vLLM logged on real H200s."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator.observe.fit import (
    GIB,
    MIB,
    Allowance,
    FitConfigError,
    ModelShape,
    dtype_bytes,
    estimate_fit,
    kv_bytes_per_token,
    kv_heads_per_rank,
    parameter_count,
    tp_problem,
    weight_bytes_per_rank,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SERVE_OK = FIXTURES / "vllm-0.26-gpu-tp2" / "serve-ok.log"
# CUDA-visible memory of one H200 (nvidia-smi used + free: 0 + 143156 MiB); vLLM logged 139.8 GiB.
H200 = 143156 * MIB
# nvidia-smi memory.total of a 24 GB L4 and of an 80 GB H100.
CARD_24GB = 23034 * MIB
CARD_80GB = 81559 * MIB


def config(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "configs" / f"{name}.json").read_text())
    return data


QWEN_7B = config("Qwen2.5-7B-Instruct")
QWEN_14B = config("Qwen2.5-14B-Instruct")


def logged(pattern: str) -> float:
    """A number vLLM printed in the real start-up log (commas dropped)."""
    match = re.search(pattern, SERVE_OK.read_text())
    assert match, pattern
    return float(match.group(1).replace(",", ""))


def test_shape_of_qwen_14b() -> None:
    assert ModelShape.from_config(QWEN_14B) == ModelShape(
        hidden_size=5120,
        intermediate_size=13824,
        num_layers=48,
        num_heads=40,
        num_kv_heads=8,
        head_dim=128,
        vocab_size=152064,
        tie_word_embeddings=False,
        attention_bias=True,
        dtype_bytes=2,
        max_position_embeddings=32768,
    )


@pytest.mark.parametrize(
    ("cfg", "parameters"),
    [(QWEN_7B, 7_615_616_512), (QWEN_14B, 14_770_033_664)],  # model cards: 7.61B, 14.7B
)
def test_parameter_count(cfg: dict[str, Any], parameters: int) -> None:
    assert parameter_count(ModelShape.from_config(cfg)) == parameters


def test_weights_per_rank() -> None:
    shape = ModelShape.from_config(QWEN_14B)
    # TP=2: 7,385,265,152 parameters per rank (norms replicated, the rest halved) x 2 bytes.
    assert weight_bytes_per_rank(shape, 2) == 14_770_530_304
    assert weight_bytes_per_rank(shape, 1) == 2 * 14_770_033_664


def test_kv_bytes_per_token() -> None:
    shape = ModelShape.from_config(QWEN_14B)
    # K and V x 48 layers x (8 KV heads / TP 2) x head_dim 128 x 2 bytes.
    assert kv_bytes_per_token(shape, 2) == 2 * 48 * 4 * 128 * 2 == 98_304
    assert kv_bytes_per_token(shape, 2, kv_dtype_bytes=1) == 49_152


def test_qwen_14b_tp2_on_h200_matches_vllm() -> None:
    """vLLM 0.26: TP 2, --gpu-memory-utilization 0.9 --max-model-len 2048 --enforce-eager."""
    estimate = estimate_fit(
        QWEN_14B,
        card_memory_bytes=H200,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.9,
        max_model_len=2048,
        enforce_eager=True,
    )
    vllm_weights = logged(r"Model loading took ([\d.]+) GiB")
    vllm_kv = logged(r"Available KV cache memory: ([\d.]+) GiB")
    vllm_tokens = logged(r"GPU KV cache size: ([\d,]+) tokens")
    vllm_concurrency = logged(r"Maximum concurrency for 2,048 tokens per request: ([\d.]+)x")
    assert (vllm_weights, vllm_kv, vllm_tokens, vllm_concurrency) == (13.93, 110.98, 1212160, 591.88)

    assert estimate.weight_bytes_per_rank / GIB == pytest.approx(vllm_weights, rel=0.02)
    assert estimate.kv_budget_bytes / GIB == pytest.approx(vllm_kv, rel=0.005)
    assert estimate.kv_tokens == pytest.approx(vllm_tokens, rel=0.005)
    assert estimate.max_concurrency == pytest.approx(vllm_concurrency, rel=0.005)
    assert estimate.budget_bytes / GIB == pytest.approx(125.82, abs=0.005)  # vLLM: (0.9, 125.82 GiB)
    assert (estimate.kv_tokens, estimate.max_concurrency, estimate.verdict) == (
        1_211_264,
        591.44,
        "fit",
    )


def test_activation_allowance_for_the_measured_case() -> None:
    shape = ModelShape.from_config(QWEN_14B)
    # vLLM measured 0.85 GiB peak activation for this case at 8192 batched tokens.
    assert Allowance().activation_bytes(shape, 2) == 986_710_016  # 0.92 GiB


def test_qwen_7b_on_24gb_is_tight_at_full_context() -> None:
    estimate = estimate_fit(QWEN_7B, card_memory_bytes=CARD_24GB)
    assert (
        estimate.weight_bytes_per_rank,
        estimate.kv_bytes_per_token_per_rank,
        estimate.kv_tokens,
        estimate.max_model_len,
        estimate.max_concurrency,
        estimate.largest_max_model_len,
        estimate.verdict,
        estimate.reasons,
    ) == (15_231_233_024, 57_344, 64_288, 32_768, 1.96, 32_768, "tight", ())


def test_qwen_7b_on_24gb_fits_at_8k() -> None:
    estimate = estimate_fit(QWEN_7B, card_memory_bytes=CARD_24GB, max_model_len=8192)
    assert (estimate.max_concurrency, estimate.verdict) == (7.85, "fit")


def test_qwen_7b_on_24gb_with_too_little_kv_for_one_sequence() -> None:
    estimate = estimate_fit(QWEN_7B, card_memory_bytes=CARD_24GB, gpu_memory_utilization=0.82)
    assert (estimate.kv_tokens, estimate.largest_max_model_len, estimate.verdict) == (
        30_592,
        30_592,
        "no-fit",
    )
    assert estimate.reasons == ("KV cache holds 30592 tokens, fewer than one max_model_len (32768)",)


def test_qwen_7b_on_24gb_at_low_utilization_has_no_room() -> None:
    estimate = estimate_fit(QWEN_7B, card_memory_bytes=CARD_24GB, gpu_memory_utilization=0.7)
    assert (estimate.kv_tokens, estimate.verdict) == (0, "no-fit")
    assert estimate.reasons == (
        "weights and overhead (16.81 GiB) leave no room in the 15.75 GiB budget per rank",
    )


def test_qwen_14b_on_one_24gb_card_does_not_fit() -> None:
    estimate = estimate_fit(QWEN_14B, card_memory_bytes=CARD_24GB)
    assert estimate.verdict == "no-fit"
    assert estimate.reasons == (
        "weights and overhead (30.00 GiB) leave no room in the 20.24 GiB budget per rank",
    )


def test_qwen_14b_on_two_24gb_cards_is_tight() -> None:
    estimate = estimate_fit(QWEN_14B, card_memory_bytes=CARD_24GB, tensor_parallel_size=2)
    assert (estimate.kv_tokens, estimate.max_concurrency, estimate.verdict) == (
        47_168,
        1.44,
        "tight",
    )


@pytest.mark.parametrize(
    ("cfg", "tokens", "concurrency"),
    [(QWEN_7B, 1_027_440, 31.35), (QWEN_14B, 227_648, 6.95)],
)
def test_on_80gb(cfg: dict[str, Any], tokens: int, concurrency: float) -> None:
    estimate = estimate_fit(cfg, card_memory_bytes=CARD_80GB)
    assert (estimate.kv_tokens, estimate.max_concurrency, estimate.verdict) == (
        tokens,
        concurrency,
        "fit",
    )


def test_max_model_len_beyond_the_model() -> None:
    estimate = estimate_fit(QWEN_14B, card_memory_bytes=CARD_80GB, max_model_len=65536)
    assert estimate.verdict == "no-fit"
    assert estimate.reasons == ("max_model_len 65536 exceeds the model's max_position_embeddings 32768",)


def test_cuda_graph_allowance_only_without_enforce_eager() -> None:
    graphs = estimate_fit(QWEN_7B, card_memory_bytes=CARD_80GB)
    eager = estimate_fit(QWEN_7B, card_memory_bytes=CARD_80GB, enforce_eager=True)
    assert graphs.overhead_bytes - eager.overhead_bytes == 1 * GIB


def test_fp8_kv_cache_about_doubles_the_tokens() -> None:
    auto = estimate_fit(QWEN_14B, card_memory_bytes=CARD_80GB)
    fp8 = estimate_fit(QWEN_14B, card_memory_bytes=CARD_80GB, kv_cache_dtype="fp8")
    assert (auto.kv_bytes_per_token_per_rank, fp8.kv_bytes_per_token_per_rank) == (196_608, 98_304)
    # Twice as many tokens, less what falls into the last partial 16-token block.
    assert (auto.kv_tokens, fp8.kv_tokens) == (227_648, 455_312)


# --- tensor parallel rules (vllm/config/model.py, model_executor/layers/linear.py) ---


@pytest.mark.parametrize(
    ("cfg", "tp", "problem"),
    [
        (QWEN_14B, 1, None),
        (QWEN_14B, 2, None),
        (QWEN_14B, 4, None),
        (QWEN_14B, 8, None),
        (QWEN_14B, 3, "TP=3 does not divide the 40 attention heads"),
        (QWEN_14B, 16, "TP=16 does not divide the 40 attention heads"),
        (QWEN_14B, 5, "TP=5 and 8 KV heads: one must divide the other"),
        (QWEN_14B, 20, "TP=20 and 8 KV heads: one must divide the other"),
        (QWEN_14B, 40, None),  # 8 KV heads each replicated 5 times
        (QWEN_7B, 4, None),
        (QWEN_7B, 7, "TP=7 and 4 KV heads: one must divide the other"),
        (QWEN_7B, 8, "TP=8 does not divide the 28 attention heads"),
        (QWEN_7B, 28, None),
        (QWEN_7B, 0, "tensor_parallel_size must be at least 1, got 0"),
    ],
)
def test_tp_problem(cfg: dict[str, Any], tp: int, problem: str | None) -> None:
    assert tp_problem(ModelShape.from_config(cfg), tp) == problem


def test_kv_heads_replicated_beyond_their_number() -> None:
    shape = ModelShape.from_config(QWEN_7B)
    assert [kv_heads_per_rank(shape, tp) for tp in (1, 2, 4, 14, 28)] == [4, 2, 1, 1, 1]


def test_invalid_tp_is_no_fit() -> None:
    estimate = estimate_fit(QWEN_14B, card_memory_bytes=CARD_80GB, tensor_parallel_size=3)
    assert (estimate.verdict, estimate.reasons) == (
        "no-fit",
        ("TP=3 does not divide the 40 attention heads",),
    )


# --- config handling -----------------------------------------------------------


def test_explicit_head_dim_and_tied_embeddings() -> None:
    cfg = {**QWEN_7B, "head_dim": 64, "tie_word_embeddings": True}
    shape = ModelShape.from_config(cfg)
    assert (shape.head_dim, shape.tie_word_embeddings) == (64, True)
    untied = weight_bytes_per_rank(ModelShape.from_config(QWEN_7B), 1)
    assert untied - weight_bytes_per_rank(
        ModelShape.from_config({**QWEN_7B, "tie_word_embeddings": True}), 1
    ) == (152064 * 3584 * 2)


def test_llama_style_config_without_bias() -> None:
    cfg = {key: value for key, value in QWEN_7B.items() if key != "model_type"}
    assert not ModelShape.from_config(cfg).attention_bias


def test_missing_key() -> None:
    cfg = {key: value for key, value in QWEN_7B.items() if key != "hidden_size"}
    with pytest.raises(FitConfigError, match="hidden_size must be a positive integer, got None"):
        ModelShape.from_config(cfg)


@pytest.mark.parametrize(("name", "size"), [("bfloat16", 2), ("torch.float16", 2), ("float32", 4)])
def test_dtype_bytes(name: str, size: int) -> None:
    assert dtype_bytes(name) == size


def test_unknown_dtype() -> None:
    with pytest.raises(FitConfigError, match="unknown dtype 'int3'"):
        ModelShape.from_config({**QWEN_7B, "torch_dtype": "int3"})


def test_to_dict() -> None:
    data = estimate_fit(
        QWEN_14B, card_memory_bytes=H200, tensor_parallel_size=2, max_model_len=2048, enforce_eager=True
    ).to_dict()
    assert (data["weight_gib_per_rank"], data["budget_gib"], data["kv_budget_gib"]) == (13.76, 125.82, 110.9)
    assert (data["verdict"], data["reasons"], data["kv_tokens"]) == ("fit", [], 1_211_264)
