"""K&K solver and traces on 1000 puzzles across 2-8 people, from the procedural source and from a K&K-format file."""

from __future__ import annotations

import itertools
import json
import statistics

import pytest

from trl_smallrl.configs import DataArguments
from trl_smallrl.tasks import get_task
from trl_smallrl.tasks.knights_knaves import KnightsKnavesTask, to_kk_record
from trl_smallrl.tasks.knights_knaves_logic import Roles, evaluate, parse_statements, render
from trl_smallrl.tasks.knights_knaves_traces import solve, write_trace
from trl_smallrl.tasks.rows import build_rows

LEVELS = range(2, 9)
# 1000 puzzles; fewer at 7-8 people, whose generation costs 20x more (reasoning-gym enumerates 2^n to keep
# only puzzles with a unique solution).
PER_LEVEL = {2: 250, 3: 200, 4: 175, 5: 150, 6: 110, 7: 65, 8: 50}
LOGIC_RL_COLUMNS = ("quiz", "names", "solution", "solution_text", "solution_text_format", "statements")


def all_solutions(statements) -> list[tuple[bool, ...]]:
    """Every consistent assignment, by enumeration: the ground truth the solver (which does not enumerate) is
    checked against."""
    n = len(statements)
    return [
        roles
        for roles in itertools.product((True, False), repeat=n)
        if all(evaluate(statements[i], roles) == roles[i] for i in range(n))
    ]


@pytest.fixture(scope="module")
def procedural_items():
    """reasoning-gym items (with their metadata), generated once for this module."""
    import reasoning_gym

    items = []
    for level, size in PER_LEVEL.items():
        items.extend(reasoning_gym.create_dataset("knights_knaves", n_people=level, size=size, seed=1000 + level))
    return items


@pytest.fixture(scope="module")
def procedural_rows(procedural_items):
    task = get_task("kk")
    return [task.row_from_record(to_kk_record(item)) for item in procedural_items]


@pytest.fixture(scope="module")
def file_rows(procedural_items, tmp_path_factory):
    """The same puzzles as a K&K paper / Logic-RL parquet file, half of them without the knight_knave column,
    read back through `build_rows(dataset_name=...)`."""
    records = []
    for number, item in enumerate(procedural_items):
        record = {column: to_kk_record(item)[column] for column in LOGIC_RL_COLUMNS}
        if number % 2 == 0:
            record["knight_knave"] = to_kk_record(item)["knight_knave"]
        else:
            record["knight_knave"] = None
        records.append(record)
    path = tmp_path_factory.mktemp("kk-file") / "kk.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    data_args = DataArguments(dataset_name=str(path), levels=list(LEVELS), eval_dataset_name=str(path))
    rows = build_rows(data_args, "train")
    assert len(rows) == len(records)
    assert all(isinstance(row["statements"], str) for row in rows)
    return rows


@pytest.mark.parametrize("source", ["procedural_rows", "file_rows"])
def test_solver_and_traces_are_right_on_1000_puzzles(source, request):
    rows = request.getfixturevalue(source)
    assert len(rows) == 1000
    assert {row["level"] for row in rows} == set(LEVELS)
    task = get_task("kk")
    for row in rows:
        statements = parse_statements(row["statements"])
        assert len(statements) == row["level"] == len(row["names"])
        truth = tuple(row["solution"])
        assert all_solutions(statements) == [truth]  # the ground truth is the unique solution
        solution, lines = solve(statements, row["names"], Roles.of(row))
        assert solution == truth
        trace = write_trace(row)
        assert trace.startswith("<think>\n") and "\n</think>\n<answer>\n" in trace and trace.endswith("</answer>")
        assert task.score(trace, row) == 1.0, trace


def test_traces_use_the_puzzles_own_words(procedural_rows):
    for row in procedural_rows:
        roles = row["knight_knave"]
        trace = write_trace(row)
        assert f" is {roles['a_knight']}" in trace or f" is {roles['a_knave']}" in trace
        if roles["knight"] != "knight":
            assert "knight" not in trace


def test_trace_lines_are_each_checkable_and_grow_gently(procedural_rows):
    """Each deduction line quotes the claim it uses; lines grow about linearly with the people, not as 2^n."""
    lines_by_level = {level: [] for level in LEVELS}
    for row in procedural_rows:
        _, lines = solve(row["statements"], row["names"], Roles.of(row))
        lines_by_level[row["level"]].append(len(lines))
        statements = parse_statements(row["statements"])
        quoted = {f'"{render(s, row["names"], Roles.of(row))}"' for s in statements}
        for line in lines:
            assert line.startswith(("Assume ", "So ", "We still know: ")) or any(q in line for q in quoted), line
    means = {level: statistics.mean(counts) for level, counts in lines_by_level.items()}
    assert means[2] < means[5] < means[8]
    assert means[8] < 4 * 8  # at most a few lines per person on average; 2^8 = 256 assignments are never listed


def test_solver_reports_inconsistent_statements():
    liar = (("lying", 0),)  # "I am a knave": no consistent role
    with pytest.raises(ValueError, match="no consistent assignment"):
        solve(liar)


def test_generation_is_deterministic_and_train_eval_never_overlap():
    task = KnightsKnavesTask()
    first = task.generate_rows(3, 40, seed=7, split="train")
    assert first == task.generate_rows(3, 40, seed=7, split="train")
    assert first != task.generate_rows(3, 40, seed=8, split="train")
    evaluation = task.generate_rows(3, 40, seed=7, split="eval")
    train_puzzles = {row["quiz"] for row in first}
    assert not train_puzzles & {row["quiz"] for row in evaluation}
