"""Any reasoning-gym task by name (syllogism, propositional_logic, ...), its curriculum level as our level.

reasoning-gym (Stojanovski et al. 2025) ships a generator, a verifier (`score_answer`) and a curriculum for
each of its tasks. Level n sets every attribute of the task's curriculum to its n-th value (0 = easiest,
capped at each attribute's last value); a task without a curriculum has level 0 only. The item's metadata
is kept as a JSON string column, since its shape differs from task to task.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from trl_smallrl.errors import ConfigError
from trl_smallrl.tasks.base import Task, check_size, generation_seed


@functools.cache
def _scorer(name: str):
    from reasoning_gym.factory import get_score_answer_fn

    return get_score_answer_fn(name)


class ReasoningGymTask(Task):
    """A reasoning-gym dataset: generated rows, scored by its own `score_answer` on the last <answer>."""

    def __init__(self, name: str):
        from reasoning_gym.factory import has_curriculum

        self.name = name
        self.default_levels = (0, 1, 2) if has_curriculum(name) else (0,)

    def config(self, level: int, size: int, seed: int):
        from reasoning_gym.factory import DATASETS, create_curriculum, has_curriculum

        if not has_curriculum(self.name):
            if level != 0:
                raise ConfigError(f"levels: reasoning-gym task {self.name!r} has no curriculum; use levels [0].")
            return DATASETS[self.name][1](size=size, seed=seed)
        curriculum = create_curriculum(self.name)
        curriculum.set_global_level(level)
        return curriculum.generate_configuration({"size": size, "seed": seed})

    def generate_rows(
        self, level: int, size: int, seed: int, split: str = "train", system_prompt: str | None = None
    ) -> list[dict[str, Any]]:
        from reasoning_gym.factory import DATASETS

        check_size(size)
        if size == 0:
            return []
        config = self.config(level, size, generation_seed(seed, split, level))
        if hasattr(config, "validate"):
            config.validate()
        dataset = DATASETS[self.name][0](config=config)
        return [self.row_from_record({**item, "level": level}, system_prompt) for item in dataset]

    def row_from_record(self, record: Mapping[str, Any], system_prompt: str | None = None) -> dict[str, Any]:
        if "question" not in record or "answer" not in record:
            raise ConfigError(f"dataset_name: {self.name} records need the columns `question` and `answer`.")
        metadata = record.get("metadata") or {}
        return {
            "prompt": self.prompt(str(record["question"]), system_prompt),
            "task": self.name,
            "level": int(record.get("level") or 0),
            "answer": "" if record["answer"] is None else str(record["answer"]),
            "metadata": metadata if isinstance(metadata, str) else json.dumps(metadata, default=str),
        }

    def score(self, completion: Any, row: Mapping[str, Any]) -> float:
        answer = self.extract_answer(completion)
        if answer is None:
            return 0.0
        try:
            metadata = row.get("metadata") or "{}"
            entry = {
                "question": "",
                "answer": row.get("answer"),
                "metadata": json.loads(metadata) if isinstance(metadata, str) else dict(metadata),
            }
            return float(_scorer(self.name)(answer, entry))
        except Exception:  # a task's own verifier may fail on odd text; a reward must not raise
            return 0.0
