"""`make bench`: speed and memory of trl-smallrl against plain TRL, measured side by side, into docs/BENCHMARKS.md.

Timed assertions in tests are flaky and say nothing about a user's machine; this module measures instead, and
writes each figure with the command, the machine and the date. Every case runs in its own subprocess (so the
peak resident memory is the case's own) and cases that are compared run interleaved, A B A B, so that a
background load hits both alike.

1. Wrapper overhead: `SmallRLGRPOTrainer` (curriculum, health metrics, monitors) against plain
   `trl.GRPOTrainer` on the same tiny model, config, data, rewards and seed, with fixed completion lengths.
2. The embedded model's GRPO step on this CPU: generated and trained tokens per second and the fraction of the
   measured matmul peak, for plain TRL defaults and for our recipe's settings.
3. Dynamic sampling none / mask / resample: informative-group fraction and time per informative sample.
4. With a GPU: Qwen2.5-0.5B and -1.5B architectures (random weights, fixed lengths) under a 24 GiB (RTX 3090)
   and a 48 GiB (A40) memory cap; without one, the section says so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trl_smallrl import atomic

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "BENCHMARKS.md"
COMMAND = "make bench"


class FirstTokenReward:
    """Bench-only reward: 1 when the first completion token id is a multiple of 8, else 0.

    Registered as `first_token` (`rewards.register_reward`) inside the bench's case processes.
    A random model hits it about one time in eight, so about 59% of groups of 4 have zero variance: the
    cold-start situation dynamic sampling is for, reproducible without a trained model.
    """

    __name__ = "first_token"

    def __call__(self, completions, completion_ids, **kwargs):
        return [1.0 if ids and ids[0] % 8 == 0 else 0.0 for ids in completion_ids]


def machine() -> str:
    """The CPU with the instruction sets that decide bf16's speed, the cores, memory, GPU and torch."""
    import torch

    from trl_smallrl.precision import cpu_info

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    bf16 = "native bf16" if cpu_info().native_bf16 else "bf16 emulated"
    return f"{cpu_info().describe()}, {bf16}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {gpu}; torch {torch.__version__}"


def matmul_peak(dtype_name: str, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul on this machine's CPU, the reference for the 'fraction of peak'."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# ----------------------------------------------------------------------------------------------- one case
def _timed(base):
    """A subclass of `base` that records generation time and token counts of each generation batch."""

    class Timed(base):
        bench_records: list

        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            output = super()._generate_and_score_completions(inputs)
            self.bench_records.append(
                {
                    "generate_s": time.perf_counter() - start,
                    "completion_tokens": int(output["completion_mask"].sum()),
                    "prompt_tokens": int(output["prompt_mask"].sum()),
                }
            )
            return output

    return Timed


def run_case(case: dict) -> dict:
    """Train `case["steps"]` steps of one configuration and return its timings (runs in a subprocess)."""
    import torch
    import trl
    from transformers import TrainerCallback

    from trl_smallrl import configs, grpo, rewards
    from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer
    from trl_smallrl.models import prepare_model_args, resolve_model
    from trl_smallrl.tasks import build_dataset

    torch.set_num_threads(int(case.get("threads", os.cpu_count())))
    rewards.register_reward("first_token", lambda **params: FirstTokenReward())
    work = Path(case["work_dir"])
    model_path = case.get("model_path") or resolve_model(case["model"])
    length = case["completion_length"]
    common = dict(
        output_dir=str(work / "out"),
        max_steps=case["steps"],
        per_device_train_batch_size=case["batch"],
        num_generations=case["num_generations"],
        max_completion_length=length,
        generation_kwargs={"min_new_tokens": length},  # fixed lengths: both sides do the same work
        learning_rate=1e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        use_cpu=not torch.cuda.is_available(),
        **case.get("config", {}),
    )
    script = configs.GRPOScriptArguments(
        task="knights_knaves",
        levels=[2, 3],
        train_size=64,
        eval_size=4,
        reward_funcs=case.get("rewards", ["format", "accuracy"]),
        curriculum=case.get("curriculum", "sequential"),
    )
    model_args = trl.ModelConfig(model_name_or_path=model_path, dtype=case.get("dtype", "float32"))
    model_args.use_peft = case.get("lora_r") is not None
    if model_args.use_peft:
        model_args.lora_r, model_args.lora_alpha = case["lora_r"], 2 * case["lora_r"]
        model_args.lora_target_modules = "all-linear"
    if case["trainer"] == "ours":
        training = configs.GRPOConfig(**common)
        trainer = grpo.build_trainer(script, training, model_args, trainer_class=_timed(SmallRLGRPOTrainer))
    else:
        training = trl.GRPOConfig(**common)
        prepare_model_args(model_args, training)
        trainer = _timed(trl.GRPOTrainer)(
            model=model_args.model_name_or_path,
            reward_funcs=rewards.get_reward_funcs(script.reward_funcs, **vars(script)),
            args=training,
            train_dataset=build_dataset(script, "train"),
            peft_config=trl.get_peft_config(model_args),
        )
    trainer.bench_records = []

    step_times: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.start)

    trainer.add_callback(StepClock())
    if torch.cuda.is_available() and case.get("gpu_cap_gib"):
        total = torch.cuda.get_device_properties(0).total_memory / 1024**3
        torch.cuda.set_per_process_memory_fraction(min(1.0, case["gpu_cap_gib"] / total))
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    warm = case.get("warmup_steps", 1)
    records = trainer.bench_records[warm:]
    logs = [entry for entry in trainer.state.log_history if "loss" in entry][warm:]
    params = sum(p.numel() for p in trainer.model.parameters())
    trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "step_s": statistics.median(step_times[warm:]),
        "generate_s": statistics.median(r["generate_s"] for r in records),
        "completion_tokens": statistics.median(r["completion_tokens"] for r in records),
        "prompt_tokens": statistics.median(r["prompt_tokens"] for r in records),
        "params": params,
        "trained_params": trained,
        "gradient_checkpointing": bool(training.gradient_checkpointing),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None,
        "zero_std": statistics.mean(e.get("frac_reward_zero_std", 0.0) for e in logs),
        "zero_after": statistics.mean(
            e.get("dynamic_sampling/zero_variance_after", e.get("frac_reward_zero_std", 0.0)) for e in logs
        ),
    }


def spawn(case: dict) -> dict:
    """Run one case in a fresh Python process and return its result."""
    with tempfile.TemporaryDirectory() as work:
        case = {**case, "work_dir": work}
        spec = Path(work) / "case.json"
        spec.write_text(json.dumps(case))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run(
            [sys.executable, "-m", "tools.bench", "--case", str(spec)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bench case {case['name']} failed:\n{proc.stderr[-3000:]}")
        return json.loads((Path(work) / "result.json").read_text())


# --------------------------------------------------------------------------------------------- sections
def training_flops(result: dict) -> float:
    """6 N T for a full fine-tune (4 N T with frozen weights, as LoRA), plus 2 N T for recomputed activations."""
    factor = 6 if result["trained_params"] > 0.5 * result["params"] else 4
    factor += 2 if result["gradient_checkpointing"] else 0
    return factor * result["params"] * (result["prompt_tokens"] + result["completion_tokens"])


def overhead_section(tiny_model: str, repeats: int) -> str:
    base = dict(model_path=tiny_model, batch=16, num_generations=4, completion_length=32, steps=12, warmup_steps=2)
    runs: dict[str, list[float]] = {"plain": [], "ours": []}
    for _ in range(repeats):
        for trainer in ("plain", "ours"):
            runs[trainer].append(spawn({**base, "name": f"overhead-{trainer}", "trainer": trainer})["step_s"])
    plain, ours = statistics.median(runs["plain"]), statistics.median(runs["ours"])
    return "\n".join(
        [
            "## 1. Wrapper overhead (tiny model, CPU)",
            "",
            "2-layer random Llama (hidden 64) with the SmolLM2 tokenizer; K&K 2-3 people; rewards format + accuracy;",
            f"16 completions of exactly 32 tokens a step; median step time of steps 3-12, {repeats} interleaved runs each.",
            "",
            "| trainer | step time (s) |",
            "| --- | ---: |",
            f"| plain `trl.GRPOTrainer` | {plain:.3f} |",
            f"| `SmallRLGRPOTrainer` (curriculum, health metrics, monitors) | {ours:.3f} |",
            f"| **ratio ours / plain** | **{ours / plain:.3f}** (target <= 1.03) |",
            "",
        ]
    )


def embedded_section(peaks: dict[str, float], steps: int) -> str:
    base = dict(model="smollm2-135m-instruct", batch=8, num_generations=8, completion_length=128, steps=steps)
    cases = [
        ("plain TRL defaults (full fine-tune, bf16 autocast, gradient checkpointing)", {"trainer": "plain"}),
        (
            "ours, recipe settings in fp32 (LoRA r16, no checkpointing)",
            {"trainer": "ours", "lora_r": 16, "config": {"bf16": False, "gradient_checkpointing": False}},
        ),
        (
            "ours, recipe settings (LoRA r16, bf16 autocast, no checkpointing)",
            {"trainer": "ours", "lora_r": 16, "config": {"bf16": True, "gradient_checkpointing": False}},
        ),
    ]
    lines = [
        "## 2. The embedded model's GRPO step on this CPU",
        "",
        f"SmolLM2-135M-Instruct, K&K 2-3 people, 8 completions of exactly 128 tokens a step; median of {steps - 1}",
        "steps after one warm-up step. Matmul peak of this machine (2048^3, all cores): "
        f"fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s. FLOPs: generation 2 N per",
        "token; training 6 N per token (4 N with frozen weights, +2 N with gradient checkpointing), N = parameters.",
        "",
        "| configuration | step (s) | generation (s) | generated tok/s | trained tok/s | gen % fp32 / bf16 peak"
        " | train % fp32 / bf16 peak | peak RSS (GiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, extra in cases:
        r = spawn({**base, **extra, "name": label})
        train_s = max(r["step_s"] - r["generate_s"], 1e-9)
        gen_flops = 2 * r["params"] * r["completion_tokens"] / r["generate_s"] / 1e9
        train_gflops = training_flops(r) / train_s / 1e9
        tokens = r["prompt_tokens"] + r["completion_tokens"]
        lines.append(
            f"| {label} | {r['step_s']:.1f} | {r['generate_s']:.1f} | {r['completion_tokens'] / r['generate_s']:.0f}"
            f" | {tokens / train_s:.0f} | {100 * gen_flops / peaks['float32']:.0f}% / "
            f"{100 * gen_flops / peaks['bfloat16']:.0f}% | {100 * train_gflops / peaks['float32']:.0f}% / "
            f"{100 * train_gflops / peaks['bfloat16']:.0f}% | {r['peak_rss_gib']:.1f} |"
        )
    return "\n".join([*lines, ""])


def dynamic_sampling_section(tiny_model: str) -> str:
    base = dict(
        model_path=tiny_model,
        batch=16,
        num_generations=4,
        completion_length=16,
        steps=10,
        warmup_steps=2,
        trainer="ours",
        rewards=["first_token"],
        curriculum="off",
    )
    lines = [
        "## 3. Dynamic sampling (tiny model, CPU)",
        "",
        "Reward 1 when the first completion token id is a multiple of 8 (a random model: p about 1/8, so about 59%",
        "of groups of 4 have zero variance). 16 completions of 16 tokens a step; medians of steps 3-10.",
        "",
        "| dynamic_sampling | informative groups before | informative groups trained | step (s) "
        "| s per informative sample |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mode in ("none", "mask", "resample"):
        r = spawn({**base, "name": f"ds-{mode}", "config": {"dynamic_sampling": mode}})
        before, after = 1 - r["zero_std"], 1 - r["zero_after"]
        trained = before if mode != "resample" else after
        lines.append(
            f"| {mode} | {before:.2f} | {trained:.2f} | {r['step_s']:.2f} | "
            f"{r['step_s'] / max(trained * base['batch'], 1e-9):.3f} |"
        )
    return "\n".join(
        [
            *lines,
            "",
            "`mask` trains on the same informative samples as `none` but spends no loss on the rest;",
            "`resample` pays extra generation rounds to fill the batch with informative groups.",
            "",
        ]
    )


def gpu_section() -> str:
    import torch

    header = "## 4. GPU: Qwen2.5-0.5B and Qwen2.5-1.5B architectures"
    if not torch.cuda.is_available():
        return f"{header}\n\nNo GPU on this machine: this part did not run. Run `make bench` where one is visible.\n"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tools.architectures import architecture_config
    from trl_smallrl.models import DEFAULT_MODEL, resolve_model

    lines = [
        header,
        "",
        "Random weights, the embedded tokenizer, 8 prompts x 8 completions of exactly 512 tokens, bf16, LoRA off.",
        "",
        "| model | cap (GiB) | trainer | step (s) | generated tok/s | peak GPU memory (GiB) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    for model_id in ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"):
        folder = Path(tempfile.mkdtemp(prefix="bench-model-"))
        AutoModelForCausalLM.from_config(architecture_config(model_id)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        for cap in (24, 48):
            for trainer in ("plain", "ours"):
                case = dict(
                    name=f"{model_id}-{cap}-{trainer}",
                    model_path=str(folder),
                    trainer=trainer,
                    batch=8,
                    num_generations=8,
                    completion_length=512,
                    steps=4,
                    dtype="bfloat16",
                    gpu_cap_gib=cap,
                    config={"bf16": True, "gradient_checkpointing": True},
                )
                try:
                    r = spawn(case)
                    cells = (
                        f"{r['step_s']:.2f} | {r['completion_tokens'] / r['generate_s']:.0f} | {r['peak_gpu_gib']:.1f}"
                    )
                except RuntimeError as err:
                    cells = "out of memory | - | -" if "out of memory" in str(err).lower() else "failed | - | -"
                lines.append(f"| {model_id} | {cap} | {trainer} | {cells} |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> None:
    """Run every benchmark and write docs/BENCHMARKS.md (or run one case, for the subprocesses)."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=main.__doc__)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per trainer for the overhead")
    parser.add_argument("--embedded-steps", type=int, default=3, help="steps per embedded-model case")
    args = parser.parse_args(argv)
    if args.case:
        case = json.loads(Path(args.case).read_text())
        result = run_case(case)
        (Path(case["work_dir"]) / "result.json").write_text(json.dumps(result))
        return

    from trl_smallrl.testing import save_tiny_model

    started = time.perf_counter()
    tiny = save_tiny_model(tempfile.mkdtemp(prefix="bench-tiny-"))
    peaks = {dtype: matmul_peak(dtype) for dtype in ("float32", "bfloat16")}
    sections = [
        overhead_section(str(tiny), args.repeats),
        embedded_section(peaks, args.embedded_steps),
        dynamic_sampling_section(str(tiny)),
        gpu_section(),
    ]
    today = datetime.date.today().isoformat()
    header = [
        "# Benchmarks",
        "",
        f"Written by `{COMMAND}` (`python -m tools.bench`) on {today}, in "
        f"{(time.perf_counter() - started) / 60:.1f} minutes.",
        f"Machine: {machine()}.",
        "Load average (1, 5, 15 min) when the run ended: {:.1f}, {:.1f}, {:.1f}; above the core count, other"
        " processes shared the CPU and the absolute times are slower than on an idle machine (ratios from"
        " interleaved runs are less affected).".format(*os.getloadavg()),
        "",
    ]
    atomic.write_text(args.output, "\n".join(header + sections))
    print(args.output.read_text())


if __name__ == "__main__":
    main()
