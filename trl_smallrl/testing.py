"""Tiny random models that share the embedded model's tokenizer and architecture family.

Unit tests and the wrapper-overhead benchmark need real TRL trainers on a real tokenizer, but a 135M
model costs tens of seconds a step on a 2-core CPU. A 2-layer Llama with the same vocabulary and chat
template runs a GRPO step in about a second, so the whole stack (tokenizer, chat template, generation,
loss, PEFT) is exercised for real.
"""

from __future__ import annotations

from pathlib import Path

from trl_smallrl.embedded import DEFAULT_MODEL
from trl_smallrl.models import resolve_model


def save_tiny_model(
    out_dir: str | Path,
    tokenizer_source: str = DEFAULT_MODEL,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised Llama (float32) plus the tokenizer of `tokenizer_source` to `out_dir`."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer_source))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
