"""Knights & Knaves statements: their logic (truth under a partial assignment) and their wording.

A statement is a nested tuple: ('telling-truth', i), ('lying', i), ('not', s), ('and', s, ...), ('or', s, ...),
('->', a, b), ('<=>', a, b). Person i is a knight exactly when statement i is true. Puzzles may call knights and
knaves by other words (saint/sinner, hero/villain, ...): `Roles` carries the puzzle's own.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from typing import Any

Statement = tuple
ATOMS = ("telling-truth", "lying")
DEFAULT_TERMS = ("knight", "knave")
_TERMS_IN_QUIZ = re.compile(r"inhabited only by (\w+?)s and (\w+?)s\b", re.IGNORECASE)


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
