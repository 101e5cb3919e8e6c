"""SFT warm-up: real TRL SFTTrainer on the tiny model; the loss falls and only assistant tokens are learned."""

from __future__ import annotations

import json

import pytest

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
    argv[argv.index("--max_steps") + 1] = "40"
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
    assert 2 <= stopped_at < 40
    assert (
        json.loads((out / f"checkpoint-{stopped_at}" / "trainer_state.json").read_text())["global_step"] == stopped_at
    )

    result = subprocess.run(
        command + ["--resume_from_checkpoint", "last"], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{stopped_at}'}" in result.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == list(range(1, 41))


THINKING_SWITCH = (
    "{% set off = enable_thinking is defined and enable_thinking is false %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and off %}<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if off %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)  # the part of Qwen3's template that `enable_thinking: false` changes: an empty think block opens the answer


@pytest.mark.parametrize("thinking", [None, "false"])
def test_chat_template_kwargs_reach_the_rendered_traces(tiny_model_dir, tmp_path, thinking):
    """`chat_template_kwargs` (Qwen3 recipes: thinking off) render the SFT prompt as GRPO's rollouts will see it."""
    import shutil

    from transformers import AutoTokenizer
    from trl import ModelConfig

    from trl_smallrl.configs import SFTConfig, SFTScriptArguments
    from trl_smallrl.recipe import parse_recipe

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = THINKING_SWITCH
    tokenizer.save_pretrained(model_dir)
    extra = ["--chat_template_kwargs", json.dumps({"enable_thinking": False})] if thinking else []
    argv = _argv(str(model_dir), _write_traces(tmp_path / "traces.jsonl", n=2), tmp_path / "out", *extra)
    trainer = sft.build_trainer(*parse_recipe((SFTScriptArguments, SFTConfig, ModelConfig), argv))
    text = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    # Thinking off: the template's empty think block opens the answer, before the trace's own reasoning.
    assert ("assistant\n<think>\n\n</think>\n\n<think>0 is a knight." in text) == bool(thinking)
    assert "assistant\n<think>0 is a knight." in text or thinking
