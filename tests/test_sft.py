"""SFT warm-up: real TRL SFTTrainer on the tiny model; the loss falls and only assistant tokens are learned."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trl

from trl_smallrl import sft
from trl_smallrl.errors import ConfigError
from trl_smallrl.models import MERGED_SUBDIR, resolve_model

SYSTEM = "Answer in <think>...</think> then <answer>...</answer>."


def _write_traces(path, n=8):
    """Conversations in the format `smallrl-traces` writes."""
    with open(path, "w") as f:
        for i in range(n):
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Who is {i}?"},
                {
                    "role": "assistant",
                    "content": f"<think>{i} is a knight.</think>\n<answer>(1) {i} is a knight</answer>",
                },
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def _argv(tiny_model_dir, traces, out, *extra):
    return [
        "--model_name_or_path", tiny_model_dir,
        "--traces_file", str(traces),
        "--output_dir", str(out),
        "--max_steps", "12",
        "--per_device_train_batch_size", "4",
        "--learning_rate", "5e-3",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--report_to", "none",
        "--gradient_checkpointing", "false",
        "--bf16", "false",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("sft")
    traces = _write_traces(tmp / "traces.jsonl")
    argv = _argv(
        tiny_model_dir, traces, tmp / "out", "--use_peft", "--lora_r", "8", "--lora_target_modules", "all-linear"
    )
    return sft.train(argv), tmp / "out"


def test_sft_lowers_the_loss(lora_run):
    trainer, _ = lora_run
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3  # a random 2-layer model: ~10.8 -> ~10.1
    accuracy = [entry["mean_token_accuracy"] for entry in trainer.state.log_history if "loss" in entry]
    assert accuracy[-1] > accuracy[0] + 0.3


def test_only_assistant_tokens_have_labels(lora_run, tokenizer):
    trainer, _ = lora_run
    example = trainer.train_dataset[0]
    batch = trainer.data_collator([example])
    labels = batch["labels"][0]
    learned = labels[labels != -100]
    text = tokenizer.decode(learned)
    # The whole trace and the end of the turn are learned; the system and user turns never are.
    assert text.startswith("<think>0 is a knight.</think>\n<answer>(1) 0 is a knight</answer>")
    assert text.endswith("<|im_end|>") or text.endswith("<|im_end|>\n")
    masked = tokenizer.decode(batch["input_ids"][0][labels == -100])
    assert SYSTEM in masked and "Who is 0?" in masked and "0 is a knight" not in masked
    assert masked.endswith("<|im_start|>assistant\n")


def test_adapter_output_resolves_to_float32_merged_model(lora_run, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, out = lora_run
    merged_dir = resolve_model(str(out))
    assert merged_dir.endswith(MERGED_SUBDIR)
    assert resolve_model(str(out)) == merged_dir  # cached: the second call reuses the merge
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.dtype == torch.float32
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, atol=1e-5, rtol=1e-5)
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
    assert not torch.allclose(merged(ids).logits, base_logits)  # the adapter really is in the weights


def test_traces_file_without_assistant_turns_is_a_config_error(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "answer": "x"}) + "\n")
    with pytest.raises(ConfigError, match="traces_file"):
        sft.train(_argv(tiny_model_dir, bad, tmp_path / "out"))


def test_full_fine_tuning_writes_a_full_model(tmp_path, tiny_model_dir):
    traces = _write_traces(tmp_path / "traces.jsonl", n=4)
    argv = _argv(tiny_model_dir, traces, tmp_path / "out")
    argv[argv.index("--max_steps") + 1] = "2"
    trainer = sft.train(argv)
    assert not hasattr(trainer.model, "peft_config")
    assert (tmp_path / "out" / "config.json").is_file() and not (tmp_path / "out" / "adapter_config.json").exists()
    assert resolve_model(str(tmp_path / "out")) == str((tmp_path / "out").resolve())


@pytest.mark.slow
def test_sft_resumes_after_sigterm_from_the_last_checkpoint(tiny_model_dir, tmp_path):
    """The run loop SFT shares with GRPO: SIGTERM saves a checkpoint and exits 143; `last` resumes it exactly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    traces, out = _write_traces(tmp_path / "traces.jsonl"), tmp_path / "out"
    argv = _argv(tiny_model_dir, traces, out, "--save_strategy", "steps", "--save_steps", "2")
    argv[argv.index("--max_steps") + 1] = "12"
    command = [sys.executable, "-m", "trl_smallrl.sft", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-2").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    log, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, log[-3000:]
    stopped_at = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert 2 <= stopped_at < 12
    assert (
        json.loads((out / f"checkpoint-{stopped_at}" / "trainer_state.json").read_text())["global_step"] == stopped_at
    )

    result = subprocess.run(
        command + ["--resume_from_checkpoint", "last"], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{stopped_at}'}" in result.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == list(range(1, 13))


TEMPLATES = Path(trl.__file__).parent / "chat_templates"  # the real templates TRL ships, for offline tests
TRACE = "<think>0 is a knight.</think>\n<answer>(1) 0 is a knight</answer>"  # trace 0 of `_write_traces`


@pytest.mark.parametrize(
    ("template", "kwargs", "trained"),
    [
        ("qwen3", {"enable_thinking": True}, TRACE + "<|im_end|>\n"),
        ("qwen3", {"enable_thinking": False}, TRACE + "<|im_end|>\n"),
        ("deepseek_r1_distill", None, TRACE.removeprefix("<think>") + "<｜end▁of▁sentence｜>"),
    ],
    ids=["qwen3-thinking", "qwen3-no-thinking", "r1-distill"],
)
def test_sft_trains_what_grpo_samples_after_its_prompt(tiny_model_dir, tmp_path, caplog, template, kwargs, trained):
    """The real Qwen3 and R1-Distill templates on the tiny model: the SFT sequence is GRPO's prompt ids, as TRL's GRPO
    tokenizes them with the recipe's `chat_template_kwargs`, then the trained tokens, which are the whole trace (its
    own `<think>` after Qwen3's empty think block; after R1's `<think>\n` prefill, the reasoning) and the turn's end.

    TRL's own rendering departs from this: Qwen3's template moves the reasoning into its think block, so with thinking
    off the conversation lacks the prompt's empty block and the trained tokens started inside the reasoning; R1's
    drops the reasoning."""
    import shutil

    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import ModelConfig

    from trl_smallrl.completions import has_strict_format, template_prefill, with_prefill
    from trl_smallrl.configs import GRPOConfig, SFTConfig, SFTScriptArguments
    from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer
    from trl_smallrl.recipe import parse_recipe
    from trl_smallrl.rewards import get_reward_funcs

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / template)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = (TEMPLATES / f"{template}.jinja").read_text()
    tokenizer.save_pretrained(model_dir)
    traces = _write_traces(tmp_path / "traces.jsonl", n=2)
    extra = ["--chat_template_kwargs", json.dumps(kwargs)] if kwargs else []
    with caplog.at_level(logging.WARNING):
        trainer = sft.build_trainer(
            *parse_recipe(
                (SFTScriptArguments, SFTConfig, ModelConfig), _argv(str(model_dir), traces, tmp_path / "out", *extra)
            )
        )
    ids, labels = trainer.train_dataset[0]["input_ids"], trainer.train_dataset[0]["labels"]
    start = next(i for i, label in enumerate(labels) if label != -100)
    assert labels[start:] == ids[start:]  # everything after the prompt is learned, the end of the turn included

    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Who is 0?"}]  # trace 0's
    grpo = SmallRLGRPOTrainer(
        model=str(model_dir), reward_funcs=get_reward_funcs(["format"]),
        train_dataset=Dataset.from_list([{"prompt": prompt}] * 2),
        args=GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=2, num_generations=2,
                        max_completion_length=4, report_to="none", bf16=False, chat_template_kwargs=kwargs),
    )  # fmt: skip
    (grpo_prompt,), _, _ = grpo._tokenize_prompts([prompt])
    assert ids[:start] == grpo_prompt  # GRPO's prompt + SFT's trained completion == SFT's whole sequence
    assert tokenizer.decode(ids[start:]) == trained
    assert "not a prefix" not in caplog.text  # TRL never had to guess where the completion starts
    # What GRPO's format reward reads of this completion (the template's prefill put back in front) is in format.
    prefill = template_prefill(tokenizer, kwargs)
    assert has_strict_format(with_prefill(tokenizer.decode(ids[start:], skip_special_tokens=True), prefill)
                             .removesuffix("<｜end▁of▁sentence｜>"))  # fmt: skip
    if kwargs == {"enable_thinking": False}:
        assert tokenizer.decode(ids).endswith("assistant\n<think>\n\n</think>\n\n" + trained)
