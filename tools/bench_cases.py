"""The cases of `make bench` (`tools.bench`), each run in a fresh Python process (`spawn`) so that its peak resident
memory is its own: `python -m tools.bench_cases CASE.json` runs one and writes its result beside the file."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRPO_RECIPE = ROOT / "recipes" / "smollm2-135m-instruct" / "grpo" / "kk_curriculum.yaml"
SFT_RECIPE = ROOT / "recipes" / "smollm2-135m-instruct" / "sft" / "kk_warmup.yaml"


class FirstTokenReward:
    """Bench-only reward: 1 when the first completion token id is a multiple of 8, else 0.

    Registered as `first_token` (`rewards.register_reward`) inside the bench's case processes.
    A random model hits it about one time in eight, so about 59% of groups of 4 have zero variance: the
    cold-start situation dynamic sampling is for, reproducible without a trained model.
    """

    __name__ = "first_token"

    def __call__(self, completions, completion_ids, **kwargs):
        return [1.0 if ids and ids[0] % 8 == 0 else 0.0 for ids in completion_ids]


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _timed(base, before_34: bool = False):
    """A subclass of `base` that records generation time and token counts of each generation batch; with
    `before_34`, the CPU step as issue 34 found it: micro-batches of masked groups alone still run their forward and
    backward, and scoring is TRL's over every column of the micro-batch (its fused LM head on every position), the
    prompts shared as before."""

    class Timed(base):
        bench_records: list

        if before_34:

            def _skips_masked_micro_batches(self):
                return False

            def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
                from trl import GRPOTrainer

                from trl_smallrl.adapters import plain_model
                from trl_smallrl.shared_prefix import prefixes_shared

                plain = plain_model(self.accelerator, model)
                with prefixes_shared(getattr(plain, plain.base_model_prefix)):
                    return GRPOTrainer._get_per_token_logps_and_entropies(self, model, *args, **kwargs)

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


def step_clock(step_times: list[float]):
    """A callback that appends each optimizer step's wall time to `step_times`."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.start)

    return StepClock()


def _train_timed(trainer, warm: int) -> dict:
    """Train with a step clock; medians and sums over the steps after `warm`."""
    import torch

    step_times: list[float] = []
    trainer.bench_records = []
    trainer.add_callback(step_clock(step_times))
    trainer.train()
    records = trainer.bench_records[warm:]
    steps = step_times[warm:]
    logs = [entry for entry in trainer.state.log_history if "loss" in entry][warm:]
    return {
        "step_s": statistics.median(steps),
        "total_s": sum(steps),
        "generate_s": statistics.median(r["generate_s"] for r in records),
        "completion_tokens": statistics.median(r["completion_tokens"] for r in records),
        "completion_tokens_total": sum(r["completion_tokens"] for r in records),
        "prompt_tokens": statistics.median(r["prompt_tokens"] for r in records),
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "trained_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "peak_rss_gib": _peak_rss_gib(),
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None,
        "rollouts": trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps,
        "num_generations": trainer.num_generations,
        "informative_groups": statistics.mean(e.get("informative_groups", float("nan")) for e in logs),
        "zero_std": statistics.mean(e.get("frac_reward_zero_std", 0.0) for e in logs),
        "zero_after": statistics.mean(
            e.get("dynamic_sampling/uninformative_after", e.get("frac_reward_zero_std", 0.0)) for e in logs
        ),
    }


def grpo_case(case: dict) -> dict:
    """A GRPO configuration on the tiny or the embedded model: plain TRL, or ours from its fields or the recipe."""
    import torch
    import trl

    from trl_smallrl import configs, grpo, rewards
    from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer
    from trl_smallrl.models import resolve_model
    from trl_smallrl.recipe import parse_recipe
    from trl_smallrl.run import prepare_model_args
    from trl_smallrl.tasks.rows import build_dataset

    rewards.register_reward("first_token", lambda **params: FirstTokenReward())
    work = Path(case["work_dir"])
    model_path = case.get("model_path") or resolve_model(case["model"])
    if case["trainer"] == "recipe":  # a recipe (the embedded one unless named) as users run it, on the case's model
        argv = ["--config", case.get("recipe", str(GRPO_RECIPE)), "--model_name_or_path", model_path, "--output_dir", str(work / "out"),
                "--max_steps", str(case["steps"]), "--save_strategy", "no", "--report_to", "none",
                *case.get("overrides", [])]  # fmt: skip
        script, training, model_args = parse_recipe(
            (configs.GRPOScriptArguments, configs.GRPOConfig, trl.ModelConfig), argv
        )
        trainer_class = _timed(SmallRLGRPOTrainer, case.get("before_34", False))
        trainer = grpo.build_trainer(script, training, model_args, trainer_class=trainer_class)
        return _train_timed(trainer, case.get("warmup_steps", 1))
    length = case["completion_length"]
    common = dict(
        output_dir=str(work / "out"),
        max_steps=case["steps"],
        per_device_train_batch_size=case["batch"],
        num_generations=case["num_generations"],
        max_completion_length=length,
        learning_rate=1e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        use_cpu=not torch.cuda.is_available(),
        **case.get("config", {}),
    )
    if case.get("fixed_length", True):
        common["generation_kwargs"] = {"min_new_tokens": length}  # fixed lengths: both sides do the same work
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
    if torch.cuda.is_available() and case.get("gpu_cap_gib"):
        total = torch.cuda.get_device_properties(0).total_memory / 1024**3
        torch.cuda.set_per_process_memory_fraction(min(1.0, case["gpu_cap_gib"] / total))
        torch.cuda.reset_peak_memory_stats()
    result = _train_timed(trainer, case.get("warmup_steps", 1))
    result["gradient_checkpointing"] = bool(training.gradient_checkpointing)
    return result


def _embedded_model_and_prompts(levels: list[int], per_level: int, split: str = "train"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_smallrl.embedded import DEFAULT_MODEL
    from trl_smallrl.models import resolve_model
    from trl_smallrl.tasks import get_task

    path = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    task = get_task("knights_knaves")
    rows = [row for level in levels for row in task.generate_rows(level, per_level, seed=0, split=split)]
    ids = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True)["input_ids"] for r in rows]
    return model, tokenizer, ids


def _generate_rows(model, tokenizer, prompt_ids, num_samples, max_new_tokens, fixed, temperature=1.0, top_p=1.0):
    """transformers' `generate` on left-padded prompts, each sampled `num_samples` times: the completions' ids."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens if fixed else None, num_return_sequences=num_samples,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + list(p) for p in prompt_ids])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompt_ids])[:, None]).long()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    completions = []
    for row in out[:, width:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t == tokenizer.eos_token_id), len(row))
        completions.append(row[:end])
    return completions


def generation_case(case: dict) -> dict:
    """Goal 2: rollouts of the recipe's shape (prompts x 4 samples, 128 new tokens each, fixed) by one backend."""
    import torch

    from trl_smallrl.decoding import sample_tokens

    model, tokenizer, ids = _embedded_model_and_prompts([2], case["prompts"])
    torch.manual_seed(0)
    times = []
    dtype = torch.bfloat16 if case["backend"].endswith("bf16") else None  # the compute of a run under bf16 autocast
    for _ in range(2):
        if case["backend"].startswith("sample_tokens"):
            rows = [p for p in ids for _ in range(4)]
            times.append(_seconds(lambda rows=rows: sample_tokens(model, rows, max_new_tokens=128, eos_ids=[],
                                                                  pad_id=tokenizer.pad_token_id, compute_dtype=dtype)))  # fmt: skip
        else:
            times.append(_seconds(lambda: _generate_rows(model, tokenizer, ids, 4, 128, fixed=True)))
    return {"seconds": min(times), "tokens": len(ids) * 4 * 128, "peak_rss_gib": _peak_rss_gib()}


def eval_case(case: dict) -> dict:
    """Goal 3: 25 held-out K&K prompts (5 a level, 2-6 people) x 4 samples of at most 384 tokens, as the eval
    recipe samples them (temperature 0.7, top_p 0.95), with one backend."""
    import torch

    from trl_smallrl.decoding import sample_tokens

    model, tokenizer, ids = _embedded_model_and_prompts([2, 3, 4, 5, 6], 5, split="eval")
    torch.manual_seed(0)
    start = time.perf_counter()
    if case["backend"] == "sample_tokens":
        rows = [p for p in ids for _ in range(4)]
        completions = sample_tokens(model, rows, max_new_tokens=384, eos_ids=[tokenizer.eos_token_id],
                                    pad_id=tokenizer.pad_token_id, temperature=0.7, top_p=0.95)  # fmt: skip
    else:  # the eval's former path: transformers' generate, 5 prompts a call
        completions = []
        for start_row in range(0, len(ids), 5):
            completions += _generate_rows(model, tokenizer, ids[start_row : start_row + 5], 4, 384, fixed=False,
                                          temperature=0.7, top_p=0.95)  # fmt: skip
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "completions": len(completions), "tokens": sum(len(c) for c in completions),
            "peak_rss_gib": _peak_rss_gib()}  # fmt: skip


def sft_case(case: dict) -> dict:
    """An SFT recipe (the embedded warm-up unless named) for a few steps with given overrides: tokens, traces,
    seconds and losses."""
    from trl_smallrl import sft

    step_times: list[float] = []
    build = sft.build_trainer

    def timed_build(*args):
        trainer = build(*args)
        trainer.add_callback(step_clock(step_times))
        return trainer

    sft.build_trainer = timed_build  # this subprocess only: the run loop builds the trainer
    argv = ["--config", case.get("recipe", str(SFT_RECIPE)), "--output_dir", str(Path(case["work_dir"]) / "out"), "--max_steps",
            str(case["steps"]), "--logging_steps", "1", "--save_strategy", "no", *case["overrides"]]  # fmt: skip
    trainer = sft.train(argv)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    tokens = [e["num_tokens"] for e in logs]
    traces = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps * len(step_times)
    return {"seconds": sum(step_times), "tokens": tokens[-1], "traces": traces, "losses": [e["loss"] for e in logs],
            "params": sum(p.numel() for p in trainer.model.parameters()), "peak_rss_gib": _peak_rss_gib()}  # fmt: skip


CASE_KINDS = {"grpo": grpo_case, "generation": generation_case, "eval": eval_case, "sft": sft_case}


def spawn(case: dict) -> dict:
    """Run one case in a fresh Python process and return its result."""
    with tempfile.TemporaryDirectory() as work:
        case = {**case, "work_dir": work}
        spec = Path(work) / "case.json"
        spec.write_text(json.dumps(case))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
               **case.get("env", {})}  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "tools.bench_cases", str(spec)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bench case {case['name']} failed:\n{proc.stderr[-3000:]}")
        return json.loads((Path(work) / "result.json").read_text())


def main(argv: list[str] | None = None) -> None:
    """Run the case a JSON file describes and write its result.json beside it."""
    path = Path((sys.argv[1:] if argv is None else argv)[0])
    case = json.loads(path.read_text())
    result = CASE_KINDS[case["kind"]](case)
    (Path(case["work_dir"]) / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
