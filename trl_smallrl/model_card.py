"""The model card of an upload: Hub metadata and a body that explains how the model was made.

Generated from what the run wrote (the redacted config, the log history, the eval of `smallrl-eval`, the
plots), never typed by hand: the base model's public id (not a cache path), how to load it, the rewards and
their weights, the curriculum's history, the recipe and the curves. The body comes from the Jinja template
`templates/model_card.md` through huggingface_hub's `ModelCard.from_template`, and the pass@k figures also go
into the card's metadata as `EvalResult`s, so that the Hub shows them on the model's page.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from trl_smallrl.errors import ConfigError
from trl_smallrl.models import is_hub_id
from trl_smallrl.redaction import redact_secrets

TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
# The settings a reader of the card wants first, when the run's recipe file is not given.
KEY_SETTINGS = (
    "model_name_or_path",
    "task",
    "levels",
    "curriculum",
    "curriculum_threshold",
    "reward_funcs",
    "reward_weights",
    "learning_rate",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_generations",
    "max_completion_length",
    "temperature",
    "beta",
    "loss_type",
    "epsilon",
    "epsilon_high",
    "dynamic_sampling",
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "seed",
)
REWARD_PARAMETER_PREFIXES = ("cosine_", "overlong_", "repetition_", "language_")


def curriculum_history(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each curriculum level with the step it started at and its last rolling accuracy, from the logs."""
    history: list[dict[str, Any]] = []
    for entry in log_history:
        level = entry.get("curriculum/level")
        if level is not None and (not history or history[-1]["level"] != int(level)):
            history.append({"level": int(level), "start_step": entry.get("step")})
    for item in history:
        key = f"curriculum/accuracy_level_{item['level']}"
        values = [entry[key] for entry in log_history if key in entry]
        item["last_accuracy"] = values[-1] if values else None
    return history


def _rewards(config: Mapping[str, Any], log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Each reward with its weight and its last logged mean: the recipe's `reward_funcs`, else the logged ones."""
    names = config.get("reward_funcs") or sorted(
        {
            key.split("/")[1]
            for entry in log_history
            for key in entry
            if key.startswith("rewards/") and key.count("/") == 2
        }
    )
    weights = config.get("reward_weights") or [1.0] * len(names)
    rows = []
    for name, weight in zip(names, weights):
        values = [entry[f"rewards/{name}/mean"] for entry in log_history if f"rewards/{name}/mean" in entry]
        rows.append({"name": name, "weight": f"{weight:g}", "mean": f"{values[-1]:.3f}" if values else "-"})
    return rows


def recipe_yaml(config: Mapping[str, Any], recipe: str | os.PathLike | None, base_model: str) -> str:
    """The recipe shown in the card, secrets redacted: the given YAML file, else the key settings of the config."""
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(
                f"--recipe: {str(path)!r} does not exist; give the YAML recipe the run was trained with."
            )
        loaded = yaml.safe_load(path.read_text()) or {}
        return yaml.safe_dump(redact_secrets(loaded), sort_keys=False)
    selected = {key: config[key] for key in KEY_SETTINGS if key in config}
    if "model_name_or_path" in selected:
        selected["model_name_or_path"] = base_model if is_hub_id(base_model) else f"(local) {Path(base_model).name}"
    return yaml.safe_dump(redact_secrets(selected), sort_keys=False) if selected else ""


def eval_results(result: Mapping[str, Any], model_path: str | os.PathLike | None = None) -> list:
    """pass@k per level of one evaluated model as huggingface_hub `EvalResult`s (the card's `model-index`).

    The model is the one whose `model` is `model_path` when the eval compared several, else the last one (the
    eval recipes list base, SFT, then the trained model).
    """
    from huggingface_hub import EvalResult

    models = result.get("models") or []
    if not models:
        return []
    wanted = str(Path(model_path).resolve()) if model_path is not None else None
    chosen = next((m for m in models if wanted and str(Path(m.get("model", "")).resolve()) == wanted), models[-1])
    spec = result.get("spec", {})
    task = spec.get("task") or "held-out"
    results = []
    for level, stats in chosen["levels"].items():
        where = "all levels" if level == "all" else f"level {level}"
        for k in spec.get("k", []):
            results.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=task,
                    dataset_name=f"{task} ({where}, held-out rows)",
                    dataset_config=f"level-{level}",
                    dataset_split="eval",
                    metric_type=f"pass@{k}",
                    metric_name=f"pass@{k} ({where}, n={stats['num_samples']})",
                    metric_value=round(float(stats[f"pass@{k}"]), 4),
                )
            )
    return results


# What an upload holds, which decides how the card says to load it.
UPLOAD_KINDS = ("adapter", "merged", "full")


def build_model_card(
    *,
    title: str,
    base_model: str,
    kind: str,
    config: Mapping[str, Any],
    lineage: tuple[str, Sequence[str]] | None = None,
    log_history: Sequence[Mapping[str, Any]],
    recipe_yaml: str,
    eval_table: str | None,
    eval_results: Sequence[Any] = (),
    plot_files: Sequence[str],
    embedded_source: str | None = None,
) -> str:
    """The README.md of the upload: Hub metadata, how to load it, eval, rewards, curriculum, recipe, plots.

    `kind` (`UPLOAD_KINDS`): a PEFT `adapter` loads through its base; a `merged` adapter and a `full` fine-tune
    load on their own with transformers. `embedded_source` says where the weights really came from when the chain
    began at an embedded model (its quantized file, not the Hub's weights of `base_model`)."""
    from huggingface_hub import ModelCard, ModelCardData

    if kind not in UPLOAD_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {UPLOAD_KINDS}")
    adapter = kind == "adapter"
    method = "GRPO" if config.get("reward_funcs") or any("reward" in entry for entry in log_history) else "SFT"
    on_hub = is_hub_id(base_model)
    metadata = ModelCardData(
        base_model=base_model if on_hub else None,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=["trl", "trl-smallrl", method.lower(), "reasoning", *(["lora"] if adapter else [])],
        model_name=title if eval_results else None,
        eval_results=list(eval_results) or None,
    )
    base_text = f"[{base_model}](https://huggingface.co/{base_model})" if on_hub else "a local model (not on the Hub)"
    what = {"adapter": "A LoRA adapter for", "merged": "A merged model from", "full": "A full fine-tune of"}[kind]
    summary = f"{what} {base_text}, trained with trl-smallrl ({method} with TRL, for small reasoning models)."
    if embedded_source:
        summary += f" Training started from {embedded_source}, not from the Hub's weights of that model."
    origin, stages = lineage or (base_model, [])
    if stages:
        runs = ", ".join(f"`{stage}`" for stage in stages)
        origin_text = origin if is_hub_id(origin) else "a local model"
        summary += (
            f" It continues from {origin_text} through the run(s) {runs}, whose adapters were merged into the "
            "weights before this run."
        )
    if not adapter:
        import_line = "from transformers import AutoModelForCausalLM, AutoTokenizer"
        loading = f'model = AutoModelForCausalLM.from_pretrained("{title}")'
    else:
        import_line = "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer"
        loads = f"{base_model} + this adapter" if on_hub else "its base model, which must be reachable"
        loading = f'model = AutoPeftModelForCausalLM.from_pretrained("{title}")  # loads {loads}'
    parameters = {k: v for k, v in config.items() if k.startswith(REWARD_PARAMETER_PREFIXES)}
    curriculum = [
        {**stage, "accuracy": "-" if stage["last_accuracy"] is None else f"{stage['last_accuracy']:.3f}"}
        for stage in curriculum_history(log_history)
    ]
    card = ModelCard.from_template(
        metadata,
        template_path=str(TEMPLATE),
        title=title,
        summary=summary,
        import_line=import_line,
        loading=loading,
        eval_table=(eval_table or "").strip(),
        rewards=_rewards(config, log_history),
        reward_parameters=", ".join(f"`{k}={v}`" for k, v in sorted(parameters.items())),
        curriculum=curriculum,
        recipe_yaml=recipe_yaml.strip(),
        plot_files=[{"stem": Path(p).stem, "path": p} for p in plot_files],
    )
    return str(card).rstrip() + "\n"
