"""Warm-up traces for any task from a local teacher model, by rejection sampling against the task's verifier.

Only K&K has a solver that writes traces; every other task (GSM8K, MATH, reasoning-gym) needs another source.
A larger local model is that source: sample k completions a prompt, keep only those the task's verifier scores
fully correct (rejection sampling, as in STaR, Zelikman et al. 2022, and the R1 distillation data), and write
them in the conversation format of `smallrl-traces` (`{"messages": [system, user, assistant]}` a line), so the
SFT recipe reads either through `traces_file`. No external API is involved: the teacher is any model name
`models.resolve_model` accepts (Hub id in the local cache, folder, adapter folder, embedded alias).

Sampling goes through `trl_smallrl.generation`, as evaluation does: vLLM when it is installed and a GPU is
visible (much faster for k samples a prompt), else transformers' `generate`. It renders the prompts with the
teacher's `chat_template_kwargs` (`--chat-template-kwargs`; Qwen3: thinking on or off), and a kept trace is the
whole assistant turn: where the teacher's template opens `<think>` in the prompt (DeepSeek-R1-Distill), that
prefill is in front of the teacher's text, so the trace holds its `<think>...</think>` block as the format asks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trl_smallrl.generation import SamplingSettings, sample


def keep_verified(
    task, rows: Sequence[Mapping[str, Any]], completions: Sequence[Sequence[str]], keep_per_prompt: int = 1
) -> tuple[list[dict[str, Any]], list[int]]:
    """Rejection sampling: the conversations whose completion the task's verifier scores 1.0, and per row
    how many of its samples were correct.

    At most `keep_per_prompt` distinct correct completions a prompt, so that easy prompts (all k correct) do
    not crowd out hard ones.
    """
    kept, correct_counts = [], []
    for row, samples in zip(rows, completions, strict=True):
        answer_row = {key: value for key, value in row.items() if key != "prompt"}
        correct = [text for text in samples if task.is_correct(text, answer_row)]
        correct_counts.append(len(correct))
        for text in list(dict.fromkeys(correct))[:keep_per_prompt]:
            kept.append({"messages": [*row["prompt"], {"role": "assistant", "content": text}]})
    return kept, correct_counts


def teacher_traces(
    model_name_or_path: str,
    task,
    rows: Sequence[Mapping[str, Any]],
    settings: SamplingSettings,
    keep_per_prompt: int = 1,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Sample, verify, keep: the SFT conversations and acceptance statistics per level."""
    samples = sample(model_name_or_path, [row["prompt"] for row in rows], settings, field="--teacher")
    completions = [[completion.text for completion in row_samples] for row_samples in samples]
    kept, correct_counts = keep_verified(task, rows, completions, keep_per_prompt)
    by_level: dict[Any, list[int]] = {}
    for row, correct in zip(rows, correct_counts):
        counts = by_level.setdefault(row.get("level"), [0, 0, 0])
        counts[0] += correct
        counts[1] += settings.num_samples
        counts[2] += correct > 0
    stats: dict[str, float] = {"kept": float(len(kept)), "prompts": float(len(rows))}
    for level, (correct, total, solved) in sorted(by_level.items(), key=lambda item: str(item[0])):
        stats[f"sample_accuracy_level_{level}"] = correct / total
        stats[f"prompts_solved_level_{level}"] = float(solved)
    return kept, stats
