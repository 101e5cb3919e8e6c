"""The recipe check: every shipped recipe parses, builds on meta and splits its batches; mistakes are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools.check_recipes import all_recipes, check_recipe, main
from trl_smallrl.errors import ConfigError

HEADER = "# hardware: 4 x RTX 3090 (24 GB)\n# num_processes: {n}\n# gpu_memory_gb: 24\n# memory_per_gpu: x\n# wall_time: x\n"


def write(tmp_path: Path, body: str, n: int = 4, method: str = "grpo") -> Path:
    path = tmp_path / "qwen" / method / "r.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER.format(n=n) + body)
    return path


def check_with_computed_memory(path: Path):
    """Check a recipe as its author would after reading the first failure: write the computed memory line."""
    try:
        return check_recipe(path)
    except ConfigError as err:
        match = re.search(r"write '(# memory_per_gpu: [^']*)'", str(err))
        if not match:
            raise
    path.write_text(path.read_text().replace("# memory_per_gpu: x", match.group(1)))
    return check_recipe(path)


def test_every_shipped_recipe_passes(capsys):
    recipes = all_recipes()
    methods = {path.parent.name for path in recipes}
    assert {"grpo", "sft", "eval"} <= methods
    assert len(recipes) >= 19
    assert main([]) == 0
    assert f"{len(recipes)} passed, 0 failed" in capsys.readouterr().out


def test_generation_batch_must_split_into_groups_on_the_named_processes(tmp_path):
    body = "model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct\nnum_generations: 6\nper_device_train_batch_size: 4\n"
    # One process: 4 completions cannot hold a group of 6, which TRL also rejects at parse time.
    with pytest.raises(ConfigError, match=r"not divisible by num_generations \(6\)"):
        check_recipe(write(tmp_path, body, n=1))
    # Four processes pass TRL's single-process parse (4 % 6 fails there too), so use 3 per device instead:
    body = body.replace("per_device_train_batch_size: 4", "per_device_train_batch_size: 6")
    report = check_with_computed_memory(write(tmp_path, body + "gradient_accumulation_steps: 1\n", n=4))
    assert report.generation_batch == 24
    body = "model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct\nnum_generations: 8\nper_device_train_batch_size: 8\n"
    body += "generation_batch_size: 24\n"
    with pytest.raises(ConfigError, match=r"generation_batch_size \(24\) is not divisible by .* num_processes \(4\)"):
        check_recipe(write(tmp_path, body, n=4))


def test_memory_beyond_the_gpu_is_reported(tmp_path):
    body = "model_name_or_path: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B\nnum_generations: 4\nper_device_train_batch_size: 4\n"
    with pytest.raises(
        ConfigError, match=r"needs about \d+\.\d GB per GPU \(weights .* = .*\), more than the 24 GB GPU.*LoRA"
    ):
        check_recipe(write(tmp_path, body))
    report = check_with_computed_memory(write(tmp_path, body + "use_peft: true\nlora_r: 16\n"))
    assert report.trainable < report.parameters / 50


def test_memory_header_must_state_the_computed_figure(tmp_path):
    """GPU recipes' memory lines come from this check, not from a hand estimate."""
    body = "model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct\nnum_generations: 8\nper_device_train_batch_size: 8\n"
    path = write(tmp_path, body)
    with pytest.raises(
        ConfigError, match=r"write '# memory_per_gpu: about \d+ GB \(computed by make check-recipes: weights"
    ):
        check_recipe(path)
    report = check_with_computed_memory(path)
    path.write_text(
        path.read_text().replace(f"about {report.memory_gb:.0f} GB", f"about {report.memory_gb * 2:.0f} GB")
    )
    with pytest.raises(ConfigError, match="write '# memory_per_gpu"):  # a figure far from the computed one
        check_recipe(path)


def test_missing_headers_and_unknown_keys_are_named(tmp_path):
    path = tmp_path / "m" / "grpo" / "r.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct\n")
    with pytest.raises(ConfigError, match="missing header comment.*# hardware:"):
        check_recipe(path)
    with pytest.raises(ConfigError, match="unknown key 'num_generatons'. Did you mean 'num_generations'"):
        check_recipe(write(tmp_path, "model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct\nnum_generatons: 8\n"))
    with pytest.raises(ConfigError, match="no offline architecture for 'someone/unknown'"):
        check_recipe(write(tmp_path, "model_name_or_path: someone/unknown\n"))
    with pytest.raises(ConfigError, match="run folder; add '# base_model: <hub id>'"):
        check_recipe(write(tmp_path, "model_name_or_path: outputs/some/run\n"))


def test_the_zero_stage_comes_from_the_accelerate_config_not_its_name(tmp_path):
    """ZeRO-3 shards the weights across the processes: the estimate reads `zero_stage` inside the file."""
    zero3 = (Path(__file__).parents[1] / "accelerate_configs" / "zero3.yaml").read_text()
    (tmp_path / "sharded.yaml").write_text(zero3)
    (tmp_path / "zero3_named.yaml").write_text(zero3.replace("zero_stage: 3", "zero_stage: 2"))
    body = "model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct\nnum_generations: 8\nper_device_train_batch_size: 8\n"
    memory = {}
    for name in ("sharded", "zero3_named"):
        launch = f"# launch: accelerate launch --config_file {tmp_path / name}.yaml -m trl_smallrl.grpo\n"
        memory[name] = check_with_computed_memory(write(tmp_path / name, launch + body)).memory_gb
    assert memory["sharded"] < memory["zero3_named"]


@pytest.mark.parametrize("path", [p for p in all_recipes() if "Qwen3" in p.read_text()], ids=str)
def test_a_qwen3_recipe_sets_the_thinking_mode_its_header_names(path):
    """Qwen3's template thinks unless told otherwise: a recipe that says "thinking off" must turn it off."""
    import yaml

    text = path.read_text()
    assert ("thinking off" in text) != ("thinking on" in text), f"{path}: say 'thinking off' or 'thinking on'"
    kwargs = yaml.safe_load(text).get("chat_template_kwargs") or {}
    assert kwargs.get("enable_thinking", True) is ("thinking on" in text)


@pytest.mark.parametrize("path", [p for p in all_recipes() if "best one" in p.read_text()], ids=str)
def test_a_recipe_that_keeps_the_best_checkpoint_evaluates_each_one(path):
    """A recipe that promises checkpoint selection evaluates every checkpoint and names the metric that picks it."""
    import yaml

    recipe = yaml.safe_load(path.read_text())
    assert recipe.get("save_strategy") == recipe.get("eval_strategy") == "steps"
    assert recipe.get("eval_steps") == recipe.get("save_steps")
    assert recipe.get("metric_for_best_model") and recipe.get("eval_size", 0) > 0


def test_the_estimate_counts_ddps_gradient_buckets_and_deepspeeds_buckets(tmp_path):
    """DDP over several processes keeps a second copy of the gradients in its buckets; one process does not."""
    body = "model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct\nnum_generations: 8\nper_device_train_batch_size: 8\n"
    one, four = (check_with_computed_memory(write(tmp_path / str(n), body, n=n)) for n in (1, 4))
    assert four.memory_gb - one.memory_gb == pytest.approx(one.trainable * 4 / 1024**3, abs=0.05)
    zero2 = Path(__file__).parents[1] / "accelerate_configs" / "zero2.yaml"
    launch = f"# launch: accelerate launch --config_file {zero2} -m trl_smallrl.grpo\n"
    assert "buffers 0.9" in check_with_computed_memory(write(tmp_path / "z2", launch + body)).path.read_text()


def test_a_vllm_share_without_room_for_the_generation_batchs_cache_is_refused(tmp_path):
    """R1-Distill-1.5B's batch (24 rows of up to 4096 tokens a process) does not fit a quarter of a 24 GB GPU
    beside vLLM's own copy of the weights."""
    body = ("model_name_or_path: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B\nuse_peft: true\nnum_generations: 6\n"
            "per_device_train_batch_size: 6\ngradient_accumulation_steps: 4\nmax_completion_length: 3584\n"
            "gradient_checkpointing: true\nuse_vllm: true\nvllm_mode: colocate\nvllm_max_model_length: 4096\n")  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"leaves vLLM -?\d+\.\d GB of KV cache .*\(24 rows x 4096 tokens\) needs 2\.6"
    ):
        check_with_computed_memory(write(tmp_path, body + "vllm_gpu_memory_utilization: 0.25\n"))
    check_with_computed_memory(write(tmp_path, body + "vllm_gpu_memory_utilization: 0.35\n"))


def test_gpu_smoke_measures_one_process_where_the_recipe_runs_four():
    """`make gpu-smoke` can only run one process on its one GPU. For the R1-Distill-1.5B recipe (4 processes under
    ZeRO-2) that process holds the whole optimizer, more than the A40's 48 GiB: a check of it under that cap could not
    pass. So the check compares its measurement with this one-process estimate, and the recipe's 4-process figure
    with the GPU."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "deepseek-r1-distill-qwen-1.5b" / "grpo"
    one, four = (
        check_recipe(recipe / "open_rs_cosine.yaml", num_processes=1),
        check_recipe(recipe / "open_rs_cosine.yaml"),
    )
    assert (one.num_processes, four.num_processes) == (1, 4)
    assert one.memory_gb > 48 > four.memory_gb
