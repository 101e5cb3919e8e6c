"""Knights & Knaves: puzzles, the logic of their statements, the verifier and the task.

Sources: (a) reasoning-gym's procedural `knights_knaves` generator (the K&K paper's sampler, Xie et al. 2024,
"On Memorization of Large Language Models in Logical Reasoning"), any number of people; (b) records in the
K&K paper / Logic-RL format (`quiz`, `names`, `solution`, `solution_text`, `solution_text_format`,
`statements` as a Python literal), from files or the Hub. The level of a puzzle is its number of people.

The statements' logic and wording are in `knights_knaves_logic`, the solver that writes step-by-step warm-up
traces in `knights_knaves_traces`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from trl_smallrl.errors import ConfigError
from trl_smallrl.tasks.base import Task, check_size, generation_seed
from trl_smallrl.tasks.knights_knaves_logic import (
    Roles,
    parse_statements,
    solution_text,
    solution_text_format,
)
from trl_smallrl.tasks.knights_knaves_traces import write_trace

LEVELS = tuple(range(2, 9))
# A word that may be a subject in an answer ("O'Brien", "Mary-Ann"), starting at a word boundary.
_WORD = re.compile(r"\b[^\W\d_][\w'-]*")
# Words that may stand before "is a knight" in an answer without being a person of the puzzle.
_NOT_PEOPLE = frozenset(
    "who which that this it he she they and also both all each everyone everybody one person someone "
    "so thus therefore then hence finally role answer solution".split()
)

SYSTEM_PROMPT = (
    "You are a helpful assistant. The user gives a logic puzzle about knights, who always tell the truth, and "
    "knaves, who always lie (the puzzle may use other words for them). Think step by step inside <think> </think> "
    "tags, then state the role of every person inside <answer> </answer> tags, e.g. "
    "<answer> (1) Zoey is a knight\n(2) Oliver is a knave </answer>."
)


# ---------------------------------------------------------------------------------------------- verifier
@functools.lru_cache(maxsize=4096)
def _answer_patterns(names: tuple[str, ...], knight: str, knave: str):
    """Role words, name index, token and subject patterns of one puzzle (cached: rewards score each many times)."""
    role_words: dict[str, bool] = {}
    for is_knight, word in ((True, knight), (False, knave), (True, "knight"), (False, "knave")):
        role_words.setdefault(word, is_knight)
        role_words.setdefault(word + "s", is_knight)
    name_index = {name.lower(): i for i, name in enumerate(names)}
    alternatives = sorted(list(name_index) + list(role_words), key=len, reverse=True)
    words = "|".join(re.escape(w) for w in alternatives)
    token = re.compile(rf"\b({words}|not|isn't|aren't)\b", re.IGNORECASE)
    # What follows a subject that is given a role ("... is not a knave"), matched at the end of each word.
    given_a_role = re.compile(rf"\s+(?:is|are)\s+(?:not\s+)?(?:an?\s+)?(?:{words})\b", re.IGNORECASE)
    return role_words, name_index, token, given_a_role


def parse_roles(answer: str, names: Sequence[str], roles: Roles) -> tuple[dict[int, set[bool]], bool]:
    """Roles an answer gives each person, and whether it names someone who is not in the puzzle.

    Accepts "(1) A is a knight\\n(2) B is a knave", "A is a knight, B is a knave, and C is a knight.",
    "A and B are knights", "A is not a knave", in any case, with the puzzle's own words or knight/knave.
    """
    role_words, name_index, token, given_a_role = _answer_patterns(tuple(names), roles.knight, roles.knave)
    given: dict[int, set[bool]] = {}
    pending: list[int] = []  # names waiting for their role ("A and B are knights")
    last: list[int] = []  # names that just got a role: "A is a knight/knave" gives A both
    negated = False
    for match in token.finditer(answer):
        word = match.group(1).lower()
        if word in name_index:
            pending.append(name_index[word])
            last, negated = [], False
        elif word in ("not", "isn't", "aren't"):
            negated = True
        else:
            for person in pending or last:
                given.setdefault(person, set()).add(role_words[word] != negated)
            last, pending, negated = pending or last, [], False
    # Someone else given a role: each word is read once and the role phrase tried only where it ends, so the scan
    # stays linear however long the answer (a backtracking "word is a knight" pattern was quadratic in it).
    foreign = any(
        word not in name_index and word not in _NOT_PEOPLE and word not in role_words
        for word in (m.group(0).lower() for m in _WORD.finditer(answer) if given_a_role.match(answer, m.end()))
    )
    return given, foreign


def grade(answer: str | None, row: Mapping[str, Any], partial_credit: bool = False) -> float:
    """1.0 when every person gets exactly their true role and nobody else is named; 0.0 otherwise.

    With `partial_credit`, the fraction of people given exactly their true role (0.0 if a stranger is named).
    """
    if answer is None:
        return 0.0
    names = [str(n) for n in row["names"]]
    truth = [bool(k) for k in row["solution"]]
    given, foreign = parse_roles(answer, names, Roles.of(row))
    if foreign or not names:
        return 0.0
    right = sum(given.get(i) == {knight} for i, knight in enumerate(truth))
    if partial_credit:
        return right / len(names)
    return 1.0 if right == len(names) else 0.0


# ------------------------------------------------------------------------------------------------- task
class KnightsKnavesTask(Task):
    """K&K puzzles, level = number of people; scored on the last <answer>...</answer>."""

    name = "knights_knaves"
    default_levels = (2, 3, 4, 5, 6)
    system_prompt = SYSTEM_PROMPT
    writes_traces = True

    def __init__(self, partial_credit: bool = False):
        self.partial_credit = partial_credit

    def generate_rows(
        self, level: int, size: int, seed: int, split: str = "train", system_prompt: str | None = None
    ) -> list[dict[str, Any]]:
        import reasoning_gym

        if level not in LEVELS:
            raise ConfigError(f"levels: {level} people is not supported; use levels from 2 to 8.")
        check_size(size)
        if size == 0:
            return []
        dataset = reasoning_gym.create_dataset(
            "knights_knaves", n_people=level, size=size, seed=generation_seed(seed, split, level)
        )
        return [self.row_from_record(to_kk_record(item), system_prompt) for item in dataset]

    def row_from_record(self, record: Mapping[str, Any], system_prompt: str | None = None) -> dict[str, Any]:
        missing = [c for c in ("quiz", "names", "solution", "statements") if c not in record]
        if missing:
            raise ConfigError(
                f"dataset_name: K&K records need the columns quiz, names, solution, statements (K&K / Logic-RL "
                f"format); missing {', '.join(missing)}."
            )
        names = [str(n) for n in record["names"]]
        solution = [bool(k) for k in record["solution"]]
        roles = Roles.of(record)
        statements = record["statements"]
        return {
            "prompt": self.prompt(str(record["quiz"]), system_prompt),
            "task": self.name,
            "level": len(names),
            "answer": record.get("solution_text") or solution_text(names, solution, roles),
            "quiz": str(record["quiz"]),
            "names": names,
            "solution": solution,
            "solution_text": record.get("solution_text") or solution_text(names, solution, roles),
            "solution_text_format": record.get("solution_text_format") or solution_text_format(names, solution, roles),
            "statements": statements if isinstance(statements, str) else repr(parse_statements(statements)),
            "knight_knave": roles.as_dict(),
        }

    def score(self, completion: Any, row: Mapping[str, Any]) -> float:
        return grade(self.extract_answer(completion), row, self.partial_credit)

    def chance_pass_at_k(self, level: int, k: int) -> float | None:
        """A uniform guess among the 2^n role assignments: pass@1 = 2^-n (0.25 at 2 people, 0.125 at 3), and k
        independent guesses pass@k = 1 - (1 - 2^-n)^k (0.68 and 0.41 at k = 4)."""
        return 1.0 - (1.0 - 2.0 ** -int(level)) ** k

    def write_trace(self, row: Mapping[str, Any]) -> str:
        return write_trace(row)


def to_kk_record(item: Mapping[str, Any]) -> dict[str, Any]:
    """A reasoning-gym item converted to the K&K paper / Logic-RL record format (what files hold)."""
    meta = item["metadata"]
    names = [str(n) for n in meta["names"]]
    solution = [bool(k) for k in meta["solution"]]
    terms = meta["knight_knave_terms"]
    roles = Roles(str(terms["knight"]), str(terms["knave"]))
    return {
        "quiz": str(item["question"]),
        "names": names,
        "knight_knave": roles.as_dict(),
        "solution": solution,
        "solution_text": solution_text(names, solution, roles),
        "solution_text_format": solution_text_format(names, solution, roles),
        "statements": repr(parse_statements(meta["statements"])),
    }
