"""Watching a GRPO run: reasoning-health metrics, the collapse monitor, and the stop-safely guards.

Small models trained with RL fail quietly: the think block shrinks to nothing while the format reward stays
high, answers come without reasoning, completions hit the length limit, or one bad batch turns the loss into
NaN and every later checkpoint is garbage. The metrics here make those visible in every log line; the
callbacks act on them (warn, stop, roll back to the best checkpoint) and make an interrupted run leave a
checkpoint that resumes exactly.
"""

from __future__ import annotations

import logging
import math
import signal
import time

import torch
from transformers import TrainerCallback

from trl_smallrl.completions import first_tagged_answer, has_strict_format, think_text
from trl_smallrl.errors import RunStopped

logger = logging.getLogger(__name__)

# Columns of the per-completion health table that the trainer gathers across ranks.
HEALTH_COLUMNS = ("level", "correct", "think_tokens", "answer_without_reasoning", "format_ok", "truncated")
LEVEL_COLUMN, CORRECT_COLUMN = HEALTH_COLUMNS.index("level"), HEALTH_COLUMNS.index("correct")


class NonFiniteError(RunStopped):
    """The loss or a reward became NaN or infinite: the run stops so that the last checkpoint stays good."""


def completion_health(text: str, tokenizer) -> tuple[int, bool, bool]:
    """(tokens inside <think>, answer given without reasoning, strict format right) for one completion.

    An unclosed think block counts up to the end of the text (a truncated completion still reasoned).
    """
    reasoning = think_text(text)
    think_tokens = len(tokenizer(reasoning, add_special_tokens=False)["input_ids"]) if reasoning else 0
    answer_without_reasoning = bool(first_tagged_answer(text)) and think_tokens == 0
    format_ok = has_strict_format(text)
    return think_tokens, answer_without_reasoning, format_ok


def health_metrics(table: torch.Tensor) -> dict[str, float]:
    """Reasoning-health metrics of one generation batch, from the gathered table (rows = completions,
    columns = `HEALTH_COLUMNS`): think length mean/min, answer-without-reasoning rate, truncation rate and,
    where the rows have a task verifier (correct is not NaN), format-right-but-wrong rate and accuracy overall
    and per level (level -1: the row has none)."""
    if table.numel() == 0:
        return {}
    columns = dict(zip(HEALTH_COLUMNS, table.float().unbind(dim=1)))
    metrics = {
        "health/think_length_mean": columns["think_tokens"].mean().item(),
        "health/think_length_min": columns["think_tokens"].min().item(),
        "health/answer_without_reasoning": columns["answer_without_reasoning"].mean().item(),
        "health/truncation_rate": columns["truncated"].mean().item(),
    }
    if torch.isnan(columns["correct"]).any():  # rows without a task verifier: correctness unknown
        return metrics
    correct = columns["correct"] > 0  # 1.0 right, 0.0 wrong (`Task.is_correct`)
    metrics["health/format_right_but_wrong"] = ((columns["format_ok"] > 0) & ~correct).float().mean().item()
    metrics["health/accuracy"] = correct.float().mean().item()
    for level in sorted({int(v) for v in columns["level"].tolist()} - {-1}):  # -1: the row has no level
        at_level = columns["level"] == level
        metrics[f"health/accuracy_level_{level}"] = correct[at_level].float().mean().item()
    return metrics


class CollapseMonitor(TrainerCallback):
    """Acts when the think block collapses: think length below `fraction` of its early average (the mean over
    the first `warmup` logging steps) for `patience` logging steps in a row.

    `action`: "warn" logs a warning; "stop" saves a checkpoint and stops; "rollback" loads the weights of the
    best checkpoint so far (`state.best_model_checkpoint`, kept by the Trainer when `metric_for_best_model` is
    set) and goes on, or warns when there is none yet.
    """

    metric = "health/think_length_mean"

    def __init__(self, trainer, fraction: float, patience: int, warmup: int, action: str):
        self.trainer, self.fraction, self.patience, self.warmup, self.action = (
            trainer,
            fraction,
            patience,
            warmup,
            action,
        )
        self.early: list[float] = []
        self.below = 0
        self.collapses = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        value = (logs or {}).get(self.metric)
        if value is None or not math.isfinite(value):
            return
        if len(self.early) < self.warmup:
            self.early.append(value)
            return
        baseline = sum(self.early) / len(self.early)
        self.below = self.below + 1 if value < self.fraction * baseline else 0
        if self.below < self.patience:
            return
        self.below = 0
        self.collapses += 1
        message = (
            f"step {state.global_step}: think length {value:.1f} tokens has stayed below "
            f"{self.fraction:.0%} of its early average {baseline:.1f} for {self.patience} logging steps"
        )
        best = state.best_model_checkpoint
        if self.action == "stop":
            logger.warning("%s: stopping (collapse_action=stop) after saving a checkpoint.", message)
            control.should_save = True
            control.should_training_stop = True
        elif self.action == "rollback" and best:
            logger.warning("%s: rolling back to the best checkpoint %s.", message, best)
            self.trainer._load_from_checkpoint(best)
        else:
            logger.warning("%s (collapse_action=%s).", message, self.action)


class CheckpointOnSignal(TrainerCallback):
    """SIGTERM or SIGINT (a preempted job, a Ctrl-C) saves a checkpoint at the end of the current optimizer step
    and stops cleanly, so `resume_from_checkpoint` continues with no lost or repeated step. The flag is
    all-reduced across ranks each step: every rank stops at the same step even if only one got the signal.

    A second signal exits at once, but only after `grace_seconds`: under torchrun (every multi-GPU launch) one
    Ctrl-C reaches a worker twice, from the terminal and forwarded by the elastic agent, and must count once.
    The agent kills its workers `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` seconds (default 30) after it forwarded the
    signal: a step plus a save must fit in that time, so raise it for long steps (the Makefile sets 600).
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT), grace_seconds: float = 5.0):
        self.signals = signals
        self.grace_seconds = grace_seconds
        self.received: int | None = None
        self._received_at = 0.0
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is None:
            self.received, self._received_at = signum, time.monotonic()
            logger.warning("got signal %d: saving a checkpoint at the end of this step, then stopping.", signum)
            return
        if time.monotonic() - self._received_at < self.grace_seconds:
            return  # the same interruption arriving by another path (the terminal and torchrun's agent)
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second Ctrl-C: the user insists
        raise KeyboardInterrupt

    def on_train_begin(self, args, state, control, **kwargs):
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor([self.received or 0], device=args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item():
            self.received = int(flag.item())
            control.should_save = True
            control.should_training_stop = True
