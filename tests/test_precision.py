"""Precision follows the hardware: bf16 on a CPU only where the processor runs it natively, a GPU keeps the recipe.

The processor's answer is what these tests vary: this machine gives one of the two (an AMD EPYC without native
bf16, or a Xeon with it), so the other is supplied by replacing `precision.cpu_info`, and a GPU, absent here,
by replacing `precision.accelerator_name`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import trl

from trl_smallrl import precision
from trl_smallrl.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "smollm2-135m-instruct"
WITHOUT_BF16 = precision.CPUInfo("Test CPU", avx512_bf16=False, amx=False, amx_fp16=False, vector="AVX2")
WITH_BF16 = precision.CPUInfo("Test CPU", avx512_bf16=True, amx=True, amx_fp16=False, vector="AVX512")


@pytest.fixture
def cpu(monkeypatch):
    """Set the CPU the decision sees; no GPU. Each test hears every precision line afresh (they are said once)."""
    precision._say.cache_clear()

    def use(info: precision.CPUInfo) -> None:
        monkeypatch.setattr(precision, "cpu_info", lambda: info)
        monkeypatch.setattr(precision, "accelerator_name", lambda: None)

    return use


def _args(use_cpu=True, bf16=True, fp16=False, cpu_precision="auto"):
    return SimpleNamespace(
        use_cpu=use_cpu, bf16=bf16, fp16=fp16, cpu_precision=cpu_precision, mixed_precision="bf16" if bf16 else "no"
    )


@pytest.mark.parametrize(
    ("info", "mode", "bf16", "dtype", "expected"),
    [
        # CPU without native bf16: float32 unless the recipe insists.
        (WITHOUT_BF16, "auto", True, "float32", (False, "no", "float32")),
        (WITHOUT_BF16, "auto", True, "bfloat16", (False, "no", "float32")),
        (WITHOUT_BF16, "auto", False, "auto", (False, "no", "float32")),
        (WITHOUT_BF16, "bf16", True, "bfloat16", (True, "bf16", "bfloat16")),
        # CPU with native bf16: the recipe's choice, unless fp32 is forced.
        (WITH_BF16, "auto", True, "bfloat16", (True, "bf16", "bfloat16")),
        (WITH_BF16, "auto", False, "float32", (False, "no", "float32")),
        (WITH_BF16, "fp32", True, "bfloat16", (False, "no", "float32")),
    ],
)
def test_cpu_decision(cpu, info, mode, bf16, dtype, expected):
    cpu(info)
    args, model_args = _args(bf16=bf16, cpu_precision=mode), trl.ModelConfig(dtype=dtype)
    line = precision.decide_training_precision(args, model_args)
    assert (args.bf16, args.mixed_precision, model_args.dtype) == expected
    assert line.startswith("precision: CPU Test CPU") and "\n" not in line
    assert ("no AVX512-BF16, no AMX" in line) == (info is WITHOUT_BF16)


def test_cpu_without_bf16_line_says_how_to_keep_it(cpu, caplog):
    cpu(WITHOUT_BF16)
    with caplog.at_level(logging.INFO, logger="trl_smallrl"):
        line = precision.decide_training_precision(_args(bf16=True), trl.ModelConfig(dtype="float32"))
    assert "training in float32" in line and "cpu_precision: bf16" in line
    assert line in caplog.messages


def test_insisting_on_bf16_without_native_support_warns_with_its_cost(cpu, caplog):
    cpu(WITHOUT_BF16)
    with caplog.at_level(logging.INFO, logger="trl_smallrl"):
        precision.decide_training_precision(_args(bf16=True, cpu_precision="bf16"), trl.ModelConfig(dtype="float32"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "emulated" in warnings[0] and "slower than float32" in warnings[0]


@pytest.mark.parametrize("info", [WITHOUT_BF16, WITH_BF16])
def test_gpu_keeps_the_recipe_choice(monkeypatch, info):
    monkeypatch.setattr(precision, "cpu_info", lambda: info)
    monkeypatch.setattr(precision, "accelerator_name", lambda: "NVIDIA GeForce RTX 3090")
    args, model_args = _args(use_cpu=False, bf16=True, cpu_precision="fp32"), trl.ModelConfig(dtype="bfloat16")
    line = precision.decide_training_precision(args, model_args)
    assert (args.bf16, args.mixed_precision, model_args.dtype) == (True, "bf16", "bfloat16")
    assert line.startswith("precision: NVIDIA GeForce RTX 3090: as the recipe asks (bf16 autocast")


def test_inference_dtype(cpu, monkeypatch, caplog):
    cpu(WITHOUT_BF16)
    assert precision.inference_dtype("auto") == torch.float32
    with caplog.at_level(logging.WARNING, logger="trl_smallrl"):
        assert precision.inference_dtype("bfloat16") == torch.bfloat16
    assert any("emulated" in message for message in caplog.messages)
    monkeypatch.setattr(precision, "accelerator_name", lambda: "NVIDIA A40")
    assert precision.inference_dtype("auto") == torch.bfloat16


def test_a_cpu_decode_computes_in_bf16_only_where_the_processor_has_it(cpu):
    """Eval on a CPU keeps float32 weights; its matmuls run in bf16 where that is native, never where emulated."""
    cpu(WITHOUT_BF16)
    assert precision.decode_compute_dtype("auto") is None
    cpu(WITH_BF16)
    assert precision.decode_compute_dtype("auto") == torch.bfloat16
    assert precision.decode_compute_dtype("float32") is None


def test_unknown_cpu_precision_is_one_line(tmp_path):
    from trl_smallrl.configs import GRPOConfig, GRPOScriptArguments
    from trl_smallrl.recipe import parse_recipe

    with pytest.raises(ConfigError, match=r"cpu_precision: unknown value 'half'.*Valid values: auto, bf16, fp32"):
        parse_recipe(
            (GRPOScriptArguments, GRPOConfig, trl.ModelConfig),
            ["--output_dir", str(tmp_path), "--cpu_precision", "half"],
        )


@pytest.mark.slow
def test_embedded_grpo_recipe_trains_in_float32_on_a_cpu_without_bf16(cpu, tiny_model_dir, tmp_path):
    """The default recipe asks for bf16; on a CPU that emulates it the run trains with no autocast, fp32 weights."""
    from trl_smallrl import grpo

    cpu(WITHOUT_BF16)
    recipe = RECIPES / "grpo" / "kk_curriculum.yaml"
    assert "bf16: true" in recipe.read_text()  # the recipe does ask: the test would say nothing otherwise
    out = tmp_path / "grpo"
    trainer = grpo.train(
        ["--config", str(recipe), "--model_name_or_path", tiny_model_dir, "--output_dir", str(out)]
        + ["--max_steps", "1", "--train_size", "8", "--max_completion_length", "16"]
    )
    assert trainer.accelerator.mixed_precision == "no"
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    saved = json.loads((out / "smallrl_config.json").read_text())
    assert saved["bf16"] is False and saved["dtype"] == "float32"
    assert trainer.state.global_step == 1


@pytest.mark.slow
def test_cpu_precision_bf16_runs_where_bf16_is_emulated(cpu, tiny_model_dir, tmp_path):
    """`cpu_precision: bf16` keeps bf16 on a CPU without native support, as the README promises: the rollouts' LM
    head must not take oneDNN's bf16 path, which raises on such CPUs (AVX2: "mkldnn_linear: bf16 path needs ...")."""
    from trl_smallrl import grpo

    cpu(WITHOUT_BF16)
    trainer = grpo.train(
        ["--config", str(RECIPES / "grpo" / "kk_curriculum.yaml"), "--model_name_or_path", tiny_model_dir]
        + ["--output_dir", str(tmp_path / "grpo"), "--cpu_precision", "bf16", "--max_steps", "1"]
        + ["--train_size", "8", "--max_completion_length", "8", "--save_strategy", "no"]
    )
    assert trainer.accelerator.mixed_precision == "bf16" and trainer.state.global_step == 1


@pytest.mark.slow
def test_embedded_sft_recipe_trains_in_float32_on_a_cpu_without_bf16(cpu, tiny_model_dir, tmp_path):
    from trl_smallrl import sft

    cpu(WITHOUT_BF16)
    recipe = RECIPES / "sft" / "kk_warmup.yaml"
    assert "bf16: true" in recipe.read_text()
    out = tmp_path / "sft"
    trainer = sft.train(
        ["--config", str(recipe), "--model_name_or_path", tiny_model_dir, "--output_dir", str(out)]
        + ["--max_steps", "1", "--train_size", "4"]
    )
    assert trainer.accelerator.mixed_precision == "no"
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert json.loads((out / "smallrl_config.json").read_text())["bf16"] is False
    assert trainer.state.global_step == 1


def test_embedded_recipes_keep_bf16_on_a_cpu_that_has_it(cpu, tiny_model_dir, tmp_path):
    """The other capability answer: the same recipe, parsed and decided as its entry point does, keeps bf16."""
    from trl_smallrl.configs import SFTConfig, SFTScriptArguments
    from trl_smallrl.recipe import parse_recipe
    from trl_smallrl.run import prepare_model_args

    cpu(WITH_BF16)
    _, training_args, model_args = parse_recipe(
        (SFTScriptArguments, SFTConfig, trl.ModelConfig),
        ["--config", str(RECIPES / "sft" / "kk_warmup.yaml"), "--model_name_or_path", tiny_model_dir]
        + ["--output_dir", str(tmp_path)],
    )
    prepare_model_args(model_args, training_args)
    assert (training_args.bf16, training_args.mixed_precision) == (True, "bf16")


def test_gpus_that_torch_cannot_use_are_an_error_not_a_cpu_run(tmp_path, monkeypatch):
    """nvidia-smi lists a GPU but torch (a CPU build) sees none: refuse instead of training days on the CPU, unless
    the recipe or the command line asks for the CPU."""
    from trl_smallrl.configs import GRPOConfig, GRPOScriptArguments
    from trl_smallrl.recipe import parse_recipe

    def parse(*argv):
        return parse_recipe((GRPOScriptArguments, GRPOConfig, trl.ModelConfig), ["--output_dir", str(tmp_path), *argv])

    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA GeForce RTX 3090 (UUID: GPU-0000)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(precision, "accelerator_name", lambda: None)
    with pytest.raises(ConfigError, match=r"use_cpu: nvidia-smi lists 1 GPU\(s\) \(GPU 0: NVIDIA GeForce RTX 3090"):
        parse()
    assert parse("--use_cpu", "true")[1].use_cpu  # on purpose: fine
    assert parse("--use_cpu")[1].use_cpu
    recipe = tmp_path / "cpu.yaml"
    recipe.write_text("use_cpu: true\n")
    assert parse("--config", str(recipe))[1].use_cpu
    with pytest.raises(ConfigError, match="use_cpu: nvidia-smi lists"):
        parse("--config", str(recipe), "--use_cpu", "false")  # the command line wins
