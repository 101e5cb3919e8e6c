"""`smallrl-sft`: supervised warm-up on reasoning traces, a thin wrapper on TRL's `SFTTrainer`.

A tiny instruct model starts RL cold: SmolLM2-135M-Instruct scores 0 on both format and accuracy on K&K with
two people, so every GRPO group has zero advantage. A few hundred traces in the answer format fix the format
first (DESIGN.md: 82% format after 168 traces). Traces come from the task's own trace writer (K&K: a
case-by-case solution written from the puzzle's ground truth) or from a jsonl file written by `smallrl-traces`
(the writer, or a local teacher model with rejection sampling: `trl_smallrl.teacher`).

The loss covers the assistant's tokens only. SmolLM2's chat template has no generation markers, so TRL's
`assistant_only_loss` cannot find the assistant span; the prompt/completion dataset format makes TRL mask
the prompt (system + user turns) instead, which is the same thing for single-turn traces.

The output folder (adapter or full model) is the starting point of GRPO: `model_name_or_path: outputs/<run>`
resolves an adapter folder to its base merged with the adapter (`models.merged_adapter_path`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from trl_smallrl.configs import SFTConfig, SFTScriptArguments, parse_recipe, save_resolved_config
from trl_smallrl.errors import ConfigError, exit_on_config_error
from trl_smallrl.hub import defer_push_to_hub, push_run
from trl_smallrl.models import prepare_model_args
from trl_smallrl.tracking import setup_tracking

logger = logging.getLogger("trl_smallrl.sft")  # not __name__: it is "__main__" under `python -m`


def trace_writer(task_name: str) -> Callable[[Mapping[str, Any]], str] | None:
    """The offline trace writer of a task (its solver), or None when it has none (use a traces file then)."""
    from trl_smallrl.data_tools import SOLVER_TRACES
    from trl_smallrl.tasks import get_task

    return SOLVER_TRACES.get(get_task(task_name).name)


def to_prompt_completion(rows, write_trace: Callable[[Mapping[str, Any]], str] | None = None):
    """Rows -> TRL's conversational prompt/completion format (only those two columns), so TRL masks the prompt.

    A row is a conversation of `smallrl-traces` (`messages`: system, user, assistant), or a task row whose
    trace `write_trace(row)` writes.
    """

    def convert(row):
        if "messages" in row:
            return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}
        return {"prompt": row["prompt"], "completion": [{"role": "assistant", "content": write_trace(row)}]}

    if "messages" not in rows.column_names and write_trace is None:
        raise ConfigError(
            "traces_file: the task has no offline trace writer and no traces file was given; "
            "write one with `smallrl-traces --teacher MODEL --task NAME --out traces.jsonl` and set traces_file."
        )
    return rows.map(convert, remove_columns=rows.column_names)


def load_traces(script_args: SFTScriptArguments, split: str):
    """The SFT dataset of a split: the traces file, else the task's generated rows with their written traces."""
    from datasets import load_dataset

    if script_args.traces_file and split == "train":
        try:
            rows = load_dataset("json", data_files=script_args.traces_file, split="train")
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(
                f"traces_file: cannot read {script_args.traces_file!r} ({err}); "
                "give a jsonl written by `smallrl-traces`."
            ) from err
        messages = rows[0]["messages"] if "messages" in rows.column_names and len(rows) else None
        if not messages or messages[-1].get("role") != "assistant":
            raise ConfigError(
                f"traces_file: {script_args.traces_file!r} is not a file of conversations ending in the "
                'assistant\'s trace ({"messages": [...]} a line); write it with `smallrl-traces`.'
            )
        return to_prompt_completion(rows)
    from trl_smallrl.tasks import build_dataset

    return to_prompt_completion(build_dataset(script_args, split), trace_writer(script_args.task))


def train(argv: list[str] | None = None):
    """Parse a recipe, train, save the model (adapter or full) in `output_dir`; return the trainer."""
    from trl import ModelConfig, SFTTrainer, get_peft_config

    script_args, training_args, model_args = parse_recipe((SFTScriptArguments, SFTConfig, ModelConfig), argv)
    prepare_model_args(model_args, training_args)
    setup_tracking(training_args)  # wandb without a key runs offline, never prompts
    push_at_end = defer_push_to_hub(training_args)  # the Trainer's own push would upload training_args.bin
    train_dataset = load_traces(script_args, "train")
    eval_dataset = load_traces(script_args, "eval") if training_args.eval_strategy != "no" else None
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    if trainer.accelerator.is_main_process:
        save_resolved_config(training_args.output_dir, script_args, training_args, model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if push_at_end and trainer.accelerator.is_main_process:
        push_run(training_args.output_dir, token=training_args.hub_token)
    logger.info("SFT output in %s; start GRPO with `model_name_or_path: %s`", *[training_args.output_dir] * 2)
    return trainer


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    """Run supervised warm-up from a recipe: `smallrl-sft --config recipes/<model>/sft/<name>.yaml`."""
    train(argv)


if __name__ == "__main__":
    main()
