"""The sampling backend of eval, teacher and CPU rollouts, on the tiny model with the real tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import trl

from trl_smallrl.decoding import sample_tokens
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


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def _prompt_ids(tokenizer):
    """Two identical prompts (a group), and two of other lengths: left padding, shared prefill, ragged ends."""
    rows = get_task("kk").generate_rows(2, 2, seed=0) + get_task("kk").generate_rows(3, 1, seed=0)
    ids = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True)["input_ids"] for r in rows]
    return [ids[0], ids[0], ids[1], ids[2]]


def _generate(model, tokenizer, prompts, max_new_tokens, eos_id):
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=0)
    outputs = []
    for prompt in prompts:
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             generation_config=config)  # fmt: skip
        outputs.append(out[0, len(prompt) :].tolist())
    return outputs


@pytest.mark.slow
def test_sample_tokens_is_generate_token_for_token(embedded_model_dir):
    """Greedy, so both are deterministic, on the real model (whose answers end at different lengths): the fused
    decode steps on their own cache, the shared prefill, left padding and the rows dropped when they finish change
    where the time goes, not a single token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    prompts = _prompt_ids(tokenizer)
    ours = sample_tokens(model, prompts, max_new_tokens=48, eos_ids=[tokenizer.eos_token_id], pad_id=0, temperature=0)
    assert ours == _generate(model, tokenizer, prompts, 48, tokenizer.eos_token_id)
    ended = [c[-1] == tokenizer.eos_token_id for c in ours]
    assert any(ended) and len({len(c) for c in ours}) > 1  # ragged ends: rows left the batch while others went on


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_decode_steps_give_generates_tokens_in_each_family(family, tokenizer):
    """`sample_tokens`' own decode steps (fused projections, its KV cache) against `generate`, greedy, on tiny
    random models of each family it runs: Qwen2's projection biases and Qwen3's query/key norms included."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from trl_smallrl.decoding import supports_sample_tokens

    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=len(tokenizer))  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **sizes)).eval()
    with torch.no_grad():  # random biases and norm weights (zeros and ones at init), so skipping one shows
        for name, weight in model.named_parameters():
            if name.endswith("bias"):
                weight.uniform_(-0.5, 0.5)
            elif "norm" in name:
                weight.uniform_(0.5, 1.5)
    assert supports_sample_tokens(model)
    prompts = _prompt_ids(tokenizer)
    ours = sample_tokens(model, prompts, max_new_tokens=24, eos_ids=[tokenizer.eos_token_id], pad_id=0, temperature=0)
    assert ours == _generate(model, tokenizer, prompts, 24, tokenizer.eos_token_id)


def test_sample_tokens_samples_with_the_global_seed(tiny):
    model, tokenizer = tiny
    prompts = _prompt_ids(tokenizer)
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        draws.append(sample_tokens(model, prompts, max_new_tokens=12, eos_ids=[-1], pad_id=0, top_p=0.9, top_k=50))
    assert draws[0] == draws[1]
    assert draws[0][0] != draws[0][1]  # one prompt's group members are sampled independently


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adapter_added_to_base_is_the_peft_model_and_restores_the_base_exactly(tiny_model_dir, dtype):
    """The base and the adapter come back bit for bit and in their dtype (a bf16 adapter left in float32 would
    change what the optimizer steps)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_smallrl.adapters import adapter_added_to_base

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, lora, autocast_adapter_dtype=False).eval()
    assert {p.dtype for p in peft_model.parameters()} == {dtype}
    ids = torch.tensor([[1, 17, 42, 256, 1000, 7]])
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    tolerance = 1e-5 if dtype == torch.float32 else 0.05  # bf16: the adapter's path rounds differently
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        with adapter_added_to_base(peft_model) as plain:
            torch.testing.assert_close(plain(input_ids=ids).logits, expected, atol=tolerance, rtol=tolerance)
        torch.testing.assert_close(peft_model(input_ids=ids).logits, expected, atol=0, rtol=0)
    after = dict(peft_model.named_parameters())
    assert all(after[name].dtype == dtype and torch.equal(after[name], p) for name, p in before.items())


def test_sample_tokens_refuses_an_adapter_it_would_skip(tiny, tokenizer):
    """It runs the base weights only: a LoRA still active beside them would be ignored without a word."""
    from peft import LoraConfig, get_peft_model

    from trl_smallrl.adapters import adapter_added_to_base

    model, _ = tiny
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    prompts = _prompt_ids(tokenizer)[:1]
    try:
        with pytest.raises(ValueError, match="add the LoRA update"):
            sample_tokens(peft_model.get_base_model(), prompts, max_new_tokens=2, eos_ids=[-1], pad_id=0)
        with adapter_added_to_base(peft_model) as plain:
            assert len(sample_tokens(plain, prompts, max_new_tokens=2, eos_ids=[-1], pad_id=0)[0]) == 2
    finally:
        peft_model.unload()  # the module-scoped model goes back to plain layers


def test_grpo_rollouts_on_a_cpu_match_trls_own_generation(tiny_model_dir, tmp_path):
    """The trainer's CPU path (`sample_tokens`, LoRA added to the base) and TRL's `generate` path give the same
    completions when sampling is deterministic (top_k 1)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOTrainer

    from trl_smallrl.configs import GRPOConfig
    from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, top_k=1,
                      max_completion_length=10, report_to="none", bf16=False)  # fmt: skip
    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Say {i}."}]} for i in range(4)])
    trainer = SmallRLGRPOTrainer(
        model=tiny_model_dir, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
        train_dataset=prompts, peft_config=LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    )  # fmt: skip
    ids = [trainer._tokenizer.apply_chat_template(p["prompt"], add_generation_prompt=True)["input_ids"]
           for p in prompts for _ in range(2)]  # fmt: skip
    assert trainer._samples_on_cpu(None, {})
    ours, _ = trainer._generate_single_turn(ids, None, {}, 2)
    theirs, _ = GRPOTrainer._generate_single_turn(trainer, ids, None, {}, 2)
    assert ours == theirs and all(len(c) >= 1 for c in ours)


@pytest.mark.parametrize(("temperature", "top_p", "top_k", "candidates"), [
    (1.0, 1.0, 0, 256), (0.7, 0.8, 0, 256), (0.7, 0.8, 0, 2), (1.3, 0.9, 4, 256),
])  # fmt: skip
def test_sampling_draws_transformers_distribution(monkeypatch, temperature, top_p, top_k, candidates):
    """Each row's draws follow the distribution transformers' warpers give (temperature, top-k, then top-p),
    tokens outside it never come, and a nucleus wider than the first candidates is still found whole."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from trl_smallrl import decoding

    monkeypatch.setattr(decoding, "NUCLEUS_CANDIDATES", candidates)
    torch.manual_seed(0)
    logits = torch.randn(3, 12) * 2
    warped = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    if top_p < 1.0:
        warped = TopPLogitsWarper(top_p)(None, warped)
    expected = warped.softmax(-1)
    draws = 20000
    picks = decoding._sample(logits.repeat_interleave(draws, 0), temperature, top_p, top_k).view(3, draws)
    counts = torch.stack([torch.bincount(row, minlength=12) for row in picks]).double()
    assert counts[expected == 0].sum() == 0
    sd = (expected * (1 - expected) / draws).sqrt().double()
    assert ((counts / draws - expected).abs() <= 5 * sd + 1e-9).all()
    if candidates < 12:  # the nucleus is wider than the first candidates: the search had to widen
        assert (expected > 0).sum(-1).max() > candidates


@pytest.mark.parametrize(("shared_prefix", "bf16", "tolerance"),
                         [(True, False, 1e-4), (False, False, 1e-4), (True, True, 1e-2)],
                         ids=["shared-prefix", "trl-scoring", "bf16-autocast"])  # fmt: skip
def test_rollouts_are_on_policy_the_samplers_log_probs_are_the_trainers(tiny_model_dir, tmp_path, monkeypatch,
                                                                         shared_prefix, bf16, tolerance):  # fmt: skip
    """The log-probability the CPU sampler drew each token with (LoRA added into the base, `_Decoder` steps) is
    the one the trainer's loss computes for it (`_get_per_token_logps_and_entropies`, the adapter as PEFT runs it),
    with the group's prompt run once or TRL's plain scoring: the loss's ratio is 1 at the first update. Under bf16
    autocast the sampler computes in bf16 as the trainer's forward does, to bf16's rounding."""
    from datasets import Dataset
    from peft import LoraConfig

    from trl_smallrl import decoding
    from trl_smallrl.configs import GRPOConfig
    from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer

    steps = []  # (logits the sampler drew from, tokens it drew), one pair a decode step
    draw = decoding._sample

    def recording_draw(logits, temperature, top_p, top_k):
        tokens = draw(logits, temperature, top_p, top_k)
        steps.append(((logits.float() / temperature).log_softmax(-1).gather(1, tokens[:, None])[:, 0], tokens))
        return tokens

    monkeypatch.setattr(decoding, "_sample", recording_draw)
    head_dtypes = []  # the dtype the sampler computed in, one a rollout
    lm_head = decoding._lm_head
    monkeypatch.setattr(decoding, "_lm_head", lambda model, dtype: head_dtypes.append(dtype) or lm_head(model, dtype))
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=6, num_generations=3, temperature=0.8,
                      max_completion_length=6, report_to="none", bf16=bf16, use_cpu=True)  # fmt: skip
    prompts = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": text}]} for text in ("Say 1.", "Tell me 22.")]
    )
    trainer = SmallRLGRPOTrainer(
        model=tiny_model_dir, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
        train_dataset=prompts, peft_config=LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    )  # fmt: skip
    if not shared_prefix:
        monkeypatch.setattr(trainer, "_shares_prompts", lambda model: False)
    prompt_ids = [trainer._tokenizer.apply_chat_template(p["prompt"], add_generation_prompt=True)["input_ids"]
                  for p in prompts for _ in range(3)]  # fmt: skip
    torch.manual_seed(0)
    completions, _ = trainer._generate_single_turn(prompt_ids, None, {}, 3)
    assert all(len(c) == 6 for c in completions)  # no row ended early: step t's row r is completion r's token t
    assert head_dtypes == [torch.bfloat16 if bf16 else torch.float32]
    sampler_logps = torch.stack([logps for logps, _ in steps], dim=1)
    assert torch.equal(torch.stack([tokens for _, tokens in steps], dim=1), torch.tensor(completions))

    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[trainer._tokenizer.pad_token_id] * (width - len(p)) + p + c
                        for p, c in zip(prompt_ids, completions)])  # fmt: skip
    mask = torch.tensor([[0] * (width - len(p)) + [1] * (len(p) + 6) for p in prompt_ids])
    with torch.no_grad():
        trainer_logps = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 6)[0]
    torch.testing.assert_close(trainer_logps, sampler_logps, rtol=0, atol=tolerance)


class _FakeVLLM:
    """Stands in for vLLM, which needs a GPU: records each engine's settings and whether the engine before it was
    freed when it started, and the chat template's keyword arguments of each call; every completion is `text`. The
    tokenizer, the prompts and our scoring stay real."""

    def __init__(self, text="<answer>x</answer>"):
        self.engines, self.alive, self.text = [], 0, text

    def module(self):
        import types

        fake = self

        class LLM:
            def __init__(self, **kwargs):
                fake.engines.append({"kwargs": kwargs, "others_alive": fake.alive})
                fake.alive += 1
                self.llm_engine = types.SimpleNamespace(shutdown=lambda: fake.engines[-1].update(shut_down=True))

            def chat(self, conversations, params, use_tqdm, chat_template_kwargs=None):
                fake.engines[-1].update(progress=use_tqdm, chat_template_kwargs=chat_template_kwargs)
                choice = types.SimpleNamespace(text=fake.text, token_ids=[1, 2], finish_reason="stop")
                return [types.SimpleNamespace(outputs=[choice] * params.n) for _ in conversations]

            def __del__(self):
                fake.alive -= 1

        return types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kwargs: types.SimpleNamespace(**kwargs))


def test_vllm_eval_runs_one_engine_at_a_time_sized_from_the_settings(tiny_model_dir, tokenizer, monkeypatch):
    import sys

    from trl_smallrl import generation

    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    monkeypatch.setattr(generation, "_vllm_usable", lambda: True)
    settings = SamplingSettings(num_samples=2, max_new_tokens=50, gpu_memory_utilization=0.4)
    prompts = _prompts(2)
    for _ in range(2):  # two models of one eval, one after the other
        samples = sample(tiny_model_dir, prompts, settings)
        assert [len(s) for s in samples] == [2, 2] and samples[0][0].text == "<answer>x</answer>"
    longest = max(len(tokenizer.apply_chat_template(p, add_generation_prompt=True)["input_ids"]) for p in prompts)
    assert [engine["others_alive"] for engine in fake.engines] == [0, 0]  # the first was freed before the second
    for engine in fake.engines:
        assert engine["kwargs"]["gpu_memory_utilization"] == 0.4
        assert engine["kwargs"]["max_model_len"] == longest + 50
        assert engine["shut_down"] and engine["progress"]


TEMPLATES = Path(trl.__file__).parent / "chat_templates"  # the real templates TRL ships, offline


def _with_template(tiny_model_dir, tmp_path, template: str) -> str:
    """A copy of the tiny model whose tokenizer carries one of the real chat templates TRL ships."""
    import shutil

    from transformers import AutoTokenizer

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / template)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = (TEMPLATES / f"{template}.jinja").read_text()
    tokenizer.save_pretrained(model_dir)
    return str(model_dir)


def test_prompts_are_rendered_with_the_chat_template_kwargs(tiny_model_dir, tmp_path):
    """Qwen3's real template with thinking off: the sampler continues the prompt that ends in the empty think block
    (greedy: its completion is the model's own greedy continuation of that prompt, not of the thinking one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = _with_template(tiny_model_dir, tmp_path, "qwen3")
    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = _prompts(1)[0]

    def greedy_continuation(**kwargs) -> str:
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", **kwargs)
        with torch.no_grad():
            out = model.generate(**ids, do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)

    thinking_off = {"enable_thinking": False}
    assert greedy_continuation(**thinking_off) != greedy_continuation()  # the two prompts lead apart
    greedy = SamplingSettings(num_samples=1, max_new_tokens=6, temperature=0.0, chat_template_kwargs=thinking_off)
    assert [[c.text for c in row] for row in sample(model_dir, [prompt], greedy)] == [
        [greedy_continuation(**thinking_off)]
    ]


def test_vllm_gets_the_chat_template_kwargs_and_sizes_its_context_with_them(tiny_model_dir, tmp_path, monkeypatch):
    import sys

    from transformers import AutoTokenizer

    from trl_smallrl import generation

    model_dir = _with_template(tiny_model_dir, tmp_path, "qwen3")
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    monkeypatch.setattr(generation, "_vllm_usable", lambda: True)
    thinking_off = {"enable_thinking": False}
    prompts = _prompts(2)
    sample(model_dir, prompts, SamplingSettings(num_samples=2, max_new_tokens=50, chat_template_kwargs=thinking_off))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    longest = max(
        len(tokenizer.apply_chat_template(p, add_generation_prompt=True, **thinking_off)["input_ids"]) for p in prompts
    )  # the empty think block makes it longer than the thinking prompt
    (engine,) = fake.engines
    assert engine["chat_template_kwargs"] == thinking_off
    assert engine["kwargs"]["max_model_len"] == longest + 50


def test_completions_start_with_the_templates_think_prefill(tiny_model_dir, tmp_path):
    """R1-Distill's real template opens `<think>` in the prompt: each completion is read with it in front, as GRPO's
    rewards read it; a template without that prefill leaves the model's text alone."""
    settings = SamplingSettings(num_samples=2, max_new_tokens=4, temperature=1.0, seed=0)
    r1 = sample(_with_template(tiny_model_dir, tmp_path, "deepseek_r1_distill"), _prompts(2), settings)
    assert all(c.text.startswith("<think>\n") and c.length <= 4 for row in r1 for c in row)
    assert not any(c.text.startswith("<think>") for row in sample(tiny_model_dir, _prompts(2), settings) for c in row)
