"""`make bench`, section 9: what a step of the reference run (`make reference`) costs on this machine.

GRPO seconds per rollout of the reference recipe from its warm-up, the step as issue 34 found it (micro-batches of
masked groups alone scored, TRL's fused LM head on every position) and as it is now, and SFT seconds per trace of
its warm-up, each beside the fp32 matmul bound: the night's length is these figures times its 10240 rollouts and 2560 traces.
"""

from __future__ import annotations

from tools.bench_cases import ROOT, spawn

REFERENCE_GRPO = ROOT / "recipes" / "smollm2-135m-instruct" / "grpo" / "kk_reference.yaml"
REFERENCE_SFT = ROOT / "recipes" / "smollm2-135m-instruct" / "sft" / "kk_reference.yaml"
REFERENCE_WARMUP = ROOT / "outputs" / "reference" / "sft"  # the reference SFT stage's model (`make reference`)


def reference_section(peaks: dict[str, float], grpo_steps: int, sft_steps: int) -> tuple[str, dict]:
    """The reference run's costs: GRPO seconds per rollout, as issue 34 found the step and now (micro-batches of masked
    groups alone skip their forward and backward; the LM head scores completion tokens alone), and SFT seconds per
    trace, each beside the fp32 matmul bound."""
    peak = peaks["float32"] * 1e9
    lines = [
        "## 9. The reference run's step: GRPO seconds per rollout, SFT seconds per trace",
        "",
        f"GRPO: `{REFERENCE_GRPO.relative_to(ROOT)}` (8 prompts x 4, at most 448 tokens, LoRA r 16) from its "
        f"warm-up, {grpo_steps - 1} steps after one warm-up step (medians), no held-out curve; the same seed, so "
        "both rows sample the same rollouts. The bound is the fp32 matmul peak over 2N FLOPs a generated token "
        "plus 4N a trained token (forward, and a backward without the frozen weights' gradients; a group's prompt "
        "counted once), N = the model's parameters.",
        "",
        "| GRPO step | step (s) | generation (s) | informative groups | s / rollout | bound s / rollout | "
        "peak RSS (GiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    found = {}
    if not (REFERENCE_WARMUP / "config.json").exists():
        lines.append(f"| not run: no warm-up at `{REFERENCE_WARMUP.relative_to(ROOT)}` (`make reference` makes it) |"
                     " | | | | | |")  # fmt: skip
    else:
        base = {"kind": "grpo", "trainer": "recipe", "recipe": str(REFERENCE_GRPO), "model_path": str(REFERENCE_WARMUP),
                "steps": grpo_steps, "overrides": ["--heldout_num_samples", "0"]}  # fmt: skip
        rows = (("as issue 34 found it: every micro-batch scored, TRL's LM head on every position", True),
                ("masked micro-batches skipped, padding columns cut, LM head on completion tokens alone", False))  # fmt: skip
        for label, before in rows:
            r = spawn({**base, "name": f"reference-grpo-{'before' if before else 'after'}", "before_34": before})
            trained = r["completion_tokens"] + r["prompt_tokens"] / r["num_generations"]
            bound = (2 * r["completion_tokens"] + 4 * trained) * r["params"] / peak / r["rollouts"]
            found[before] = r["step_s"] / r["rollouts"]
            lines.append(
                f"| {label} | {r['step_s']:.1f} | {r['generate_s']:.1f} | {r['informative_groups']:.1f} of "
                f"{r['rollouts'] // r['num_generations']} | {found[before]:.2f} | {bound:.2f} | {r['peak_rss_gib']:.1f} |"
            )
        lines += ["", f"**Ratio now / before: {found[False] / found[True]:.2f}** (goal <= 0.5).", ""]
    r = spawn({"kind": "sft", "name": "reference-sft", "steps": sft_steps, "recipe": str(REFERENCE_SFT),
               "overrides": ["--save_strategy", "no"]})  # fmt: skip
    per_trace = r["seconds"] / r["traces"]
    bound = 6 * r["params"] * (r["tokens"] / r["traces"]) / peak
    lines += [
        f"SFT: `{REFERENCE_SFT.relative_to(ROOT)}` (full fine-tune, 2 traces a step), {sft_steps} steps; the bound "
        "is 6N FLOPs a token at the fp32 peak.",
        "",
        "| SFT | seconds | traces | tokens a trace | s / trace | bound s / trace | peak RSS (GiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| the reference warm-up | {r['seconds']:.0f} | {r['traces']} | {r['tokens'] / r['traces']:.0f} | "
        f"{per_trace:.2f} | {bound:.2f} | {r['peak_rss_gib']:.1f} |",
        "",
    ]
    return "\n".join(lines), {"reference_grpo_ratio": found[False] / found[True] if found else None}
