"""The sampling backend of eval and teacher, on the tiny model with the real tokenizer (transformers' generate)."""

from __future__ import annotations

from trl_smallrl.generation import SamplingSettings, sample
from trl_smallrl.tasks import get_task

SETTINGS = SamplingSettings(num_samples=3, max_new_tokens=12, temperature=1.0, batch_size=2, seed=0)


def _prompts(n=3):
    return [row["prompt"] for row in get_task("kk").generate_rows(level=2, size=n, seed=0)]


def test_k_samples_per_prompt_with_lengths(tiny_model_dir, tokenizer):
    prompts = _prompts()
    samples = sample(tiny_model_dir, prompts, SETTINGS)
    assert len(samples) == len(prompts) and all(len(row) == 3 for row in samples)
    # Sampled, not greedy: a random model's three samples of one prompt are not all the same.
    assert any(len({c.text for c in row}) > 1 for row in samples)
    # Completions only: the prompt text is not echoed back.
    assert not any(prompts[0][-1]["content"][:40] in c.text for c in samples[0])
    for completion in (c for row in samples for c in row):
        assert 1 <= completion.length <= SETTINGS.max_new_tokens
        assert completion.truncated == (completion.length == SETTINGS.max_new_tokens)  # no EOS before the end
        assert len(tokenizer(completion.text, add_special_tokens=False)["input_ids"]) <= completion.length + 2


def test_the_same_seed_gives_the_same_samples(tiny_model_dir):
    prompts = _prompts(2)
    first = sample(tiny_model_dir, prompts, SETTINGS)
    assert sample(tiny_model_dir, prompts, SETTINGS) == first
    other_seed = sample(tiny_model_dir, prompts, SamplingSettings(**{**SETTINGS.__dict__, "seed": 1}))
    assert other_seed != first


def test_greedy_gives_one_deterministic_completion(tiny_model_dir):
    greedy = SamplingSettings(num_samples=1, max_new_tokens=6, temperature=0.0, batch_size=4)
    prompts = _prompts(2)
    assert sample(tiny_model_dir, prompts, greedy) == sample(tiny_model_dir, prompts, greedy)
