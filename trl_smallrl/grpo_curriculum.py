"""The curriculum inside a GRPO run: which prompts a step draws, and what moves the curriculum on.

TRL's hooks this relies on (signatures pinned by tests/test_trl_hooks.py):
- `_generate_and_score_completions`: when TRL generates a new training batch, its prompts are drawn from the
  curriculum's current level mix (`curriculum_inputs`), in place of the batch TRL's sampler fetched. The draw
  happens at generation, not in a sampler: the dataloader fetches a batch ahead of the one being trained, so a
  sampler would draw each batch before the rewards of the batch before it were recorded, and a checkpoint would
  hold a curriculum one draw ahead of the training, which a resumed run would then skip (prompts and weights
  differed from a run that never stopped). Drawn here, the checkpoint's state is exactly what the next batch is
  drawn from, and TRL's own sampler keeps the dataloader's length, epochs and resume skipping;
- `_calculate_rewards`: after the health hooks scored the batch, each prompt's accuracy (all ranks) goes to the
  curriculum once per generation batch, which may move up a level;
- `log`: the curriculum's metrics, and a check that every rank draws from the same level.
The curriculum's state is saved and restored with every checkpoint (`own_checkpoint_states`, the checkpoint mixin's
`CheckpointState` protocol); dynamic sampling's fresh prompts come from the same draw (`curriculum_inputs`).
"""

from __future__ import annotations

import logging

import torch

from trl_smallrl.curriculum import local_groups, per_prompt
from trl_smallrl.monitors import CORRECT_COLUMN, LEVEL_COLUMN

logger = logging.getLogger(__name__)


class CurriculumHooks:
    """Mixin for `GRPOTrainer`: `self.curriculum` (a `curriculum.Curriculum`, or None for TRL's own sampler)."""

    def _generate_and_score_completions(self, inputs):
        if self.curriculum is not None and self.model.training:
            inputs = self.curriculum_inputs(len(inputs))
        return super()._generate_and_score_completions(inputs)

    def curriculum_inputs(self, batch: int) -> list[dict]:
        """A local generation batch of `batch` rows drawn from the curriculum, the same draw on every rank: the
        global batch's prompts (each repeated for its group, as TRL's sampler lays them out), this rank's slice."""
        prompts = self.curriculum.draw(
            self._rows_by_level, self.accelerator.num_processes * batch // self.num_generations
        )
        rows = local_groups(prompts, self.num_generations, self.accelerator.process_index, batch)
        return [self.train_dataset[i] for i in rows]

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
