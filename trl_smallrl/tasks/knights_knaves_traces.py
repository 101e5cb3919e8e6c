"""Knights & Knaves warm-up traces: a solver that writes every deduction as a line a small model can imitate.

The trace writer exists for supervised warm-up of very small models. A 135M model imitated a case-by-case
layout (assume all roles, evaluate every statement) but got its truth values wrong, so here every line is
checkable on its own: it restates the claim, names the roles it depends on, and draws one conclusion
(unit propagation), with a case split on the most-quoted unknown person only when nothing follows directly.
The trace therefore grows with the number of deductions, not with the 2^n assignments.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from trl_smallrl.tasks.knights_knaves_logic import (
    Roles,
    Statement,
    evaluate,
    parse_statements,
    people_in,
    render,
    solution_text_format,
)


class Contradiction(Exception):
    """The current assumptions make some statement impossible."""


class _Deduction:
    """Unit propagation with case splits (DPLL) over the people's roles, writing one line per step."""

    def __init__(self, statements: Sequence[Statement], names: Sequence[str], roles: Roles, first: int | None = None):
        self.statements, self.names, self.roles = statements, list(names), roles
        self.first = first  # the person of the first case split, when not the most-mentioned one
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
        person = (
            self.first if self.first is not None and known[self.first] is None else self.most_mentioned_unknown(known)
        )
        self.first = None
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


def solve(
    statements: Sequence[Statement],
    names: Sequence[str] | None = None,
    roles: Roles | None = None,
    first: int | None = None,
):
    """Solve a puzzle from its statements by deduction; returns (roles as bools, the deduction lines).

    `first` makes the first case split assume about that person instead of the most-mentioned one: the trace a
    model that started elsewhere should have gone on to write (tools/kk_trace_departures.py).
    Raises ValueError when the statements admit no consistent assignment.
    """
    statements = parse_statements(statements)
    names = list(names) if names is not None else [f"P{i + 1}" for i in range(len(statements))]
    deduction = _Deduction(statements, names, roles or Roles(), first)
    try:
        known = deduction.search([None] * len(statements), set())
    except Contradiction:
        raise ValueError("the statements admit no consistent assignment") from None
    return tuple(bool(k) for k in known), deduction.lines


def write_trace(row: Mapping[str, Any], first: int | None = None) -> str:
    """A supervised warm-up completion for a K&K row: '<think>\\n...\\n</think>\\n<answer> ... </answer>'
    (`first`: see `solve`)."""
    names = [str(n) for n in row["names"]]
    roles = Roles.of(row)
    solution, lines = solve(row["statements"], names, roles, first)
    lines.append("Every claim holds, so the roles are settled.")
    answer = solution_text_format(names, solution, roles)
    return "<think>\n" + "\n".join(lines) + "\n</think>\n<answer>\n" + answer + "\n</answer>"
