"""`make check-recipes`: every recipe parses, its model builds, and its batch arithmetic holds, offline.

A recipe that fails after an hour of model download and generation on four GPUs costs its user an afternoon.
This check catches the mistakes that need no GPU to see: keys no config knows, a model whose architecture
does not build, a generation batch that does not split into whole groups of `num_generations` across the
processes the recipe is meant for, peak GPU memory beyond the GPU it names (and a header that does not state
the computed figure), and a combination its launch's engine cannot train right.

Each recipe states its hardware in header comments, which this check reads:

    # hardware: 4 x RTX 3090 (24 GB)       where it runs
    # num_processes: 4                      accelerate processes (GPUs), for the batch arithmetic
    # gpu_memory_gb: 24                     memory of one GPU, for the memory estimate
    # memory_per_gpu: about 18 GB (computed ...)  GPU recipes: the figure this check computes; CPU ones: measured RAM
    # launch: accelerate launch --config_file accelerate_configs/ddp.yaml ...   the engine the recipe runs under
    # wall_time: about 6 h for 500 steps    expected wall time
    # base_model: Qwen/Qwen2-0.5B           only when model_name_or_path is a run folder made earlier
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from transformers import AutoConfig
from trl import ModelConfig

from tools.architectures import architecture_config
from tools.gpu_memory import check_memory_header, check_vllm_cache, estimate_memory, trainable_parameters
from trl_smallrl import configs
from trl_smallrl.embedded import EMBEDDED_MODELS
from trl_smallrl.engines import check_engine_combinations, engine
from trl_smallrl.errors import ConfigError, unknown_name
from trl_smallrl.evaluation import parse_model_spec
from trl_smallrl.models import is_hub_id, public_model_id
from trl_smallrl.recipe import parse_recipe
from trl_smallrl.rewards import get_reward_funcs
from trl_smallrl.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = ROOT / "recipes"
REQUIRED_HEADERS = ("hardware", "num_processes", "memory_per_gpu", "wall_time")
_HEADER = re.compile(r"^#\s*([a-z_]+):\s*(.+?)\s*$")


def recipe_types(method: str) -> tuple:
    """The dataclasses an entry point parses its recipe into, by the `<method>` folder of the recipe."""
    types = {
        "grpo": (configs.GRPOScriptArguments, configs.GRPOConfig, ModelConfig),
        "sft": (configs.SFTScriptArguments, configs.SFTConfig, ModelConfig),
        "eval": (configs.DataArguments, configs.EvalArguments),
    }
    if method not in types:
        raise unknown_name("recipe folder (recipes/<model>/<method>/)", method, types)
    return types[method]


def read_headers(path: Path) -> dict[str, str]:
    """The `# key: value` comment lines at the top of a recipe."""
    headers = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        match = _HEADER.match(line)
        if match:
            headers[match.group(1)] = match.group(2)
    return headers


@dataclass
class RecipeReport:
    path: Path
    method: str
    model: str
    parameters: int | None
    trainable: int | None
    memory_gb: float | None  # the computed peak of one GPU
    num_processes: int
    generation_batch: int | None

    def line(self) -> str:
        parts = [f"ok  {self.path}", f"{self.method}", f"model {self.model}"]
        if self.parameters:
            parts.append(f"{self.parameters / 1e6:.0f}M params ({self.trainable / 1e6:.1f}M trained)")
        if self.memory_gb is not None:
            parts.append(f"about {self.memory_gb:.1f} GB/GPU")
        if self.generation_batch:
            parts.append(f"{self.generation_batch} completions/generation over {self.num_processes} process(es)")
        return ", ".join(parts)


def launch_config(headers: dict[str, str], where: str) -> dict:
    """The accelerate config that the recipe's `# launch:` line names (empty when it names none)."""
    match = re.search(r"--config_file\s+(\S+)", headers.get("launch", ""))
    if not match:
        return {}
    config_path = ROOT / match.group(1)
    if not config_path.is_file():
        raise ConfigError(f"{where}: '# launch:' names {match.group(1)}, which does not exist.")
    return yaml.safe_load(config_path.read_text()) or {}


@contextlib.contextmanager
def launch_environment(config: dict) -> Iterator[None]:
    """The environment `accelerate launch` gives the processes of an accelerate config (`launch_config`): its engine."""
    env = {}
    if config:
        distributed_type = config.get("distributed_type")
        env = {"ACCELERATE_USE_DEEPSPEED": str(distributed_type == "DEEPSPEED").lower(),
               "ACCELERATE_USE_FSDP": str(distributed_type == "FSDP").lower()}  # fmt: skip
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_generation_batch(recipe: dict, num_processes: int, where: str) -> int:
    """Completions per generation round on `num_processes`, checked as TRL will check it on that many."""
    per_device = int(recipe.get("per_device_train_batch_size", 8))
    groups = int(recipe.get("num_generations", 8))
    if recipe.get("generation_batch_size") is not None:
        batch = int(recipe["generation_batch_size"])
        if batch % (per_device * num_processes):
            raise ConfigError(
                f"{where}: generation_batch_size ({batch}) is not divisible by per_device_train_batch_size "
                f"({per_device}) x num_processes ({num_processes}); use a multiple of {per_device * num_processes}."
            )
    else:
        steps = int(recipe.get("steps_per_generation") or recipe.get("gradient_accumulation_steps", 1))
        batch = per_device * num_processes * steps
    if batch % groups:
        raise ConfigError(
            f"{where}: the generation batch ({batch} = per_device_train_batch_size x num_processes x "
            f"steps_per_generation) is not divisible by num_generations ({groups}); make "
            f"per_device_train_batch_size x {num_processes} x steps a multiple of {groups}."
        )
    if recipe.get("eval_strategy", "no") != "no":
        eval_groups = int(recipe.get("num_generations_eval") or groups)
        eval_batch = int(recipe.get("per_device_eval_batch_size", 8)) * num_processes
        if eval_batch % eval_groups:
            raise ConfigError(
                f"{where}: per_device_eval_batch_size x num_processes ({eval_batch}) is not divisible by "
                f"num_generations ({eval_groups}); make it a multiple of {eval_groups}."
            )
    return batch


def check_recipe(path: Path, num_processes: int | None = None) -> RecipeReport:
    """Parse one recipe as its entry point would, build its model on meta, check batches and memory.

    `num_processes` replaces the header's count (what one GPU holds when the recipe runs on that many: `make
    gpu-smoke` measures one process); the header's `memory_per_gpu` is then not compared."""
    method = path.parent.name
    where = str(path)
    batch = None
    headers = read_headers(path)
    missing = [key for key in REQUIRED_HEADERS if key not in headers]
    if missing:
        raise ConfigError(
            f"{where}: missing header comment(s) {', '.join(f'# {k}:' for k in missing)}; see recipes.py."
        )
    stated_processes = num_processes is None
    try:
        num_processes = int(headers["num_processes"]) if stated_processes else num_processes
    except ValueError as err:
        raise ConfigError(f"{where}: '# num_processes: {headers['num_processes']}' must be an integer.") from err
    recipe = yaml.safe_load(path.read_text()) or {}
    overrides = []
    if method == "grpo":
        batch = check_generation_batch(recipe, num_processes, where)
        # TRL checks batches against the processes it runs on (one, here): scale the per-device batch so that
        # its own check sees the generation batch of `num_processes` processes.
        for key, default in (("per_device_train_batch_size", 8), ("per_device_eval_batch_size", 8)):
            overrides += [f"--{key}", str(int(recipe.get(key, default)) * num_processes)]
    parsed = parse_recipe(recipe_types(method), ["--config", str(path), *overrides])
    get_task(parsed[0].task)
    if method == "grpo":
        get_reward_funcs(parsed[0].reward_funcs, **vars(parsed[0]))
    launch = launch_config(headers, where) if method in ("grpo", "sft") else {}
    if method in ("grpo", "sft"):
        with launch_environment(launch):
            check_engine_combinations(parsed[1], parsed[2])  # dtype `auto` of a Hub model is not known here

    model = recipe.get("model_name_or_path")
    if method == "eval" and recipe.get("eval_models"):
        model = parse_model_spec(recipe["eval_models"][0])[1]  # `label=name`: the first model's architecture
    if model is None:
        raise ConfigError(f"{where}: no model_name_or_path (or eval_models) to check.")
    architecture = headers.get("base_model") or public_model_id(model)
    if architecture.lower() not in EMBEDDED_MODELS and Path(architecture).is_dir():
        config = AutoConfig.from_pretrained(architecture)  # a run folder that exists here
    elif is_hub_id(architecture):
        config = architecture_config(architecture)
    else:
        raise ConfigError(f"{where}: {model!r} is a run folder; add '# base_model: <hub id>' to the header.")
    parameters = trainable = memory_gb = None
    if method in ("grpo", "sft"):
        parameters, trainable = trainable_parameters(config, recipe)
        if headers.get("gpu_memory_gb"):
            with launch_environment(launch):
                engine_name = engine(parsed[1])
            estimate = estimate_memory(
                config,
                recipe,
                method,
                parameters,
                trainable,
                engine_name,
                (launch.get("deepspeed_config") or {}).get("zero_stage") == 3,
                num_processes,
                float(headers["gpu_memory_gb"]),
            )
            if stated_processes:
                check_memory_header(where, headers, estimate)
            if method == "grpo":
                check_vllm_cache(where, config, recipe, parameters, float(headers["gpu_memory_gb"]))
            memory_gb = estimate.total
    return RecipeReport(path, method, architecture, parameters, trainable, memory_gb, num_processes, batch)


def all_recipes(root: Path = RECIPES_DIR) -> list[Path]:
    return sorted(root.glob("*/*/*.yaml"))


def main(argv: list[str] | None = None) -> int:
    """Check the given recipes (default: all under recipes/); print one line each, exit 1 on any failure."""
    parser = argparse.ArgumentParser(prog="python -m tools.check_recipes", description=main.__doc__)
    parser.add_argument("paths", nargs="*", type=Path)
    paths = parser.parse_args(argv).paths or all_recipes()
    failures = 0
    for path in paths:
        try:
            print(check_recipe(path).line())
        except ConfigError as err:
            failures += 1
            print(f"FAIL {err}")
    print(f"{len(paths) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
