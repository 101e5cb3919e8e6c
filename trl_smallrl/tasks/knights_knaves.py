"""Knights & Knaves: puzzles, verifier, solver and step-by-step traces.

Sources: (a) reasoning-gym's procedural `knights_knaves` generator (the K&K paper's sampler, Xie et al. 2024,
"On Memorization of Large Language Models in Logical Reasoning"), any number of people; (b) records in the
K&K paper / Logic-RL format (`quiz`, `names`, `solution`, `solution_text`, `solution_text_format`,
`statements` as a Python literal), from files or the Hub. The level of a puzzle is its number of people.

The trace writer exists for supervised warm-up of very small models. A 135M model imitated a case-by-case
layout (assume all roles, evaluate every statement) but got its truth values wrong, so here every line is
checkable on its own: it restates the claim, names the roles it depends on, and draws one conclusion
(unit propagation), with a case split on the most-quoted unknown person only when nothing follows directly.
The trace therefore grows with the number of deductions, not with the 2^n assignments.
"""

from __future__ import annotations

import ast
import functools
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from trl_smallrl.errors import ConfigError
from trl_smallrl.tasks.base import Task, check_size, generation_seed

# A statement is a nested tuple: ('telling-truth', i), ('lying', i), ('not', s), ('and', s, ...),
# ('or', s, ...), ('->', a, b), ('<=>', a, b). Person i is a knight exactly when statement i is true.
Statement = tuple
ATOMS = ("telling-truth", "lying")
DEFAULT_TERMS = ("knight", "knave")
LEVELS = tuple(range(2, 9))
_TERMS_IN_QUIZ = re.compile(r"inhabited only by (\w+?)s and (\w+?)s\b", re.IGNORECASE)
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


# ---------------------------------------------------------------------------------------------- roles and text
class Roles:
    """The puzzle's own words for knight and knave (saint/sinner, hero/villain, ...) and their articles."""

    def __init__(self, knight: str = DEFAULT_TERMS[0], knave: str = DEFAULT_TERMS[1]):
        self.knight, self.knave = knight.lower(), knave.lower()

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Roles:
        terms = row.get("knight_knave")
        if isinstance(terms, Mapping) and terms.get("knight") and terms.get("knave"):
            return cls(str(terms["knight"]), str(terms["knave"]))
        match = _TERMS_IN_QUIZ.search(str(row.get("quiz") or ""))
        return cls(match.group(1), match.group(2)) if match else cls()

    def word(self, knight: bool) -> str:
        return self.knight if knight else self.knave

    def a(self, knight: bool) -> str:
        """'a knight', 'an angel'."""
        word = self.word(knight)
        return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"

    def as_dict(self) -> dict[str, str]:
        """The `knight_knave` column of the K&K format."""
        return {
            "knight": self.knight,
            "knave": self.knave,
            "a_knight": self.a(True),
            "a_knave": self.a(False),
            "Knight": self.knight.capitalize(),
            "Knave": self.knave.capitalize(),
        }


def render(statement: Statement, names: Sequence[str], roles: Roles) -> str:
    """A statement in plain words, with the phrasing of reasoning-gym's puzzles."""
    op = statement[0]
    if op in ATOMS:
        return f"{names[statement[1]]} is {roles.a(op == 'telling-truth')}"
    if op == "not":
        inner = statement[1]
        if inner[0] in ATOMS:
            return f"{names[inner[1]]} is {roles.a(inner[0] == 'lying')}"
        return f"it is not the case that {_part(inner, names, roles)}"
    parts = [_part(sub, names, roles) for sub in statement[1:]]
    if op in ("and", "or"):
        return f" {op} ".join(parts)
    if op == "->":
        return f"if {parts[0]} then {parts[1]}"
    if op == "<=>":
        return f"{parts[0]} if and only if {parts[1]}"
    raise ValueError(f"unknown statement operator {op!r}")


def _part(statement: Statement, names: Sequence[str], roles: Roles) -> str:
    text = render(statement, names, roles)
    return text if statement[0] in ATOMS else f"({text})"


def solution_text(names: Sequence[str], solution: Sequence[bool], roles: Roles) -> str:
    """'A is a knight, B is a knave, and C is a knight.' (the K&K `solution_text`)."""
    claims = [f"{name} is {roles.a(bool(knight))}" for name, knight in zip(names, solution)]
    if len(claims) == 1:
        return claims[0] + "."
    return ", ".join(claims[:-1]) + ", and " + claims[-1] + "."


def solution_text_format(names: Sequence[str], solution: Sequence[bool], roles: Roles) -> str:
    """'(1) A is a knight\\n(2) B is a knave' (the K&K `solution_text_format`)."""
    return "\n".join(f"({i}) {name} is {roles.a(bool(k))}" for i, (name, k) in enumerate(zip(names, solution), 1))


# ---------------------------------------------------------------------------------------------------- logic
def evaluate(statement: Statement, roles_known: Sequence[bool | None]) -> bool | None:
    """Truth of a statement under a partial assignment (Kleene logic: None while it still depends on unknowns)."""
    op = statement[0]
    if op in ATOMS:
        role = roles_known[statement[1]]
        return None if role is None else role == (op == "telling-truth")
    if op == "not":
        value = evaluate(statement[1], roles_known)
        return None if value is None else not value
    values = [evaluate(sub, roles_known) for sub in statement[1:]]
    if op == "->":
        values = [None if values[0] is None else not values[0], values[1]]
        op = "or"
    if op == "and":
        return False if False in values else (None if None in values else True)
    if op == "or":
        return True if True in values else (None if None in values else False)
    if op == "<=>":
        return None if None in values else values[0] == values[1]
    raise ValueError(f"unknown statement operator {op!r}")


def people_in(statement: Statement) -> list[int]:
    """Indices of the people a statement mentions, in increasing order."""
    if statement[0] in ATOMS:
        return [statement[1]]
    return sorted({person for sub in statement[1:] for person in people_in(sub)})


def parse_statements(statements: Any) -> tuple[Statement, ...]:
    """Statements as nested tuples, from the tuples themselves or their Python-literal text (K&K files)."""
    if isinstance(statements, str):
        statements = ast.literal_eval(statements)

    def freeze(value):
        if isinstance(value, list | tuple):
            return tuple(freeze(v) for v in value)
        return int(value) if not isinstance(value, str) else value

    return freeze(statements)


def all_solutions(statements: Sequence[Statement]) -> list[tuple[bool, ...]]:
    """Every consistent assignment, by enumeration (ground truth for tests; the trace writer does not enumerate)."""
    n = len(statements)
    return [
        roles
        for roles in itertools.product((True, False), repeat=n)
        if all(evaluate(statements[i], roles) == roles[i] for i in range(n))
    ]


# ---------------------------------------------------------------------------------------- solver and trace
class Contradiction(Exception):
    """The current assumptions make some statement impossible."""


class _Deduction:
    """Unit propagation with case splits (DPLL) over the people's roles, writing one line per step."""

    def __init__(self, statements: Sequence[Statement], names: Sequence[str], roles: Roles):
        self.statements, self.names, self.roles = statements, list(names), roles
        self.lines: list[str] = []

    def is_(self, person: int, knight: bool) -> str:
        return f"{self.names[person]} is {self.roles.a(knight)}"

    def claim(self, person: int) -> str:
        return f'"{render(self.statements[person], self.names, self.roles)}"'

    def context(self, person: int, known: list[bool | None], skip: set[int]) -> str:
        """The known roles a claim depends on, e.g. 'Emma is a knight and Noah is a knave'."""
        mentioned = people_in(self.statements[person])
        facts = [self.is_(p, known[p]) for p in mentioned if known[p] is not None and p not in skip]
        return " and ".join(facts)

    def forced(self, person: int, known: list[bool | None]) -> dict[int, bool] | None:
        """Roles the claim of a person with a known role forces on the unknown people it mentions.

        Returns None when no completion makes the claim take the value the speaker's role demands.
        """
        statement, wanted = self.statements[person], known[person]
        unknown = [p for p in people_in(statement) if known[p] is None]
        fits = []
        for values in itertools.product((True, False), repeat=len(unknown)):
            trial = list(known)
            for p, v in zip(unknown, values):
                trial[p] = v
            if evaluate(statement, trial) == wanted:
                fits.append(values)
        if not fits:
            return None
        return {p: fits[0][i] for i, p in enumerate(unknown) if all(fit[i] == fits[0][i] for fit in fits)}

    def propagate(self, known: list[bool | None], settled: set[int]) -> None:
        """Draw every direct conclusion, one line each; raise Contradiction when a claim cannot hold."""
        while True:
            if not self._step(known, settled):
                return

    def _step(self, known: list[bool | None], settled: set[int]) -> bool:
        people = range(len(self.names))
        # 1. A speaker whose role is known and whose claim is now decided: check it.
        for p in people:
            if known[p] is None or p in settled:
                continue
            value = evaluate(self.statements[p], known)
            if value is None:
                continue
            settled.add(p)
            context = self.context(p, known, skip={p})
            because = f" Since {context}, it is {_tv(value)}." if context else ""
            line = f"{self.is_(p, known[p])}, so {self.claim(p)} must be {_tv(known[p])}.{because}"
            if value != known[p]:
                self.lines.append(f"{line} Contradiction!")
                raise Contradiction
            self.lines.append(f"{line} OK.")
            return True
        # 2. A speaker whose role is known: the claim's required truth fixes some unknown people.
        for p in people:
            if known[p] is None or p in settled:
                continue
            forced = self.forced(p, known)
            context = self.context(p, known, skip={p})
            head = f"{self.is_(p, known[p])}, so {self.claim(p)} is {_tv(known[p])}"
            head += f", and {context}" if context else ""
            if forced is None:
                self.lines.append(f"{head}. That is impossible. Contradiction!")
                raise Contradiction
            if forced:
                for q, role in forced.items():
                    known[q] = role
                if evaluate(self.statements[p], known) is not None:
                    settled.add(p)
                self.lines.append(f"{head}. So {' and '.join(self.is_(q, r) for q, r in forced.items())}.")
                return True
        # 3. A speaker whose role is unknown but whose claim is decided: the claim's truth is the role.
        for p in people:
            if known[p] is not None:
                continue
            value = evaluate(self.statements[p], known)
            if value is None:
                continue
            known[p] = value
            settled.add(p)
            self.lines.append(
                f"Since {self.context(p, known, skip={p})}, {self.claim(p)} is {_tv(value)}. "
                f"So {self.names[p]}, who says it, is {self.roles.a(value)}."
            )
            return True
        return False

    def most_mentioned_unknown(self, known: list[bool | None]) -> int:
        """The person to assume about: the unknown one the claims mention most (the earliest on ties).

        Measured on 700 puzzles of 2-8 people, this cuts the longest traces by a quarter to a third against
        simply taking the first unknown person, because an assumption about a much-quoted person decides
        more claims at once.
        """
        mentions = {p: 0 for p, role in enumerate(known) if role is None}
        for statement in self.statements:
            for p in people_in(statement):
                if p in mentions:
                    mentions[p] += 1
        return max(mentions, key=lambda p: (mentions[p], -p))

    def search(self, known: list[bool | None], settled: set[int]) -> list[bool | None]:
        """Propagate, then split on the most-mentioned unknown person (knight first); returns a consistent
        assignment of everyone."""
        self.propagate(known, settled)
        if None not in known:
            return known
        person = self.most_mentioned_unknown(known)
        before = (list(known), set(settled))
        self.lines.append(f"Assume {self.is_(person, True)}.")
        known[person] = True
        try:
            return self.search(known, settled)
        except Contradiction:
            known[:], settled = list(before[0]), set(before[1])
        self.lines.append(f"So {self.names[person]} is not {self.roles.a(True)}: {self.is_(person, False)}.")
        facts = [self.is_(p, k) for p, k in enumerate(known) if k is not None]
        if facts:
            self.lines.append(f"We still know: {', '.join(facts)}.")
        known[person] = False
        return self.search(known, settled)


def _tv(value: bool) -> str:
    return "true" if value else "false"


def solve(statements: Sequence[Statement], names: Sequence[str] | None = None, roles: Roles | None = None):
    """Solve a puzzle from its statements by deduction; returns (roles as bools, the deduction lines).

    Raises ValueError when the statements admit no consistent assignment.
    """
    statements = parse_statements(statements)
    names = list(names) if names is not None else [f"P{i + 1}" for i in range(len(statements))]
    deduction = _Deduction(statements, names, roles or Roles())
    try:
        known = deduction.search([None] * len(statements), set())
    except Contradiction:
        raise ValueError("the statements admit no consistent assignment") from None
    return tuple(bool(k) for k in known), deduction.lines


def write_trace(row: Mapping[str, Any]) -> str:
    """A supervised warm-up completion for a K&K row: '<think>\\n...\\n</think>\\n<answer> ... </answer>'."""
    names = [str(n) for n in row["names"]]
    roles = Roles.of(row)
    solution, lines = solve(row["statements"], names, roles)
    lines.append("Every claim holds, so the roles are settled.")
    answer = solution_text_format(names, solution, roles)
    return "<think>\n" + "\n".join(lines) + "\n</think>\n<answer>\n" + answer + "\n</answer>"


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
