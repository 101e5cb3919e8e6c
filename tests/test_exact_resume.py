"""Resume is exact: a run interrupted at a checkpoint and resumed logs the same per-step metrics and ends with the same
weights as a run that never stopped (CPU, float32, one seed), for SFT and GRPO, LoRA and full fine-tuning, GRPO with
the curriculum moving up a level and dynamic sampling drawing fresh prompts, and the held-out curve sampled at each
checkpoint.

A run of the reference recipe spans several sittings (`--resume_from_checkpoint last`); a resume that drew other
prompts or another random state would make those sittings a different experiment from the one the recipe describes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from trl_smallrl import grpo, sft

STEPS, CHECKPOINT = 4, 2


def lower_half_tokens(completion_ids, **kwargs):
    """A reward the tiny model's random completions vary on (the K&K verifier scores them all wrong)."""
    return [sum(i < 24_576 for i in ids) / max(len(ids), 1) for ids in completion_ids]


def _recipe(tmp_path: Path, model_dir: str, method: str, peft: bool) -> Path:
    recipe = {
        "model_name_or_path": model_dir,
        "task": "knights_knaves",
        "levels": [2, 3],
        "train_size": 16,
        "eval_size": 2,
        "max_steps": STEPS,
        "learning_rate": 1.0e-3,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": CHECKPOINT,
        "report_to": "none",
        "disable_tqdm": True,
        "bf16": False,
        "seed": 0,
        "use_peft": peft,
        "lora_r": 4,
        "lora_target_modules": "all-linear",
        "heldout_num_samples": 1,  # the held-out curve at each checkpoint samples outside the training's random stream
        "heldout_max_new_tokens": 8,
    }
    if method == "grpo":
        recipe |= {
            "curriculum": "sequential",
            "curriculum_threshold": 1.0,
            "curriculum_window": 1000,
            "curriculum_max_steps": 2,  # level 3 from the checkpoint's step on: the resumed run must draw from it
            "reward_funcs": [f"{__name__}:lower_half_tokens"],
            "dynamic_sampling": "resample",  # every group is all wrong by the verifier: fresh prompts every step
            "dynamic_sampling_max_tries": 1,
            "num_generations": 4,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "max_completion_length": 8,
            "temperature": 1.0,
        }
    else:
        recipe |= {"per_device_train_batch_size": 2, "max_length": 512}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _step_logs(output_dir: Path) -> list[dict]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    timing = ("time", "per_second", "runtime")
    return [
        {k: v for k, v in entry.items() if not any(word in k for word in timing)}
        for entry in state["log_history"]
        if "loss" in entry
    ]


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    (weights,) = output_dir.glob("*.safetensors")
    return load_file(weights)


@pytest.mark.slow
@pytest.mark.parametrize("peft", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("method", ["grpo", "sft"])
def test_a_resumed_run_is_the_run_that_never_stopped(tiny_model_dir, tmp_path, method, peft):
    train = grpo.train if method == "grpo" else sft.train
    recipe = ["--config", str(_recipe(tmp_path, tiny_model_dir, method, peft))]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train([*recipe, "--output_dir", str(straight)])
    # The interruption: a new output folder that holds only the checkpoint, resumed as a user would.
    shutil.copytree(straight / f"checkpoint-{CHECKPOINT}", resumed / f"checkpoint-{CHECKPOINT}")
    train([*recipe, "--output_dir", str(resumed), "--resume_from_checkpoint", "last"])

    whole, after = _step_logs(straight), _step_logs(resumed)
    assert [entry["step"] for entry in whole] == list(range(1, STEPS + 1))
    assert after == whole  # every metric of every step: the resumed state carried the run's history and went on
    for run in (straight, resumed):  # the held-out curve: the starting model, then each checkpoint, once each
        history = json.loads((run / "trainer_state.json").read_text())["log_history"]
        curve = [entry["step"] for entry in history if "heldout/pass@1_level_2" in entry and "heldout/format" in entry]
        assert curve == [0, CHECKPOINT, STEPS]
    if method == "grpo":  # what makes the comparison bite: the level changed and fresh prompts were drawn
        assert [entry["curriculum/level"] for entry in whole] == [2, 2, 3, 3]
        assert all(entry["dynamic_sampling/tries"] == 1 for entry in whole)
    first, last, again = _weights(straight / f"checkpoint-{CHECKPOINT}"), _weights(straight), _weights(resumed)
    moved = max((last[name] - first[name]).abs().max().item() for name in last)
    assert moved > 1e-4  # training after the checkpoint changed the weights, so equal weights below mean something
    for name, tensor in last.items():
        torch.testing.assert_close(again[name], tensor, atol=0, rtol=0, msg=name)
