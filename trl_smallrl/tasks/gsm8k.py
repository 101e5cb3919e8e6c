"""GSM8K-style word problems: the final number in the last `\\boxed{}`, compared as a float.

GSM8K (Cobbe et al. 2021) marks its ground truth after "####"; models are asked to box their final number.
Both sides keep only digits, '.' and '-' (so "$1,200" and "1200 dollars" read 1200), then compare as floats.
Rows come from files or Hub datasets with `question` and `answer` columns (an optional `level` column).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from trl_smallrl.completions import completion_text
from trl_smallrl.errors import ConfigError
from trl_smallrl.tasks.base import Task, bounded, last_boxed, parse_number

SYSTEM_PROMPT = (
    "You are a helpful assistant. Solve the math word problem step by step inside <think> </think> tags, then "
    "give the final number inside \\boxed{} in <answer> </answer> tags, e.g. <answer> \\boxed{42} </answer>."
)


def gold_number(answer: str) -> str:
    """The ground-truth number of a GSM8K answer: the text after the last '####', else the whole answer."""
    return answer.rsplit("####", 1)[-1].strip()


class BoxedNumberTask(Task):
    """Numbers in `\\boxed{}` (GSM8K and similar sets); level from the file's `level` column, else 0."""

    name = "gsm8k"
    default_levels = (0,)
    system_prompt = SYSTEM_PROMPT

    def row_from_record(self, record: Mapping[str, Any], system_prompt: str | None = None) -> dict[str, Any]:
        if "question" not in record or "answer" not in record:
            raise ConfigError("dataset_name: gsm8k records need the columns `question` and `answer` (GSM8K format).")
        return {
            "prompt": self.prompt(str(record["question"]), system_prompt),
            "task": self.name,
            "level": int(record.get("level") or 0),
            "answer": gold_number(str(record["answer"])),
        }

    def extract_answer(self, completion: Any) -> str | None:
        return bounded(last_boxed(completion_text(completion)))

    def score(self, completion: Any, row: Mapping[str, Any]) -> float:
        predicted = parse_number(self.extract_answer(completion))
        truth = parse_number(gold_number(str(row.get("answer", ""))))
        if predicted is None or truth is None:
            return 0.0
        return 1.0 if math.isclose(predicted, truth, rel_tol=1e-9, abs_tol=1e-9) else 0.0
