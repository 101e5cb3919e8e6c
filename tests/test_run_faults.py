"""Nothing lost, nothing leaked: kills during a save, tokens, two runs in one folder, faults on one of two ranks.

Real runs of the entry points on the tiny model, in subprocesses where a process must die; two-process runs
launch through `accelerate launch` with `accelerate_configs/cpu_multiprocess.yaml`, as users launch them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.curriculum_run import CURRICULUM_RUN, LEVELS, expected_level
from tests.launch import accelerate_launch
from trl_smallrl.checkpoints import last_complete_checkpoint, resume_checkpoint
from trl_smallrl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CPU_MULTIPROCESS = ROOT / "accelerate_configs" / "cpu_multiprocess.yaml"
TOKEN = "hf_" + "ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210"


def _recipe(tmp_path: Path, model_dir: str, **changes) -> Path:
    recipe = {
        "model_name_or_path": model_dir,
        "output_dir": str(tmp_path / "out"),
        "task": "kk",
        "levels": [2],
        "train_size": 16,
        "curriculum": "off",
        "reward_funcs": ["format", "accuracy"],
        "num_generations": 2,
        "per_device_train_batch_size": 2,
        "max_completion_length": 8,
        "max_steps": 6,
        "save_steps": 1,
        "logging_steps": 1,
        "learning_rate": 1.0e-3,
        "report_to": "none",
        "disable_tqdm": True,
        "bf16": False,
        "seed": 0,
    }
    recipe.update(changes)
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **extra}


def _steps(out: Path) -> list[int]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [entry["step"] for entry in state["log_history"] if "loss" in entry]


def _kill_during_a_save(command: list[str], out: Path, after_step: int) -> None:
    """Start `command` and SIGKILL it the moment a checkpoint past `after_step` starts being written."""
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        names = os.listdir(out) if out.is_dir() else []
        if any(name.startswith((".staging-checkpoint-", "checkpoint-")) and int(name.rsplit("-", 1)[1]) > after_step
               for name in names):  # fmt: skip
            break
    assert process.poll() is None, "the run ended before the kill: nothing was killed during a save"
    process.kill()
    process.wait(timeout=60)


def test_last_skips_a_checkpoint_that_is_not_complete(tmp_path, caplog):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert "skipping" in caplog.text and "checkpoint-6" in caplog.text

    class Args:
        output_dir, resume_from_checkpoint = str(tmp_path), str(tmp_path / "checkpoint-6")

    with pytest.raises(ConfigError, match="resume_from_checkpoint: .*checkpoint-6.* is not a complete checkpoint"):
        resume_checkpoint(Args)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "sft"])
def test_a_kill_during_a_save_leaves_a_run_that_resumes(tiny_model_dir, tmp_path, method):
    """kill -9 while checkpoint-3 is being written; `--resume_from_checkpoint last` then finishes the run with
    no step lost or repeated, and every visible checkpoint is complete."""
    out = tmp_path / "out"
    if method == "grpo":
        recipe = _recipe(tmp_path, tiny_model_dir, max_steps=4)
        command = [sys.executable, "-m", "trl_smallrl.grpo", "--config", str(recipe)]
    else:
        from trl_smallrl.data_tools import traces_main

        traces = tmp_path / "traces.jsonl"
        traces_main(["--task", "kk", "--levels", "2", "--size", "16", "--out", str(traces)])
        command = [sys.executable, "-m", "trl_smallrl.sft", "--model_name_or_path", tiny_model_dir,
                   "--traces_file", str(traces), "--output_dir", str(out), "--max_steps", "4", "--save_steps", "1",
                   "--per_device_train_batch_size", "2", "--logging_steps", "1", "--report_to", "none",
                   "--bf16", "false", "--gradient_checkpointing", "false"]  # fmt: skip
    _kill_during_a_save(command, out, after_step=2)
    assert all((folder / "trainer_state.json").is_file() for folder in out.glob("checkpoint-*"))
    result = subprocess.run(
        command + ["--resume_from_checkpoint", "last"], env=_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _steps(out) == [1, 2, 3, 4]
    assert not list(out.glob(".staging-*"))  # a staged save killed midway is cleaned up by the next save


@pytest.mark.slow
def test_no_token_reaches_the_run_folder(tiny_model_dir, tmp_path, monkeypatch):
    """A token in the recipe (`hub_token`) and in the environment never reaches a file of the run: not the
    saved config, not `training_args.bin` (a pickle of the arguments) in the folder or its checkpoints."""
    from trl_smallrl import grpo

    monkeypatch.setenv("HF_TOKEN", TOKEN[::-1])
    recipe = _recipe(tmp_path, tiny_model_dir, max_steps=2, hub_token=TOKEN, run_name=f"run-{TOKEN}")
    grpo.train(["--config", str(recipe)])
    files = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in files)
    for path in files:
        data = path.read_bytes()
        assert TOKEN.encode() not in data and TOKEN[::-1].encode() not in data, path


@pytest.mark.slow
def test_a_second_run_into_a_busy_output_dir_is_refused(tiny_model_dir, tmp_path, capsys):
    from trl_smallrl import grpo

    first = subprocess.Popen(
        [sys.executable, "-m", "trl_smallrl.grpo", "--config", str(_recipe(tmp_path, tiny_model_dir, max_steps=500))],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "out" / "checkpoint-1").is_dir() and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(SystemExit) as exit_info:
            grpo.main(["--config", str(_recipe(tmp_path, tiny_model_dir, max_steps=1))])
        assert exit_info.value.code == 2
        assert "output_dir: another run is writing to" in capsys.readouterr().err
    finally:
        first.kill()
        first.wait(timeout=60)
    # A run that died holds nothing: the folder is free again.
    grpo.train(["--config", str(_recipe(tmp_path, tiny_model_dir, max_steps=1)), "--resume_from_checkpoint", "last"])


NAN_WORKER = """
import json, os, sys

import torch

from trl_smallrl import grpo, run
from trl_smallrl.configs import GRPOConfig, GRPOScriptArguments
from trl_smallrl.errors import RunStopped
from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer
from trl import ModelConfig


class NaNOnRank1(SmallRLGRPOTrainer):
    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        if self.accelerator.process_index == 1 and self.state.global_step == 1:
            return loss * float("nan")
        return loss


def build(script_args, training_args, model_args):
    return grpo.build_trainer(script_args, training_args, model_args, trainer_class=NaNOnRank1)


try:
    run.train(sys.argv[2:], (GRPOScriptArguments, GRPOConfig, ModelConfig), build)
    message = "finished"
except RunStopped as err:
    message = str(err)
rank = int(os.environ["RANK"])
with open(os.path.join(sys.argv[1], f"rank{rank}.txt"), "w") as handle:
    handle.write(message)
"""


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_both_with_the_same_message(tiny_model_dir, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(NAN_WORKER)
    recipe = _recipe(tmp_path, tiny_model_dir)
    command = accelerate_launch(CPU_MULTIPROCESS, str(worker), str(tmp_path), "--config", str(recipe))
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]  # both ranks stopped and returned: no hang
    messages = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert messages[0] == messages[1]
    assert messages[0].startswith("step 2: the loss is nan on rank(s) [1]; stopping before the backward pass")
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-1"]


@pytest.mark.slow
def test_ctrl_c_under_torchrun_saves_a_checkpoint_on_both_ranks(tiny_model_dir, tmp_path):
    """A terminal's Ctrl-C reaches the launcher and both workers, and the launcher forwards it once more: the
    workers must count it once, save at the same step and stop; the run then resumes exactly, the two ranks agreeing
    on the curriculum's level at every step, before and after the resume."""
    out, steps = tmp_path / "out", 10
    recipe = _recipe(tmp_path, tiny_model_dir, max_steps=steps, save_steps=100, **CURRICULUM_RUN)
    command = accelerate_launch(CPU_MULTIPROCESS, "-m", "trl_smallrl.grpo", "--config", str(recipe))
    launcher = subprocess.Popen(
        command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    watchdog = threading.Timer(300, launcher.kill)
    watchdog.start()
    lines = []
    for line in launcher.stdout:  # the console's line of step 1: training runs, the signal handler is in place
        lines.append(line)
        if line.startswith("step 1/"):
            break
    os.killpg(launcher.pid, signal.SIGINT)  # what a terminal does: the whole foreground process group
    log = "".join(lines) + launcher.communicate(timeout=300)[0]
    watchdog.cancel()
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1, log[-3000:]
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 1 <= stopped_at < steps
    assert {p.name for p in checkpoints[0].glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    saved = json.loads((checkpoints[0] / "curriculum_state.json").read_text())
    # Two ranks really ran: each step recorded one prompt (4 completions / 4 generations) from each rank.
    assert saved["levels"] == LEVELS and sum(len(r) for r in saved["results"].values()) == 2 * stopped_at
    result = subprocess.run(
        accelerate_launch(
            CPU_MULTIPROCESS, "-m", "trl_smallrl.grpo", "--config", str(recipe), "--resume_from_checkpoint", "last"
        ),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {checkpoints[0]}" in result.stderr
    logs = [entry for entry in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in logs] == list(range(1, steps + 1))
    assert all(entry["curriculum/levels_agree"] == 1.0 for entry in logs)
    assert [entry["curriculum/level"] for entry in logs] == [expected_level(s) for s in range(1, steps + 1)]
    for entry in logs:  # health metrics over the gathered batch of both ranks
        assert 0.0 <= entry["health/truncation_rate"] <= 1.0 and "health/think_length_mean" in entry
    config = json.loads((out / "smallrl_config.json").read_text())
    assert config["dynamic_sampling"] == "mask" and config["reward_funcs"] == ["format", "accuracy", "cosine"]
