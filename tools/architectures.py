"""Architectures of the reference models, for checks and benchmarks that must not download anything.

The recipe check builds each recipe's model on the meta device, and the GPU benchmark trains random-weight
copies of Qwen2.5-0.5B and -1.5B. Both need the model's `config.json`, which lives on the Hub; CI and most
first machines cannot reach it. This table holds the published architecture fields of the models our recipes
name (from each model's config.json on the Hub); a model in the local Hub cache is read from there instead.
"""

from __future__ import annotations

from trl_smallrl.errors import ConfigError

_QWEN2 = {"model_type": "qwen2", "vocab_size": 151936, "hidden_act": "silu", "rms_norm_eps": 1e-6}
_LLAMA_SMOL = {"model_type": "llama", "vocab_size": 49152, "hidden_act": "silu", "tie_word_embeddings": True}

ARCHITECTURES: dict[str, dict] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": {
        **_LLAMA_SMOL,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
    },
    "HuggingFaceTB/SmolLM-135M": {
        **_LLAMA_SMOL,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
    },
    "HuggingFaceTB/SmolLM-360M-Instruct": {
        **_LLAMA_SMOL,
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
    },
    "Qwen/Qwen2-0.5B": {
        **_QWEN2,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 131072,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen2.5-0.5B-Instruct": {
        **_QWEN2,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen2.5-1.5B-Instruct": {
        **_QWEN2,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": {
        **_QWEN2,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "max_position_embeddings": 131072,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    "Qwen/Qwen3-0.6B": {
        "model_type": "qwen3",
        "vocab_size": 151936,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
}


def architecture_config(model_id: str):
    """The `PretrainedConfig` of a model without downloading it: local Hub cache, else the table above."""
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoConfig

    cached = try_to_load_from_cache(model_id, "config.json")
    if isinstance(cached, str):
        return AutoConfig.from_pretrained(cached)
    if model_id not in ARCHITECTURES:
        raise ConfigError(
            f"model_name_or_path: no offline architecture for {model_id!r}; download it once "
            f"(`huggingface-cli download {model_id} config.json`) or use one of: {', '.join(sorted(ARCHITECTURES))}."
        )
    fields = dict(ARCHITECTURES[model_id])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)
