"""Sampling completions outside training: one interface for evaluation and teacher traces.

`smallrl-eval` and `smallrl-traces --teacher` both sample k completions for each conversational prompt from a
model given by name. They share this module so that both sample alike (no top-k cut, as TRL's GRPO sampling;
stop at any of the model's end-of-sequence tokens; the same seed gives the same samples) and both get the
faster backend where there is one: vLLM when it is installed and a GPU is visible, else transformers'
`generate` (the CPU path). Each completion comes back with its token count and whether it was cut off.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

from trl_smallrl.models import resolve_model
from trl_smallrl.precision import accelerator_name, inference_dtype


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample: `num_samples` completions a prompt, `batch_size` prompts a call (0 temperature: greedy)."""

    num_samples: int = 8
    max_new_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = 8
    seed: int = 0
    dtype: str = "auto"  # bfloat16 on a GPU, float32 on a CPU (`precision.inference_dtype`)


@dataclass(frozen=True)
class Completion:
    text: str
    length: int  # tokens, up to and including the end-of-sequence token
    truncated: bool  # hit max_new_tokens before ending


def _vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and accelerator_name() is not None


def sample(
    name_or_path: str, prompts: Sequence[list[dict]], settings: SamplingSettings, field: str = "model"
) -> list[list[Completion]]:
    """`settings.num_samples` completions for each conversational prompt, in prompt order.

    `name_or_path` is anything `models.resolve_model` accepts (an adapter folder is sampled as its float32
    merge); `field` names the recipe field or option it came from, for the error of a wrong name.
    """
    path = resolve_model(name_or_path, field=field)
    if _vllm_usable():
        return _sample_vllm(path, prompts, settings)
    return _sample_transformers(path, prompts, settings)


def _sample_transformers(path: str, prompts, settings: SamplingSettings) -> list[list[Completion]]:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=inference_dtype(settings.dtype))
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    sampling = settings.temperature > 0
    config = GenerationConfig(
        do_sample=sampling,
        temperature=settings.temperature if sampling else None,
        top_p=settings.top_p if sampling else None,
        top_k=0,  # no top-k cut (transformers' default is 50): sample as TRL's GRPO generation does
        max_new_tokens=settings.max_new_tokens,
        num_return_sequences=settings.num_samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(eos_ids),
    )
    torch.manual_seed(settings.seed)  # every model sampled with one settings draws from the same stream
    results: list[list[Completion]] = []
    starts = range(0, len(prompts), settings.batch_size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=len(starts) < 2):
        batch = prompts[start : start + settings.batch_size]
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=config)
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        for row in range(len(batch)):
            samples = []
            for ids in new_tokens[row * settings.num_samples : (row + 1) * settings.num_samples]:
                end = next((i + 1 for i, token in enumerate(ids) if token in eos_ids), None)
                kept = ids if end is None else ids[:end]
                text = tokenizer.decode(kept, skip_special_tokens=True)
                samples.append(Completion(text=text, length=len(kept), truncated=end is None))
            results.append(samples)
    return results


def _sample_vllm(path: str, prompts, settings: SamplingSettings) -> list[list[Completion]]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=path, seed=settings.seed, dtype="auto" if settings.dtype == "auto" else settings.dtype)
    params = SamplingParams(
        n=settings.num_samples,
        temperature=settings.temperature,
        top_p=settings.top_p if settings.temperature > 0 else 1.0,
        max_tokens=settings.max_new_tokens,
        seed=settings.seed,
    )
    outputs = llm.chat([list(p) for p in prompts], params, use_tqdm=False)
    return [
        [
            Completion(text=choice.text, length=len(choice.token_ids), truncated=choice.finish_reason == "length")
            for choice in output.outputs
        ]
        for output in outputs
    ]
