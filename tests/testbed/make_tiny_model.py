"""Write a deterministic tiny random-weight Qwen2 model (tokenizer included) to a directory.

Runs with the template's vLLM venv python (torch, transformers and tokenizers) inside the
template root; downloads nothing. Usage: make_tiny_model.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

VOCAB_SIZE = 512
SEED = 1234
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXT = (
    "the quick brown fox jumps over a lazy dog while servers deploy models over ssh and "
    "systemd units restart on failure hello world say one two three four five six seven "
    "eight nine ten tokens prompt answer user assistant system model health ready metrics "
    "cache latency request response stream chat completion vllm orch host port key"
)
WORDS = TEXT.split(" ")


def corpus() -> list[str]:
    """Deterministic training text: enough distinct pairs for the BPE trainer to fill the vocab."""
    lines = []
    for i in range(2000):
        words = [WORDS[(i * 7 + j * 13) % len(WORDS)] for j in range(12)]
        lines.append(" ".join(words) + f" {i} {i * 31 % 997}.")
    return lines


def build_tokenizer(out: Path) -> int:
    """Train a byte-level BPE tokenizer, save it with a ChatML template; returns its vocab size."""
    from tokenizers import (  # type: ignore[import-not-found]
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # type: ignore[import-not-found]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return len(fast)


def build_model(out: Path, *, eos_id: int, pad_id: int) -> None:
    """A seeded Qwen2 with 2 layers and head_dim 64 (vLLM's CPU attention needs >= 64), bf16."""
    import torch  # type: ignore[import-not-found]
    from transformers import (
        GenerationConfig,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(SEED)
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    model = Qwen2ForCausalLM(config).to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(out, safe_serialization=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    size = build_tokenizer(out)
    if size > VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {size} tokens, more than the model's {VOCAB_SIZE}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    build_model(out, eos_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_id=tok.pad_token_id)
    print(f"tiny model written to {out} (tokenizer {size} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
