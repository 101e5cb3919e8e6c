"""The overfit probe: can the GRPO loop learn at all? Run it after every change to the loop (docs/RESULTS.md).

A learning loop is tuned only once it has shown it can learn: here, GRPO on 4 two-person puzzles, rewarded by
binary correctness alone, from a short SFT warm-up, must lift pass@1 on those same 4 puzzles (16 samples each at
the eval recipe's sampling) far beyond the warm-up's, with the paired 95% interval. It is not a held-out result:
it says the rollouts, rewards, advantages and updates work together, nothing about generalization.

    python -m tools.overfit_probe [--sft_dir DIR] [--out outputs/overfit_probe] [--grpo_steps 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "smollm2-135m-instruct"
SFT_STEPS = 20
PROMPTS, SAMPLES = 4, 16


def run(sft_dir: str | None, out: Path, grpo_steps: int) -> dict:
    from trl_smallrl import grpo, sft
    from trl_smallrl.configs import DataArguments, EvalArguments
    from trl_smallrl.evaluation import evaluate, results_table
    from trl_smallrl.recipe import parse_recipe
    from trl_smallrl.tasks.rows import build_dataset

    times = {}
    if sft_dir is None:
        sft_dir = str(out / "sft")
        started = time.perf_counter()
        sft.train(["--config", str(RECIPES / "sft" / "kk_warmup.yaml"), "--output_dir", sft_dir,
                   "--max_steps", str(SFT_STEPS), "--save_strategy", "no"])  # fmt: skip
        times["sft_s"] = time.perf_counter() - started
    probe = ["--levels", "2", "--train_size", str(PROMPTS)]
    started = time.perf_counter()
    grpo.train(["--config", str(RECIPES / "grpo" / "kk_curriculum.yaml"), "--model_name_or_path", sft_dir,
                "--output_dir", str(out / "grpo"), *probe, "--curriculum", "off", "--reward_funcs", "accuracy_binary",
                "--reward_weights", "1.0", "--dynamic_sampling", "none", "--max_steps", str(grpo_steps),
                "--gradient_accumulation_steps", str(PROMPTS),
                "--save_strategy", "no"])  # fmt: skip
    times["grpo_s"] = time.perf_counter() - started
    data, spec = parse_recipe(
        (DataArguments, EvalArguments),
        [
            "--config",
            str(RECIPES / "eval" / "kk_levels.yaml"),
            *probe,
            "--eval_num_samples",
            str(SAMPLES),
            "--eval_k",
            "1",
            "--eval_generation_batch_size",
            str(PROMPTS),
            "--eval_output_dir",
            str(out / "eval"),
            "--eval_models",
            f"sft={sft_dir}",
            f"grpo={out / 'grpo'}",
        ],  # fmt: skip
    )
    started = time.perf_counter()
    result = evaluate(data, spec, rows=list(build_dataset(data, "train")))  # the 4 training puzzles themselves
    times["eval_s"] = time.perf_counter() - started
    print(results_table(result), end="")
    print(" ".join(f"{key}={value:.0f}" for key, value in times.items()))
    return result


def main(argv: list[str] | None = None) -> int:
    """Warm up briefly (or take --sft_dir), overfit GRPO on 4 puzzles, print pass@1 before and after on them."""
    parser = argparse.ArgumentParser(prog="python -m tools.overfit_probe", description=main.__doc__)
    parser.add_argument("--sft_dir", help="an SFT output folder to start from (default: a 20-step warm-up)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "overfit_probe")
    parser.add_argument("--grpo_steps", type=int, default=30)
    args = parser.parse_args(argv)
    run(args.sft_dir, args.out, args.grpo_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
