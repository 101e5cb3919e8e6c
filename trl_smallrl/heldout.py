"""The held-out learning curve: pass@1 on the recipe's eval rows before training and at every checkpoint, logged with
the step.

The training reward says how the model does on the prompts it trains on, at the curriculum's current level; whether
it learns to reason shows on puzzles it never trains on, at every level. So at each checkpoint `HeldOutCurve`
samples `heldout_num_samples` completions for each row of the recipe's eval split (`eval_size` a level, the same rows
`smallrl-eval` takes first with the same `task_seed`), at the eval's sampling (temperature 0.7, top-p 0.95, the
eval's fixed seed, so every checkpoint is scored on the same draws and two points differ by the model alone), and
logs per level `heldout/pass@1_level_N` and its 95% half-width `heldout/pass@1_ci95_level_N`, and
`heldout/format`, and `heldout/pass@1` over all its rows (the mean over levels: each has `eval_size` rows). The
values join the step's own metrics (trainer_state.json, the trackers, the checkpoint; step 0's point, the model the
run starts from, is logged alone), so a resumed run has the points before it; `smallrl-plot` draws them beside the
training correctness and the level.

A long RL run can peak and then decline (a 1.5B model on math gains in its first 50-100 steps and degrades after
150-200; the reference run's curve at 3 people, 50 puzzles x 2, went 0.32 -> 0.57 by step 180 and back to 0.36 by
step 260 while it trained at 4 people). With `metric_for_best_model` naming one of these metrics (`heldout/pass@1`
say), each point also keeps the Trainer's record of the best checkpoint (`state.best_metric`, `best_global_step`),
as its own evaluation would: the Trainer then records `best_model_checkpoint` in trainer_state.json, rotation under
`save_total_limit` never deletes it, and `collapse_action: rollback` returns to it. The curve's rows are the first
`eval_size` rows of the eval split, which an eval of more rows includes: a checkpoint chosen on them reads a little
high there.

It samples on the main process from the model as it is, in its own random stream (the training's random state is
left as it was, so a run with the curve trains as a run without it), with the LoRA update added into the base on a
CPU as the rollouts do. Sharded weights (ZeRO-3, FSDP) are not whole on one process: refused at launch
(`engines.check_engine_combinations`).
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from transformers import TrainerCallback

from trl_smallrl.adapters import adapter_added_to_base
from trl_smallrl.configs import EvalArguments
from trl_smallrl.evaluation import ALL_LEVELS, sampling_settings, score_samples, summarize
from trl_smallrl.generation import sample_with_model, with_template_prefill

logger = logging.getLogger(__name__)

PREFIX = "heldout/"


def curve_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """`heldout/pass@1_level_N`, its 95% half-width and `heldout/format` from scored samples (`score_samples`)."""
    summary = summarize(records, [1])
    metrics = {}
    for level, stats in summary.items():
        if level.isdigit():
            metrics[f"{PREFIX}pass@1_level_{level}"] = stats["pass@1"]
            metrics[f"{PREFIX}pass@1_ci95_level_{level}"] = stats["pass@1_ci95"]
    if ALL_LEVELS in summary:
        metrics[f"{PREFIX}pass@1"] = summary[ALL_LEVELS]["pass@1"]
        metrics[f"{PREFIX}format"] = summary[ALL_LEVELS]["format_rate"]
    return metrics


def best_metric_keys(levels: Sequence[int]) -> list[str]:
    """The curve's metrics that `metric_for_best_model` may name, for a curve over `levels`."""
    return [f"{PREFIX}pass@1", *(f"{PREFIX}pass@1_level_{level}" for level in levels), f"{PREFIX}format"]


def record_best(args, state, value: float | None) -> None:
    """Record this step as the best checkpoint (`state.best_metric`, `best_global_step`, which the Trainer's save
    turns into `best_model_checkpoint`) when `value` beats `state.best_metric` by `greater_is_better`; a tie keeps
    the earlier step. `value` is the main process's figure, sent to every rank, so that all agree on the step (the
    Trainer's save waits for every rank when a best step is set)."""
    (value,) = broadcast_object_list([value])
    if value is None:
        return
    better = operator.gt if args.greater_is_better else operator.lt
    if state.best_metric is None or better(value, state.best_metric):
        state.best_metric, state.best_global_step = value, state.global_step
        logger.info(
            "best held-out checkpoint so far: step %d (%s %.3f)", state.global_step, args.metric_for_best_model, value
        )


class HeldOutCurve(TrainerCallback):
    """Held-out pass@1 before the first step and at each step that saves a checkpoint (every `every` steps of them,
    where given), added to the metrics that step logs (module docstring).

    `rows`: the eval split's rows (the task's row schema); the metrics go into the trainer's own metric lists
    (`_metrics["train"]`, which TRL's SFT and GRPO trainers average into the next log), so they are logged at the
    step the checkpoint holds.
    """

    def __init__(
        self, trainer, rows: Sequence[Mapping[str, Any]], num_samples: int, max_new_tokens: int, every: int = 0
    ):
        self.trainer, self.rows, self.every = trainer, list(rows), every
        chat_template_kwargs = getattr(trainer.args, "chat_template_kwargs", None)
        self.settings = sampling_settings(
            EvalArguments(
                eval_num_samples=num_samples,
                eval_k=[1],
                eval_max_new_tokens=max_new_tokens,
                eval_generation_batch_size=max(1, 100 // num_samples),  # 100 completions share one KV cache
                chat_template_kwargs=chat_template_kwargs,
            )
        )

    def on_train_begin(self, args, state, control, **kwargs):
        """The curve's first point, at step 0: the model the run starts from (the warm-up), so that the curve shows
        what training adds to it on the same draws. Logged on its own (no step's metrics to join); a resumed run
        has it in its history already."""
        if state.global_step == 0 and self.rows:
            metrics = self.point(state)
            if metrics:
                self.trainer.log(metrics)

    def on_step_end(self, args, state, control, **kwargs):
        if not control.should_save or not self.rows or (self.every and state.global_step % self.every):
            return
        metrics = self.point(state)
        for key, value in metrics.items():
            self.trainer._metrics["train"][key].append(value)
        if (args.metric_for_best_model or "").startswith(PREFIX):
            record_best(args, state, metrics.get(args.metric_for_best_model))

    def on_train_end(self, args, state, control, **kwargs):
        if (
            state.is_world_process_zero
            and state.best_model_checkpoint
            and (args.metric_for_best_model or "").startswith(PREFIX)
        ):
            logger.info(
                "the best held-out checkpoint: %s (%s %.3f)",
                state.best_model_checkpoint,
                args.metric_for_best_model,
                state.best_metric,
            )

    def point(self, state) -> dict[str, float]:
        """The curve's metrics at this step, sampled on the main process (empty on the others, which wait)."""
        metrics = {}
        if state.is_world_process_zero:
            started = time.perf_counter()
            metrics = curve_metrics(score_samples(self.rows, self.sample()))
            levels = ", ".join(
                f"{key.rsplit('_', 1)[1]} people {value:.3f}"
                for key, value in metrics.items()
                if "pass@1_level" in key
            )
            logger.info(
                "held-out pass@1 at step %d: %s (%.0f s)", state.global_step, levels, time.perf_counter() - started
            )
        self.trainer.accelerator.wait_for_everyone()
        return metrics

    def sample(self):
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        tokenizer = self.trainer.processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
        prompts = [row["prompt"] for row in self.rows]
        training = model.training
        model.eval()
        try:
            cuda = [torch.cuda.current_device()] if model.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda), torch.no_grad():  # manual_seed seeds CUDA too: fork it
                torch.manual_seed(self.settings.seed)
                if model.device.type == "cpu" and hasattr(model, "peft_config"):
                    with adapter_added_to_base(model) as plain:
                        samples = sample_with_model(plain, tokenizer, prompts, self.settings, desc="held-out")
                else:
                    samples = sample_with_model(model, tokenizer, prompts, self.settings, desc="held-out")
        finally:
            model.train(training)
        return with_template_prefill(samples, tokenizer, self.settings)
