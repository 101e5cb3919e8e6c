"""Where a model's K&K reasoning leaves the solver's: the first line of each completion that differs from the trace
the solver would have written from the same start, and what kind of slip it is.

pass@k says how often a warm-up model is right, not which step it cannot imitate. The solver's trace is
deterministic, so a completion that reasons right reproduces it line for line; the first line that differs is
where the model went wrong. A model may start by assuming about another person than the solver would (the solver
takes the most-mentioned one); that start is not wrong, so the expected trace is rebuilt from the model's own
first assumption and the start is counted apart. Kinds of the first differing line:

- misquote: the line quotes another claim than the solver's line does (a claim copied wrong from the puzzle, or
  put in the wrong speaker's mouth);
- truth value: the line is the solver's but for its words true/false;
- step: another deduction than the solver's (a wrong rule, a wrong conclusion, a wrong person);
- ended: the completion's think block stops early or runs on past the solver's last line.

It reads an eval's samples (`<eval_output_dir>/samples.jsonl.gz`, each line a puzzle's completions with the row
they answer and whether each is right; the recipe is read only for `eval_output_dir`) and reports per model and
level.

    python -m tools.kk_trace_departures --config recipes/smollm2-135m-instruct/eval/kk_levels.yaml
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trl_smallrl.configs import DataArguments, EvalArguments
from trl_smallrl.eval_samples import SAMPLES_FILE, samples_by_model
from trl_smallrl.evaluation import ALL_LEVELS, level_order
from trl_smallrl.recipe import parse_recipe
from trl_smallrl.tasks import get_task
from trl_smallrl.tasks.knights_knaves_traces import write_trace

KINDS = ("exact", "misquote", "truth value", "step", "ended")
_FIRST_ASSUMPTION = re.compile(r"Assume (.+?) is ")
_QUOTE = re.compile(r'"([^"]*)"')
_TRUTH = re.compile(r"\b(true|false)\b")


def think_lines(text: str) -> list[str]:
    """The lines of a completion's think block (after '<think>', before '</think>' or the end)."""
    body = text.split("</think>")[0]
    body = body.split("<think>", 1)[1] if "<think>" in body else body
    return [line.strip() for line in body.strip("\n").split("\n")]


def departure(text: str, row: Mapping[str, Any]) -> tuple[str, bool]:
    """(kind of the first line that leaves the solver's trace, whether the model's first assumption was another
    person than the solver's)."""
    lines = think_lines(text)
    names = [str(n) for n in row["names"]]
    start = _FIRST_ASSUMPTION.match(lines[0]) if lines else None
    first = names.index(start.group(1)) if start and start.group(1) in names else None
    solver = think_lines(write_trace(row))
    other_start = first is not None and solver[0] != lines[0]
    if other_start:
        solver = think_lines(write_trace(row, first))
    for line, expected in zip(lines, solver, strict=False):
        if line == expected:
            continue
        quoted, expected_quoted = _QUOTE.findall(line), _QUOTE.findall(expected)
        if quoted and expected_quoted and quoted != expected_quoted:
            return "misquote", other_start
        if _TRUTH.sub("", line) == _TRUTH.sub("", expected):
            return "truth value", other_start
        return "step", other_start
    return ("exact" if len(lines) == len(solver) else "ended"), other_start


def departures(lines: Sequence[Mapping[str, Any]]) -> dict[str, Counter]:
    """Per level (and over all rows, under "all") of one model's samples lines: samples, each kind, the right answers
    among each kind, and the samples whose first assumption was another person."""
    counts: dict[str, Counter] = {}
    for line in lines:
        row = line["row"]
        if get_task(row["task"]).name != "knights_knaves":
            raise ValueError(f"the samples are of the task {row['task']!r}; this check reads K&K samples only.")
        for text, right in zip(line["completions"], line["correct"], strict=True):
            kind, other_start = departure(text, row)
            for level in (str(line["level"]), ALL_LEVELS):
                tally = counts.setdefault(level, Counter())
                tally["samples"] += 1
                tally[kind] += 1
                tally[f"{kind} right"] += bool(right)
                tally["other start"] += other_start
    return counts


def main(argv: list[str] | None = None) -> None:
    _, eval_args = parse_recipe((DataArguments, EvalArguments), argv)
    by_model = samples_by_model(Path(eval_args.eval_output_dir) / SAMPLES_FILE)
    print("Share of the samples by the first line that leaves the solver's trace; in brackets, the share of the")
    print("samples of that kind whose answer was right anyway.")
    print(f"| model | level | samples | other first assumption | {' | '.join(KINDS)} |")
    print("|---|---|---:|---:|" + "---:|" * len(KINDS))
    for label, lines in by_model.items():
        counts = departures(lines)
        for level in sorted(counts, key=level_order):
            tally = counts[level]
            n = tally["samples"]
            cells = [f"{tally[kind] / n:.2f} ({tally[f'{kind} right'] / max(tally[kind], 1):.2f})" for kind in KINDS]
            print(f"| {label} | {level} | {n} | {tally['other start'] / n:.2f} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
