"""LoRA adapters added into their base weights in float32: for good (a hard reset) or for one generation.

PEFT's own merge computes in the base's dtype and its unmerge subtracts again, so a bf16 base drifts with every
cycle (TRL issue 6688). Here the update is computed in float32 and added once: `merge_adapter_float32` keeps it
(a ProRL reset folds the adapter into the weights before a fresh one starts), `adapter_added_to_base` restores the
saved base weights afterwards (a CPU rollout runs the plain model, one matmul per layer instead of three).
"""

from __future__ import annotations

import contextlib

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from trl_smallrl.errors import ConfigError


def plain_model(accelerator, model):
    """`model` without its distributed wrapper and, under PEFT, without its adapter wrapper: the transformers model
    whose layers a CPU rollout runs and whose forward TRL gave a fused LM head."""
    unwrapped = accelerator.unwrap_model(model)
    return unwrapped.get_base_model() if isinstance(unwrapped, PeftModel) else unwrapped


def base_weight_name(name: str) -> str:
    """Name of a parameter in the plain base model (PEFT wraps targeted layers in `base_layer`)."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


def merge_adapter_float32(peft_model) -> set[str]:
    """Add the active LoRA update to the base weights, computing in float32; return the merged weights' names.

    The adapter itself is left in place and in its dtype (the caller deletes it, or trains it on after a
    rollout: a bf16 adapter cast to float32 for good would change what the optimizer steps). The base weights keep
    their dtype: a bf16 base is rounded once per reset, and never unmerged.
    """
    merged = set()
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            if adapter in module.lora_magnitude_vector or module.lora_bias.get(adapter):
                raise ConfigError(
                    f"use_dora / lora_bias: the adapter {adapter!r} of {name} is DoRA or has a LoRA bias, whose update "
                    "is not the low-rank product this float32 merge adds (an SFT adapter merged for GRPO, a hard "
                    "reset, a CPU rollout); train it with use_dora: false and lora_bias: false."
                )
            factors = (module.lora_A[adapter], module.lora_B[adapter])
            dtypes = [factor.weight.dtype for factor in factors]
            with torch.no_grad():
                for factor in factors:
                    factor.float()  # PEFT's delta is computed in the factors' dtype
                try:
                    delta = module.get_delta_weight(adapter).float()
                finally:
                    for factor, dtype in zip(factors, dtypes):
                        factor.to(dtype)  # exact: a bf16 value round-trips through float32
                weight = module.get_base_layer().weight
                weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
            merged.add(base_weight_name(f"{name}.base_layer.weight"))
    return merged


@contextlib.contextmanager
def adapter_added_to_base(model):
    """A PEFT model as one plain model for generation: its LoRA update added into the base weights (in float32)
    with the adapter layers switched off, then the base weights restored exactly. Generation then runs one
    matmul per layer instead of three, and, unlike PEFT's merge and unmerge, the base does not drift."""
    if not isinstance(model, PeftModel):
        yield model
        return
    bases = [m.get_base_layer() for m in model.modules() if isinstance(m, LoraLayer) and m.active_adapters]
    saved = [base.weight.detach().clone() for base in bases]
    try:
        with model.disable_adapter(), torch.no_grad():
            merge_adapter_float32(model)
            yield model.get_base_model()
    finally:
        with torch.no_grad():
            for base, weight in zip(bases, saved):
                base.weight.copy_(weight)
