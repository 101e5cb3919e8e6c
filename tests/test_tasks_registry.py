"""Task registry, row schema, seeds, file sources, and the non-K&K tasks (gsm8k, math, reasoning-gym)."""

from __future__ import annotations

import itertools
import json

import datasets
import pytest

from trl_smallrl.configs import DataArguments
from trl_smallrl.errors import ConfigError
from trl_smallrl.tasks import get_task, task_names
from trl_smallrl.tasks.base import SEED_STRIDE, generation_seed, parse_number
from trl_smallrl.tasks.knights_knaves import KnightsKnavesTask
from trl_smallrl.tasks.rows import build_dataset, build_rows

SCHEMA = {"prompt", "task", "level", "answer"}


def test_registry_names_aliases_and_unknown_names():
    assert get_task("kk") is get_task("knights_knaves")
    assert isinstance(get_task("kk"), KnightsKnavesTask)
    assert get_task("kk").default_levels == (2, 3, 4, 5, 6)
    names = task_names()
    assert {"knights_knaves", "kk", "gsm8k", "math", "syllogism", "propositional_logic"} <= set(names)
    with pytest.raises(ConfigError, match=r"task: unknown value 'knights_knave'.*Did you mean 'knights_knaves'"):
        get_task("knights_knave")
    with pytest.raises(ConfigError, match="Valid values: .*gsm8k, .*kk, .*knights_knaves, .*syllogism"):
        get_task("nonsense")


def test_generated_rows_follow_the_shared_schema():
    rows = get_task("kk").generate_rows(3, 4, seed=0, system_prompt="Be brief.")
    for row in rows:
        assert SCHEMA <= set(row)
        assert row["task"] == "knights_knaves" and row["level"] == 3
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        assert row["prompt"][0]["content"] == "Be brief." and row["prompt"][1]["content"] == row["quiz"]
        assert row["answer"] == row["solution_text"]
    default = get_task("kk").generate_rows(2, 1, seed=0)[0]
    assert default["prompt"][0]["content"] == get_task("kk").system_prompt


def test_seed_blocks_of_splits_and_levels_are_disjoint():
    blocks = [
        generation_seed(seed, split, level)
        for seed, split, level in itertools.product(range(4), ("train", "eval"), range(2, 9))
    ]
    ordered = sorted(blocks)
    assert len(set(blocks)) == len(blocks)
    assert all(b - a >= SEED_STRIDE for a, b in zip(ordered, ordered[1:]))  # item seeds are block + index < stride
    with pytest.raises(ConfigError, match="split"):
        generation_seed(0, "test", 2)
    with pytest.raises(ConfigError, match="task_seed"):
        generation_seed(-1, "train", 2)


def test_build_dataset_generates_each_level_and_disjoint_splits():
    data_args = DataArguments(levels=[2, 3], train_size=30, eval_size=10, task_seed=3)
    train, evaluation = build_dataset(data_args, "train"), build_dataset(data_args, "eval")
    assert isinstance(train, datasets.Dataset)
    assert sorted(train["level"]) == [2] * 30 + [3] * 30 and sorted(evaluation["level"]) == [2] * 10 + [3] * 10
    assert not set(train["quiz"]) & set(evaluation["quiz"])
    with pytest.raises(ConfigError, match="levels: 9 people"):
        build_rows(DataArguments(levels=[9], train_size=1), "train")


@pytest.mark.parametrize("extension", ["jsonl", "json", "parquet"])
def test_file_source_holds_out_the_last_rows_of_each_level(tmp_path, extension):
    rows = [
        {key: value for key, value in row.items() if key not in ("prompt", "task", "level", "answer")}
        for level in (2, 3)
        for row in get_task("kk").generate_rows(level, 6, seed=1)
    ]
    path = tmp_path / f"kk.{extension}"
    if extension == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(path)
    else:
        datasets.Dataset.from_list(rows).to_json(path, lines=extension == "jsonl")
    data_args = DataArguments(dataset_name=str(path), levels=[2, 3], eval_size=2)
    train, evaluation = build_rows(data_args, "train"), build_rows(data_args, "eval")
    assert [r["level"] for r in train] == [2] * 4 + [3] * 4
    assert [r["quiz"] for r in evaluation] == [rows[i]["quiz"] for i in (4, 5, 10, 11)]
    assert all(SCHEMA <= set(row) for row in train)
    only_three = build_rows(DataArguments(dataset_name=str(path), levels=[3], eval_size=0), "train")
    assert [r["level"] for r in only_three] == [3] * 6
    with pytest.raises(ConfigError, match="no rows at levels"):
        build_rows(DataArguments(dataset_name=str(path), levels=[7]), "train")


def test_bad_file_sources_fail_with_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"quiz": "q", "names": ["A"]}) + "\n")
    with pytest.raises(ConfigError, match="missing solution, statements"):
        build_rows(DataArguments(dataset_name=str(bad)), "train")
    csv = tmp_path / "kk.csv"
    csv.write_text("a,b\n")
    with pytest.raises(ConfigError, match="unknown extension"):
        build_rows(DataArguments(dataset_name=str(csv)), "train")
    with pytest.raises(ConfigError, match="neither a file nor a reachable Hub dataset"):
        build_rows(DataArguments(dataset_name=str(tmp_path / "missing.jsonl")), "train")


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        (r"so \boxed{72}", "Natalia sold 48/2 = 24 clips in May.\n#### 72", 1.0),
        (r"\boxed{$1,200}", "#### 1200", 1.0),
        (r"\boxed{1200 dollars}", "1200", 1.0),
        (r"\boxed{-3.50}", "#### -3.5", 1.0),
        (r"\boxed{71}", "#### 72", 0.0),
        (r"\boxed{7} then \boxed{72}", "#### 72", 1.0),  # the last box counts
        ("72", "#### 72", 0.0),  # no box
        (r"\boxed{}", "#### 72", 0.0),
        (r"\boxed{abc", "#### 72", 0.0),
    ],
)
def test_gsm8k_boxed_numbers(completion, gold, expected):
    assert get_task("gsm8k").score(completion, {"answer": gold}) == expected


def test_gsm8k_rows_and_number_parsing():
    row = get_task("gsm8k").row_from_record({"question": "How many?", "answer": "work\n#### 1,234"})
    assert row["answer"] == "1,234" and row["level"] == 0 and row["task"] == "gsm8k"
    assert parse_number("$-1,234.5") == -1234.5 and parse_number("none") is None
    with pytest.raises(ConfigError, match="has no generator"):
        get_task("gsm8k").generate_rows(0, 1, 0)


def test_math_is_verified_by_math_verify_like_trl():
    task = get_task("math")
    assert task.score(r"The answer is \boxed{\frac{1}{2}}", {"answer": r"$\frac{1}{2}$"}) == 1.0
    assert task.score(r"The answer is \boxed{0.5}", {"answer": r"$\frac{1}{2}$"}) == 1.0
    assert task.score(r"The answer is \boxed{\frac{1}{3}}", {"answer": r"$\frac{1}{2}$"}) == 0.0
    assert task.score("no answer here", {"answer": "unparseable gold ###"}) == 0.0
    row = task.row_from_record({"problem": "1+1?", "solution": r"\boxed{2}", "level": "Level 3"})
    assert row["level"] == 3 and row["answer"] == r"\boxed{2}"


def test_reasoning_gym_tasks_generate_by_level_and_score_with_their_verifier():
    task = get_task("syllogism")
    assert task.default_levels == (0, 1, 2)
    rows = task.generate_rows(1, 5, seed=0)
    assert rows == task.generate_rows(1, 5, seed=0)
    for row in rows:
        assert row["task"] == "syllogism" and row["level"] == 1
        json.loads(row["metadata"])
        assert task.score(f"<answer>{row['answer']}</answer>", row) == 1.0
        wrong = "No" if row["answer"] == "Yes" else "Yes"
        assert task.score(f"<answer>{wrong}</answer>", row) == 0.0
        assert task.score(row["answer"], row) == 0.0  # untagged
    logic = get_task("propositional_logic")
    row = logic.generate_rows(0, 1, seed=0)[0]
    example = json.loads(row["metadata"])["example_answer"]
    assert logic.score(f"<answer>{example}</answer>", row) == 1.0


@pytest.mark.parametrize("name", ["gsm8k", "math", "syllogism", "propositional_logic"])
def test_no_task_raises_on_junk(name):
    task = get_task(name)
    row = {"answer": r"\frac{1}{2}", "metadata": '{"premises": ["P"], "variables": ["P"]}', "level": 0}
    for junk in ["", None, b"\xff\xfe", "<answer>\\boxed{" * 500, "<answer>" + "(" * 5000 + "</answer>", 3.5]:
        assert 0.0 <= task.score(junk, row) <= 1.0
