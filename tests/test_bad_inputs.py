"""Every bad input a user can give the commands ends in one line naming the field, the value and the fix.

Each case runs the real command's main function (the function behind `smallrl-grpo`, `smallrl-sft`,
`smallrl-traces`, `smallrl-data`, `smallrl-score`) on a recipe or file with one mistake, and checks the exit
status 2, a single `error:` line naming the field, and no traceback. The inputs are the ones that used to end
in a traceback from deep inside TRL, datasets, PyYAML or argparse.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from trl_smallrl import data_tools, grpo, sft


def _grpo_recipe(tmp_path, model_dir, **changes) -> list[str]:
    recipe = {
        "model_name_or_path": model_dir,
        "output_dir": str(tmp_path / "out"),
        "task": "kk",
        "levels": [2],
        "train_size": 4,
        "reward_funcs": ["format", "accuracy"],
        "num_generations": 2,
        "per_device_train_batch_size": 2,
        "max_completion_length": 8,
        "max_steps": 1,
        "report_to": "none",
        "bf16": False,
    }
    recipe.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return ["--config", str(path)]


def _one_error_line(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2, err[-2000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    return errors[0]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"max_steps": [1, 2]}, r"max_steps: \[1, 2\] is not an integer"),
        ({"learning_rate": "fast"}, r"learning_rate: 'fast' is not a number"),
        ({"cosine_min_value_wrong": float("nan")}, r"cosine_min_value_wrong: nan is not a number"),
        ({"per_device_train_batch_size": 0}, r"per_device_train_batch_size: 0 must be at least 1"),
        ({"per_device_train_batch_size": -4}, r"per_device_train_batch_size: -4 must be at least 1"),
        ({"num_generations": 0}, r"num_generations: 0 must be at least 1"),
        ({"max_completion_length": 0}, r"max_completion_length: 0 must be at least 1"),
        ({"reward_weights": [1.0]}, r"reward_weights: \[1.0\] has 1 weights for 2 rewards"),
        ({"report_to": "bogustracker"}, r"report_to: unknown value 'bogustracker'"),
        ({"train_size": -5}, r"train_size: -5 rows per level"),
        ({"levels": 2}, r"levels: 2 must be a list"),
        (
            {"metric_for_best_model": "heldout/pass@1"},
            r"metric_for_best_model: 'heldout/pass@1' is a held-out curve metric, and heldout_num_samples is 0",
        ),
        (
            {"metric_for_best_model": "heldout/pass@1", "heldout_num_samples": 1, "eval_strategy": "steps"},
            r"metric_for_best_model: 'heldout/pass@1' is scored by the held-out curve.*set eval_strategy: no",
        ),
        (
            {"metric_for_best_model": "heldout/pass@1_level_3", "heldout_num_samples": 1, "eval_size": 2},
            r"metric_for_best_model: 'heldout/pass@1_level_3' is not a metric of this held-out curve; use one of "
            r"heldout/pass@1, heldout/pass@1_level_2, heldout/format",
        ),
    ],
)
def test_grpo_recipe_mistakes(tmp_path, tiny_model_dir, capsys, changes, expected):
    import re

    line = _one_error_line(capsys, grpo.main, _grpo_recipe(tmp_path, tiny_model_dir, **changes))
    assert re.search(expected, line), line
    assert str(tmp_path / "recipe.yaml") in line or "recipe" not in line  # a recipe's mistake names the recipe
    assert not (tmp_path / "out" / "trainer_state.json").exists()


def test_command_line_value_of_the_wrong_kind(tmp_path, tiny_model_dir, capsys):
    argv = _grpo_recipe(tmp_path, tiny_model_dir) + ["--cosine_max_len", "-3"]
    assert "cosine_max_len: -3 must be at least 1" in _one_error_line(capsys, grpo.main, argv)
    argv = _grpo_recipe(tmp_path, tiny_model_dir) + ["--cosine_max_value_correct", "nan"]
    assert "cosine_max_value_correct: nan is not a finite reward" in _one_error_line(capsys, grpo.main, argv)


def test_malformed_yaml_names_the_line(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text("task: kk\nlevels: [2, 3\nmax_steps: 5\n")
    line = _one_error_line(capsys, grpo.main, ["--config", str(path)])
    assert f"recipe {path}: not valid YAML at line" in line


def test_output_dir_under_a_regular_file(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "file").write_text("not a folder")
    argv = _grpo_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "file" / "run"))
    assert "output_dir: cannot write to" in _one_error_line(capsys, grpo.main, argv)


def test_unreadable_dataset_files(tmp_path, tiny_model_dir, capsys):
    rows = tmp_path / "rows.parquet"
    data_tools.data_main(["--task", "kk", "--levels", "2", "--size", "4", "--out", str(rows)])
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(rows.read_bytes()[: rows.stat().st_size // 2])
    argv = _grpo_recipe(tmp_path, tiny_model_dir, dataset_name=str(truncated), eval_size=1)
    assert f"dataset_name: cannot read {str(truncated)!r}" in _one_error_line(capsys, grpo.main, argv)

    bad_line = tmp_path / "bad.jsonl"
    good = json.dumps({"quiz": "q", "names": ["A"], "solution": [True], "statements": "(('telling-truth', 0),)"})
    bad_line.write_text(f"{good}\n{good}\n{{not json\n")
    argv = _grpo_recipe(tmp_path, tiny_model_dir, dataset_name=str(bad_line), eval_size=1)
    assert f"dataset_name: line 3 of {str(bad_line)!r} is not a JSON object" in _one_error_line(
        capsys, grpo.main, argv
    )


def test_empty_files(tmp_path, tiny_model_dir, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    line = _one_error_line(
        capsys, data_tools.traces_main, ["--task", "kk", "--dataset", str(empty), "--out", str(tmp_path / "t.jsonl")]
    )
    assert f"--dataset: {str(empty)!r} holds no records" in line
    argv = ["--model_name_or_path", tiny_model_dir, "--traces_file", str(empty), "--output_dir", str(tmp_path / "o")]
    assert f"traces_file: {str(empty)!r} holds no records" in _one_error_line(capsys, sft.main, argv)


def test_unwritable_out(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "rows.jsonl"
    line = _one_error_line(capsys, data_tools.data_main, ["--levels", "2", "--size", "2", "--out", str(out)])
    assert f"--out: cannot write {str(out)!r}" in line


@pytest.mark.parametrize("index", [1.7, True, "1"])
def test_score_refuses_indices_that_are_not_integers(tmp_path, capsys, index):
    rows = tmp_path / "rows.jsonl"
    data_tools.data_main(["--levels", "2", "--size", "2", "--out", str(rows)])
    completions = tmp_path / "gens.jsonl"
    completions.write_text(json.dumps({"index": index, "completion": "<answer>x</answer>"}) + "\n")
    argv = ["--dataset", str(rows), "--completions", str(completions)]
    assert "--completions: line 1 of" in _one_error_line(capsys, data_tools.score_main, argv)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_rollouts_without_vllm_are_refused_before_the_model_loads(tmp_path, tiny_model_dir, capsys):
    line = _one_error_line(capsys, grpo.main, _grpo_recipe(tmp_path, tiny_model_dir, use_vllm=True))
    assert "use_vllm: true, but vLLM is not installed" in line and "'.[vllm]'" in line
