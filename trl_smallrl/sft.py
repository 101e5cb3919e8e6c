"""`smallrl-sft`: supervised warm-up on reasoning traces, a thin wrapper on TRL's `SFTTrainer`.

A tiny instruct model starts RL cold: SmolLM2-135M-Instruct scores 0 on both format and accuracy on K&K with
two people, so every GRPO group has zero advantage. A few hundred traces in the answer format fix the format
first (82% format after 168 traces, measured on a CPU). Traces come from the task's own trace writer (K&K: a
case-by-case solution written from the puzzle's ground truth) or from a jsonl file written by `smallrl-traces`
(the writer, or a local teacher model with rejection sampling: `trl_smallrl.teacher`).

The loss covers the assistant's tokens only, and they are exactly what GRPO samples after its prompt. Each trace
is a prompt/completion row (so TRL masks the prompt, and its `completion_only_loss` holds), tokenized here, in the
one hook where TRL would render it (`SmallRLSFTTrainer._prepare_dataset`): the prompt as GRPO tokenizes it (the
chat template with the generation prompt and the recipe's `chat_template_kwargs`), then the trace as the model
must write it after that prompt, then the template's end of the turn (`trace_tokens`). TRL instead renders the
whole conversation through the template and trains where it departs from the prompt, which is wrong wherever the
template rewrites an assistant turn: Qwen3's moves the trace's reasoning into its own think block (with
`enable_thinking: false` its prompt ends in an empty `<think>\n\n</think>\n\n` that the conversation does not
have, so the trained tokens started inside the reasoning and never opened `<think>`), and DeepSeek-R1-Distill's
drops the reasoning altogether. TRL's prefix-preserving training templates (`get_training_chat_template`) do not
cure this: they fix earlier turns of multi-turn and tool conversations, while the last assistant turn still
renders as above (qwen3_training.jinja renders a single-turn trace exactly as qwen3.jinja does, and
deepseek_r1_distill_training.jinja opens it with `<think>` where the prompt ends in `<think>\n`); and they exist
for a fixed list of templates.

The output folder (adapter or full model) is the starting point of GRPO: `model_name_or_path: outputs/<run>`
resolves an adapter folder to its base merged with the adapter (`models.merged_adapter_path`).
"""

from __future__ import annotations

import json
import logging
import os

from datasets import Dataset
from trl import ModelConfig, SFTTrainer, get_peft_config

from trl_smallrl import atomic, run
from trl_smallrl.checkpoints import AtomicCheckpointMixin
from trl_smallrl.completions import completion_text, template_prefill, without_prefill
from trl_smallrl.configs import SFTConfig, SFTScriptArguments
from trl_smallrl.errors import ConfigError, entry_point
from trl_smallrl.run import prepare_model_args
from trl_smallrl.tasks import Task, get_task
from trl_smallrl.tasks.rows import build_dataset, read_file_records

logger = logging.getLogger("trl_smallrl.sft")  # not __name__: it is "__main__" under `python -m`


_TURN_PROBE = "trl-smallrl: the end of this turn"  # an assistant turn no template rewrites (no `</think>`)


def _template_parts(tokenizer, chat_template_kwargs: dict) -> tuple[str, str]:
    """The template's `<think>` prefill at the end of the generation prompt (`completions.template_prefill`) and
    what it writes after an assistant turn's text (`<|im_end|>\n`, R1-Distill's end-of-sentence token)."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "?"}, {"role": "assistant", "content": _TURN_PROBE}],
        tokenize=False,
        **chat_template_kwargs,
    )
    at = rendered.rfind(_TURN_PROBE)
    turn_end = rendered[at + len(_TURN_PROBE) :] if at >= 0 else tokenizer.eos_token or ""
    return template_prefill(tokenizer, chat_template_kwargs), turn_end


def trace_tokens(tokenizer, prompt: list[dict], trace, chat_template_kwargs: dict | None = None) -> dict:
    """One SFT row as GRPO will see it: `input_ids` are GRPO's prompt ids (the template with the generation prompt
    and `chat_template_kwargs`, as TRL's GRPO tokenizes them), then the trace as the model writes it after that
    prompt (without the template's `<think>` prefill, which the prompt holds), then the template's end of the turn;
    `completion_mask` marks the part after the prompt, which TRL turns into the labels."""
    kwargs = dict(chat_template_kwargs or {})
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               **kwargs)["input_ids"]  # fmt: skip
    prefill, turn_end = _template_parts(tokenizer, kwargs)
    completion = without_prefill(completion_text(trace), prefill) + turn_end
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return {
        "input_ids": list(prompt_ids) + completion_ids,
        "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids),
    }


def _tokenize_row(row: dict, tokenizer) -> dict:
    return trace_tokens(tokenizer, row["prompt"], row["completion"], row.get("chat_template_kwargs"))


class TrainedTokens:
    """The tokens trained so far, which TRL's SFT logs as `num_tokens`, in and out of each checkpoint
    (`checkpoints.CheckpointState`): TRL counts them on the trainer (`_total_train_tokens`), outside the Trainer's
    state, so a resumed run counted from 0 and logged other figures than the run that never stopped."""

    FILE = "sft_trained_tokens.json"

    def __init__(self, trainer):
        self.trainer = trainer

    def save_to_checkpoint(self, folder: str) -> None:
        atomic.write_json(os.path.join(folder, self.FILE), {"total_train_tokens": self.trainer._total_train_tokens})

    def load_from_checkpoint(self, folder: str) -> None:
        path = os.path.join(folder, self.FILE)
        if os.path.isfile(path):
            with open(path) as handle:
                self.trainer._total_train_tokens = json.load(handle)["total_train_tokens"]


class SmallRLSFTTrainer(AtomicCheckpointMixin, SFTTrainer):
    """TRL's `SFTTrainer` whose checkpoints appear whole (`checkpoints.AtomicCheckpointMixin`) and whose traces are
    tokenized as GRPO will see them (`trace_tokens`; the module docstring says why TRL's rendering is not)."""

    def own_checkpoint_states(self) -> list:
        return [TrainedTokens(self)]

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        """Conversational prompt/completion rows (`to_prompt_completion`) -> `trace_tokens`; then TRL's own
        preparation, which finds them tokenized and builds the labels, truncates and packs."""
        names = dataset.column_names or []
        if {"prompt", "completion"} <= set(names) and "input_ids" not in names:
            dataset = dataset.map(_tokenize_row, fn_kwargs={"tokenizer": self._tokenizer}, remove_columns=names)
        return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)


def to_prompt_completion(rows, task: Task | None = None, chat_template_kwargs: dict | None = None):
    """Rows -> TRL's conversational prompt/completion format (only those two columns), so TRL masks the prompt.

    A row is a conversation of `smallrl-traces` (`messages`: system, user, assistant), or a row of `task`, whose
    trace the task's solver writes (`Task.write_trace`). `chat_template_kwargs` go into each row's column of that
    name (TRL's own column for them), which `trace_tokens` renders the prompt with.
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
