"""Where a completion leaves the solver's trace: each kind of slip, built from real puzzles' traces."""

from __future__ import annotations

import pytest

from tools.kk_trace_departures import departure, departures, main, think_lines
from trl_smallrl.eval_samples import SAMPLES_FILE, read_samples, sample_records, write_samples
from trl_smallrl.evaluation import score_samples
from trl_smallrl.generation import Completion
from trl_smallrl.tasks import get_task
from trl_smallrl.tasks.knights_knaves_logic import Roles, parse_statements, render
from trl_smallrl.tasks.knights_knaves_traces import write_trace


@pytest.fixture(scope="module")
def rows():
    return get_task("knights_knaves").generate_rows(3, 30, seed=0, split="eval")


def edited(trace: str, index: int, line: str | None) -> str:
    """The trace with think line `index` replaced by `line` (None: the think block cut before it)."""
    tail = trace.split("</think>")[1]
    lines = think_lines(trace)
    lines = lines[:index] if line is None else lines[:index] + [line] + lines[index + 1 :]
    return "<think>\n" + "\n".join(lines) + "\n</think>" + tail


def test_each_kind_of_slip(rows):
    quoted = [(row, i) for row in rows for i, line in enumerate(think_lines(write_trace(row))) if '"' in line and i]
    row, index = quoted[0]
    trace = write_trace(row)
    line = think_lines(trace)[index]
    assert departure(trace, row) == ("exact", False)
    claims = [render(s, row["names"], Roles.of(row)) for s in parse_statements(row["statements"])]
    other_claim = next(claim for claim in claims if f'"{claim}"' not in line)
    misquoted = line.split('"')[0] + f'"{other_claim}"' + '"'.join(line.split('"')[2:])
    assert departure(edited(trace, index, misquoted), row) == ("misquote", False)
    word = "true" if " true" in line else "false"
    flipped = line.replace(f" {word}", " " + ("false" if word == "true" else "true"), 1)
    assert departure(edited(trace, index, flipped), row) == ("truth value", False)
    assert departure(edited(trace, index, f"Assume {row['names'][0]} is a dragon."), row) == ("step", False)
    assert departure(edited(trace, index, None), row) == ("ended", False)


def test_another_first_assumption_is_not_a_slip(rows):
    for row in rows:
        solver_first = think_lines(write_trace(row))[0]
        other = next(i for i, name in enumerate(row["names"]) if not solver_first.startswith(f"Assume {name} is"))
        trace = write_trace(row, first=other)
        assert think_lines(trace)[0].startswith(f"Assume {row['names'][other]} is")
        assert get_task("kk").score(trace, row) == 1.0  # the other start still reaches the solution
        assert departure(trace, row) == ("exact", True)


def test_report_from_an_eval_folder(rows, tmp_path, capsys):
    """Counts from the eval's samples file alone, with the verifier's verdicts, one table row a model and level."""
    texts = [[write_trace(row), "<think>\nAssume nobody.\n</think>"] for row in rows]
    samples = [[Completion(text=text, length=len(text), truncated=False) for text in row_texts] for row_texts in texts]
    lines = sample_records("sft", rows, score_samples(rows, samples))
    lines += sample_records("base", rows[:10], score_samples(rows[:10], [s[1:] for s in samples[:10]]))
    write_samples(lines, tmp_path / "eval" / SAMPLES_FILE)
    read = read_samples(tmp_path / "eval" / SAMPLES_FILE)
    counts = departures([line for line in read if line["model"] == "sft"])
    assert counts["3"]["samples"] == 60 and counts["3"]["exact right"] == 30 and counts["3"]["step"] == 30
    assert counts["3"]["step right"] == 0 and counts == departures(lines[:30])  # the file gives back what was written
    with pytest.raises(ValueError, match="this check reads K&K samples only"):
        departures([{**lines[0], "row": {**lines[0]["row"], "task": "gsm8k"}}])
    main(["--eval_output_dir", str(tmp_path / "eval")])
    out = capsys.readouterr().out.splitlines()
    assert out[4] == "| sft | 3 | 60 | 0.00 | 0.50 (1.00) | 0.00 (0.00) | 0.00 (0.00) | 0.50 (0.00) | 0.00 (0.00) |"
    assert out[6] == "| base | 3 | 10 | 0.00 | 0.00 (0.00) | 0.00 (0.00) | 0.00 (0.00) | 1.00 (0.00) | 0.00 (0.00) |"
    assert len(out) == 8  # sft 3, sft all, base 3, base all after the four lines of heading
