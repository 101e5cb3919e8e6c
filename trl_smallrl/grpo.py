"""`smallrl-grpo`: GRPO from a recipe, `smallrl-grpo --config recipes/<model>/grpo/<name>.yaml [--key value ...]`.

A recipe's model, rows, rewards and curriculum become a `SmallRLGRPOTrainer` with its monitors and, when the
recipe lists them, its hard resets; `run.train` does the rest (tracking, resume, checkpoint on signal, save,
push), exactly as for SFT.
"""

from __future__ import annotations

import logging

import trl

from trl_smallrl import run
from trl_smallrl.configs import GRPOConfig, GRPOScriptArguments, parse_reset_phases
from trl_smallrl.curriculum import Curriculum
from trl_smallrl.engines import check_vllm_installed
from trl_smallrl.errors import ConfigError, entry_point
from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer
from trl_smallrl.monitors import CollapseMonitor
from trl_smallrl.resets import HardResetCallback
from trl_smallrl.rewards import get_reward_funcs
from trl_smallrl.run import prepare_model_args
from trl_smallrl.tasks.rows import build_dataset

logger = logging.getLogger("trl_smallrl.grpo")  # not __name__: it is "__main__" under `python -m`


def build_trainer(
    script_args: GRPOScriptArguments,
    training_args: GRPOConfig,
    model_args: trl.ModelConfig,
    trainer_class: type[SmallRLGRPOTrainer] = SmallRLGRPOTrainer,
) -> SmallRLGRPOTrainer:
    """The trainer a recipe describes: rewards, datasets, curriculum, PEFT, monitors and resets.

    Everything a recipe can get wrong is built before the model is resolved and loaded (resolving an SFT
    run's adapter merges it into its base), so that a mistake costs seconds, not a model load.
    """
    check_vllm_installed(training_args)
    reward_params = {**vars(script_args), "max_completion_length": training_args.max_completion_length}
    reward_funcs = get_reward_funcs(script_args.reward_funcs, **reward_params)
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(reward_funcs):
        raise ConfigError(
            f"reward_weights: {list(weights)} has {len(weights)} weights for {len(reward_funcs)} rewards "
            f"{list(script_args.reward_funcs)}; give one weight per reward."
        )
    train_dataset = build_dataset(script_args, "train")
    eval_dataset = build_dataset(script_args, "eval") if training_args.eval_strategy != "no" else None
    prepare_model_args(model_args, training_args)
    curriculum = None
    if script_args.curriculum != "off":
        present = set(train_dataset["level"])
        levels = [level for level in script_args.levels if level in present]  # the recipe's order
        curriculum = Curriculum.from_args(script_args, levels=levels, seed=training_args.seed)
    generation_every = training_args.steps_per_generation * training_args.num_iterations  # micro-batches
    if (
        training_args.save_strategy == "steps"
        and (training_args.gradient_accumulation_steps * training_args.save_steps) % generation_every
    ):
        logger.warning(
            "save_steps: a checkpoint every %s steps can fall inside a generation batch (steps_per_generation x "
            "num_iterations = %d micro-batches), which TRL does not save: a run resumed there generates again and "
            "continues differently from one that never stopped; make save_steps x gradient_accumulation_steps a "
            "multiple of it.",
            training_args.save_steps,
            generation_every,
        )
    trainer = trainer_class(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=trl.get_peft_config(model_args),
        curriculum=curriculum,
    )
    trainer.add_callback(
        CollapseMonitor(
            trainer,
            fraction=training_args.collapse_fraction,
            patience=training_args.collapse_patience,
            warmup=training_args.collapse_warmup,
            action=training_args.collapse_action,
        )
    )
    if training_args.resets:
        trainer.add_callback(HardResetCallback(trainer, parse_reset_phases(training_args.resets)))
    return trainer


def train(argv: list[str] | None = None) -> SmallRLGRPOTrainer:
    """Parse a recipe, train (resuming when asked), save the model/adapter and trainer state in output_dir."""
    return run.train(argv, (GRPOScriptArguments, GRPOConfig, trl.ModelConfig), build_trainer)


@entry_point
def main(argv: list[str] | None = None) -> None:
    """Run GRPO from a recipe: `smallrl-grpo --config recipes/<model>/grpo/<name>.yaml [--key value ...]`."""
    train(argv)


if __name__ == "__main__":
    main()
