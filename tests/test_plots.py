"""PNG figures from a real TRL GRPO run's trainer_state.json and from an eval result; missing metrics skipped."""

from __future__ import annotations

import json
import shutil

import pytest

from trl_smallrl.evaluation import summarize
from trl_smallrl.plots import main, metric_series, plot_pass_at_k, plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000, path


def test_figures_of_a_real_grpo_run(tiny_grpo_run, tmp_path):
    written = plot_run(tiny_grpo_run, tmp_path / "plots")
    stems = {path.stem for path in written}
    assert {"loss", "reward", "completion_length", "kl", "entropy", "clip_ratio", "zero_std_groups"} <= stems
    # Plain TRL logs no curriculum and no think length: those figures are skipped, not errors.
    assert not {"accuracy_levels", "think_length", "reasoning_health", "informative_groups"} & stems
    for path in written:
        assert_png(path)
    assert not list((tmp_path / "plots").glob("*.tmp"))


def test_curriculum_and_health_figures(tiny_grpo_run, tmp_path):
    """The keys trl-smallrl's curriculum and health monitors add, on top of the real TRL log."""
    state = json.loads((shutil.copytree(tiny_grpo_run, tmp_path / "run") / "trainer_state.json").read_text())
    for entry in state["log_history"]:
        if "reward" not in entry:
            continue
        step = entry["step"]
        level = 2 if step < 3 else 3
        entry.update(
            {
                "curriculum/level": level,
                "curriculum/accuracy_level_2": 0.2 * step,
                "health/accuracy_level_2": 0.25 * step,
                "health/think_length_mean": 40.0 - step,
                "health/think_length_min": 10.0 - step,
                "health/answer_without_reasoning": 0.1,
                "informative_groups": float(step % 3),
            }
        )
        if level == 3:
            entry["curriculum/accuracy_level_3"] = 0.1
    (tmp_path / "run" / "trainer_state.json").write_text(json.dumps(state))
    stems = {path.stem: path for path in plot_run(tmp_path / "run")}
    for stem in ("accuracy_levels", "think_length", "reasoning_health", "informative_groups"):
        assert_png(stems[stem])
    assert stems["reward"].parent == tmp_path / "run" / "plots"


def test_metric_series_skips_entries_without_the_metric():
    log = [{"step": 1, "kl": 0.5}, {"step": 2, "loss": 1.0}, {"step": 3, "kl": 0.25}, {"train_runtime": 3.0, "kl": 9}]
    assert metric_series(log, "kl") == ([1, 3], [0.5, 0.25])
    assert metric_series(log, "entropy") == ([], [])


def test_pass_at_k_curves_from_an_eval_result(tmp_path):
    def levels(correct_by_level):
        records = [
            {"level": level, "correct": c, "formatted": c, "lengths": [5] * 4, "truncated": [False] * 4}
            for level, rows in correct_by_level.items()
            for c in rows
        ]
        return summarize(records, [1, 4])

    result = {
        "spec": {"k": [1, 4]},
        "models": [
            {"label": "base", "levels": levels({2: [[True, False, False, False]], 3: [[False] * 4]})},
            {"label": "grpo", "levels": levels({2: [[True, True, False, False]], 3: [[True, False, False, False]]})},
        ],
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(result))
    (written,) = plot_pass_at_k(path)
    assert written == tmp_path / "plots" / "pass_at_k.png"
    assert_png(written)


def test_command_line(tiny_grpo_run, tmp_path, capsys):
    main([tiny_grpo_run, "--out", str(tmp_path / "figs")])
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "figs" / "reward.png") in printed
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "has no trainer_state.json" in capsys.readouterr().err
