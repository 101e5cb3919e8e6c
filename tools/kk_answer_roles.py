"""How often a model's K&K answers give every person the same role, beside how often the true answers do.

A model that has learned a shortcut instead of the logic ("everyone is a knight") can still score above chance
on small puzzles, and its pass@k will not show it. This reads an eval's samples
(`<eval_output_dir>/samples.jsonl.gz`, each line a puzzle's completions with the row they answer; the recipe is
read only for `eval_output_dir`) and reports per model and level: the answers that give every person exactly one
role, the share of them in which all roles are equal, and that share among the true answers of the same rows.

    python -m tools.kk_answer_roles --config recipes/smollm2-135m-instruct/eval/kk_levels.yaml
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trl_smallrl.configs import DataArguments, EvalArguments
from trl_smallrl.eval_samples import SAMPLES_FILE, samples_by_model
from trl_smallrl.evaluation import ALL_LEVELS, level_order
from trl_smallrl.recipe import parse_recipe
from trl_smallrl.tasks import get_task
from trl_smallrl.tasks.knights_knaves import parse_roles
from trl_smallrl.tasks.knights_knaves_logic import Roles


def assigned_roles(answer: str | None, row: Mapping[str, Any]) -> list[bool] | None:
    """The role the answer gives each person, or None unless it gives every person exactly one role."""
    if answer is None:
        return None
    given, foreign = parse_roles(answer, [str(n) for n in row["names"]], Roles.of(row))
    roles = [given.get(i, set()) for i in range(len(row["names"]))]
    if foreign or any(len(r) != 1 for r in roles):
        return None
    return [next(iter(r)) for r in roles]


def same_role_shares(lines: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """Per level (and over all rows, under "all") of one model's samples lines: answers with one role each, the share
    of them all-equal, and the truth's share."""
    task = get_task("knights_knaves")
    counts: dict[str, list[int]] = {}  # level -> [answers, all-equal answers, rows, all-equal truths]
    for line in lines:
        row = line["row"]
        if get_task(row["task"]).name != task.name:
            raise ValueError(f"the samples are of the task {row['task']!r}; this check reads K&K samples only.")
        truth_equal = len(set(row["solution"])) == 1
        answered = [roles for text in line["completions"] if (roles := assigned_roles(task.extract_answer(text), row))]
        for level in (str(line["level"]), ALL_LEVELS):
            tally = counts.setdefault(level, [0, 0, 0, 0])
            tally[0] += len(answered)
            tally[1] += sum(len(set(roles)) == 1 for roles in answered)
            tally[2] += 1
            tally[3] += truth_equal
    return {
        level: {
            "answers": answers,
            "same_role_share": equal / answers if answers else None,
            "true_same_role_share": truths_equal / n_rows,
        }
        for level, (answers, equal, n_rows, truths_equal) in counts.items()
    }


def main(argv: list[str] | None = None) -> None:
    _, eval_args = parse_recipe((DataArguments, EvalArguments), argv)
    by_model = samples_by_model(Path(eval_args.eval_output_dir) / SAMPLES_FILE)
    print("| model | level | answers with one role each | all the same role | among true answers |")
    print("|---|---|---:|---:|---:|")
    for label, lines in by_model.items():
        shares = same_role_shares(lines)
        for level in sorted(shares, key=level_order):
            stats = shares[level]
            share = "-" if stats["same_role_share"] is None else f"{stats['same_role_share']:.3f}"
            print(f"| {label} | {level} | {stats['answers']} | {share} | {stats['true_same_role_share']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
