"""Checkpoints a run can always continue from: written whole or not at all, and what `last` means.

transformers writes `checkpoint-N` in place (weights, optimizer, RNG, trainer state), and we add our own state
(curriculum, reset phase). A run killed during a save (a preempted job, a kill -9) used to leave a visible
`checkpoint-N` without `trainer_state.json`, which `--resume_from_checkpoint last` then picked and crashed on.
So every checkpoint is written into a hidden staging folder and renamed into place once everything is in it
(`AtomicCheckpointMixin`), and `last` takes the newest complete checkpoint, skipping with a warning any folder
that is not complete (written by an older version, or by another tool).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Protocol, runtime_checkable

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from trl_smallrl import atomic
from trl_smallrl.errors import ConfigError

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"  # hidden, so no reader (`last`, rotation, plots) ever matches a folder being written
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def is_complete(folder: str | os.PathLike) -> bool:
    """A checkpoint folder the Trainer finished: its trainer state, written last, is there."""
    return os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME))


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` folder of a run, skipping (with a warning) incomplete ones."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        folder = os.path.join(output_dir, name)
        if is_complete(folder):
            return folder
        logger.warning("skipping %s: it is not a complete checkpoint (no %s).", folder, TRAINER_STATE_NAME)
    return None


def resume_checkpoint(training_args) -> str | None:
    """`resume_from_checkpoint`: a checkpoint folder, or `last` / `true` for the newest complete one in
    output_dir (None when there is none yet, so the same recipe starts or resumes)."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "no", "none"):
        return None
    if str(value).lower() in ("last", "true", "yes", "auto"):
        return last_complete_checkpoint(training_args.output_dir)
    if not os.path.isdir(value):
        raise ConfigError(f"resume_from_checkpoint: {value!r} is not a folder; give a checkpoint folder or `last`.")
    if not is_complete(value):
        raise ConfigError(
            f"resume_from_checkpoint: {value!r} is not a complete checkpoint (no {TRAINER_STATE_NAME}); give "
            "another checkpoint folder, or `last` for the newest complete one."
        )
    return value


@runtime_checkable
class CheckpointState(Protocol):
    """State of ours that a checkpoint holds beside the Trainer's (the curriculum, the reset phase): the one way it
    gets into a checkpoint and back out of it."""

    def save_to_checkpoint(self, folder: str) -> None:
        """Write the state into `folder`, a checkpoint being staged (main process)."""

    def load_from_checkpoint(self, folder: str) -> None:
        """Restore the state saved in `folder`, on every rank, before the Trainer loads the weights and optimizer
        (a reset phase shapes the adapter that the saved weights load into); a folder without it is left alone."""


class AtomicCheckpointMixin:
    """Put before a `Trainer` subclass: each `checkpoint-N` appears only when everything is in it, with our state.

    The Trainer (and TRL above it) writes the checkpoint under `_get_output_dir`, which points into a hidden
    staging folder while a checkpoint is saved; each `CheckpointState` (`checkpoint_states`: the trainer's own
    and its callbacks that are one) adds its state there, every rank waits for the others, and the main process
    renames the finished folder into place, then rotates old checkpoints (`save_total_limit`) as the Trainer would
    have. `train(resume_from_checkpoint=folder)` gives each state its saved part back before the Trainer resumes.
    """

    _staging_root: str | None = None

    def _get_output_dir(self, trial) -> str:
        if self._staging_root is not None:
            return self._staging_root
        return super()._get_output_dir(trial)

    def own_checkpoint_states(self) -> list[CheckpointState]:
        """The trainer's own states (a subclass adds its curriculum, say); callbacks are found by `checkpoint_states`."""
        return []

    def checkpoint_states(self) -> list[CheckpointState]:
        callbacks = [c for c in self.callback_handler.callbacks if isinstance(c, CheckpointState)]
        return [*self.own_checkpoint_states(), *callbacks]

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if isinstance(resume_from_checkpoint, str | os.PathLike):
            for state in self.checkpoint_states():
                state.load_from_checkpoint(str(resume_from_checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)  # what a save killed at this step left
        self.accelerator.wait_for_everyone()
        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                for state in self.checkpoint_states():
                    state.save_to_checkpoint(staged)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every rank's files (RNG states, shards) are in
        if self.args.should_save:
            best = self.state.best_model_checkpoint
            if best and os.path.normpath(best) == os.path.normpath(staged):
                self.state.best_model_checkpoint = final  # the Trainer saw the staged path
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
            atomic.replace_folder(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()
