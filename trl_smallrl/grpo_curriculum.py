"""The curriculum inside a GRPO run: which prompts a step draws, and what moves the curriculum on.

TRL's hooks this relies on (signatures pinned by tests/test_trl_hooks.py):
- `_get_train_sampler`: prompts come from a `CurriculumSampler` (the level mix of `Curriculum`, each prompt
  repeated for its group), built when TRL builds the dataloader;
- `_calculate_rewards`: after the health hooks scored the batch, each prompt's accuracy (all ranks) goes to the
  curriculum once per generation batch, which may move up a level;
- `log`: the curriculum's metrics, and a check that every rank draws from the same level.
The curriculum's state is saved and restored with every checkpoint (`own_checkpoint_states`, the checkpoint mixin's
`CheckpointState` protocol); dynamic sampling's fresh prompts come from the same draw (`Curriculum.draw`).
"""

from __future__ import annotations

import logging

import torch

from trl_smallrl.curriculum import CurriculumSampler, per_prompt
from trl_smallrl.monitors import CORRECT_COLUMN, LEVEL_COLUMN

logger = logging.getLogger(__name__)


class CurriculumHooks:
    """Mixin for `GRPOTrainer`: `self.curriculum` (a `curriculum.Curriculum`, or None for TRL's own sampler)."""

    def _get_train_sampler(self, dataset=None):
        if self.curriculum is None:
            return super()._get_train_sampler(dataset)
        dataset = self.train_dataset if dataset is None else dataset
        return CurriculumSampler(
            row_levels=dataset["level"],
            curriculum=self.curriculum,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
        )

    def own_checkpoint_states(self) -> list:
        return [] if self.curriculum is None else [self.curriculum]  # saved and restored with every checkpoint

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        level, correct = self._last_health[:, LEVEL_COLUMN].tolist(), self._last_health[:, CORRECT_COLUMN]
        if self.curriculum is not None and self.model.training and not torch.isnan(correct).any():
            levels, accuracy = per_prompt(level, correct.tolist(), self.num_generations)
            self.curriculum.record_gathered(levels, accuracy, step=self.state.global_step)
        return rewards_per_func

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.curriculum is not None and self.model.training:
            logs.update(self.curriculum.metrics())
            # Every rank calls log: check that all ranks draw from the same level (a desync would mix groups).
            level = torch.tensor([float(self.curriculum.current_level)], device=self.accelerator.device)
            levels = self.accelerator.gather(level)
            logs["curriculum/levels_agree"] = float(bool((levels == levels[0]).all()))
            if not logs["curriculum/levels_agree"]:
                logger.warning("curriculum levels differ across ranks: %s", levels.tolist())
        super().log(logs, start_time)
