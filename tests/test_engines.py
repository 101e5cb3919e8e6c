"""Combinations that cannot train right are refused at launch in one line; the fix (float32 weights) learns.

The engine of a launch reaches the processes through accelerate's environment variables, which these tests set
as `accelerate launch` would; no GPU is needed to see a refusal.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trl
from datasets import Dataset

from trl_smallrl.configs import GRPOConfig
from trl_smallrl.engines import check_engine_combinations, engine
from trl_smallrl.errors import ConfigError
from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer


def _args(**fields):
    return SimpleNamespace(**{"deepspeed": None, "fsdp": None, "resets": None, "collapse_action": "warn", **fields})


def test_half_precision_full_fine_tune_is_refused_without_master_weights(monkeypatch):
    model = trl.ModelConfig(model_name_or_path="/nowhere", dtype="bfloat16", use_peft=False)
    with pytest.raises(ConfigError, match=r"dtype: bfloat16 with full fine-tuning .* set dtype: float32"):
        check_engine_combinations(_args(), model)
    check_engine_combinations(_args(), trl.ModelConfig(model_name_or_path="/nowhere", dtype="bfloat16", use_peft=True))
    check_engine_combinations(_args(), trl.ModelConfig(model_name_or_path="/nowhere", dtype="float32"))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # ZeRO keeps float32 master weights
    assert engine(_args()) == "deepspeed"
    check_engine_combinations(_args(), model)


def test_auto_dtype_reads_the_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text('{"dtype": "bfloat16"}')
    with pytest.raises(
        ConfigError, match=r"dtype: auto with full fine-tuning \(use_peft: false\) trains bfloat16 weights"
    ):
        check_engine_combinations(_args(), trl.ModelConfig(model_name_or_path=str(tmp_path), dtype="auto"))


@pytest.mark.parametrize(
    ("variable", "where"), [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed ZeRO"), ("ACCELERATE_USE_FSDP", "FSDP")]
)
def test_resets_and_rollback_are_refused_under_sharding_engines(monkeypatch, variable, where):
    monkeypatch.setenv(variable, "true")
    lora = trl.ModelConfig(model_name_or_path="/nowhere", dtype="float32", use_peft=True)
    with pytest.raises(ConfigError, match=rf"resets: hard resets are not supported under {where}"):
        check_engine_combinations(_args(resets="[{at_step: 10}]"), lora)
    with pytest.raises(ConfigError, match=rf"collapse_action: rollback is not supported under {where}"):
        check_engine_combinations(_args(collapse_action="rollback"), lora)
    check_engine_combinations(_args(collapse_action="stop"), lora)


def test_the_grpo_entry_point_refuses_bf16_weights_before_loading(tmp_path, tiny_model_dir, capsys):
    from trl_smallrl import grpo

    argv = ["--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path / "out"), "--dtype", "bfloat16",
            "--cpu_precision", "bf16", "--task", "kk", "--levels", "2", "--train_size", "4", "--max_steps", "1"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        grpo.main(argv)
    assert exit_info.value.code == 2
    assert "error: dtype: bfloat16 with full fine-tuning" in capsys.readouterr().err


def test_recipe_check_rejects_a_pure_bf16_full_fine_tune(tmp_path):
    from tools.check_recipes import check_recipe

    folder = tmp_path / "recipes" / "m" / "grpo"
    folder.mkdir(parents=True)
    recipe = folder / "bad.yaml"
    recipe.write_text(
        "# hardware: 1 x RTX 3090 (24 GB)\n# num_processes: 1\n# gpu_memory_gb: 24\n# memory_per_gpu: estimate\n"
        "# wall_time: estimate\n# launch: accelerate launch --config_file accelerate_configs/single_gpu.yaml\n"
        "model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct\ndtype: bfloat16\nbf16: true\ntask: kk\nlevels: [2]\n"
        "num_generations: 8\nper_device_train_batch_size: 8\n"
    )
    with pytest.raises(ConfigError, match="dtype: bfloat16 with full fine-tuning"):
        check_recipe(recipe)
    recipe.write_text(recipe.read_text().replace("single_gpu.yaml", "zero2.yaml"))
    with pytest.raises(ConfigError, match="write '# memory_per_gpu"):  # past the dtype check: ZeRO-2 keeps masters
        check_recipe(recipe)


def _weights_changed(model_dir: str, tmp_path, dtype: str) -> float:
    """Share of parameters that moved in 2 GRPO steps of a full fine-tune at lr 1e-6 (the GRPO recipes' rate)."""

    def longer_is_better(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path / dtype),
        model_init_kwargs={"dtype": dtype},
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-6,
        max_steps=2,
        save_strategy="no",
        report_to="none",
        bf16=False,
        seed=0,
    )
    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Count to {i}."}]} for i in range(8)])
    trainer = SmallRLGRPOTrainer(model=model_dir, reward_funcs=longer_is_better, args=args, train_dataset=prompts)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = sum(int((after[name] != value).sum()) for name, value in before.items())
    return moved / sum(value.numel() for value in before.values())


@pytest.mark.slow
def test_float32_weights_learn_at_a_small_learning_rate_where_bf16_weights_do_not(tiny_model_dir, tmp_path):
    assert _weights_changed(tiny_model_dir, tmp_path, "float32") > 0.5
    assert _weights_changed(tiny_model_dir, tmp_path, "bfloat16") < 0.05  # what the refusal protects against


@pytest.mark.parametrize(("dtype", "bound"), [("float32", 1e-6), ("bfloat16", None)])
def test_lora_merge_unmerge_cycles_drift_only_on_a_half_precision_base(dtype, bound):
    """What a vLLM weight sync does to a LoRA base every step (TRL merges the adapter in, then out): in float32
    the base stays put (the recipes' choice), in bf16 it drifts, hence the launch warning."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64)).to(getattr(torch, dtype))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["0"], init_lora_weights=False))
    layer = peft_model.base_model.model[0]
    original = layer.base_layer.weight.detach().float().clone()
    for _ in range(100):
        layer.merge()
        layer.unmerge()
    drift = (layer.base_layer.weight.detach().float() - original).abs().max().item()
    if bound is not None:
        assert drift < bound
    else:
        assert drift > 1e-3  # bf16 keeps 8 mantissa bits: 100 syncs move the base weights visibly
