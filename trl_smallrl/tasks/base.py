"""The task abstraction every reward and dataset stands on.

A task turns raw items (generated procedurally, or records of a file in the task's own format) into rows of
the shared schema: `prompt` (system + user messages), `task` (registry name), `level` (an int difficulty),
`answer` (ground truth as text), plus task columns. It verifies a completion against such a row. Rewards
look the row's task up by its `task` column, so one batch may mix tasks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from trl_smallrl.completions import completion_text, last_tagged_answer
from trl_smallrl.errors import ConfigError

SPLITS = ("train", "eval")
# Procedural generators seed item i of a dataset with `seed + i` (reasoning-gym does so), so each
# (task_seed, split, level) owns a block of SEED_STRIDE consecutive seeds: blocks never overlap, hence the
# train and eval items can never share a seed, whatever the sizes (up to SEED_STRIDE items per level).
SEED_STRIDE = 2**32
MAX_LEVEL = 1024
# No answer a task grades is this long (an 8-person K&K answer is about 300 characters): a longer one is graded
# wrong without being read, so that a policy writing a 100 KB answer block cannot stall a step in a verifier
# whose cost grows faster than its input (reasoning-gym's, math-verify's).
MAX_ANSWER_CHARS = 4096
FULL_CREDIT = 1.0  # a score at or above this is a right answer (`Task.is_correct`); below it, partial credit

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. First think about the reasoning process step by step, then give the final "
    "answer. Write the reasoning inside <think> </think> tags and the final answer inside <answer> </answer> "
    "tags, i.e., <think> reasoning here </think>\n<answer> answer here </answer>."
)


def generation_seed(task_seed: int, split: str, level: int) -> int:
    """The first seed of the block that (task_seed, split, level) owns; see SEED_STRIDE."""
    if split not in SPLITS:
        raise ConfigError(f"split: unknown value {split!r}; use one of {', '.join(SPLITS)}.")
    if not 0 <= level < MAX_LEVEL:
        raise ConfigError(f"levels: {level} is out of range; use levels from 0 to {MAX_LEVEL - 1}.")
    if task_seed < 0:
        raise ConfigError(f"task_seed: {task_seed} is negative; use a seed >= 0.")
    return ((task_seed * len(SPLITS) + SPLITS.index(split)) * MAX_LEVEL + level) * SEED_STRIDE


def check_size(size: int, field: str = "size") -> None:
    if not 0 <= size <= SEED_STRIDE:
        raise ConfigError(f"{field}: {size} rows per level is out of range; use 0 to {SEED_STRIDE}.")


def bounded(answer: str | None) -> str | None:
    """`answer`, or None when it is longer than any answer a task grades (`MAX_ANSWER_CHARS`)."""
    return answer if answer is not None and len(answer) <= MAX_ANSWER_CHARS else None


def last_boxed(text: str) -> str | None:
    r"""The content of the last `\boxed{...}` with balanced braces, else None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for position in range(begin, len(text)):
        char = text[position]
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return text[begin:position]
            depth -= 1
    return None


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?|-?\.\d+")


def parse_number(text: str | None) -> float | None:
    """GSM8K-style number: keep digits, '.' and '-' (drops '$', ',', units), then read it as a float."""
    if text is None:
        return None
    kept = re.sub(r"[^0-9.\-]", "", text)
    match = _NUMBER.search(kept)
    if match is None:
        return None
    try:
        return float(match.group(0))
    except ValueError:
        return None


class Task:
    """One task family: its rows, its levels and its verifier. Subclasses fill in the task-specific parts."""

    name: str = ""
    default_levels: tuple[int, ...] = (0,)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    writes_traces: bool = False  # whether `write_trace` has a solver behind it

    def prompt(self, question: str, system_prompt: str | None = None) -> list[dict[str, str]]:
        """Conversational prompt of the shared schema: the recipe's system prompt (else the task's) + question."""
        return [
            {"role": "system", "content": system_prompt if system_prompt is not None else self.system_prompt},
            {"role": "user", "content": question},
        ]

    def generate_rows(
        self, level: int, size: int, seed: int, split: str = "train", system_prompt: str | None = None
    ) -> list[dict[str, Any]]:
        """`size` rows at `level`; `seed` is the task seed, mapped to disjoint per-split seeds."""
        raise ConfigError(
            f"task: {self.name!r} has no generator; give `dataset_name` (a file or Hub dataset) instead."
        )

    def row_from_record(self, record: Mapping[str, Any], system_prompt: str | None = None) -> dict[str, Any]:
        """A row of the shared schema from one record of a file in this task's format."""
        raise NotImplementedError

    def extract_answer(self, completion: str) -> str | None:
        """The final answer in a completion: by default the last `<answer>...</answer>` (None when too long)."""
        return bounded(last_tagged_answer(completion_text(completion)))

    def score(self, completion: Any, row: Mapping[str, Any]) -> float:
        """1.0 when the completion's answer is right, 0.0 otherwise; never raises, whatever the text."""
        raise NotImplementedError

    def is_correct(self, completion: Any, row: Mapping[str, Any]) -> bool:
        """Whether the completion earns full credit (`score` 1.0): the one meaning of "right" that the accuracy
        and cosine rewards, dynamic sampling, the curriculum, the health metrics, eval and the teacher share."""
        return self.score(completion, row) >= FULL_CREDIT

    def write_trace(self, row: Mapping[str, Any]) -> str:
        """A supervised warm-up completion for `row`, written from its ground truth by the task's own solver.

        Only tasks with a solver write traces (`writes_traces`); for the others, sample verified traces from a
        teacher model (`smallrl-traces --teacher`).
        """
        raise ConfigError(
            f"task: {self.name!r} has no solver that writes traces; sample verified ones from a teacher with "
            f"`smallrl-traces --teacher MODEL --task {self.name} --out traces.jsonl` and set traces_file."
        )

    def chance_pass_at_k(self, level: int, k: int) -> float | None:
        """pass@k of a uniform random guess at `level`, where the task has a finite answer space (None where not):
        the figure every accuracy must be set against."""
        return None

    def levels_or_default(self, levels: Iterable[int] | None) -> list[int]:
        return list(levels) if levels else list(self.default_levels)
