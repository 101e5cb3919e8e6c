"""The distributed engine a launch runs under, and the combinations that cannot work under it.

`accelerate launch` tells every process its engine through the environment (`ACCELERATE_USE_DEEPSPEED`,
`ACCELERATE_DEEPSPEED_ZERO_STAGE`, `ACCELERATE_USE_FSDP`); a recipe may also name DeepSpeed (`deepspeed`) or FSDP
(`fsdp`). Two kinds of feature fail silently on the wrong engine, so each is refused at launch in one line:

- training half-precision weights without float32 master weights. A full fine-tune with `dtype: bfloat16` (or a
  checkpoint that loads as bf16 under `dtype: auto`) gives AdamW bf16 parameters and states; bf16 keeps 8 bits of
  mantissa, so an update smaller than about |w| / 512 rounds away and at a GRPO learning rate of 1e-6 almost no
  weight moves (measured: 0% of a tiny model's weights changed in 2 steps). `bf16: true` alone is autocast, which
  needs float32 weights; DeepSpeed ZeRO keeps float32 masters itself;
- features that reach into the weights between steps (ProRL hard resets, collapse rollback) assume that every
  process holds whole parameters and that the optimizer is the Trainer's own. Under ZeRO-3 and FSDP the weights
  are shards, and under any DeepSpeed stage the engine owns the optimizer and its float32 masters, which would
  overwrite restored weights at the next step and never see a new adapter.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from trl_smallrl.errors import ConfigError

logger = logging.getLogger(__name__)

HALF_DTYPES = ("bfloat16", "float16")
SUPPORTED_ENGINES = "accelerate_configs/single_gpu.yaml or ddp.yaml"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def engine(training_args) -> str:
    """`deepspeed` (ZeRO, any stage), `fsdp`, or `ddp` (one process or data parallel)."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED") or getattr(training_args, "deepspeed", None):
        return "deepspeed"
    if _env_flag("ACCELERATE_USE_FSDP") or getattr(training_args, "fsdp", None):
        return "fsdp"
    return "ddp"


def checkpoint_dtype(model_path: str) -> str | None:
    """The dtype a local checkpoint's config.json records (what `dtype: auto` loads), or None if unknown."""
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return None
    fields = json.loads(config.read_text())
    return fields.get("dtype") or fields.get("torch_dtype")


def check_vllm_installed(training_args) -> None:
    """vLLM rollouts without vLLM: refused at launch, where TRL would only find it after the model loaded."""
    if getattr(training_args, "use_vllm", False) and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "use_vllm: true, but vLLM is not installed; install it with `pip install -e '.[vllm]'` (`make install` does "
            "where nvidia-smi sees a GPU; it brings the torch build vLLM pins), or set use_vllm: false."
        )


def check_engine_combinations(training_args, model_args) -> None:
    """Refuse, before any model loads, what cannot train right under this launch's engine (module docstring).

    Call it after `run.prepare_model_args` resolved the model path and decided the precision.
    """
    name = engine(training_args)
    dtype = model_args.dtype
    if dtype == "auto":
        dtype = checkpoint_dtype(model_args.model_name_or_path) or dtype
    if not model_args.use_peft and dtype in HALF_DTYPES and name != "deepspeed":
        raise ConfigError(
            f"dtype: {model_args.dtype} with full fine-tuning (use_peft: false) trains {dtype} weights with no "
            "float32 master copy, so updates below |w|/512 round away and almost no weight moves; set dtype: "
            "float32 (bf16: true still gives bf16 autocast's speed), or use_peft: true, or launch under DeepSpeed "
            "ZeRO (accelerate_configs/zero2.yaml), which keeps float32 master weights."
        )
    if getattr(training_args, "use_vllm", False) and model_args.use_peft and dtype in HALF_DTYPES:
        logger.warning(
            "use_vllm with LoRA on a %s base: TRL merges the adapter into the base and unmerges it at every weight "
            "sync, and %s rounding makes the base drift (TRL issue 6688); dtype: float32 keeps the base exact.",
            dtype,
            dtype,
        )
    if name == "ddp":
        return
    where = "DeepSpeed ZeRO" if name == "deepspeed" else "FSDP"
    if getattr(training_args, "resets", None):
        raise ConfigError(
            f"resets: hard resets are not supported under {where} (the float32 merge reads sharded weights and the "
            f"new adapter escapes the engine's optimizer); launch with {SUPPORTED_ENGINES}, or drop resets."
        )
    sharded = name == "fsdp" or os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    if getattr(training_args, "heldout_num_samples", 0) and sharded:
        raise ConfigError(
            f"heldout_num_samples: the held-out curve samples on one process from whole weights, which {where} "
            f"{'ZeRO-3 ' if name == 'deepspeed' else ''}shards; set heldout_num_samples: 0 and run `make eval` on the "
            "checkpoints, or launch with ZeRO-2 or DDP."
        )
    if getattr(training_args, "collapse_action", None) == "rollback":
        raise ConfigError(
            f"collapse_action: rollback is not supported under {where} (the engine's float32 master weights overwrite "
            f"the restored ones at the next step); use collapse_action: stop, or launch with {SUPPORTED_ENGINES}."
        )
