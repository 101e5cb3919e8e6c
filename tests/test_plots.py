"""PNG figures from a real TRL GRPO run's trainer_state.json and from an eval result; missing metrics skipped."""

from __future__ import annotations

import json
import shutil

import pytest

from trl_smallrl import plots
from trl_smallrl.evaluation import summarize
from trl_smallrl.plots import main, metric_series, plot_pass_at_1, plot_pass_at_k, plot_run

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


def _eval_result(tmp_path):
    def levels(correct_by_level):
        records = [
            {"level": level, "correct": c, "formatted": c, "lengths": [5] * 4, "truncated": [False] * 4}
            for level, rows in correct_by_level.items()
            for c in rows
        ]
        return summarize(records, [1, 4])

    result = {
        "spec": {"k": [1, 4], "task": "knights_knaves"},
        "models": [
            {"label": "base", "levels": levels({2: [[True, False, False, False]], 3: [[False] * 4]})},
            {"label": "grpo", "levels": levels({2: [[True, True, False, False]], 3: [[True, False, False, False]]})},
        ],
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(result))
    return path


def test_pass_at_k_curves_from_an_eval_result(tmp_path):
    path = _eval_result(tmp_path)
    (written,) = plot_pass_at_k(path)
    assert written == tmp_path / "plots" / "pass_at_k.png"
    assert_png(written)


def test_pass_at_1_of_each_model_beside_chance(tmp_path, monkeypatch):
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (drawn.append(fig.axes), save(fig, path))[1])
    (written,) = plot_pass_at_1(_eval_result(tmp_path))
    assert written == tmp_path / "plots" / "pass_at_1.png"
    assert_png(written)
    (panels,) = drawn
    assert [ax.get_title() for ax in panels] == ["level 2", "level 3"]  # no "all" panel
    for ax, passes, chance in zip(panels, ([0.25, 0.5], [0.0, 0.25]), (0.25, 0.125)):
        points, dashed = ax.get_lines()[0], ax.get_lines()[-1]
        assert list(points.get_ydata()) == passes and [t.get_text() for t in ax.get_xticklabels()] == ["base", "grpo"]
        assert list(dashed.get_ydata()) == [chance, chance] and dashed.get_label() == f"chance {chance:.3g}"


def test_an_evals_samples_file_alone_draws_its_figures(tmp_path, capsys):
    from trl_smallrl.eval_samples import write_samples
    from trl_smallrl.tasks import get_task
    from trl_smallrl.tasks.knights_knaves_traces import write_trace

    lines = []
    for model, right in (("t160", 0), ("t640", 1), ("t2560", 2)):  # right answers out of 2, at each level
        for level in (2, 3):
            for row in get_task("knights_knaves").generate_rows(level, 2, seed=0, split="eval"):
                texts = [write_trace(row)] * right + ["<think>x</think>\n<answer>nobody</answer>"] * (2 - right)
                row = {key: value for key, value in row.items() if key != "prompt"}
                lines.append({"model": model, "level": level, "puzzle_id": row["quiz"], "row": row,
                              "completions": texts, "correct": [i < right for i in range(2)], "lengths": [5, 5],
                              "truncated": [False, False]})  # fmt: skip
    write_samples(lines, tmp_path / "samples.jsonl.gz")
    main(["--eval", str(tmp_path / "samples.jsonl.gz"), "--out", str(tmp_path / "figs")])
    assert capsys.readouterr().out.split() == [str(tmp_path / "figs" / n) for n in ("pass_at_k.png", "pass_at_1.png")]
    assert_png(tmp_path / "figs" / "pass_at_1.png")


def test_command_line(tiny_grpo_run, tmp_path, capsys):
    main([tiny_grpo_run, "--out", str(tmp_path / "figs")])
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "figs" / "reward.png") in printed
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "has no trainer_state.json" in capsys.readouterr().err
