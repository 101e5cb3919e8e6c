"""The GRPO entry point end to end on the tiny model: resume after a kill, and learning (two processes: the
Ctrl-C test of tests/test_run_faults.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.curriculum_run import CURRICULUM_RUN, expected_level


def _recipe(tmp_path: Path, model_dir: str, **overrides) -> Path:
    recipe = {
        "env": {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"},
        "model_name_or_path": model_dir,
        "output_dir": str(tmp_path / "out"),
        **CURRICULUM_RUN,
        "train_size": 16,
        "max_completion_length": 8,
        "max_steps": 6,
        "learning_rate": 1.0e-3,
        "logging_steps": 1,
        "save_steps": 2,
        "report_to": "none",
        "disable_tqdm": True,
        "bf16": False,
        "seed": 0,
    }
    recipe.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def _train_logs(output_dir: Path) -> list[dict]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_resume_after_sigterm_continues_at_the_right_step_and_level(tiny_model_dir, tmp_path):
    recipe = _recipe(tmp_path, tiny_model_dir, max_steps=8, save_steps=2)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "trl_smallrl.grpo", "--config", str(recipe)]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-2").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    log, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, log[-3000:]
    checkpoints = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    stopped_at = checkpoints[-1]
    assert 2 <= stopped_at < 8
    assert (
        json.loads((out / f"checkpoint-{stopped_at}" / "trainer_state.json").read_text())["global_step"] == stopped_at
    )

    result = subprocess.run(
        command + ["--resume_from_checkpoint", "last"], env=_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{stopped_at}'}" in result.stderr
    logs = _train_logs(out)
    assert [entry["step"] for entry in logs] == list(range(1, 9))  # no step lost, none repeated
    assert [entry["curriculum/level"] for entry in logs] == [expected_level(s) for s in range(1, 9)]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 8


def lower_half_tokens(completion_ids, **kwargs):
    """Share of the completion's tokens in the lower half of the vocabulary: the tiny model can learn it fast."""
    return [sum(i < 24_576 for i in ids) / max(len(ids), 1) for ids in completion_ids]


@pytest.mark.slow
def test_mean_reward_rises_within_20_steps(tiny_model_dir, tmp_path):
    """Proves the sign and the advantage plumbing end to end: a learnable reward goes up."""
    from datasets import Dataset

    from trl_smallrl import configs
    from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer

    args = configs.GRPOConfig(
        output_dir=str(tmp_path / "learn"),
        num_generations=8,
        per_device_train_batch_size=16,
        max_completion_length=8,
        learning_rate=3e-2,
        lr_scheduler_type="constant",
        max_steps=20,
        logging_steps=5,
        beta=0.0,
        dynamic_sampling="mask",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        bf16=False,
        seed=0,
    )
    prompts = [{"prompt": [{"role": "user", "content": f"Write anything ({i})."}]} for i in range(64)]
    trainer = SmallRLGRPOTrainer(
        model=tiny_model_dir, reward_funcs=[lower_half_tokens], args=args, train_dataset=Dataset.from_list(prompts)
    )
    trainer.train()
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    assert len(rewards) == 4
    assert rewards[-1] > rewards[0] + 0.15, rewards


def test_push_to_hub_without_a_repository_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    from trl_smallrl.grpo import main

    recipe = _recipe(tmp_path, tiny_model_dir, push_to_hub=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(recipe)])
    assert exit_info.value.code == 2
    assert "hub_model_id: push_to_hub is on but no repository is named" in capsys.readouterr().err
    assert not (tmp_path / "out" / "trainer_state.json").exists()  # stopped before any training
