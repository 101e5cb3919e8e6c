"""Precision that follows the hardware: bf16 on a CPU only where the processor runs it natively.

A recipe is written once and runs on a GPU, on a server CPU with AVX512-BF16 or AMX, or on a CPU without them
(AMD before Zen 4, most Intel desktop and laptop parts). The last kind emulates bf16 in software: on an AMD EPYC
with AVX2 a 2048^3 matmul ran under 1 GFLOP/s in bf16 against 86 GFLOP/s in fp32, and the embedded SFT
recipe's first step took 1309 s there against 33-47 s on a Xeon with native bf16. So the precision is decided
once at launch from what the processor has:

- on a GPU, the recipe's choice stands (`bf16`, `fp16`, `dtype`);
- on a CPU with native bf16, likewise (`cpu_precision: fp32` asks for float32 instead);
- on a CPU without it, half-precision autocast is turned off and half-precision weights load as float32,
  unless the recipe insists with `cpu_precision: bf16`, which is warned about with its cost.

One log line says what was found, what was chosen and how to change it. Evaluation and the teacher follow the
same rule: their weights' dtype through `inference_dtype`, and on a CPU with native bf16 their decode computes in
bf16 over float32 weights (`decode_compute_dtype`), as GRPO's rollouts under bf16 autocast do.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from trl_smallrl.configs import CPU_PRECISIONS
from trl_smallrl.errors import ConfigError, unknown_name

logger = logging.getLogger(__name__)

# Weights that may load in half precision: `auto` takes the checkpoint's dtype, bf16 for most Hub models.
HALF_WEIGHTS = ("bfloat16", "float16", "auto")
EMULATED_COST = "emulated in software there, tens of times slower than float32"


@dataclass(frozen=True)
class CPUInfo:
    """The processor's name and the instruction sets that decide whether bf16 runs natively on it."""

    name: str
    avx512_bf16: bool
    amx: bool
    amx_fp16: bool
    vector: str  # torch's CPU capability: AVX2, AVX512, ...

    @property
    def native_bf16(self) -> bool:
        return self.avx512_bf16 or self.amx

    def describe(self) -> str:
        """'AMD EPYC (AVX2; no AVX512-BF16, no AMX)' or 'Intel Xeon (AVX512; AVX512-BF16, AMX)'."""
        found = [name for name, has in (("AVX512-BF16", self.avx512_bf16), ("AMX", self.amx)) if has]
        flags = ", ".join(found) if found else "no AVX512-BF16, no AMX"
        return f"{self.name} ({self.vector}; {flags})"


def _cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def cpu_info() -> CPUInfo:
    """What this machine's CPU has, asked once (torch's own probes of the instruction sets)."""
    import torch

    return CPUInfo(
        name=_cpu_name(),
        avx512_bf16=torch.cpu._is_avx512_bf16_supported(),
        amx=torch.cpu._is_amx_tile_supported(),
        amx_fp16=torch.cpu._is_amx_fp16_supported(),
        vector=torch.backends.cpu.get_cpu_capability(),
    )


def accelerator_name() -> str | None:
    """The GPU (or other accelerator) torch will train on, or None on a CPU-only machine."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if torch.backends.mps.is_available():
        return "Apple MPS"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "Intel XPU"
    return None


@functools.cache
def _say(level: int, message: str) -> None:
    """Log each distinct precision line once per process (eval loads several models, each asks)."""
    logger.log(level, message)


def _asked(args, dtype: str) -> str:
    """'bf16 autocast, float32 weights': what the parsed recipe (with TRL's defaults) asks for."""
    autocast = "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "no autocast"
    return f"{autocast}, {dtype} weights"


def use_cpu_default(asked: bool) -> bool:
    """The `use_cpu` of a training recipe that does not set it (`recipe.parse_recipe`): True where torch sees no
    accelerator, so that a recipe runs unchanged on a CPU (TRL's configs default to bf16, which transformers refuses
    on a CPU unless `use_cpu` is set; whether bf16 then stays on is decided at launch, `decide_training_precision`:
    only where the CPU runs bf16 natively). A machine whose GPUs `nvidia-smi` lists but torch cannot use (a CPU-only
    torch build, a driver mismatch) would silently train on the CPU, days slower: that is refused, unless the
    recipe asks for the CPU itself (`asked`: `use_cpu: true`).
    """
    if asked or accelerator_name() is not None:
        return asked
    gpus = nvidia_smi_gpus()
    if gpus:
        import torch

        raise ConfigError(
            f"use_cpu: nvidia-smi lists {len(gpus)} GPU(s) ({gpus[0]}) but torch {torch.__version__} cannot use them "
            "(a CPU-only build, or a driver too old for its CUDA); install a CUDA build of torch (`pip install "
            "torch`), or set use_cpu: true to train on the CPU on purpose."
        )
    return True


def nvidia_smi_gpus() -> list[str]:
    """The GPUs `nvidia-smi -L` lists (none where the tool is missing or fails)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return (
        [line.strip() for line in listed.stdout.splitlines() if line.startswith("GPU ")]
        if listed.returncode == 0
        else []
    )


def decide_training_precision(training_args, model_args) -> str:
    """Set `bf16`, `fp16`, `mixed_precision` and `model_args.dtype` for this machine; return the log line.

    Call it once at launch, after the configs are parsed and before the trainer (and its accelerator) exists:
    the Trainer builds its accelerator from `mixed_precision`, and TRL loads the model with `dtype`.
    """
    mode = getattr(training_args, "cpu_precision", "auto")
    if mode not in CPU_PRECISIONS:
        raise unknown_name("cpu_precision", mode, CPU_PRECISIONS)
    asked = _asked(training_args, model_args.dtype)
    device = None if training_args.use_cpu else accelerator_name()
    if device is not None:
        line = f"precision: {device}: as the recipe asks ({asked})."
        _say(logging.INFO, line)
        return line
    cpu = cpu_info()
    half_asked = training_args.bf16 or training_args.fp16 or model_args.dtype in HALF_WEIGHTS[:2]
    native = cpu.amx_fp16 if training_args.fp16 else cpu.native_bf16
    if mode == "bf16" or (mode == "auto" and native):
        if half_asked and not native:
            line = (
                f"precision: CPU {cpu.describe()}: keeping {asked} because cpu_precision is bf16, but half "
                f"precision is {EMULATED_COST}; drop cpu_precision (or set it to auto) to train in float32."
            )
            _say(logging.WARNING, line)
        else:
            line = (
                f"precision: CPU {cpu.describe()}: as the recipe asks ({asked}); cpu_precision: fp32 forces float32."
            )
            _say(logging.INFO, line)
        return line
    training_args.bf16 = training_args.fp16 = False
    training_args.mixed_precision = "no"
    if model_args.dtype in HALF_WEIGHTS:
        model_args.dtype = "float32"
    why = "cpu_precision is fp32" if mode == "fp32" else f"half precision is {EMULATED_COST}"
    line = (
        f"precision: CPU {cpu.describe()}: training in float32 (no autocast, float32 weights; the recipe asked "
        f"{asked}) because {why}."
    )
    if mode == "auto" and half_asked:
        line += " Set cpu_precision: bf16 to keep the recipe's choice."
    _say(logging.INFO, line)
    return line


def autocast_dtype(training_args):
    """The dtype a training run's autocast computes in (None: no autocast), after `decide_training_precision`."""
    import torch

    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else None


def decode_compute_dtype(name: str = "auto"):
    """The dtype a CPU decode computes in over float32 weights (`decoding.sample_tokens`'s `compute_dtype`; None:
    the weights' own): for `auto`, bfloat16 where the processor runs it natively, as training's bf16 autocast does
    there (the embedded model decodes 1.2-1.65x faster on a 2-core AMD EPYC with AVX512-BF16), else float32."""
    import torch

    return torch.bfloat16 if name == "auto" and cpu_info().native_bf16 else None


def inference_dtype(name: str = "auto"):
    """The torch dtype to generate in: `auto` is bfloat16 on a GPU and float32 on a CPU; a half dtype asked for
    on a CPU without native support is kept, with a warning that says its cost."""
    import torch

    if name == "auto":
        return torch.bfloat16 if accelerator_name() is not None else torch.float32
    dtype = getattr(torch, name)
    if dtype in (torch.bfloat16, torch.float16) and accelerator_name() is None:
        cpu = cpu_info()
        if not (cpu.amx_fp16 if dtype == torch.float16 else cpu.native_bf16):
            _say(
                logging.WARNING,
                f"precision: generating in {name} on CPU {cpu.describe()}, where it is {EMULATED_COST}; "
                "use auto or float32.",
            )
    return dtype
