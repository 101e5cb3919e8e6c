"""The GPU memory a recipe needs, computed from its shapes (`make check-recipes`, `tools.check_recipes`): weights,
optimizer state, DDP's or DeepSpeed's buffers, the reference model, activations, logits and the generation's share,
at the peak of one step on one GPU. Not a measurement: a GPU recipe's `# memory_per_gpu:` header states this figure,
and the check refuses a recipe whose estimate exceeds the GPU it names or whose vLLM share cannot hold a generation
batch's KV cache."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from trl_smallrl.errors import ConfigError

GIB = 1024**3
CONTEXT_GB = 1.0  # CUDA context, allocator slack, NCCL buffers
# DeepSpeed's bucket sizes when the config leaves them unset (our accelerate configs do), in elements: ZeRO-2's
# reduce and all-gather buckets (5e8 each), ZeRO-3's reduce bucket and parameter prefetch (5e8 + 5e7).
DEEPSPEED_BUCKET_ELEMENTS = {2: 1_000_000_000, 3: 550_000_000}
VLLM_OVERHEAD_GB = 1.0  # vLLM's activations and CUDA graphs inside its share, beside weights and KV cache


@dataclass
class MemoryEstimate:
    """Peak memory of one GPU, by part, in GB (GiB), computed from the recipe's shapes; not a measurement."""

    weights: float
    optimizer: float  # gradients, AdamW moments, float32 masters where the weights are half precision
    buffers: float  # DDP's gradient buckets (a second copy of the gradients), or DeepSpeed's communication buckets
    reference: float
    activations: float
    logits: float
    generation: float  # vLLM's reserved share, or transformers' KV cache
    context: float = CONTEXT_GB

    @property
    def total(self) -> float:
        return sum(vars(self).values())

    def describe(self) -> str:
        parts = [f"{name} {value:.1f}" for name, value in vars(self).items() if value >= 0.05]
        return " + ".join(parts) + f" = {self.total:.1f} GB"


def estimate_memory(config, recipe: dict, method: str, parameters: int, trainable: int, engine_name: str,
                    zero3: bool, num_processes: int, gpu_memory_gb: float) -> MemoryEstimate:  # fmt: skip
    """What one GPU holds at the peak of a step, from the recipe's dtype, batch, lengths and engine.

    Weights in the recipe's dtype; trainable parameters carry a float32 gradient and two AdamW moments (and a
    float32 master under ZeRO when the weights are half); ZeRO-2 shards gradients and optimizer over the
    processes, ZeRO-3 the weights too. Activations are those kept for the backward pass of one micro-batch
    (only each layer's input with gradient checkpointing, plus one layer being recomputed). Neither TRL trainer
    builds the batch x length x vocabulary logits: its fused LM head works in 4096-token x 32768-word tiles.
    Generation is vLLM's reserved share of the GPU, or else the KV cache of one generation batch.
    Buffers: DDP over several processes reduces gradients through buckets that copy them; DeepSpeed reduces and
    gathers through buckets of its default sizes (`DEEPSPEED_BUCKET_ELEMENTS`), in the half-precision dtype.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers = text.hidden_size, text.num_hidden_layers
    intermediate, vocab = text.intermediate_size, text.vocab_size
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    weight_bytes = 4 if recipe.get("dtype") == "float32" else 2
    act_bytes = 2 if recipe.get("bf16", True) or recipe.get("fp16") else 4
    shard = num_processes if engine_name == "deepspeed" else 1
    weights = parameters * weight_bytes / (num_processes if engine_name == "deepspeed" and zero3 else 1)
    optimizer = trainable * (12 + (4 if weight_bytes == 2 and engine_name == "deepspeed" else 0)) / shard
    if engine_name == "deepspeed":
        buffers = min(trainable, DEEPSPEED_BUCKET_ELEMENTS[3 if zero3 else 2]) * 2
    else:
        buffers = trainable * 4 if num_processes > 1 else 0  # float32 gradients: the trainable weights' dtype here
    reference = parameters * weight_bytes if float(recipe.get("beta", 0.0)) > 0 and not recipe.get("use_peft") else 0
    batch = int(recipe.get("per_device_train_batch_size", 8))
    if method == "grpo":
        prompt = int(recipe.get("max_prompt_length") or 512)
        completion = int(recipe.get("max_completion_length", 256))
        tokens = batch * (prompt + completion)
    else:
        tokens = batch * int(recipe.get("max_length") or 1024)
    logits = min(tokens, 4096) * min(vocab, 32768) * 4  # one float32 tile of TRL's fused LM head
    per_layer_token = (10 * hidden + 3 * intermediate) * act_bytes  # inputs of every linear, norms, MLP states
    if recipe.get("gradient_checkpointing", method == "sft"):
        activations = layers * tokens * hidden * act_bytes + tokens * per_layer_token
    else:
        activations = layers * tokens * per_layer_token
    generation = 0.0
    if method == "grpo":
        if recipe.get("use_vllm"):
            generation = float(recipe.get("vllm_gpu_memory_utilization", 0.3)) * gpu_memory_gb * GIB
        else:
            rows = batch * int(recipe.get("steps_per_generation") or recipe.get("gradient_accumulation_steps", 1))
            generation = 2 * layers * kv_heads * head_dim * (prompt + completion) * rows * act_bytes
    return MemoryEstimate(
        weights=weights / GIB,
        optimizer=optimizer / GIB,
        buffers=buffers / GIB,
        reference=reference / GIB,
        activations=activations / GIB,
        logits=logits / GIB,
        generation=generation / GIB,
    )


_ABOUT = re.compile(r"about\s+(\d+(?:\.\d+)?)\s*GB")


def check_memory_header(where: str, headers: dict[str, str], estimate: MemoryEstimate) -> None:
    """A GPU recipe's `# memory_per_gpu:` states this check's figure (within 10%, at least 1 GB) and fits the GPU."""
    gpu_memory = float(headers["gpu_memory_gb"])
    if estimate.total > gpu_memory:
        raise ConfigError(
            f"{where}: needs about {estimate.total:.1f} GB per GPU ({estimate.describe()}), more than the "
            f"{gpu_memory:g} GB GPU it names; use LoRA (use_peft: true), gradient_checkpointing, a smaller "
            "batch or vllm_gpu_memory_utilization, ZeRO, or a bigger GPU."
        )
    stated = _ABOUT.search(headers["memory_per_gpu"])
    if (
        not stated
        or "computed" not in headers["memory_per_gpu"]
        or (abs(float(stated.group(1)) - estimate.total) > max(1.0, 0.1 * estimate.total))
    ):
        raise ConfigError(
            f"{where}: write '# memory_per_gpu: about {estimate.total:.0f} GB (computed by make check-recipes: "
            f"{estimate.describe()}; not measured)'."
        )


def check_vllm_cache(where: str, config, recipe: dict, parameters: int, gpu_memory_gb: float) -> None:
    """A colocated vLLM's share must hold its bf16 weights and the KV cache of one process's generation batch
    (every row at its longest): with less, vLLM runs the rows a few at a time and a step's rollouts take several
    times as long, which no error message says."""
    if not recipe.get("use_vllm"):
        return
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    rows = int(recipe.get("per_device_train_batch_size", 8)) * int(
        recipe.get("steps_per_generation") or recipe.get("gradient_accumulation_steps", 1)
    )
    length = int(recipe.get("vllm_max_model_length") or 512 + int(recipe.get("max_completion_length", 256)))
    needed = 2 * text.num_hidden_layers * kv_heads * head_dim * 2 * rows * length / GIB
    share = float(recipe.get("vllm_gpu_memory_utilization", 0.3))
    cache = share * gpu_memory_gb - parameters * 2 / GIB - VLLM_OVERHEAD_GB
    if cache < needed:
        wanted = (needed + parameters * 2 / GIB + VLLM_OVERHEAD_GB) / gpu_memory_gb
        raise ConfigError(
            f"{where}: vllm_gpu_memory_utilization {share:g} of {gpu_memory_gb:g} GB leaves vLLM {cache:.1f} GB of KV "
            f"cache after its weights, but one generation batch ({rows} rows x {length} tokens) needs {needed:.1f} "
            f"GB; raise it to {wanted:.2f}, or generate fewer or shorter rows a step."
        )


def trainable_parameters(config, recipe: dict) -> tuple[int, int]:
    """(all parameters, trained parameters) of the recipe's model, built on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    if not recipe.get("use_peft"):
        return total, total
    lora = LoraConfig(
        r=int(recipe.get("lora_r", 16)),
        lora_alpha=int(recipe.get("lora_alpha", 32)),
        target_modules=recipe.get("lora_target_modules") or "all-linear",
        task_type="CAUSAL_LM",
    )
    with torch.device("meta"):
        peft_model = get_peft_model(model, lora)
    return total, sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
