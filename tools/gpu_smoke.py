"""`make gpu-smoke`: the GPU recipes' mechanics, checked on one GPU in minutes, offline, one line per check.

The GPU recipes are the product's real use and no CPU test exercises a GPU. This script trains random-weight
copies of the reference architectures (Qwen2.5-0.5B and -1.5B, `tools.architectures`) with the embedded
tokenizer, so it needs no download, and checks what a first RTX 3090 / A40 run would hit:

- kk-steps: 3 steps of the Qwen2.5-0.5B K&K recipe (full fine-tune, float32 weights, bf16 autocast) move weights;
- temperature-reset: after a reset to a new temperature the training log-probs are log_softmax(logits / T);
- zero2 / zero3 / fsdp: one process under each engine trains 3 steps (the whole weights, gathered from the engine's
  shards, are compared), and a reset is refused in one line;
- memory-0.5b / memory-1.5b: 2 steps of the Qwen2.5-0.5B K&K recipe (vLLM rollouts included) and of the
  DeepSeek-R1-Distill-1.5B recipe (Open-RS math shape, 3584-token completions, ZeRO-2), each as ONE process: the
  recipes run 4, which one GPU cannot (ZeRO-2 shards the optimizer 4 ways there, DDP adds its buckets). So the line
  says what it measured: the one-process peak against `make check-recipes`' estimate of that same process, which
  must hold it (the estimator is what the check validates), then that estimator's figure for each of the recipe's
  processes against the GPU the recipe names (24 GiB RTX 3090, 48 GiB A40);
- eval-batch: one eval batch of the K&K eval, timed;
- vllm-lora: 2 colocated LoRA steps (a weight sync each step).

A check that cannot run here (no DeepSpeed, no vLLM) prints SKIP with the reason and the install line: it is not
passed, and the recipe it names is not measured.

`--cpu` runs the checks that need no GPU with the tiny test model (a test does this): kk-steps,
temperature-reset, and FSDP's refusal of a reset as `accelerate launch` would signal the engine. Each check runs in its
own process, so a crash or an out-of-memory in one is that check's failure line, not the script's end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KK_RECIPE = ROOT / "recipes" / "qwen2.5-0.5b-instruct" / "grpo" / "kk_curriculum.yaml"
R1_RECIPE = ROOT / "recipes" / "deepseek-r1-distill-qwen-1.5b" / "grpo" / "open_rs_cosine.yaml"
# memory check -> (the recipe it measures, the architecture of its model, the GPU memory of the hardware it names)
MEMORY_CHECKS = {
    "memory-0.5b": (KK_RECIPE, "Qwen/Qwen2.5-0.5B-Instruct", 24),
    "memory-1.5b": (R1_RECIPE, "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 48),
}
INSTALL = {"deepspeed": "pip install -e '.[deepspeed]'", "vllm": "pip install -e '.[vllm]'"}


# ------------------------------------------------------------------------------------------ inside one check
def _random_model(model_id: str, folder: Path) -> str:
    """A random-weight copy of `model_id`'s architecture with the embedded tokenizer, saved to `folder`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tools.architectures import architecture_config
    from trl_smallrl.embedded import DEFAULT_MODEL
    from trl_smallrl.models import resolve_model

    if not (folder / "config.json").is_file():
        AutoModelForCausalLM.from_config(architecture_config(model_id)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL)).save_pretrained(folder)
    return str(folder)


def _kk_argv(model: str, out: Path, steps: int, recipe: Path = KK_RECIPE, **overrides) -> list[str]:
    """The recipe for a few steps, saving nothing; `use_vllm` false unless an override says otherwise."""
    overrides = {"use_vllm": "false", "train_size": 64, **overrides}
    argv = ["--config", str(recipe), "--model_name_or_path", model, "--output_dir", str(out),
            "--max_steps", str(steps), "--report_to", "none", "--eval_strategy", "no", "--save_strategy", "no",
            "--logging_steps", "1"]  # fmt: skip
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    return argv


def _whole_weights(trainer) -> dict:
    """Every weight, whole, on the CPU: gathered from the engine's shards under ZeRO-3 and FSDP."""
    state = trainer.accelerator.get_state_dict(trainer.model)
    return {name: tensor.detach().float().cpu() for name, tensor in (state or {}).items()}


def check_kk_steps(model: str, work: Path, **overrides) -> str:
    """Train the K&K recipe a few steps; the share of weights that moved."""
    from transformers import AutoModelForCausalLM

    from trl_smallrl import grpo

    before = {n: p.detach().float().clone() for n, p in AutoModelForCausalLM.from_pretrained(model).named_parameters()}
    # A random model earns the same reward on every completion, so no group has an advantage: the entropy bonus
    # (with every group kept) gives each step a gradient, which is what this check needs.
    overrides = {"dynamic_sampling": "none", "entropy_coef": 0.01, **overrides}
    trainer = grpo.train(_kk_argv(model, work / "kk", 3, **overrides))
    after = _whole_weights(trainer)
    if int(os.environ.get("RANK", "0")) != 0:
        return "the whole weights are compared on rank 0"
    compared = [n for n in before if n in after]
    if len(compared) < len(before) // 2:
        raise AssertionError(f"only {len(compared)} of {len(before)} weights came back from the engine")
    moved = sum(int((after[n] != before[n]).sum()) for n in compared)
    share = moved / sum(before[n].numel() for n in compared)
    if share < 0.5:
        raise AssertionError(f"only {share:.1%} of the weights moved in 3 steps")
    return f"{share:.0%} of the weights moved in 3 steps"


def check_temperature_reset(model: str, work: Path, **overrides) -> str:
    """A LoRA run with a reset to T = 1.5 at step 1: the loss's log-probs are log_softmax(logits / 1.5)."""
    import torch

    from trl_smallrl import grpo

    resets = '[{"at_step": 1, "temperature": 1.5}]'
    trainer = grpo.train(_kk_argv(model, work / "reset", 2, use_peft="true", lora_r=8, resets=resets, **overrides))
    policy = trainer.model
    policy.eval()
    ids = torch.tensor([[1, 17, 42, 256, 1000, 7, 99, 3]], device=trainer.accelerator.device)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(policy, ids, torch.ones_like(ids), ids.size(1) - 1)
        logits = policy(input_ids=ids).logits[:, :-1].float()
    expected = torch.log_softmax(logits / 1.5, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    error = (logps.float() - expected).abs().max().item()
    if error > 5e-2:
        raise AssertionError(f"log-probs differ from log_softmax(logits / 1.5) by {error:.3g}")
    return f"log-probs at T = 1.5 within {error:.1e}"


def check_reset_refused(model: str, work: Path, **overrides) -> str:
    """Under the launch's sharding engine, a recipe with resets stops with one line before any model loads."""
    from trl_smallrl import grpo

    started = time.perf_counter()
    try:
        grpo.main(_kk_argv(model, work / "refused", 1, use_peft="true", resets='[{"at_step": 1}]', **overrides))
    except SystemExit as err:
        if err.code == 2:
            return f"reset refused in one line ({time.perf_counter() - started:.1f} s)"
        raise AssertionError(f"exit {err.code} instead of the one-line refusal") from None
    raise AssertionError("a reset under a sharding engine was not refused")


def _math_rows(path: Path, count: int = 64) -> Path:
    """Open-RS-shaped rows (problem, solution) written here: the recipe's Hub dataset cannot be reached offline."""
    with path.open("w") as handle:
        for i in range(count):
            problem = (
                f"Let x be the number of ways to choose {i % 7 + 2} items from {i + 10}. " * 6 + "Find x mod 1000."
            )
            handle.write(json.dumps({"problem": problem, "solution": f"\\boxed{{{i}}}", "answer": str(i)}) + "\n")
    return path


def check_memory(name: str, work: Path) -> str:
    """2 steps of the recipe the check names, as it is (vLLM's colocated share included) but as one process: its
    peak against the estimate of that one process, then the estimate for each of the recipe's processes against the
    GPU it names (module docstring). Fails when the measurement exceeds the estimate, since the per-GPU figure of
    the recipe's own launch is then not to be trusted."""
    import torch
    import yaml

    from tools.check_recipes import check_recipe
    from trl_smallrl import grpo

    recipe, model_id, gpu_gb = MEMORY_CHECKS[name]
    one, per_gpu = check_recipe(recipe, num_processes=1), check_recipe(recipe)
    total = torch.cuda.get_device_properties(0).total_memory / 1024**3
    torch.cuda.reset_peak_memory_stats()
    model = _random_model(model_id, work / model_id.split("/")[1])
    values = yaml.safe_load(recipe.read_text())
    overrides = {"use_vllm": str(bool(values.get("use_vllm"))).lower()}
    if values.get("use_vllm"):  # vLLM takes its share of the whole device: the same share of the named GPU
        overrides["vllm_gpu_memory_utilization"] = f"{values['vllm_gpu_memory_utilization'] * gpu_gb / total:.4f}"
    if values.get("dataset_name"):
        work.mkdir(parents=True, exist_ok=True)
        overrides.update(dataset_name=str(_math_rows(work / "rows.jsonl")), eval_size=8)
    started = time.perf_counter()
    grpo.train(_kk_argv(model, work / "memory", 2, recipe=recipe, **overrides))
    peak = torch.cuda.max_memory_allocated() / 1024**3
    line = (
        f"{recipe.relative_to(ROOT)} as 1 process (it runs {per_gpu.num_processes}): peak {peak:.1f} GiB"
        f"{' (vLLM share included)' if values.get('use_vllm') else ''} against the one-process estimate "
        f"{one.memory_gb:.1f} GB; estimate for each of its {per_gpu.num_processes} processes {per_gpu.memory_gb:.1f} GB "
        f"of the {gpu_gb} GiB it names; {(time.perf_counter() - started) / 2:.0f} s a step"
    )
    if peak > one.memory_gb * 1.1 + 1.0 or per_gpu.memory_gb > gpu_gb:
        raise RuntimeError(line)
    return line


def check_eval_batch(model: str, work: Path) -> str:
    from trl_smallrl.configs import DataArguments, EvalArguments
    from trl_smallrl.evaluation import evaluate
    from trl_smallrl.recipe import parse_recipe

    recipe = ROOT / "recipes" / "smollm2-135m-instruct" / "eval" / "kk_levels.yaml"
    data, spec = parse_recipe(
        (DataArguments, EvalArguments),
        [
            "--config",
            str(recipe),
            "--eval_models",
            f"smoke={model}",
            "--levels",
            "2",
            "--eval_size",
            "8",
            "--eval_generation_batch_size",
            "8",
            "--eval_output_dir",
            str(work / "eval"),
        ],  # fmt: skip
    )
    started = time.perf_counter()
    evaluate(data, spec)
    return f"8 prompts x {spec.eval_num_samples} samples of <= {spec.eval_max_new_tokens} tokens in {time.perf_counter() - started:.1f} s"


def check_vllm_lora(model: str, work: Path) -> str:
    from trl_smallrl import grpo

    argv = _kk_argv(model, work / "vllm", 2, use_peft="true", lora_r=8)
    argv[argv.index("--use_vllm") + 1] = "true"
    grpo.train(argv)
    return "2 colocated LoRA steps with a vLLM weight sync each"


# ------------------------------------------------------------------------------------------------ the runner
def _in_subprocess(name: str, config_file: str | None, cpu: bool, work: Path) -> tuple[str, str]:
    """Run one check in its own process (through `accelerate launch` when it names an engine)."""
    python = [sys.executable, "-m", "tools.gpu_smoke", "--run", name, "--work", str(work)] + (["--cpu"] if cpu else [])
    if config_file:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file,
                   "--num_processes", "1", "-m", "tools.gpu_smoke", *python[3:]]  # fmt: skip
    else:
        command = python
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    outcome = work / f"{name}.json"
    if outcome.is_file():
        record = json.loads(outcome.read_text())
        return record["status"], record["detail"]
    return "FAIL", f"exit {result.returncode}: {(result.stderr.strip().splitlines() or ['no output'])[-1][:300]}"


def _missing(*packages: str) -> str | None:
    """Why a check cannot run here: the first package it needs that is not installed, with its install line."""
    import importlib.util

    for package in packages:
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed ({INSTALL[package]})"
    return None


def _checks(cpu: bool) -> list[tuple[str, str | None, str | None]]:
    """(check, accelerate config, why it cannot run here or None) in the order they run."""
    if cpu:
        # DeepSpeed's refusal needs the package even to parse a config under it: its unit test covers it.
        return [("kk-steps", None, None), ("temperature-reset", None, None), ("fsdp-refusal", None, None)]
    zero2, zero3 = "accelerate_configs/zero2.yaml", "accelerate_configs/zero3.yaml"
    return [("kk-steps", None, None), ("temperature-reset", None, None),
            ("memory-0.5b", None, _missing("vllm")), ("memory-1.5b", zero2, _missing("deepspeed", "vllm")),
            ("eval-batch", None, None), ("fsdp", "accelerate_configs/fsdp.yaml", None),
            ("fsdp-refusal", "accelerate_configs/fsdp.yaml", None),
            ("zero2", zero2, _missing("deepspeed")), ("zero2-refusal", zero2, _missing("deepspeed")),
            ("zero3", zero3, _missing("deepspeed")), ("zero3-refusal", zero3, _missing("deepspeed")),
            ("vllm-lora", None, _missing("vllm"))]  # fmt: skip


def run_one(name: str, cpu: bool, work: Path) -> None:
    """Inside the check's process: run it, write its one-line outcome."""
    if cpu:  # the tiny test model, made once per run and shared by its checks
        from trl_smallrl.testing import save_tiny_model

        tiny = work / "tiny-model"
        model = str(tiny if (tiny / "config.json").is_file() else save_tiny_model(tiny))
    else:
        model = _random_model("Qwen/Qwen2.5-0.5B-Instruct", work / "Qwen2.5-0.5B-Instruct")
    cpu_overrides = {"max_completion_length": 16, "gradient_accumulation_steps": 1, "bf16": "false"} if cpu else {}
    try:
        if name == "kk-steps" or name in ("zero2", "zero3", "fsdp"):
            detail = check_kk_steps(model, work / name, **cpu_overrides)
        elif name == "temperature-reset":
            detail = check_temperature_reset(model, work / name, **cpu_overrides)
        elif name.endswith("-refusal"):
            if cpu:  # what `accelerate launch` with the FSDP config tells the process
                os.environ["ACCELERATE_USE_FSDP"] = "true"
            detail = check_reset_refused(model, work / name, **cpu_overrides)
        elif name in MEMORY_CHECKS:
            detail = check_memory(name, work / name)
        elif name == "eval-batch":
            detail = check_eval_batch(model, work / name)
        elif name == "vllm-lora":
            detail = check_vllm_lora(model, work / name)
        else:
            raise ValueError(f"unknown check {name!r}")
        status = "ok"
    except Exception as err:  # one check's failure is its line, whatever it was
        status, detail = "FAIL", f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    if int(os.environ.get("RANK", "0")) == 0:
        (work / f"{name}.json").write_text(json.dumps({"status": status, "detail": detail}))


def main(argv: list[str] | None = None) -> int:
    """Run every check (each in its own process) and print one line per check; exit 1 if any failed."""
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_smoke", description=main.__doc__)
    parser.add_argument("--cpu", action="store_true", help="only the checks that need no GPU, on the tiny model")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        run_one(args.run, args.cpu, Path(args.work))
        return 0
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no GPU visible: run `python -m tools.gpu_smoke --cpu` for the checks that need none")
        return 1
    failures = 0
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as work:
        for name, config_file, skip in _checks(args.cpu):
            if skip:
                print(f"SKIP {name}: {skip}", flush=True)
                continue
            started = time.perf_counter()
            status, detail = _in_subprocess(name, config_file, args.cpu, Path(work))
            failures += status == "FAIL"
            print(f"{status:4} {name}: {detail} [{time.perf_counter() - started:.0f} s]", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
