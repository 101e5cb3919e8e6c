"""smallrl-data, smallrl-traces and smallrl-score, run through their entry points on real files."""

from __future__ import annotations

import json

import datasets
import pytest

from trl_smallrl.data_tools import data_main, parse_levels, score_main, traces_main
from trl_smallrl.errors import ConfigError
from trl_smallrl.tasks import get_task
from trl_smallrl.tasks.rows import load_records


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "kk.parquet"
    data_main(["--task", "kk", "--levels", "2-3", "--size", "4", "--seed", "5", "--out", str(path)])
    return path


def test_data_writes_rows_as_parquet_or_jsonl(rows_file, tmp_path, capsys):
    rows = load_records(str(rows_file))
    assert [row["level"] for row in rows] == [2] * 4 + [3] * 4
    assert {"prompt", "task", "level", "answer", "quiz", "statements"} <= set(rows[0])
    jsonl = tmp_path / "kk.jsonl"
    data_main(["--task", "kk", "--levels", "2-3", "--size", "4", "--seed", "5", "--out", str(jsonl)])
    assert "wrote 8 rows of knights_knaves" in capsys.readouterr().out
    assert [row["quiz"] for row in read_jsonl(jsonl)] == [row["quiz"] for row in rows]
    data_main(["--task", "kk", "--levels", "2", "--size", "4", "--seed", "5", "--split", "eval", "--out", str(jsonl)])
    assert not {row["quiz"] for row in read_jsonl(jsonl)} & {row["quiz"] for row in rows}
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, nothing left behind


def test_traces_from_a_dataset_are_conversations_in_input_order(rows_file, tmp_path):
    out = tmp_path / "traces.jsonl"
    traces_main(["--task", "kk", "--dataset", str(rows_file), "--out", str(out), "--system-prompt", "Solve it."])
    rows = load_records(str(rows_file))
    lines = read_jsonl(out)
    assert len(lines) == len(rows)
    for row, line in zip(rows, lines):
        messages = line["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert messages[0]["content"] == "Solve it." and messages[1]["content"] == row["quiz"]
        assert messages[2]["content"].startswith("<think>")
        assert get_task("kk").score(messages[2]["content"], row) == 1.0


def test_traces_from_levels(tmp_path):
    out = tmp_path / "traces.jsonl"
    traces_main(["--task", "kk", "--levels", "2,4", "--size", "2", "--out", str(out)])
    lines = read_jsonl(out)
    assert len(lines) == 4
    assert lines[0]["messages"][0]["content"] == get_task("kk").system_prompt


def test_score_writes_one_line_per_completion_and_prints_accuracy(rows_file, tmp_path, capsys):
    rows = load_records(str(rows_file))
    completions = tmp_path / "completions.jsonl"
    answers = [
        {"index": 0, "completion": f"<answer>{rows[0]['solution_text']}</answer>"},
        {"index": 1, "completion": "<answer>nobody knows</answer>"},
        {"index": 5, "completion": f"<think>x</think><answer>{rows[5]['solution_text_format']}</answer>"},
        {"index": 6, "completion": "\udcff junk <answer>"},
    ]
    completions.write_text("".join(json.dumps(a) + "\n" for a in answers) + "\n")
    out = tmp_path / "scores.jsonl"
    score_main(["--task", "kk", "--dataset", str(rows_file), "--completions", str(completions), "--out", str(out)])
    results = read_jsonl(out)
    assert [(r["index"], r["correct"], r["reward"]) for r in results] == [
        (0, True, 1.0),
        (1, False, 0.0),
        (5, True, 1.0),
        (6, False, 0.0),
    ]
    printed = capsys.readouterr().out
    assert "accuracy 0.500 (2/4)" in printed
    assert "level 2: 0.500 (1/2)" in printed and "level 3: 0.500 (1/2)" in printed


def test_score_reads_a_k_and_k_format_file(tmp_path, capsys):
    """Records in the Logic-RL columns (no prompt) score too."""
    rows = get_task("kk").generate_rows(2, 2, seed=0)
    columns = ("quiz", "names", "solution", "solution_text", "solution_text_format", "statements")
    path = tmp_path / "logic_rl.parquet"
    datasets.Dataset.from_list([{c: row[c] for c in columns} for row in rows]).to_parquet(path)
    completions = tmp_path / "c.jsonl"
    completions.write_text(json.dumps({"index": 1, "completion": f"<answer>{rows[1]['answer']}</answer>"}) + "\n")
    score_main(["--dataset", str(path), "--completions", str(completions)])
    assert "accuracy 1.000 (1/1)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("main", "argv", "message"),
    [
        (data_main, ["--levels", "two", "--out", "x.jsonl"], "--levels: 'two'"),
        (data_main, ["--levels", "2", "--size", "1", "--out", "x.csv"], "--out: 'x.csv' has an unknown extension"),
        (data_main, ["--task", "kkk", "--levels", "2", "--out", "x.jsonl"], "task: unknown value 'kkk'"),
        (traces_main, ["--levels", "2", "--dataset", "x.jsonl", "--out", "t.jsonl"], "give exactly one"),
        (traces_main, ["--task", "gsm8k", "--levels", "0", "--out", "t.jsonl"], "has no generator"),
        (traces_main, ["--dataset", "missing.jsonl", "--out", "t.jsonl"], "'missing.jsonl' does not exist"),
    ],
)
def test_bad_input_exits_with_one_line(main, argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_completions_lines_are_named(rows_file, tmp_path, capsys):
    completions = tmp_path / "c.jsonl"
    for content, message in [
        ('{"index": 0, "completion": "x"}\nnot json\n', "line 2 of"),
        ('{"index": 99, "completion": "x"}\n', "line 1 has index 99; the dataset has 8 rows"),
        ('{"completion": "x"}\n', "line 1 of"),
    ]:
        completions.write_text(content)
        with pytest.raises(SystemExit):
            score_main(["--dataset", str(rows_file), "--completions", str(completions)])
        assert message in capsys.readouterr().err


def test_parse_levels():
    assert parse_levels("2-6") == [2, 3, 4, 5, 6]
    assert parse_levels("2,4") == [2, 4]
    assert parse_levels("2-3,7") == [2, 3, 7]
    with pytest.raises(ConfigError, match="--levels"):
        parse_levels("2-x")
