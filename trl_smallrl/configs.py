"""Every recipe key trl-smallrl adds: the dataclasses a recipe is parsed into (`recipe.parse_recipe`).

A recipe is one flat YAML mapping, as in open-r1; each key belongs to exactly one dataclass that an entry point
parses: TRL's `ModelConfig`, our subclasses of TRL's training configs (`GRPOConfig`, `SFTConfig`), and the
argument classes of the data (`DataArguments` and its GRPO and SFT extensions, GRPO's with its
`CurriculumArguments`) and of evaluation (`EvalArguments`). Each validates its own fields in `__post_init__`, so a
mistake fails at parse time with one line that names the field, before any model loads. They hold values only:
what the machine decides (`use_cpu`'s default, the precision) is decided when a recipe is parsed or a run starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import trl

from trl_smallrl.errors import ConfigError, unknown_name

# Counts a training run divides by or loops over: 0 or less fails deep inside TRL (a ZeroDivisionError).
TRAINING_COUNTS = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
CURRICULUM_MODES = ("sequential", "mixed", "off")
CPU_PRECISIONS = ("auto", "bf16", "fp32")  # how a CPU run treats the recipe's bf16 (`precision`)
METRIC_MODES = ("max", "min")  # of a reset phase's `patience` metric
EVAL_DTYPES = ("auto", "float32", "bfloat16", "float16")


def require_positive(config, *names: str) -> None:
    """One line for a count that must be at least 1 (None, where a field allows it, is left alone)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name}: {value} must be at least 1; fix it in the recipe or on the command line.")


@dataclass
class DataArguments(trl.ScriptArguments):
    """What to train and evaluate on: a registered task, its levels, and where its rows come from.

    Rows are generated procedurally from (`task`, `levels`, sizes, `task_seed`) unless `dataset_name` names
    a file (parquet, jsonl, json) or a Hub dataset in the task's file format.
    """

    task: str = field(default="knights_knaves", metadata={"help": "Registered task name (`smallrl-data --help`)."})
    levels: list[int] = field(
        default_factory=lambda: [2, 3, 4, 5, 6],
        metadata={"help": "Difficulty levels in curriculum order (K&K: number of people)."},
    )
    train_size: int = field(default=1000, metadata={"help": "Generated training rows per level."})
    eval_size: int = field(default=50, metadata={"help": "Generated held-out rows per level."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the generated rows (train and eval never overlap)."})
    system_prompt: str | None = field(default=None, metadata={"help": "System prompt; default: the task's own."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Optional file or Hub dataset instead of generated rows."}
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Eval file/Hub dataset; default with `dataset_name`: its last eval_size rows a level."},
    )

    def __post_init__(self):
        if not isinstance(self.levels, list | tuple):
            raise ConfigError(f"levels: {self.levels!r} must be a list of levels, e.g. levels: [{self.levels}].")
        for name in ("train_size", "eval_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: {getattr(self, name)} rows per level; use 0 or more.")


@dataclass
class CurriculumArguments:
    """How a GRPO run moves through the levels (`curriculum.Curriculum`); SFT and eval take no curriculum."""

    curriculum: str = field(
        default="sequential",
        metadata={"help": "sequential: level by level as accuracy rises; mixed: all levels from the start; off."},
    )
    curriculum_threshold: float = field(
        default=0.7, metadata={"help": "Advance when the rolling accuracy on the current level reaches this."}
    )
    curriculum_window: int = field(
        default=64, metadata={"help": "Rolling accuracy window, in prompts of the current level."}
    )
    curriculum_max_steps: int = field(
        default=0, metadata={"help": "Advance after this many steps at a level whatever the accuracy (0: never)."}
    )
    curriculum_replay: float = field(
        default=0.0, metadata={"help": "Fraction of prompts drawn from earlier levels (sequential mode)."}
    )

    def __post_init__(self):
        if self.curriculum not in CURRICULUM_MODES:
            raise unknown_name("curriculum", self.curriculum, CURRICULUM_MODES)
        if not 0.0 <= self.curriculum_threshold <= 1.0:
            raise ConfigError(f"curriculum_threshold: {self.curriculum_threshold} is not an accuracy; use 0.0 to 1.0.")
        if self.curriculum_window < 1:
            raise ConfigError(f"curriculum_window: {self.curriculum_window} prompts; use at least 1.")
        if self.curriculum_max_steps < 0:
            raise ConfigError(f"curriculum_max_steps: {self.curriculum_max_steps}; use 0 (no limit) or more steps.")
        if not 0.0 <= self.curriculum_replay < 1.0:
            raise ConfigError(f"curriculum_replay: {self.curriculum_replay} is not a fraction; use 0.0 <= x < 1.0.")


@dataclass
class GRPOScriptArguments(CurriculumArguments, DataArguments):
    """The rows, curriculum and rewards of a GRPO run (names from `trl_smallrl.rewards.REWARDS`) and the rewards'
    parameters.

    Weights are TRL's `reward_weights`. Parameter names follow open-r1 where it has them.
    """

    reward_funcs: list[str] = field(
        default_factory=lambda: ["format", "accuracy"],
        metadata={
            "help": "Reward names: format, format_soft, tag_count, accuracy, accuracy_binary, cosine, "
            "soft_overlong, repetition_penalty, language; or your own function as module:function."
        },
    )
    cosine_max_len: int = field(default=1000, metadata={"help": "cosine: length (tokens) where the schedule ends."})
    cosine_min_value_wrong: float = field(default=-1.0, metadata={"help": "cosine: wrong answer, shortest."})
    cosine_max_value_wrong: float = field(default=-0.5, metadata={"help": "cosine: wrong answer, longest."})
    cosine_min_value_correct: float = field(default=0.5, metadata={"help": "cosine: right answer, longest."})
    cosine_max_value_correct: float = field(default=1.0, metadata={"help": "cosine: right answer, shortest."})
    overlong_max_len: int | None = field(
        default=None, metadata={"help": "soft_overlong: L_max in tokens; default: max_completion_length."}
    )
    overlong_cache: int = field(default=64, metadata={"help": "soft_overlong: L_cache, the soft band in tokens."})
    repetition_n_grams: int = field(default=3, metadata={"help": "repetition_penalty: n-gram size (tokens)."})
    repetition_max_penalty: float = field(
        default=-1.0, metadata={"help": "repetition_penalty: the penalty when every n-gram repeats."}
    )
    language_min_share: float = field(
        default=0.05, metadata={"help": "language: share of the prompt's letters that makes a script allowed."}
    )

    def __post_init__(self):
        DataArguments.__post_init__(self)
        CurriculumArguments.__post_init__(self)
        for name in (
            "cosine_min_value_wrong",
            "cosine_max_value_wrong",
            "cosine_min_value_correct",
            "cosine_max_value_correct",
        ):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name}: {getattr(self, name)} is not a finite reward; use a number such as -1.0.")
        require_positive(self, "cosine_max_len")


@dataclass
class CPUPrecisionArguments:
    """How a training run on a CPU treats the recipe's bf16 (decided at launch by `precision`)."""

    cpu_precision: str = field(
        default="auto",
        metadata={
            "help": "On a CPU: auto (bf16 only where the processor runs it natively, else float32) | bf16 (keep the "
            "recipe's bf16 even where it is emulated, much slower) | fp32. A GPU always keeps the recipe's choice."
        },
    )

    def validate_cpu_precision(self) -> None:
        if self.cpu_precision not in CPU_PRECISIONS:
            raise unknown_name("cpu_precision", self.cpu_precision, CPU_PRECISIONS)


@dataclass(frozen=True)
class ResetPhase:
    """One hard reset (`resets`): when it fires (`at_step` or `patience`) and what the phase it starts changes."""

    at_step: int | None = None
    patience: int | None = None
    metric: str = "eval_reward"
    mode: str = "max"
    temperature: float | None = None
    top_p: float | None = None
    max_completion_length: int | None = None
    learning_rate: float | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_target_modules: list[str] | str | None = None


_PHASE_KEYS = tuple(f.name for f in fields(ResetPhase))


def parse_reset_phases(value: Any) -> list[ResetPhase]:
    """Validate the recipe's `resets` (a YAML list, or a JSON/YAML string from the command line)."""
    import yaml

    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"resets: {value!r} is not a YAML/JSON list; e.g. '[{{at_step: 100}}]'.") from err
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"resets: {value!r} must be a list of phases, e.g. [{{at_step: 100, temperature: 1.1}}].")
    phases = []
    for index, item in enumerate(value):
        where = f"resets[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: {item!r} must be a mapping such as {{at_step: 100, temperature: 1.1}}.")
        unknown = sorted(set(item) - set(_PHASE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(_PHASE_KEYS)}.")
        if (item.get("at_step") is None) == (item.get("patience") is None):
            raise ConfigError(f"{where}: {dict(item)!r} needs exactly one trigger, `at_step: N` or `patience: P`.")
        for key in ("at_step", "patience", "max_completion_length", "lora_r", "lora_alpha"):
            if item.get(key) is not None and (not isinstance(item[key], int) or item[key] < 1):
                raise ConfigError(f"{where}.{key}: {item[key]!r} must be a positive integer.")
        for key in ("temperature", "top_p", "learning_rate"):
            if item.get(key) is not None and (not isinstance(item[key], int | float) or item[key] <= 0):
                raise ConfigError(f"{where}.{key}: {item[key]!r} must be a positive number.")
        if item.get("top_p") is not None and item["top_p"] > 1:
            raise ConfigError(f"{where}.top_p: {item['top_p']!r} must be in (0, 1].")
        if item.get("mode", "max") not in METRIC_MODES:
            raise ConfigError(f"{where}.mode: {item['mode']!r} must be one of {', '.join(METRIC_MODES)}.")
        phases.append(ResetPhase(**item))
    steps = [p.at_step for p in phases if p.at_step is not None]
    if steps != sorted(set(steps)):
        raise ConfigError(f"resets: the at_step triggers {steps} must increase from one phase to the next.")
    return phases


DYNAMIC_SAMPLING_MODES = ("none", "mask", "resample")
# Loss types that average over sequences (rows) rather than over tokens: a masked row must leave their mean.
ROW_MEAN_LOSSES = ("grpo", "sapo", "dr_grpo", "luspo")
COLLAPSE_ACTIONS = ("warn", "stop", "rollback")


@dataclass
class HeldOutCurveArguments:
    """The held-out curve at every checkpoint (`heldout.HeldOutCurve`): pass@1 on the recipe's eval split."""

    heldout_num_samples: int = field(
        default=0, metadata={"help": "Samples a held-out row a checkpoint (0: no curve)."}
    )
    heldout_max_new_tokens: int = field(default=384, metadata={"help": "Held-out completion tokens at most."})
    heldout_steps: int = field(default=0, metadata={"help": "Steps between held-out points, a multiple of save_steps (0: every checkpoint)."})  # fmt: skip


@dataclass
class GRPOConfig(HeldOutCurveArguments, CPUPrecisionArguments, trl.GRPOConfig):
    """TRL's `GRPOConfig` plus what trl-smallrl adds (dynamic sampling, monitors, resets)."""

    dynamic_sampling: str = field(default="none", metadata={"help": "Zero-variance groups (DAPO): none | mask (drop "
        "from loss and normalization) | resample (replace them with groups of fresh prompts)."})  # fmt: skip
    dynamic_sampling_max_tries: int = field(
        default=3, metadata={"help": "resample: extra generation rounds at most per generation batch."}
    )
    collapse_fraction: float = field(
        default=0.3, metadata={"help": "Collapse: think length below this fraction of its early average."}
    )
    collapse_patience: int = field(
        default=5, metadata={"help": "Collapse: logging steps in a row below the fraction before acting."}
    )
    collapse_warmup: int = field(
        default=3, metadata={"help": "Collapse: first logging steps whose think length forms the early average."}
    )
    collapse_action: str = field(
        default="warn", metadata={"help": "Collapse: warn | stop | rollback (to the best checkpoint, then go on)."}
    )
    resets: str | None = field(default=None, metadata={"help": "ProRL hard resets (trl_smallrl.resets): a YAML list "
        "(JSON on the command line) of phases, each with a trigger (at_step or patience + metric) and overrides "
        "(temperature, top_p, max_completion_length, learning_rate, lora_r, lora_alpha, lora_target_modules)."})  # fmt: skip

    def __post_init__(self):
        self.validate_cpu_precision()
        if self.dynamic_sampling not in DYNAMIC_SAMPLING_MODES:
            raise unknown_name("dynamic_sampling", self.dynamic_sampling, DYNAMIC_SAMPLING_MODES)
        if self.collapse_action not in COLLAPSE_ACTIONS:
            raise unknown_name("collapse_action", self.collapse_action, COLLAPSE_ACTIONS)
        if self.dynamic_sampling_max_tries < 0:
            raise ConfigError(f"dynamic_sampling_max_tries: {self.dynamic_sampling_max_tries} must be >= 0.")
        parse_reset_phases(self.resets)  # a mistake in a phase fails at parse time, not at the reset
        require_positive(self, *TRAINING_COUNTS, "num_generations", "max_completion_length", "heldout_max_new_tokens")
        super().__post_init__()
        per_rank = self.per_device_train_batch_size * self.steps_per_generation
        if self.dynamic_sampling == "resample" and per_rank % self.num_generations:
            raise ConfigError(
                f"dynamic_sampling: resample needs whole groups on each process, but per_device_train_batch_size * "
                f"steps_per_generation = {per_rank} is not a multiple of num_generations = {self.num_generations}; "
                "change one of them."
            )
        if self.dynamic_sampling == "mask" and self.loss_type in ROW_MEAN_LOSSES and self.entropy_coef:
            raise ConfigError(
                f"dynamic_sampling: mask with loss_type {self.loss_type!r} rescales the whole loss, which would also "
                "rescale the entropy bonus; set entropy_coef: 0 or use loss_type: dapo (token-normalized)."
            )


@dataclass
class SFTScriptArguments(DataArguments):
    """What the SFT warm-up trains on: a traces file, or the task's rows with traces from its offline writer."""

    traces_file: str | None = field(
        default=None,
        metadata={
            "help": 'jsonl of conversations ({"messages": [system, user, assistant]}) from `smallrl-traces`; '
            "default: generate rows from the task and write their traces with the task's trace writer."
        },
    )


@dataclass
class SFTConfig(HeldOutCurveArguments, CPUPrecisionArguments, trl.SFTConfig):
    """TRL's `SFTConfig` plus what trl-smallrl adds for the warm-up stage."""

    _VALID_DICT_FIELDS = [*trl.SFTConfig._VALID_DICT_FIELDS, "chat_template_kwargs"]

    chat_template_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments of the chat template when the traces are rendered, as GRPO's field of the same "
            "name (Qwen3: {enable_thinking: false}, so that SFT and GRPO see the same prompt)."
        },
    )

    def __post_init__(self):
        self.validate_cpu_precision()
        require_positive(self, *TRAINING_COUNTS, "max_length", "heldout_max_new_tokens")
        super().__post_init__()


@dataclass
class EvalArguments:
    """How `smallrl-eval` samples and scores: which models, how many samples per prompt, which pass@k.

    Parsed together with `DataArguments` (task, levels, `eval_size` rows per level, `task_seed`, or a
    `dataset_name`), so an eval recipe names its rows exactly as a training recipe does.
    """

    eval_models: list[str] = field(
        default_factory=lambda: ["smollm2-135m-instruct"],
        metadata={
            "help": "Models side by side: Hub id, local folder (full model or PEFT adapter) or embedded alias, "
            "each optionally labelled as `label=model` (e.g. `base=smollm2-135m-instruct sft=outputs/sft`)."
        },
    )
    eval_num_samples: int = field(default=4, metadata={"help": "Samples per prompt (n of pass@k)."})
    eval_k: list[int] = field(default_factory=lambda: [1, 4], metadata={"help": "The k values of pass@k (<= n)."})
    eval_temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; 0 = greedy (n = 1)."})
    eval_top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold."})
    eval_max_new_tokens: int = field(default=512, metadata={"help": "Completion tokens at most."})
    eval_generation_batch_size: int = field(default=8, metadata={"help": "Prompts per `generate` call."})
    eval_sampling_seed: int = field(default=0, metadata={"help": "Seed of the sampler (same for every model)."})
    eval_dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (bfloat16 on GPU; on CPU float32 weights, bf16 matmuls where native) | float32 | bfloat16 | "
            "float16 (on a CPU without native support, half precision is emulated and warned about)."
        },
    )
    eval_vllm_gpu_memory_utilization: float = field(
        default=0.85,
        metadata={
            "help": "With vLLM (a GPU): the share of GPU memory each model's engine takes, one model at a time."
        },
    )
    eval_output_dir: str = field(
        default="outputs/eval", metadata={"help": "Where results.json, results.md and samples.jsonl.gz are written."}
    )
    chat_template_kwargs: dict | str | None = field(  # a mapping once parsed (`recipe.mapping_value`)
        default=None, metadata={"help": "The prompts' chat template kwargs, as training's (Qwen3: enable_thinking)."}
    )

    def __post_init__(self):
        if not self.eval_models:
            raise ConfigError("eval_models: no model given; name at least one (e.g. smollm2-135m-instruct).")
        if self.eval_num_samples < 1:
            raise ConfigError(f"eval_num_samples: {self.eval_num_samples} must be >= 1.")
        too_large = [k for k in self.eval_k if not 1 <= k <= self.eval_num_samples]
        if not self.eval_k or too_large:
            raise ConfigError(
                f"eval_k: {self.eval_k} needs values from 1 to eval_num_samples ({self.eval_num_samples}); "
                "raise eval_num_samples or drop the larger k."
            )
        if self.eval_temperature < 0:
            raise ConfigError(f"eval_temperature: {self.eval_temperature} must be >= 0.")
        if self.eval_temperature == 0 and self.eval_num_samples > 1:
            raise ConfigError(
                f"eval_temperature: 0 (greedy) gives {self.eval_num_samples} identical samples; "
                "set eval_num_samples 1 or a temperature > 0."
            )
        if not 0 < self.eval_top_p <= 1:
            raise ConfigError(f"eval_top_p: {self.eval_top_p} must be in (0, 1].")
        if self.eval_max_new_tokens < 1 or self.eval_generation_batch_size < 1:
            raise ConfigError("eval_max_new_tokens and eval_generation_batch_size: both must be >= 1.")
        if not 0 < self.eval_vllm_gpu_memory_utilization <= 1:
            raise ConfigError(
                f"eval_vllm_gpu_memory_utilization: {self.eval_vllm_gpu_memory_utilization} must be in (0, 1]."
            )
        if self.eval_dtype not in EVAL_DTYPES:
            raise unknown_name("eval_dtype", self.eval_dtype, EVAL_DTYPES)
