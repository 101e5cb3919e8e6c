"""Recipe parsing: YAML recipes plus command-line overrides, into TRL's config dataclasses and ours.

A recipe is one flat YAML mapping, as in open-r1; each key belongs to exactly one of the dataclasses that
an entry point parses (TRL's `ModelConfig` and training config, and our argument classes). TRL's own
`TrlParser` does the parsing; this module adds the one-line errors a user needs (which key, which file,
what was meant), and the copy of the resolved recipe that is saved beside each run with secrets removed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trl

from trl_smallrl.errors import ConfigError

_SECRET_KEY = re.compile(r"(^|_)token$|secret|password|api_?key|credential", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|[0-9a-f]{40})\b")
REDACTED = "<redacted>"


def _field_names(dataclass_types: Sequence[type]) -> list[str]:
    return sorted({f.name for cls in dataclass_types for f in dataclasses.fields(cls)})


def parse_recipe(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Parse `--config recipe.yaml` and command-line overrides into instances of `dataclass_types`.

    Unknown keys, in the recipe or on the command line, raise `ConfigError` naming the key, the file and
    the closest known key, instead of TRL's generic message.
    """
    from trl import TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise ConfigError(
                "--config: missing the recipe path; use `--config recipes/<model>/<method>/<name>.yaml`."
            )
        recipe = Path(argv[index + 1])
        if not recipe.is_file():
            raise ConfigError(f"--config: the recipe {str(recipe)!r} does not exist; see the recipes/ folder.")
    else:
        recipe = None

    known = _field_names(dataclass_types)
    parser = TrlParser(dataclass_types)
    try:
        *parsed, config_rest, cli_rest = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except SystemExit as err:  # argparse already printed what was wrong with a value
        raise ConfigError("command line: see the message above; `--help` lists every option.") from err
    except ValueError as err:  # a config's own validation (TRL's or ours) rejected a combination
        raise ConfigError(f"{f'recipe {recipe}' if recipe else 'command line'}: {err}") from err
    for source, rest in ((f"recipe {recipe}", config_rest), ("command line", cli_rest)):
        keys = [item[2:].split("=")[0] for item in rest if item.startswith("--")]
        if keys or rest:
            key = keys[0] if keys else rest[0]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else " `--help` lists every option."
            raise ConfigError(f"{source}: unknown key {key!r}.{hint}")
    return tuple(parsed)


def redact_secrets(value):
    """`value` with secrets replaced: values under secret-looking keys, and token-shaped strings anywhere."""
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) and v else redact_secrets(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_secrets(v) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    return value


def resolved_config(*configs) -> dict:
    """One flat mapping of every field of the given dataclasses, as JSON-safe values, secrets removed."""
    merged: dict = {}
    for config in configs:
        for config_field in dataclasses.fields(config):
            value = getattr(config, config_field.name)
            merged[config_field.name] = json.loads(json.dumps(value, default=str))
    return redact_secrets(merged)


def save_resolved_config(output_dir: str | os.PathLike, *configs, name: str = "smallrl_config.json") -> Path:
    """Write the resolved recipe beside the run (atomically), so a run says exactly how it was made."""
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(resolved_config(*configs), indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def use_cpu_without_accelerator(config) -> None:
    """Let a recipe run unchanged on a machine without a GPU.

    TRL's configs default to bf16, which transformers refuses on CPU unless `use_cpu` is set. We set `use_cpu`
    here, before TRL validates the config; whether bf16 then stays on is decided at launch from the processor
    (`precision.decide_training_precision`: only where the CPU runs bf16 natively).
    """
    from trl_smallrl.precision import accelerator_name

    if not config.use_cpu and accelerator_name() is None:
        config.use_cpu = True


@dataclass
class CPUPrecisionArguments:
    """How a training run on a CPU treats the recipe's bf16 (see `trl_smallrl.precision`)."""

    cpu_precision: str = field(
        default="auto",
        metadata={
            "help": "On a CPU: auto (bf16 only where the processor runs it natively, else float32) | bf16 (keep the "
            "recipe's bf16 even where it is emulated, much slower) | fp32. A GPU always keeps the recipe's choice."
        },
    )

    def validate_cpu_precision(self) -> None:
        from trl_smallrl.errors import unknown_name
        from trl_smallrl.precision import CPU_PRECISIONS

        if self.cpu_precision not in CPU_PRECISIONS:
            raise unknown_name("cpu_precision", self.cpu_precision, CPU_PRECISIONS)


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
        from trl_smallrl.curriculum import validate_curriculum_args

        validate_curriculum_args(self)


@dataclass
class GRPOScriptArguments(DataArguments):
    """The rewards of a GRPO run (names from `trl_smallrl.rewards.REWARDS`) and their parameters.

    Weights are TRL's `reward_weights`. Parameter names follow open-r1 where it has them.
    """

    reward_funcs: list[str] = field(
        default_factory=lambda: ["format", "accuracy"],
        metadata={
            "help": "Reward names: format, format_soft, tag_count, accuracy, accuracy_binary, cosine, "
            "soft_overlong, repetition_penalty, language."
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
    repetition_max_penalty: float = field(default=-1.0, metadata={"help": "repetition_penalty: penalty at 100%."})
    language_min_share: float = field(
        default=0.05, metadata={"help": "language: share of the prompt's letters that makes a script allowed."}
    )


DYNAMIC_SAMPLING_MODES = ("none", "mask", "resample")
COLLAPSE_ACTIONS = ("warn", "stop", "rollback")


@dataclass
class GRPOConfig(CPUPrecisionArguments, trl.GRPOConfig):
    """TRL's `GRPOConfig` plus what trl-smallrl adds (dynamic sampling, curriculum, monitors, resets)."""

    dynamic_sampling: str = field(
        default="none",
        metadata={
            "help": "Zero-variance groups (DAPO): none | mask (drop from loss and normalization) | "
            "resample (replace them with groups of fresh prompts)."
        },
    )
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
    resets: str | None = field(
        default=None,
        metadata={
            "help": "ProRL hard resets (trl_smallrl.resets): a YAML list (JSON on the command line) of phases, "
            "each with a trigger (at_step or patience + metric) and overrides (temperature, top_p, "
            "max_completion_length, learning_rate, lora_r, lora_alpha, lora_target_modules)."
        },
    )

    def __post_init__(self):
        use_cpu_without_accelerator(self)
        self.validate_cpu_precision()
        from trl_smallrl.errors import unknown_name

        if self.dynamic_sampling not in DYNAMIC_SAMPLING_MODES:
            raise unknown_name("dynamic_sampling", self.dynamic_sampling, DYNAMIC_SAMPLING_MODES)
        if self.collapse_action not in COLLAPSE_ACTIONS:
            raise unknown_name("collapse_action", self.collapse_action, COLLAPSE_ACTIONS)
        if self.dynamic_sampling_max_tries < 0:
            raise ConfigError(f"dynamic_sampling_max_tries: {self.dynamic_sampling_max_tries} must be >= 0.")
        from trl_smallrl.resets import parse_reset_phases

        parse_reset_phases(self.resets)  # a mistake in a phase fails at parse time, not at the reset
        super().__post_init__()


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
class SFTConfig(CPUPrecisionArguments, trl.SFTConfig):
    """TRL's `SFTConfig` plus what trl-smallrl adds for the warm-up stage."""

    def __post_init__(self):
        use_cpu_without_accelerator(self)
        self.validate_cpu_precision()
        super().__post_init__()


EVAL_DTYPES = ("auto", "float32", "bfloat16", "float16")


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
            "help": "auto (bfloat16 on GPU, float32 on CPU) | float32 | bfloat16 | float16 (on a CPU without "
            "native support, half precision is emulated and warned about)."
        },
    )
    eval_output_dir: str = field(
        default="outputs/eval", metadata={"help": "Where results.json, results.md and completions/ are written."}
    )

    def __post_init__(self):
        from trl_smallrl.errors import unknown_name

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
        if self.eval_dtype not in EVAL_DTYPES:
            raise unknown_name("eval_dtype", self.eval_dtype, EVAL_DTYPES)
