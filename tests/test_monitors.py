"""Reasoning-health metrics, the collapse monitor, the signal checkpoint and the NaN guard."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from trl_smallrl.monitors import (
    HEALTH_COLUMNS,
    CheckpointOnSignal,
    CollapseMonitor,
    NonFiniteError,
    completion_health,
    health_metrics,
)


def test_completion_health_on_crafted_completions(tokenizer):
    think = "first the knight speaks, then the knave"
    n_think = len(tokenizer(think, add_special_tokens=False)["input_ids"])
    assert completion_health(f"<think>{think}</think>\n<answer>A</answer>", tokenizer) == (n_think, False, True)
    assert completion_health("<answer>A is a knight</answer>", tokenizer) == (0, True, False)
    assert completion_health("<think> </think><answer>A</answer>", tokenizer) == (0, True, True)
    assert completion_health(f"<think>{think}", tokenizer) == (n_think, False, False)  # truncated mid-thought
    assert completion_health("", tokenizer) == (0, False, False)


def test_health_metrics_from_a_gathered_table():
    rows = {  # level, correct, think tokens, answer without reasoning, format ok, truncated
        "a": [2, 1.0, 40, 0, 1, 0],
        "b": [2, 0.0, 10, 0, 1, 0],  # format right, answer wrong
        "c": [3, 0.0, 0, 1, 0, 0],  # answer without reasoning
        "d": [3, 1.0, 30, 0, 1, 1],
    }
    assert len(next(iter(rows.values()))) == len(HEALTH_COLUMNS)
    metrics = health_metrics(torch.tensor(list(rows.values()), dtype=torch.float32))
    assert metrics["health/think_length_mean"] == pytest.approx(20.0)
    assert metrics["health/think_length_min"] == 0.0
    assert metrics["health/answer_without_reasoning"] == pytest.approx(0.25)
    assert metrics["health/format_right_but_wrong"] == pytest.approx(0.25)
    assert metrics["health/truncation_rate"] == pytest.approx(0.25)
    assert metrics["health/accuracy"] == pytest.approx(0.5)
    assert metrics["health/accuracy_level_2"] == pytest.approx(0.5)
    assert metrics["health/accuracy_level_3"] == pytest.approx(0.5)

    unknown = torch.tensor([[-1, float("nan"), 5, 0, 1, 1]])  # no task verifier, no level
    assert set(health_metrics(unknown)) == {
        "health/think_length_mean",
        "health/think_length_min",
        "health/answer_without_reasoning",
        "health/truncation_rate",
    }


def _feed(monitor, values):
    state, control = TrainerState(), TrainerControl()
    for step, value in enumerate(values, start=1):
        state.global_step = step
        monitor.on_log(None, state, control, logs={"health/think_length_mean": value})
    return control


def test_collapse_monitor_acts_after_patience(caplog):
    warn = CollapseMonitor(None, fraction=0.5, patience=3, warmup=2, action="warn")
    _feed(warn, [100, 100, 40, 40, 60, 40, 40])  # a recovery resets the count: no collapse yet
    assert warn.collapses == 0
    _feed(warn, [40])
    assert warn.collapses == 1 and "think length" in caplog.text

    stop = CollapseMonitor(None, fraction=0.5, patience=2, warmup=1, action="stop")
    control = _feed(stop, [100, 10, 10])
    assert control.should_training_stop and control.should_save


def test_checkpoint_on_signal_saves_then_stops(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    callback, state, control = CheckpointOnSignal(grace_seconds=0.5), TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    try:
        callback.on_step_end(args, state, control)
        assert not control.should_save
        os.kill(os.getpid(), signal.SIGTERM)
        callback.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop and callback.received == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # the same interruption by another path (torchrun's agent): once
        time.sleep(0.6)
        with pytest.raises(KeyboardInterrupt):  # a second signal after the grace window does not wait
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        callback.on_train_end(args, state, control)
    assert signal.getsignal(signal.SIGTERM) is not callback._handle


def nan_from_step_2(completions, trainer_state, **kwargs):
    """A broken reward: fine for two steps, then NaN."""
    return [float("nan") if trainer_state.global_step >= 2 else float(i % 2) for i in range(len(completions))]


def _tiny_trainer(model_dir, output_dir, reward, max_steps, **extra):
    """A real `SmallRLGRPOTrainer` on the tiny model: 8 prompts, groups of 2, a checkpoint every step."""
    from datasets import Dataset

    from trl_smallrl import configs
    from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer

    peft_config = extra.pop("peft_config", None)
    args = configs.GRPOConfig(
        output_dir=str(output_dir),
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=4,
        max_steps=max_steps,
        save_steps=1,
        report_to="none",
        disable_tqdm=True,
        bf16=False,
        **extra,
    )
    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Hi {i}"}]} for i in range(8)])
    return SmallRLGRPOTrainer(
        model=model_dir, reward_funcs=[reward], args=args, train_dataset=prompts, peft_config=peft_config
    )


@pytest.mark.slow
def test_nan_reward_stops_naming_step_and_reward_and_keeps_good_checkpoints(tiny_model_dir, tmp_path):
    trainer = _tiny_trainer(tiny_model_dir, tmp_path, nan_from_step_2, max_steps=5)
    with pytest.raises(NonFiniteError, match=r"step 3: reward 'nan_from_step_2' returned nan"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    weights = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


def reward_by_parity(completions, **kwargs):
    """Varied rewards, so every step has a gradient."""
    return [float(i % 2) for i in range(len(completions))]


@pytest.mark.slow
def test_collapse_rollback_restores_the_best_checkpoint_weights(tiny_model_dir, tmp_path, caplog):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    trainer = _tiny_trainer(
        tiny_model_dir, tmp_path, reward_by_parity, max_steps=2, learning_rate=0.05, peft_config=lora
    )
    trainer.train()

    def adapter():
        return {k: v.detach().clone() for k, v in trainer.model.named_parameters() if "lora_" in k}

    best = tmp_path / "checkpoint-1"
    trainer.state.best_model_checkpoint = str(best)
    after_step_2 = adapter()
    monitor = CollapseMonitor(trainer, fraction=0.5, patience=2, warmup=1, action="rollback")
    for value in (100, 10):
        monitor.on_log(trainer.args, trainer.state, TrainerControl(), logs={"health/think_length_mean": value})
    assert monitor.collapses == 0
    assert all(torch.equal(after_step_2[k], v) for k, v in adapter().items())  # not yet: patience 2
    monitor.on_log(trainer.args, trainer.state, TrainerControl(), logs={"health/think_length_mean": 10})
    assert monitor.collapses == 1 and "rolling back" in caplog.text
    saved = load_file(best / "adapter_model.safetensors")
    restored = adapter()
    changed = [k for k in restored if not torch.equal(restored[k], after_step_2[k])]
    assert changed, "the rollback left the step-2 weights in place"
    for name, value in saved.items():
        live = next(v for k, v in restored.items() if k.replace(".default", "") == name)
        torch.testing.assert_close(live, value)
