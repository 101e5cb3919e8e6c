"""`smallrl-sft`: supervised warm-up on reasoning traces, a thin wrapper on TRL's `SFTTrainer`.

A tiny instruct model starts RL cold: SmolLM2-135M-Instruct scores 0 on both format and accuracy on K&K with
two people, so every GRPO group has zero advantage. A few hundred traces in the answer format fix the format
first (82% format after 168 traces, measured on a CPU). Traces come from the task's own trace writer (K&K: a
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
import os

from datasets import Dataset
from trl import ModelConfig, SFTTrainer, get_peft_config

from trl_smallrl import run
from trl_smallrl.checkpoints import AtomicCheckpointMixin
from trl_smallrl.configs import SFTConfig, SFTScriptArguments
from trl_smallrl.errors import ConfigError, entry_point
from trl_smallrl.run import prepare_model_args
from trl_smallrl.tasks import Task, get_task
from trl_smallrl.tasks.rows import build_dataset, read_file_records

logger = logging.getLogger("trl_smallrl.sft")  # not __name__: it is "__main__" under `python -m`


class SmallRLSFTTrainer(AtomicCheckpointMixin, SFTTrainer):
    """TRL's `SFTTrainer` whose checkpoints appear whole (`checkpoints.AtomicCheckpointMixin`)."""


def to_prompt_completion(rows, task: Task | None = None, chat_template_kwargs: dict | None = None):
    """Rows -> TRL's conversational prompt/completion format (only those two columns), so TRL masks the prompt.

    A row is a conversation of `smallrl-traces` (`messages`: system, user, assistant), or a row of `task`, whose
    trace the task's solver writes (`Task.write_trace`). `chat_template_kwargs` go into each row's column of that
    name, which TRL's SFT tokenization passes to the chat template.
    """
    extra = {"chat_template_kwargs": dict(chat_template_kwargs)} if chat_template_kwargs else {}

    def convert(row):
        if "messages" in row:
            return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:], **extra}
        trace = task.write_trace(row)
        return {"prompt": row["prompt"], "completion": [{"role": "assistant", "content": trace}], **extra}

    if "messages" not in rows.column_names and (task is None or not task.writes_traces):
        raise ConfigError(
            "traces_file: the task has no offline trace writer and no traces file was given; "
            "write one with `smallrl-traces --teacher MODEL --task NAME --out traces.jsonl` and set traces_file."
        )
    return rows.map(convert, remove_columns=rows.column_names)


def load_traces(script_args: SFTScriptArguments, split: str, chat_template_kwargs: dict | None = None):
    """The SFT dataset of a split: the traces file, else the task's generated rows with their written traces."""
    if script_args.traces_file and split == "train":
        if not os.path.isfile(script_args.traces_file):
            raise ConfigError(
                f"traces_file: {script_args.traces_file!r} does not exist; write it with `smallrl-traces --out`."
            )
        rows = Dataset.from_list(read_file_records(script_args.traces_file, field="traces_file"))
        messages = rows[0]["messages"] if "messages" in rows.column_names and len(rows) else None
        if not messages or messages[-1].get("role") != "assistant":
            raise ConfigError(
                f"traces_file: {script_args.traces_file!r} is not a file of conversations ending in the "
                'assistant\'s trace ({"messages": [...]} a line); write it with `smallrl-traces`.'
            )
        return to_prompt_completion(rows, chat_template_kwargs=chat_template_kwargs)
    return to_prompt_completion(build_dataset(script_args, split), get_task(script_args.task), chat_template_kwargs)


def build_trainer(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> SFTTrainer:
    """TRL's `SFTTrainer` on the recipe's traces, LoRA or full fine-tuning as the recipe says."""
    template = training_args.chat_template_kwargs
    train_dataset = load_traces(script_args, "train", template)  # a bad traces file fails before any model loads
    eval_dataset = load_traces(script_args, "eval", template) if training_args.eval_strategy != "no" else None
    prepare_model_args(model_args, training_args)
    return SmallRLSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )


def train(argv: list[str] | None = None) -> SmallRLSFTTrainer:
    """Parse a recipe, train (resuming when asked), save the model (adapter or full) in `output_dir`."""
    trainer = run.train(argv, (SFTScriptArguments, SFTConfig, ModelConfig), build_trainer)
    output_dir = trainer.args.output_dir
    logger.info("SFT output in %s; start GRPO with `model_name_or_path: %s`", output_dir, output_dir)
    return trainer


@entry_point
def main(argv: list[str] | None = None) -> None:
    """Run supervised warm-up from a recipe: `smallrl-sft --config recipes/<model>/sft/<name>.yaml`."""
    train(argv)


if __name__ == "__main__":
    main()
