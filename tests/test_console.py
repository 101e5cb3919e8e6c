"""The console of a training run: a bar, and one short line a logged step instead of the dictionary of metrics."""

from __future__ import annotations

from trl_smallrl.console import clock, step_line


def test_a_grpo_step_line_says_where_the_run_is_and_how_long_is_left():
    logs = {"curriculum/level": 2.0, "health/accuracy": 0.4062, "informative_groups": 5.0,
            "health/think_length_mean": 119.6, "step_time": 95.2, "reward": 0.1}  # fmt: skip
    line = step_line(12, 400, logs, elapsed=1140.0, steps_done=12)
    assert line == (
        "step 12/400 | level 2 | correct 0.41 | informative 5 | think 120 tok | 95 s/step | 0:19:00 elapsed, 10:14:20 left"
    )


def test_a_resumed_run_counts_its_time_from_the_steps_of_this_launch():
    line = step_line(110, 200, {"loss": 0.5}, elapsed=100.0, steps_done=10)  # resumed at step 100
    assert line.endswith("0:01:40 elapsed, 0:15:00 left") and "loss 0.5" in line
    assert step_line(1, 2, {"loss": 0.5}, elapsed=3.0, steps_done=0) == "step 1/2 | loss 0.5"
    assert clock(3725.4) == "1:02:05"


def test_sft_prints_the_bar_and_lines_not_the_metrics_dictionary(tiny_model_dir, tmp_path, capfd):
    from test_sft import _argv, _write_traces

    from trl_smallrl import sft

    argv = _argv(tiny_model_dir, _write_traces(tmp_path / "traces.jsonl", n=4), tmp_path / "out")
    argv[argv.index("--max_steps") + 1] = "2"
    sft.train([*argv, "--logging_steps", "1", "--disable_tqdm", "false"])
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 1/2", "step 2/2"]
    assert lines[-1].endswith("left") and "loss " in lines[0]
    assert "{'loss'" not in out + err  # transformers' dictionary print is gone
    assert "2/2 [" in err  # tqdm's bar with its times
    assert "training done: step 2/2" in out + err
