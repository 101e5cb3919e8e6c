"""The degenerate-answer check of the eval: all-same-role answers counted against the truth's share."""

from __future__ import annotations

import pytest

from tools.kk_answer_roles import assigned_roles, main, same_role_shares
from trl_smallrl.errors import ConfigError
from trl_smallrl.eval_samples import SAMPLES_FILE, read_samples, sample_records, write_samples
from trl_smallrl.evaluation import score_samples
from trl_smallrl.generation import Completion
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


def samples_lines(label, rows, texts_of):
    """`label`'s lines of a samples file, as the eval writes them: `texts_of(row)` scored by the task's verifier."""
    samples = [[Completion(text=text, length=len(text), truncated=False) for text in texts_of(row)] for row in rows]
    return sample_records(label, rows, score_samples(rows, samples))


def test_shares_of_true_and_all_knight_answers(rows, tmp_path):
    task = get_task("knights_knaves")
    truth_equal = {2: sum(len(set(r["solution"])) == 1 for r in rows[:20]) / 20}
    assert 0 < truth_equal[2] < 1  # the rows hold both kinds, so the shares below can differ
    lines = samples_lines("m", rows, lambda row: [task.write_trace(row), everyone(row, True), "no answer"])
    write_samples(lines, tmp_path / SAMPLES_FILE)
    shares = same_role_shares(read_samples(tmp_path / SAMPLES_FILE))  # as the file gives them back
    assert shares == same_role_shares(lines)
    assert shares["2"]["answers"] == 40 and shares["all"]["answers"] == 80  # "no answer" is not counted
    assert shares["2"]["true_same_role_share"] == pytest.approx(truth_equal[2])
    # half the answers are the truth, half give everyone a knight's role
    assert shares["2"]["same_role_share"] == pytest.approx((truth_equal[2] * 20 + 20) / 40)
    with pytest.raises(ValueError, match="of the task 'gsm8k'; this check reads K&K samples only"):
        same_role_shares([{**lines[0], "row": {**lines[0]["row"], "task": "gsm8k"}}])


def test_report_from_an_eval_folder(rows, tmp_path, capsys):
    """One table row a model and level, models in the eval's order, read from the eval's samples file alone."""
    lines = samples_lines("sft", rows, lambda row: [everyone(row, False)])
    lines += samples_lines("grpo", rows[:20], lambda row: [everyone(row, False), get_task("kk").write_trace(row)])
    write_samples(lines, tmp_path / "eval" / SAMPLES_FILE)
    main(["--eval_output_dir", str(tmp_path / "eval")])
    out = capsys.readouterr().out.splitlines()
    assert "| sft | 2 | 20 | 1.000 |" in out[2] and "| sft | all | 40 | 1.000 |" in out[4]
    share = (20 + sum(len(set(r["solution"])) == 1 for r in rows[:20])) / 40
    assert out[5].startswith(f"| grpo | 2 | 40 | {share:.3f} |") and out[6].startswith("| grpo | all | 40 |")
    assert len(out) == 7
    with pytest.raises(ConfigError, match="does not exist"):
        main(["--eval_output_dir", str(tmp_path / "none")])
