"""The held-out curve keeps the best checkpoint: with `metric_for_best_model` naming a curve metric, each point records
the best step as the Trainer's own evaluation would, so rotation under `save_total_limit` keeps that checkpoint and
trainer_state.json names it (a long RL run can peak and then decline: the reference run's 3-person pass@1 did)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from transformers import TrainerState

from trl_smallrl import grpo
from trl_smallrl.configs import GRPOConfig
from trl_smallrl.heldout import record_best


def test_the_best_point_is_the_first_to_reach_the_highest_value(tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path), metric_for_best_model="heldout/pass@1", report_to="none", bf16=False)
    state = TrainerState()
    for step, value in [(5, 0.2), (10, 0.5), (15, 0.5), (20, 0.4), (25, None)]:
        state.global_step = step
        record_best(args, state, value)
    assert (state.best_global_step, state.best_metric) == (10, 0.5)

    args = GRPOConfig(
        output_dir=str(tmp_path),
        metric_for_best_model="heldout/pass@1",
        greater_is_better=False,
        report_to="none",
        bf16=False,
    )
    state = TrainerState()
    for step, value in [(5, 0.2), (10, 0.5), (15, 0.1)]:
        state.global_step = step
        record_best(args, state, value)
    assert (state.best_global_step, state.best_metric) == (15, 0.1)


def test_rotation_keeps_the_best_held_out_checkpoint(tiny_model_dir, tmp_path):
    recipe = {
        "model_name_or_path": tiny_model_dir,
        "output_dir": str(tmp_path / "run"),
        "task": "knights_knaves",
        "levels": [2],
        "train_size": 8,
        "eval_size": 2,
        "reward_funcs": ["accuracy_binary"],
        "num_generations": 2,
        "per_device_train_batch_size": 2,
        "max_completion_length": 8,
        "max_steps": 3,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 1,
        "save_total_limit": 2,
        "heldout_num_samples": 1,
        "heldout_max_new_tokens": 8,
        "metric_for_best_model": "heldout/pass@1",
        "report_to": "none",
        "disable_tqdm": True,
        "bf16": False,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    grpo.train(["--config", str(path)])

    run = Path(recipe["output_dir"])
    state = json.loads((run / "trainer_state.json").read_text())
    points = [e["heldout/pass@1"] for e in state["log_history"] if "heldout/pass@1" in e and e["step"] > 0]
    assert len(points) == 3
    best_step = 1 + points.index(max(points))  # the first of the highest (a tiny random model scores 0 at each)
    assert state["best_global_step"] == best_step and state["best_metric"] == max(points)
    assert Path(state["best_model_checkpoint"]) == run / f"checkpoint-{best_step}"
    kept = sorted(p.name for p in run.glob("checkpoint-*"))
    assert best_step < 2 and kept == [f"checkpoint-{best_step}", "checkpoint-3"]  # the limit alone keeps 2 and 3
