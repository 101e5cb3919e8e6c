"""The degenerate-answer check of the eval: all-same-role answers counted against the truth's share."""

from __future__ import annotations

import json

import pytest

from tools.kk_answer_roles import assigned_roles, main, same_role_shares
from trl_smallrl.tasks import get_task
from trl_smallrl.tasks.knights_knaves_logic import Roles


def everyone(row, knight: bool) -> str:
    roles = Roles.of(row)
    lines = [f"({i + 1}) {name} is {roles.a(knight)}" for i, name in enumerate(row["names"])]
    return "<think>x</think>\n<answer>\n" + "\n".join(lines) + "\n</answer>"


@pytest.fixture(scope="module")
def rows():
    task = get_task("knights_knaves")
    return task.generate_rows(2, 20, seed=0, split="eval") + task.generate_rows(3, 20, seed=0, split="eval")


def test_assigned_roles_reads_one_role_per_person(rows):
    row = rows[0]
    a, b = row["names"]
    word = Roles.of(row)
    assert assigned_roles(f"{a} is {word.a(True)}, {b} is {word.a(False)}", row) == [True, False]
    assert assigned_roles(f"{a} is {word.a(True)}", row) is None  # someone left out
    assert assigned_roles(f"{a} is {word.a(True)} and {word.a(False)}, {b} is {word.a(True)}", row) is None
    assert assigned_roles(None, row) is None


def test_shares_of_true_and_all_knight_answers(rows):
    task = get_task("knights_knaves")
    truth_equal = {2: sum(len(set(r["solution"])) == 1 for r in rows[:20]) / 20}
    assert 0 < truth_equal[2] < 1  # the rows hold both kinds, so the shares below can differ
    records = [
        {"answer": row["answer"], "texts": [task.write_trace(row), everyone(row, True), "no answer"]} for row in rows
    ]
    shares = same_role_shares(rows, records)
    assert shares["2"]["answers"] == 40 and shares["all"]["answers"] == 80  # "no answer" is not counted
    assert shares["2"]["true_same_role_share"] == pytest.approx(truth_equal[2])
    # half the answers are the truth, half give everyone a knight's role
    assert shares["2"]["same_role_share"] == pytest.approx((truth_equal[2] * 20 + 20) / 40)
    with pytest.raises(ValueError, match="do not match"):
        same_role_shares(rows[1:] + rows[:1], records)


def test_report_from_an_eval_folder(rows, tmp_path, capsys):
    task = get_task("knights_knaves")
    folder = tmp_path / "eval" / "completions"
    folder.mkdir(parents=True)
    lines = [json.dumps({"answer": r["answer"], "texts": [everyone(r, False)]}) for r in rows]
    (folder / "sft.jsonl").write_text("\n".join(lines) + "\n")
    main(["--task", task.name, "--levels", "2", "3", "--eval_size", "20", "--eval_output_dir", str(tmp_path / "eval")])
    out = capsys.readouterr().out
    assert "| sft | 2 | 20 | 1.000 |" in out and "| sft | all | 40 | 1.000 |" in out
