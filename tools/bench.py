"""`make bench`: speed and memory of trl-smallrl against plain TRL, measured side by side, into docs/BENCHMARKS.md.

Timed assertions in tests are flaky and say nothing about a user's machine; this module measures instead, and
writes each figure with the command, the machine (the CPU with its bf16 capability) and the date. Every case runs
in its own subprocess, so the peak resident memory is the case's own. Compare only figures from one run.

0. The machine's limits: matmul peak (fp32, bf16) and memory read bandwidth, which bound decoding.
1. Wrapper overhead: `SmallRLGRPOTrainer` against plain `trl.GRPOTrainer` on a tiny model, fixed lengths.
2. Goal 1: completion tokens per second of the embedded GRPO recipe against plain TRL defaults (same CPU,
   same model, 8 generations of at most 128 tokens, batch 8, bf16 only where the CPU runs it natively).
3. Goal 2: rollout generation (`decoding.sample_tokens`) against transformers' `generate`, and the bound.
4. Goal 3: evaluation, 100 completions of at most 384 tokens.
5. Goal 4: SFT warm-up, trained tokens per second and loss after the same traces, old and new settings.
   Goal 5: the peak resident memory of every case above.
6. Threads and allocator: the recipe's rollouts and SFT steps under OpenMP and glibc malloc settings.
7. Dynamic sampling none / mask / resample on the tiny model.
8. With a GPU: Qwen2.5-0.5B and -1.5B architectures under 24 and 48 GiB caps; without one, the section says so.
9. The reference run: GRPO seconds per rollout (as issue 34 found the step, and now) and SFT seconds per trace,
   each beside the fp32 bound; GRPO needs the reference warm-up (`make reference`'s first stage).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path

from tools.bench_cases import GRPO_RECIPE, SFT_RECIPE, spawn
from tools.bench_limits import bf16_matmul_size, limits_section, machine, matmul_peak, memory_bandwidth
from tools.bench_reference import reference_section
from trl_smallrl import atomic

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "BENCHMARKS.md"
COMMAND = "make bench"


def load_line(load: tuple[float, float, float], cores: int) -> str:
    """What the load average at the end says about the figures: the benchmark alone keeps it near the core count."""
    text = "Load average (1, 5, 15 min) when the run ended: {:.1f}, {:.1f}, {:.1f} on {} cores; ".format(*load, cores)
    if max(load) > cores + 0.5:
        return text + "above the core count: other processes shared the CPU, and the times are slower than idle."
    return text + "at most the core count, which the benchmark's own threads fill: nothing else shared the CPU."


# --------------------------------------------------------------------------------------------------- sections
def overhead_section(tiny_model: str, repeats: int) -> str:
    base = dict(kind="grpo", model_path=tiny_model, batch=16, num_generations=4, completion_length=32, steps=12,
                warmup_steps=2)  # fmt: skip
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
            f"16 completions of exactly 32 tokens a step (both through TRL's `generate`); median step time of steps "
            f"3-12, {repeats} interleaved runs each.",
            "",
            "| trainer | step time (s) |",
            "| --- | ---: |",
            f"| plain `trl.GRPOTrainer` | {plain:.3f} |",
            f"| `SmallRLGRPOTrainer` (curriculum, health metrics, monitors) | {ours:.3f} |",
            f"| **ratio ours / plain** | **{ours / plain:.3f}** (target <= 1.03) |",
            "",
        ]
    )


def grpo_goal_section(steps: int) -> tuple[str, dict]:
    from trl_smallrl.precision import cpu_info

    native = cpu_info().native_bf16
    plain = spawn({"kind": "grpo", "name": "plain", "trainer": "plain", "model": "smollm2-135m-instruct", "batch": 8,
                   "num_generations": 8, "completion_length": 128, "steps": steps, "fixed_length": False,
                   "config": {"bf16": native}})  # fmt: skip
    ours = spawn({"kind": "grpo", "name": "recipe", "trainer": "recipe", "model": "smollm2-135m-instruct",
                  "steps": steps})  # fmt: skip
    rows = []
    for label, r in (("plain TRL defaults (full fine-tune, `generate`)", plain), ("the embedded recipe", ours)):
        rate = r["completion_tokens_total"] / r["total_s"]
        rows.append(
            f"| {label} | {r['step_s']:.1f} | {r['generate_s']:.1f} | {r['completion_tokens']:.0f} | {rate:.1f} | "
            f"{r['peak_rss_gib']:.1f} |"
        )
    ratio = (ours["completion_tokens_total"] / ours["total_s"]) / (plain["completion_tokens_total"] / plain["total_s"])
    text = "\n".join(
        [
            "## 2. Goal 1: the embedded GRPO recipe against plain TRL defaults",
            "",
            f"SmolLM2-135M-Instruct (cold: no warm-up, so completions run long), K&K; plain: `GRPOConfig` defaults "
            f"with `use_cpu`, 8 generations of at most 128 tokens, batch 8, bf16 {'on' if native else 'off'} (this "
            f"CPU {'has' if native else 'lacks'} native bf16); ours: `{GRPO_RECIPE.relative_to(ROOT)}`. Medians of "
            f"{steps - 1} steps after one warm-up step; the rate is completion tokens over the time of those steps.",
            "",
            "| configuration | step (s) | generation (s) | completion tokens a step | completion tok/s | peak RSS (GiB) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            f"| **ratio ours / plain** | | | | **{ratio:.2f}** (goal >= 3) | |",
            "",
        ]
    )
    return text, {"goal1_ratio": ratio}


def generation_goal_section(peaks: dict[str, float], bandwidth: float) -> tuple[str, dict]:
    params, weight_bytes = 134_515_008, 134_515_008 * 4
    lines = [
        "## 3. Goal 2: rollout generation against its bound",
        "",
        "SmolLM2-135M-Instruct, K&K 2-people prompts, each sampled 4 times (a GRPO group), exactly 128 new tokens.",
        "The bound of a decode step is the slower of reading the weights once (538 MB at the memory bandwidth) and "
        "2 N FLOPs a token at the fp32 matmul peak.",
        "",
        "| rows (prompts x 4) | backend | seconds | tok/s | bound tok/s | share of bound | peak RSS (GiB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    shares = {}
    from trl_smallrl.precision import decode_compute_dtype

    # bf16 matmuls over float32 weights, as a run under bf16 autocast samples: where the product decodes in bf16
    backends = ("generate", "sample_tokens", *(("sample_tokens bf16",) if decode_compute_dtype() else ()))
    for prompts in (2, 8):
        rows = prompts * 4
        step_bound = max(weight_bytes / (bandwidth * 1e9), 2 * params * rows / (peaks["float32"] * 1e9))
        bound = rows / step_bound
        for backend in backends:
            name = f"gen-{backend.replace(' ', '-')}-{rows}"
            r = spawn({"kind": "generation", "name": name, "backend": backend, "prompts": prompts})
            rate = r["tokens"] / r["seconds"]
            shares[(rows, backend)] = rate / bound
            lines.append(
                f"| {rows} ({prompts} x 4) | `{backend}` | {r['seconds']:.1f} | {rate:.0f} | {bound:.0f} | "
                f"{rate / bound:.0%} | {r['peak_rss_gib']:.1f} |"
            )
    lines += [
        "",
        "The recipe samples 32 rows a step (8 prompts x 4). The bound is float32's; `sample_tokens bf16` (the "
        "rollouts of a run under bf16 autocast, on a CPU with native bf16 only) may pass it.",
        "",
    ]
    return "\n".join(lines), {"goal2_share": shares[(8, "sample_tokens")]}


def eval_goal_section() -> tuple[str, dict]:
    lines = [
        "## 4. Goal 3: evaluation, 100 completions of at most 384 tokens",
        "",
        "25 held-out K&K prompts (5 a level, 2-6 people) x 4 samples, temperature 0.7, top_p 0.95, as the eval "
        "recipe samples them, on the cold model (its answers run long).",
        "",
        "| backend | completions | tokens | seconds | peak RSS (GiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    results = {}
    for backend in ("generate", "sample_tokens"):
        r = spawn({"kind": "eval", "name": f"eval-{backend}", "backend": backend})
        results[backend] = r
        label = "`generate`, 5 prompts a call (the former eval)" if backend == "generate" else "`sample_tokens`, all"
        lines.append(
            f"| {label} | {r['completions']} | {r['tokens']} | {r['seconds']:.0f} | {r['peak_rss_gib']:.1f} |"
        )
    lines += ["", "Goal: under 120 seconds.", ""]
    return "\n".join(lines), {"goal3_seconds": results["sample_tokens"]["seconds"]}


def sft_goal_section(steps: int) -> tuple[str, dict]:
    lora = ["--use_peft", "true", "--lora_r", "32", "--lora_alpha", "64", "--lora_target_modules", "all-linear",
            "--learning_rate", "2e-4"]  # fmt: skip
    padding_free = ["--padding_free", "true", "--max_length", "None"]  # TRL enforces no max_length without packing
    variants = [  # the first is the recipe when the throughput issue was filed, on today's traces
        ("the recipe before: LoRA r 32 (dropout 0.05), micro-batch 2 x 4, random order",
         [*lora, "--lora_dropout", "0.05", "--train_sampling_strategy", "random"]),
        ("LoRA r 32 (dropout 0), micro-batch 2 x 4, batches grouped by length", [*lora, "--lora_dropout", "0"]),
        ("now: full fine-tune, micro-batch 2 x 4, batches grouped by length", []),
        ("full fine-tune, micro-batch 8 x 1, batches grouped by length",
         ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1"]),
        ("full fine-tune, padding-free (TRL's `padding_free`), micro-batch 2 x 4, batches grouped by length",
         padding_free),
        ("full fine-tune, padding-free, micro-batch 4 x 2, batches grouped by length",
         [*padding_free, "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"]),
    ]  # fmt: skip
    recipe = 2
    lines = [
        "## 5. Goal 4: SFT warm-up",
        "",
        f"`{SFT_RECIPE.relative_to(ROOT)}` for {steps} optimizer steps of 8 traces each (the same traces, "
        "another order when grouped by length); tokens are all the tokens of the batches, as TRL counts them.",
        "",
        "| settings | seconds | tokens | tok/s | loss at the last step | peak RSS (GiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rates = []
    for label, overrides in variants:
        r = spawn({"kind": "sft", "name": label, "steps": steps, "overrides": overrides})
        rates.append(r["tokens"] / r["seconds"])
        lines.append(
            f"| {label} | {r['seconds']:.0f} | {r['tokens']:.0f} | {rates[-1]:.0f} | {r['losses'][-1]:.3f} | "
            f"{r['peak_rss_gib']:.1f} |"
        )
    lines += ["", f"**Ratio now / before: {rates[recipe] / rates[0]:.2f}** (goal >= 3).", ""]
    return "\n".join(lines), {"goal4_ratio": rates[recipe] / rates[0]}


RUNTIME_SETTINGS = [  # environment of the whole process: torch, OpenMP and glibc read it at start-up
    ("default: OpenMP threads = cores, glibc malloc's defaults", {}),
    ("one thread", {"OMP_NUM_THREADS": "1"}),
    ("threads pinned, one a core", {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}),
    ("glibc malloc keeps what it frees (mmap threshold 32 MiB, its maximum; trim threshold 4 GiB)",
     {"MALLOC_MMAP_THRESHOLD_": str(32 * 1024**2), "MALLOC_TRIM_THRESHOLD_": str(4 * 1024**3)}),
]  # fmt: skip


def runtime_section(sft_steps: int) -> str:
    """Thread and allocator settings, a lever of the throughput issue: rollouts and SFT steps under each."""
    lines = [
        "## 6. Threads and allocator",
        "",
        "The recipe's rollouts (8 rows: 2 prompts x 4, exactly 128 new tokens, `sample_tokens`) and "
        f"{sft_steps} optimizer steps of the SFT recipe, in a process started with each environment.",
        "",
        "| setting | environment | rollouts s | rollout tok/s | SFT s | SFT tok/s | SFT peak RSS (GiB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, env in RUNTIME_SETTINGS:
        gen = spawn({"kind": "generation", "name": f"runtime-gen-{label}", "backend": "sample_tokens", "prompts": 2,
                     "env": env})  # fmt: skip
        sft = spawn({"kind": "sft", "name": f"runtime-sft-{label}", "steps": sft_steps, "overrides": [], "env": env})
        shown = " ".join(f"`{k}={v}`" for k, v in env.items()) or "-"
        lines.append(
            f"| {label} | {shown} | {gen['seconds']:.1f} | {gen['tokens'] / gen['seconds']:.0f} | "
            f"{sft['seconds']:.0f} | {sft['tokens'] / sft['seconds']:.0f} | {sft['peak_rss_gib']:.1f} |"
        )
    return "\n".join([*lines, ""])


def dynamic_sampling_section(tiny_model: str) -> str:
    base = dict(kind="grpo", model_path=tiny_model, batch=16, num_generations=4, completion_length=16, steps=10,
                warmup_steps=2, trainer="ours", rewards=["first_token"], curriculum="off")  # fmt: skip
    lines = [
        "## 7. Dynamic sampling (tiny model, CPU)",
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

    header = "## 8. GPU: Qwen2.5-0.5B and Qwen2.5-1.5B architectures"
    if not torch.cuda.is_available():
        return f"{header}\n\nNo GPU on this machine: this part did not run. Run `make bench` where one is visible.\n"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tools.architectures import architecture_config
    from trl_smallrl.embedded import DEFAULT_MODEL
    from trl_smallrl.models import resolve_model

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
                case = dict(kind="grpo", name=f"{model_id}-{cap}-{trainer}", model_path=str(folder), trainer=trainer,
                            batch=8, num_generations=8, completion_length=512, steps=4, dtype="float32",
                            gpu_cap_gib=cap, config={"bf16": True, "gradient_checkpointing": True})  # fmt: skip
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
    """Run every benchmark and write docs/BENCHMARKS.md (each case in its own process, `tools.bench_cases`)."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=main.__doc__)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per trainer for the overhead")
    parser.add_argument("--grpo-steps", type=int, default=4, help="steps per embedded GRPO case (first is warm-up)")
    parser.add_argument("--sft-steps", type=int, default=6, help="optimizer steps per SFT case")
    parser.add_argument("--reference-grpo-steps", type=int, default=3,
                        help="steps per reference GRPO case (first is warm-up)")  # fmt: skip
    parser.add_argument("--runtime-sft-steps", type=int, default=2, help="SFT steps per thread/allocator setting")
    parser.add_argument("--only", nargs="+", choices=["overhead", "grpo", "generation", "eval", "sft", "runtime",
                                                      "dynamic", "gpu", "reference"],
                        help="run these sections only (beside the machine's limits) and print them")  # fmt: skip
    args = parser.parse_args(argv)
    from trl_smallrl.testing import save_tiny_model

    started = time.perf_counter()
    tiny = str(save_tiny_model(tempfile.mkdtemp(prefix="bench-tiny-")))
    peaks = {"float32": matmul_peak("float32"), "bfloat16": matmul_peak("bfloat16", n=bf16_matmul_size())}
    bandwidth = memory_bandwidth()
    sections = {
        "limits": lambda: (limits_section(peaks, bandwidth), {}),
        "overhead": lambda: (overhead_section(tiny, args.repeats), {}),
        "grpo": lambda: grpo_goal_section(args.grpo_steps),
        "generation": lambda: generation_goal_section(peaks, bandwidth),
        "eval": eval_goal_section,
        "sft": lambda: sft_goal_section(args.sft_steps),
        "runtime": lambda: (runtime_section(args.runtime_sft_steps), {}),
        "dynamic": lambda: (dynamic_sampling_section(tiny), {}),
        "gpu": lambda: (gpu_section(), {}),
        "reference": lambda: reference_section(peaks, args.reference_grpo_steps, args.sft_steps),
    }
    if args.only:  # a partial run prints its sections and leaves docs/BENCHMARKS.md, a whole run's record, alone
        texts = [sections[name]()[0] for name in ["limits", *args.only]]
        print("\n".join([f"Machine: {machine()}.", load_line(os.getloadavg(), os.cpu_count() or 1), "", *texts]))
        return
    goals: dict = {}
    texts = []
    for name in sections:
        text, found = sections[name]()
        texts.append(text)
        goals.update(found)
    today = datetime.date.today().isoformat()
    header = [
        "# Benchmarks",
        "",
        f"Written by `{COMMAND}` (`python -m tools.bench`) on {today}, in "
        f"{(time.perf_counter() - started) / 60:.1f} minutes.",
        f"Machine: {machine()}.",
        load_line(os.getloadavg(), os.cpu_count() or 1),
        "",
        "Goals of the throughput issue, from this run: completion tok/s of the recipe over plain TRL "
        f"{goals['goal1_ratio']:.2f}x (goal 3x); rollouts at {goals['goal2_share']:.0%} of their bound (goal 50%); "
        f"eval of 100 completions in {goals['goal3_seconds']:.0f} s (goal 120 s); SFT tok/s "
        f"{goals['goal4_ratio']:.2f}x (goal 3x); peak memory in each table (goal: under 12 GB).",
        "",
    ]
    atomic.write_text(args.output, "\n".join(header + texts))
    print(args.output.read_text())


if __name__ == "__main__":
    main()
