"""DeepSpeed ZeRO-2 and ZeRO-3, run for real: two gloo processes on the CPU under `accelerate launch`, from the
shipped `accelerate_configs/zero2.yaml` and `zero3.yaml` with only what a CPU needs changed (two processes,
`use_cpu`, no mixed precision).

The GPU recipes name these configs, and no GPU runs in CI: without these runs the ZeRO paths (the curriculum's
checkpoint beside the engine's, the weights gathered at the end of ZeRO-3, the refusals) would only ever be read.
DeepSpeed falls back to gloo on a CPU; its first use compiles its shared-memory comm op (about 90 s, cached under
`~/.cache/torch_extensions`).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.launch import accelerate_launch

pytest.importorskip("deepspeed")  # the `dev` extra brings it; a bare install without it skips these runs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT = 4, 2

WORKER = textwrap.dedent(
    """
    import json, os, sys

    from trl_smallrl.grpo import train

    trainer = train(sys.argv[2:])
    with open(os.path.join(sys.argv[1], f"rank{trainer.accelerator.process_index}.json"), "w") as handle:
        state = {"step": trainer.state.global_step, "level": trainer.curriculum.current_level}
        json.dump({**state, "curriculum": trainer.curriculum.state_dict()}, handle)
    """
)


def _argv(model_dir: str, output_dir: Path, max_steps: int, *extra: str) -> list[str]:
    """The tiny model, full fine-tuning (ZeRO shards the weights themselves), the curriculum moving from 2 to 3 people
    at the checkpoint's step, and an entropy bonus, which gives the random model's rollouts a gradient."""
    return [
        "--model_name_or_path", model_dir, "--output_dir", str(output_dir), "--task", "knights_knaves",
        "--levels", "2", "3", "--train_size", "16", "--eval_size", "2", "--curriculum", "sequential",
        "--curriculum_threshold", "1.0", "--curriculum_window", "1000", "--curriculum_max_steps", str(CHECKPOINT),
        "--reward_funcs", "format", "--dynamic_sampling", "none", "--entropy_coef", "0.5",
        "--num_generations", "4", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
        "--max_steps", str(max_steps), "--learning_rate", "1e-3", "--lr_scheduler_type", "constant",
        "--bf16", "false", "--save_strategy", "steps", "--save_steps", str(CHECKPOINT), "--logging_steps", "1",
        "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", *extra,
    ]  # fmt: skip


def _accelerate_config(tmp_path: Path, name: str) -> Path:
    """A shipped accelerate config with two processes on the CPU, no mixed precision."""
    config = yaml.safe_load((ROOT / "accelerate_configs" / f"{name}.yaml").read_text())
    if config["distributed_type"] == "DEEPSPEED":
        config |= {"num_processes": 2, "use_cpu": True, "mixed_precision": "no"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(tmp_path: Path, config: str, target: list[str], check: bool = True) -> subprocess.CompletedProcess:
    command = accelerate_launch(_accelerate_config(tmp_path, config), *target)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _train(tmp_path: Path, config: str, argv: list[str]) -> list[dict]:
    """Train under `config` and return what each rank reports (its last step, its curriculum)."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    _launch(tmp_path, config, [str(worker), str(output_dir), *argv])
    return [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model.safetensors")


def _assert_same_weights(ours: dict, reference: dict) -> None:
    if (
        "lm_head.weight" in ours.keys() - reference.keys()
    ):  # DeepSpeed's state dict keeps the tied head: the same tensor
        assert torch.equal(ours.pop("lm_head.weight"), ours["model.embed_tokens.weight"])
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert ours[name].shape == tensor.shape, name  # whole, not a rank's shard
        torch.testing.assert_close(ours[name].float(), tensor.float(), rtol=0, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def ddp_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    ranks = _train(tmp, "cpu_multiprocess", _argv(tiny_model_dir, tmp / "out", STEPS))
    return tmp / "out", ranks


def test_zero2_trains_the_same_weights_as_ddp(ddp_run, tiny_model_dir, tmp_path):
    ddp_dir, ddp_ranks = ddp_run
    ranks = _train(tmp_path, "zero2", _argv(tiny_model_dir, tmp_path / "out", STEPS))
    assert ranks[0] == ranks[1] == ddp_ranks[0]  # step, level and the curriculum's draws agree with DDP's
    assert ranks[0]["level"] == 3
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(before[name], tensor) for name, tensor in _weights(ddp_dir).items())  # it trained
    _assert_same_weights(_weights(tmp_path / "out"), _weights(ddp_dir))


def test_zero3_resumes_with_the_curriculum_and_gathers_the_whole_model(ddp_run, tiny_model_dir, tmp_path):
    """ZeRO-3 to the checkpoint, then a new launch resumed from it: the curriculum's level comes back on both ranks,
    and the model saved at the end is whole (gathered from the shards) and equal to DDP's straight run."""
    ddp_dir, ddp_ranks = ddp_run
    out = tmp_path / "out"
    first = _train(tmp_path, "zero3", _argv(tiny_model_dir, out, CHECKPOINT))
    assert first[0] == first[1] and first[0]["step"] == CHECKPOINT and first[0]["level"] == 2  # 3 from step 3 on
    assert (out / f"checkpoint-{CHECKPOINT}").is_dir()
    resumed = _train(tmp_path, "zero3", _argv(tiny_model_dir, out, STEPS, "--resume_from_checkpoint", "last"))
    assert resumed[0] == resumed[1] == ddp_ranks[0]
    _assert_same_weights(_weights(out), _weights(ddp_dir))


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["--resets", '[{"at_step": 1}]', "--use_peft", "true"], "resets:"),
        (["--collapse_action", "rollback"], "collapse_action: rollback"),
    ],
)
def test_refusals_fire_in_one_line_on_every_rank(tiny_model_dir, tmp_path, extra, field):
    argv = _argv(tiny_model_dir, tmp_path / "out", STEPS, *extra)
    result = _launch(tmp_path, "zero2", ["-m", "trl_smallrl.grpo", *argv], check=False)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if field in line]
    assert len(lines) == 2, result.stderr[-3000:]  # one line from each rank, the same
    assert lines[0] == lines[1] and "DeepSpeed ZeRO" in lines[0]
    assert "Traceback" not in result.stderr.split(field)[0]  # nothing deep from TRL before it
    assert not (tmp_path / "out" / "model.safetensors").exists()
