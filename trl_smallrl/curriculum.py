"""A self-advancing curriculum over task levels (K&K: 2 -> 3 -> 4 -> 5 -> 6 people) inside one GRPO run.

Why: a 0.5B model trained on a 3-7 people mix from the start stays at the minimum reward, while a manual
2 -> 6 curriculum, reloading checkpoints between stages, trains (Logic-RL practitioners).
Here the run starts at the first level and moves up when the rolling accuracy over the last `window`
prompts of the current level reaches `threshold`, or after `max_steps_per_level` steps; `replay_fraction`
keeps drawing prompts from the levels already passed. "mixed" draws every level equally from the start
(the Logic-RL setup, for comparison).

Every process must agree on the level at every step, or the prompt groups of one step would differ between
ranks: the trainer gathers the per-prompt statistics of all ranks, and `record_gathered` records them and then
broadcasts rank 0's state as a guard. The state (level, windows, RNG, draw positions, start steps) goes into
each checkpoint through `state_dict` / `load_state_dict`.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from trl_smallrl import atomic
from trl_smallrl.configs import CURRICULUM_MODES
from trl_smallrl.errors import ConfigError, unknown_name

logger = logging.getLogger(__name__)

STATE_FILE = "curriculum_state.json"


class Curriculum:
    """Which levels to draw prompts from, decided from the accuracy the model reaches on them."""

    def __init__(
        self,
        levels: Sequence[int],
        mode: str = "sequential",
        threshold: float = 0.7,
        window: int = 64,
        max_steps_per_level: int = 0,
        replay_fraction: float = 0.0,
        seed: int = 0,
    ):
        if not levels:
            raise ConfigError("levels: the curriculum needs at least one level, e.g. [2, 3, 4, 5, 6].")
        if len(set(levels)) != len(levels):
            raise ConfigError(f"levels: {list(levels)} repeats a level; list each level once, easiest first.")
        if mode not in CURRICULUM_MODES:
            raise unknown_name("curriculum", mode, CURRICULUM_MODES)
        self.levels = [int(level) for level in levels]
        self.mode, self.threshold, self.window = mode, float(threshold), int(window)
        self.max_steps_per_level, self.replay_fraction = int(max_steps_per_level), float(replay_fraction)
        self.seed = seed
        self.stage = 0  # index of the current level in `levels`
        self.start_steps: dict[int, int] = {self.levels[0]: 0}
        self.results: dict[int, deque[float]] = {level: deque(maxlen=self.window) for level in self.levels}
        self.draw_positions: dict[int, int] = {level: 0 for level in self.levels}
        self.rng = random.Random(seed)

    @classmethod
    def from_args(cls, data_args, levels: Sequence[int] | None = None, seed: int = 0) -> Curriculum:
        """A curriculum from the `curriculum*` fields of `configs.CurriculumArguments` (a GRPO recipe's)."""
        return cls(
            levels=levels if levels is not None else data_args.levels,
            mode=data_args.curriculum,
            threshold=data_args.curriculum_threshold,
            window=data_args.curriculum_window,
            max_steps_per_level=data_args.curriculum_max_steps,
            replay_fraction=data_args.curriculum_replay,
            seed=seed,
        )

    @property
    def current_level(self) -> int:
        return self.levels[self.stage]

    def level_weights(self) -> dict[int, float]:
        """Probability of drawing each level for the next prompt."""
        if self.mode != "sequential":
            return {level: 1.0 / len(self.levels) for level in self.levels}
        earlier = self.levels[: self.stage]
        if not earlier or self.replay_fraction == 0.0:
            return {self.current_level: 1.0}
        weights = {level: self.replay_fraction / len(earlier) for level in earlier}
        weights[self.current_level] = 1.0 - self.replay_fraction
        return weights

    def accuracy(self, level: int) -> float | None:
        window = self.results.get(level)
        return sum(window) / len(window) if window else None

    def record(self, levels: Sequence[int], correct: Sequence[float], step: int) -> bool:
        """Add per-prompt correctness (gathered from every rank); returns True when the level advanced.

        Give one entry per prompt (e.g. the mean correctness of its generations, see `per_prompt`), in the
        same order on every rank, so every rank takes the same decision.
        """
        for level, value in zip(levels, correct, strict=True):
            if int(level) in self.results:
                self.results[int(level)].append(float(value))
        if self.mode != "sequential" or self.stage == len(self.levels) - 1:
            return False
        window = self.results[self.current_level]
        mastered = len(window) == self.window and sum(window) / len(window) >= self.threshold
        out_of_time = self.max_steps_per_level > 0 and step - self.start_steps[self.current_level] >= (
            self.max_steps_per_level
        )
        if not (mastered or out_of_time):
            return False
        self.stage += 1
        self.start_steps[self.current_level] = int(step)
        return True

    def draw(self, rows_by_level: Mapping[int, Sequence[int]], count: int) -> list[int]:
        """`count` distinct-as-possible row indices from the current level mix.

        Each level's rows are walked in a fresh shuffled order per pass (seeded by seed, level and pass), so a
        level is exhausted before any of its rows repeats; the walk positions are part of the state.
        """
        weights = {level: w for level, w in self.level_weights().items() if rows_by_level.get(level)}
        if not weights:
            raise ConfigError(f"levels: the dataset has no rows at the curriculum's levels {self.levels}.")
        chosen_levels = self.rng.choices(list(weights), weights=list(weights.values()), k=count)
        indices = []
        for level in chosen_levels:
            rows = rows_by_level[level]
            position = self.draw_positions.get(level, 0)
            order = list(rows)
            random.Random(f"{self.seed}-{level}-{position // len(rows)}").shuffle(order)
            indices.append(order[position % len(rows)])
            self.draw_positions[level] = position + 1
        return indices

    def metrics(self) -> dict[str, float]:
        """`curriculum/level`, `curriculum/accuracy_level_{n}` (rolling) and `curriculum/start_step_level_{n}`."""
        metrics: dict[str, float] = {"curriculum/level": float(self.current_level)}
        for level in self.levels:
            accuracy = self.accuracy(level)
            if accuracy is not None:
                metrics[f"curriculum/accuracy_level_{level}"] = accuracy
        for level, step in self.start_steps.items():
            metrics[f"curriculum/start_step_level_{level}"] = float(step)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: level, windows, RNG, draw positions and start steps (keys as strings)."""
        version, internal, gauss = self.rng.getstate()
        return {
            "levels": list(self.levels),
            "mode": self.mode,
            "stage": self.stage,
            "start_steps": {str(k): v for k, v in self.start_steps.items()},
            "results": {str(k): list(v) for k, v in self.results.items()},
            "draw_positions": {str(k): v for k, v in self.draw_positions.items()},
            "rng": [version, list(internal), gauss],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if [int(level) for level in state["levels"]] != self.levels:
            raise ConfigError(
                f"levels: the checkpoint's curriculum has levels {state['levels']} but the recipe says "
                f"{self.levels}; resume with the same levels."
            )
        self.stage = int(state["stage"])
        self.start_steps = {int(k): int(v) for k, v in state["start_steps"].items()}
        self.results = {level: deque(maxlen=self.window) for level in self.levels}
        for key, values in state["results"].items():
            self.results[int(key)].extend(float(v) for v in values)
        self.draw_positions = {int(k): int(v) for k, v in state["draw_positions"].items()}
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def record_gathered(self, levels: Sequence[int], correct: Sequence[float], step: int) -> bool:
        """`record` the statistics gathered from every rank, then take rank 0's state on every rank.

        Call it on every rank at the same step with the same gathered lists; the broadcast is a guard, so that a
        rank that drifted (a different float sum, a different RNG call) still continues from rank 0's decision.
        """
        advanced = self.record(levels, correct, step)
        broadcast_from_rank0(self)
        return advanced

    def save_to_checkpoint(self, folder) -> None:
        """Write the state into a checkpoint folder atomically (`checkpoints.CheckpointState`)."""
        atomic.write_json(os.path.join(folder, STATE_FILE), self.state_dict())

    def load_from_checkpoint(self, folder) -> None:
        """Restore the state saved in a checkpoint folder; a folder without one leaves it as it is."""
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            return
        with open(path) as handle:
            self.load_state_dict(json.load(handle))
        logger.info("curriculum restored from %s: level %s", folder, self.current_level)


def per_prompt(levels: Sequence[int], correct: Sequence[float], num_generations: int) -> tuple[list, list]:
    """Collapse per-completion lists (each prompt's generations consecutive, as TRL orders them) per prompt."""
    if len(levels) != len(correct) or len(levels) % num_generations:
        raise ValueError(f"{len(levels)} completions do not form groups of {num_generations}")
    groups = range(0, len(levels), num_generations)
    return [int(levels[i]) for i in groups], [sum(correct[i : i + num_generations]) / num_generations for i in groups]


def _distributed():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def broadcast_from_rank0(curriculum: Curriculum) -> None:
    """Give every rank rank 0's curriculum state (a guard after a decision taken from gathered statistics)."""
    dist = _distributed()
    if dist is None:
        return
    shared = [curriculum.state_dict() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(shared, src=0)
    curriculum.load_state_dict(shared[0])


def levels_to_rows(dataset, curriculum: Curriculum) -> dict[int, list[int]]:
    """The training rows' indices at each level, in row order: what `Curriculum.draw` draws from. Every level of
    the curriculum must have rows (checked when the trainer is built, before the model loads)."""
    if dataset is None:
        raise ConfigError("train_dataset: a curriculum draws from the training rows; give train_dataset.")
    rows: dict[int, list[int]] = {}
    for index, level in enumerate(dataset["level"]):
        rows.setdefault(int(level), []).append(index)
    missing = [level for level in curriculum.levels if level not in rows]
    if missing:
        raise ConfigError(f"levels: the training data has no rows at levels {missing}; generate or add them.")
    return rows


def local_groups(prompt_indices: Sequence[int], num_generations: int, rank: int, batch: int) -> list[int]:
    """The row indices of one rank's part of a generation batch: each prompt repeated for its group, consecutively,
    as TRL's `RepeatSampler` lays a batch out, and rank `rank`'s slice of `batch` rows (accelerate gives each rank
    the next `batch` indices of the sampler's stream)."""
    rows = [index for index in prompt_indices for _ in range(num_generations)]
    return rows[rank * batch : (rank + 1) * batch]
