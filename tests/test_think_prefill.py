"""A chat template that opens `<think>` itself (DeepSeek-R1-Distill): the format reward and the think-length
monitor read the template's `<think>` in front of the completion, which holds only `</think>`."""

from __future__ import annotations

import shutil

import pytest
from transformers import AutoTokenizer

from trl_smallrl.completions import template_prefill, with_prefill, without_prefill

R1_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)  # the ending of DeepSeek-R1-Distill's template: the assistant turn opens with `<think>\n`


@pytest.fixture
def r1_like_model(tiny_model_dir, tmp_path):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "r1-like")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = R1_LIKE
    tokenizer.save_pretrained(model_dir)
    return str(model_dir)


def test_the_prefill_is_found_in_the_template_and_only_there(r1_like_model, tokenizer):
    assert template_prefill(AutoTokenizer.from_pretrained(r1_like_model)) == "<think>\n"
    assert template_prefill(tokenizer) == ""  # SmolLM2's template leaves the tags to the model


def test_with_prefill_keeps_the_completions_shape():
    assert with_prefill("a</think>", "<think>\n") == "<think>\na</think>"
    message = [{"role": "assistant", "content": "a</think>"}]
    assert with_prefill(message, "<think>\n") == [{"role": "assistant", "content": "<think>\na</think>"}]
    assert message[0]["content"] == "a</think>"  # TRL's own completion is left as it was
    assert with_prefill(message, "") is message


def test_without_prefill_leaves_what_the_model_writes_after_the_template():
    """The SFT warm-up trains only what follows the prompt: a trace's `<think>` belongs to the prompt of a template
    that prefills it, and `with_prefill` gives the trace back."""
    assert without_prefill("<think>\na</think>", "<think>\n") == "a</think>"
    assert with_prefill(without_prefill("<think>\na</think>", "<think>\n"), "<think>\n") == "<think>\na</think>"
    assert without_prefill("<think>a</think>", "<think>\n") == "a</think>"  # a trace written without the newline
    assert without_prefill("a</think>", "<think>\n") == "a</think>"  # a teacher's text that lacks the prefill
    assert without_prefill("<think>a</think>", "") == "<think>a</think>"  # no prefill: the whole trace


@pytest.mark.parametrize("prefilled", [True, False])
def test_format_and_think_length_count_the_templates_think(r1_like_model, tiny_model_dir, tmp_path, prefilled):
    from datasets import Dataset

    from trl_smallrl.configs import GRPOConfig
    from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer
    from trl_smallrl.rewards import get_reward_funcs

    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=4, report_to="none", bf16=False)  # fmt: skip
    trainer = SmallRLGRPOTrainer(
        model=r1_like_model if prefilled else tiny_model_dir, reward_funcs=get_reward_funcs(["format"]), args=args,
        train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi."}]}] * 2),
    )  # fmt: skip
    trainer.model.train()
    completion = [{"role": "assistant", "content": "two steps of reasoning\n</think>\n<answer>yes</answer>"}]
    inputs = [{"prompt": [{"role": "user", "content": "Hi."}]}] * 2
    ids = [[1, 2, 3]] * 2
    rewards = trainer._calculate_rewards(inputs, [x["prompt"] for x in inputs], [completion] * 2, ids)
    assert rewards[:, 0].tolist() == ([1.0, 1.0] if prefilled else [0.0, 0.0])
    think_length = trainer._metrics["train"]["health/think_length_mean"][-1]
    assert (think_length > 0) == prefilled
