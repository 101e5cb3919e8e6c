"""Competition math (MATH, NuminaMath, ...): answers checked by math-verify exactly as TRL's `accuracy_reward`.

Rows come from files or Hub datasets with a `problem` column and the ground truth in `solution` (LaTeX,
usually with a `\\boxed{}`) or `answer`. A ground truth that math-verify cannot parse scores 0.0 here
(TRL's reward returns None to skip the example).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trl_smallrl.completions import completion_text
from trl_smallrl.errors import ConfigError
from trl_smallrl.tasks.base import MAX_ANSWER_CHARS, Task, bounded, last_boxed

SYSTEM_PROMPT = (
    "You are a helpful assistant. Solve the problem step by step inside <think> </think> tags, then give the "
    "final answer in LaTeX inside \\boxed{} in <answer> </answer> tags."
)


class MathTask(Task):
    """LaTeX answers verified by math-verify through `trl.rewards.accuracy_reward`."""

    name = "math"
    default_levels = (0,)
    system_prompt = SYSTEM_PROMPT

    def row_from_record(self, record: Mapping[str, Any], system_prompt: str | None = None) -> dict[str, Any]:
        truth = record.get("solution", record.get("answer"))
        if "problem" not in record or truth is None:
            raise ConfigError("dataset_name: math records need the columns `problem` and `solution` (or `answer`).")
        level = record.get("level") or 0
        if isinstance(level, str):  # MATH writes "Level 3"
            digits = "".join(ch for ch in level if ch.isdigit())
            level = int(digits) if digits else 0
        return {
            "prompt": self.prompt(str(record["problem"]), system_prompt),
            "task": self.name,
            "level": int(level),
            "answer": str(truth),
        }

    def extract_answer(self, completion: Any) -> str | None:
        return bounded(last_boxed(completion_text(completion)))

    def score(self, completion: Any, row: Mapping[str, Any]) -> float:
        from trl.rewards import accuracy_reward

        # math-verify reads the end of the completion, where the final \boxed answer is: its regex extraction over a
        # whole 100 KB completion takes seconds.
        messages = [[{"role": "assistant", "content": completion_text(completion)[-MAX_ANSWER_CHARS:]}]]
        try:
            reward = accuracy_reward(messages, solution=[str(row.get("answer", ""))])[0]
        except Exception:  # math-verify's parser may fail on adversarial text; a reward must not raise
            return 0.0
        return float(reward or 0.0)
