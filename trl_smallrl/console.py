"""What a long run prints: a progress bar with elapsed and remaining time, and one short line a logged step.

transformers prints every logged dictionary whole: for GRPO about 40 metrics every 1.5-4 minutes on a CPU, with no
sign of how far the run is or how long is left (with `disable_tqdm`, no bar at all). `ConsoleProgress` takes the
place of transformers' `ProgressCallback` and `PrinterCallback` (`install`): the bar where tqdm is on, and a line a
logged step in every case, e.g.

    step 12/400 | level 2 | correct 0.41 | informative 5 | think 120 tok | 95 s/step | 0:19:00 elapsed, 10:32:00 left

Every metric still goes to `trainer_state.json` and to the trackers (their callbacks are left as they are).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

# Metrics a line shows when the step logged them: (key, label, format). GRPO's first, then SFT's.
LINE_METRICS = (
    ("curriculum/level", "level", "{:.0f}"),
    ("health/accuracy", "correct", "{:.2f}"),
    ("informative_groups", "informative", "{:.0f}"),
    ("health/think_length_mean", "think", "{:.0f} tok"),
    ("loss", "loss", "{:.4g}"),
    ("mean_token_accuracy", "token accuracy", "{:.3f}"),
)


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def step_line(step: int, max_steps: int, logs: Mapping[str, float], elapsed: float, steps_done: int) -> str:
    """One logged step in a line: step / total, the metrics of `LINE_METRICS` it has, seconds a step, elapsed and
    remaining time (from the steps this launch has done, so a resumed run does not count the sittings before it)."""
    parts = [f"step {step}/{max_steps}"]
    parts += [f"{label} {fmt.format(logs[key])}" for key, label, fmt in LINE_METRICS if key in logs]
    if logs.get("step_time") is not None:
        parts.append(f"{logs['step_time']:.0f} s/step")
    if steps_done > 0:
        left = elapsed / steps_done * max(max_steps - step, 0)
        parts.append(f"{clock(elapsed)} elapsed, {clock(left)} left")
    return " | ".join(parts)


class ConsoleProgress(TrainerCallback):
    """The progress bar (where `bar`) and a short line for each logged training step, on the main process."""

    def __init__(self, bar: bool):
        self.bar_wanted = bar
        self.bar = None
        self.started, self.first_step = None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.monotonic(), state.global_step
        if self.bar_wanted and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or self.started is None:
            return
        elapsed = time.monotonic() - self.started
        if "train_runtime" in logs:
            line = f"training done: step {state.global_step}/{state.max_steps}, {clock(elapsed)} in this launch"
        elif "loss" in logs:
            line = step_line(state.global_step, state.max_steps, logs, elapsed, state.global_step - self.first_step)
        else:
            return  # an evaluation's metrics: the trackers and trainer_state.json have them
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def install(trainer) -> None:
    """Put `ConsoleProgress` in the place of transformers' printing callbacks on `trainer`."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ConsoleProgress(bar=not trainer.args.disable_tqdm))
