"""Warm-up traces for any task from a local teacher model, by rejection sampling against the task's verifier.

Only K&K has a solver that writes traces; every other task (GSM8K, MATH, reasoning-gym) needs another source.
A larger local model is that source: sample k completions a prompt, keep only those the task's verifier scores
fully correct (rejection sampling, as in STaR, Zelikman et al. 2022, and the R1 distillation data), and write
them in the conversation format of `smallrl-traces` (`{"messages": [system, user, assistant]}` a line), so the
SFT recipe reads either through `traces_file`. No external API is involved: the teacher is any model name
`models.resolve_model` accepts (Hub id in the local cache, folder, adapter folder, embedded alias).

Generation uses vLLM when it is installed and a GPU is visible (much faster for k samples a prompt), else
transformers' `generate`.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trl_smallrl.models import resolve_model
from trl_smallrl.precision import inference_dtype

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingSettings:
    """How the teacher samples: k completions a prompt."""

    num_samples: int = 8
    max_new_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = 8  # prompts per generate call (each expanded to num_samples sequences)
    seed: int = 0
    dtype: str = "auto"  # bfloat16 on a GPU, float32 on a CPU (`precision.inference_dtype`)


def _use_vllm() -> bool:
    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def sample_completions(
    model_name_or_path: str, prompts: Sequence[list[dict[str, str]]], settings: SamplingSettings
) -> list[list[str]]:
    """`settings.num_samples` completions (text) for each conversational prompt, in prompt order."""
    path = resolve_model(model_name_or_path, field="--teacher")
    if _use_vllm():
        return _sample_vllm(path, prompts, settings)
    return _sample_transformers(path, prompts, settings)


def _sample_transformers(path: str, prompts, settings: SamplingSettings) -> list[list[str]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=inference_dtype(settings.dtype)).to(device).eval()
    config = GenerationConfig(
        do_sample=True,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        num_return_sequences=settings.num_samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(settings.seed)
    completions: list[list[str]] = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = prompts[start : start + settings.batch_size]
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            output = model.generate(**inputs, generation_config=config)
        decoded = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        k = settings.num_samples
        completions.extend(decoded[i * k : (i + 1) * k] for i in range(len(batch)))
    return completions


def _sample_vllm(path: str, prompts, settings: SamplingSettings) -> list[list[str]]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=path, seed=settings.seed)
    params = SamplingParams(
        n=settings.num_samples,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_new_tokens,
        seed=settings.seed,
    )
    outputs = llm.chat([list(p) for p in prompts], params, use_tqdm=False)
    return [[choice.text for choice in output.outputs] for output in outputs]


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
        correct = [text for text in samples if task.score(text, answer_row) >= 1.0]
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
    completions = sample_completions(model_name_or_path, [row["prompt"] for row in rows], settings)
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
