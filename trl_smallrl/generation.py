"""Sampling completions: one interface for evaluation and teacher traces (`sample`).

`smallrl-eval` and `smallrl-traces --teacher` sample k completions for each conversational prompt from a model
given by name. They share this module so that both sample alike (no top-k cut, as TRL's GRPO sampling; stop at any
of the model's end-of-sequence tokens; the same seed gives the same samples) and get the fastest backend there is:
vLLM when it is installed and a GPU is visible, else on a GPU transformers' `generate`, and on a CPU
`decoding.sample_tokens` (which GRPO's CPU rollouts use too).

Both render a prompt as GRPO does, with the chat template's generation prompt and the recipe's `chat_template_kwargs`
(Qwen3 with thinking off is evaluated with thinking off), and both read a completion as GRPO's rewards do: where the
template opens `<think>` itself (DeepSeek-R1-Distill), that prefill is put back in front of the model's text
(`completions.template_prefill`, `with_prefill`), so the strict format and the kept teacher traces see the whole
`<think>...</think>` block.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trl_smallrl import atomic
from trl_smallrl.completions import template_prefill, with_prefill
from trl_smallrl.decoding import sample_tokens, supports_sample_tokens
from trl_smallrl.models import resolve_model
from trl_smallrl.precision import accelerator_name, decode_compute_dtype, inference_dtype

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample: `num_samples` completions a prompt, `batch_size` prompts a call (0 temperature: greedy)."""

    num_samples: int = 8
    max_new_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = 8
    seed: int = 0
    dtype: str = "auto"  # bfloat16 on a GPU; on a CPU float32 weights, bf16 matmuls where native (`precision`)
    gpu_memory_utilization: float = 0.85  # vLLM: its share of the GPU (weights and KV cache), one engine at a time
    chat_template_kwargs: Mapping[str, Any] | None = None  # how prompts are rendered (Qwen3: enable_thinking)


@dataclass(frozen=True)
class Completion:
    text: str  # the template's `<think>` prefill (R1-Distill), if any, then the model's text
    length: int  # tokens, up to and including the end-of-sequence token
    truncated: bool  # hit max_new_tokens before ending


@dataclass(frozen=True)
class SamplingProgress:
    """Where a long sampling keeps what it has drawn, so that a killed one resumes at its next batch and draws what
    an unbroken one would: after each batch the completions so far and torch's random states (CPU and CUDA), written
    atomically to `path`, with `identity` (what is sampled: the model, its weights, the settings, the prompts). A
    file of another identity is ignored and replaced. The eval keeps one a model (`eval_samples.progress_path`): the
    reference run's final eval samples a model for more than an hour on a CPU. transformers' sampling only (vLLM
    draws a model in one call, in minutes on a GPU)."""

    path: Path
    identity: Mapping[str, Any]

    def restore(self) -> list[list[Completion]]:
        """The completions kept for this identity (none without a file of it), torch's random states set to follow."""
        import torch

        try:
            saved = json.loads(gzip.decompress(Path(self.path).read_bytes()))
        except (OSError, ValueError, EOFError):
            return []
        if saved.get("identity") != json.loads(json.dumps(self.identity)):
            return []
        torch.set_rng_state(torch.tensor(saved["cpu_random_state"], dtype=torch.uint8))
        if saved["cuda_random_states"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in saved["cuda_random_states"]])
        logger.info("resuming the sampling after %d prompts, from %s", len(saved["completions"]), self.path)
        return [[Completion(*completion) for completion in row] for row in saved["completions"]]

    def save(self, completions: Sequence[Sequence[Completion]]) -> None:
        import torch

        cuda = [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
        payload = {
            "identity": self.identity,
            "completions": [[[c.text, c.length, c.truncated] for c in row] for row in completions],
            "cpu_random_state": torch.get_rng_state().tolist(),
            "cuda_random_states": cuda,
        }
        atomic.write_file(self.path, lambda tmp: tmp.write_bytes(gzip.compress(json.dumps(payload).encode(), mtime=0)))

    def clear(self) -> None:
        Path(self.path).unlink(missing_ok=True)


def _vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and accelerator_name() is not None


def sample(
    name_or_path: str,
    prompts: Sequence[list[dict]],
    settings: SamplingSettings,
    field: str = "model",
    progress: SamplingProgress | None = None,
) -> list[list[Completion]]:
    """`settings.num_samples` completions for each conversational prompt, in prompt order.

    `name_or_path` is anything `models.resolve_model` accepts (an adapter folder is sampled as its float32
    merge); `field` names the recipe field or option it came from, for the error of a wrong name. Prompts are
    rendered with `settings.chat_template_kwargs`; each completion's text starts with the template's `<think>`
    prefill where it has one (module docstring). With `progress`, a sampling killed midway resumes where it was.
    """
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path, field=field)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if _vllm_usable():
        samples = _sample_vllm(path, tokenizer, prompts, settings)
    else:
        samples = _sample_transformers(path, tokenizer, prompts, settings, progress)
    return with_template_prefill(samples, tokenizer, settings)


def with_template_prefill(samples: list[list[Completion]], tokenizer, settings: SamplingSettings):
    """Each text with the template's `<think>` prefill in front where the template has one (module docstring)."""
    prefill = template_prefill(tokenizer, settings.chat_template_kwargs)
    if not prefill:
        return samples
    return [[replace(c, text=with_prefill(c.text, prefill)) for c in row] for row in samples]


def _sample_transformers(
    path: str, tokenizer, prompts, settings: SamplingSettings, progress: SamplingProgress | None
) -> list[list[Completion]]:
    import torch
    from transformers import AutoModelForCausalLM

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=inference_dtype(settings.dtype))
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    torch.manual_seed(settings.seed)  # every model sampled with one settings draws from the same stream
    if progress is None:
        return sample_with_model(model, tokenizer, prompts, settings)
    kept = progress.restore()  # saved at a batch's end: the rest starts on a batch boundary, from the saved state
    rest = sample_with_model(
        model, tokenizer, prompts[len(kept) :], settings, on_batch=lambda done: progress.save([*kept, *done])
    )
    return [*kept, *rest]


def sample_with_model(
    model,
    tokenizer,
    prompts,
    settings: SamplingSettings,
    desc: str = "generating",
    on_batch: Callable[[list[list[Completion]]], None] | None = None,
):
    """`settings.num_samples` completions for each prompt from a loaded model, from torch's current random state
    (`sample` seeds it; a checkpoint's held-out curve forks it), `settings.batch_size` prompts a call: on a CPU
    through `decoding.sample_tokens` where it runs the model, else `generate`. Texts as the model wrote them.
    `on_batch` gets the completions so far after each batch (`SamplingProgress.save`)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

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
    template_kwargs = dict(settings.chat_template_kwargs or {})
    on_cpu = model.device.type == "cpu" and supports_sample_tokens(model)
    results: list[list[Completion]] = []
    starts = range(0, len(prompts), settings.batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=len(starts) < 2):
        batch = prompts[start : start + settings.batch_size]
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True, **template_kwargs)
            for p in batch
        ]
        if on_cpu:
            prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            new_tokens = sample_tokens(
                model,
                [ids for ids in prompt_ids for _ in range(settings.num_samples)],
                max_new_tokens=settings.max_new_tokens,
                eos_ids=sorted(eos_ids),
                pad_id=tokenizer.pad_token_id,
                temperature=settings.temperature,
                top_p=settings.top_p,
                compute_dtype=decode_compute_dtype(settings.dtype),
            )
        else:
            inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
            inputs = inputs.to(model.device)
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
        if on_batch is not None:
            on_batch(results)
    return results


def _sample_vllm(path: str, tokenizer, prompts, settings: SamplingSettings) -> list[list[Completion]]:
    """One vLLM engine for this model, sized from the settings (its GPU share; a context of the longest prompt plus
    the completion budget, not the model's whole window), shut down and freed before the next model starts."""
    import gc

    import torch
    from vllm import LLM, SamplingParams

    template_kwargs = dict(settings.chat_template_kwargs or {})
    longest = max(
        len(tokenizer.apply_chat_template(list(p), add_generation_prompt=True, **template_kwargs)["input_ids"])
        for p in prompts
    )
    llm = LLM(
        model=path,
        seed=settings.seed,
        dtype="auto" if settings.dtype == "auto" else settings.dtype,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_model_len=longest + settings.max_new_tokens,
    )
    params = SamplingParams(
        n=settings.num_samples,
        temperature=settings.temperature,
        top_p=settings.top_p if settings.temperature > 0 else 1.0,
        max_tokens=settings.max_new_tokens,
        seed=settings.seed,
    )
    try:
        outputs = llm.chat([list(p) for p in prompts], params, use_tqdm=True, chat_template_kwargs=template_kwargs)
    finally:
        shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return [
        [
            Completion(text=choice.text, length=len(choice.token_ids), truncated=choice.finish_reason == "length")
            for choice in output.outputs
        ]
        for output in outputs
    ]
