"""Teacher traces: real sampling from the tiny model, and rejection sampling with the real K&K verifier."""

from __future__ import annotations

import json

from trl_smallrl.data_tools import traces_main
from trl_smallrl.generation import SamplingSettings, sample
from trl_smallrl.tasks import get_task
from trl_smallrl.tasks.knights_knaves_traces import write_trace
from trl_smallrl.teacher import keep_verified

SETTINGS = SamplingSettings(num_samples=3, max_new_tokens=12, temperature=1.0, batch_size=2, seed=0)


def _rows(n=3):
    return get_task("kk").generate_rows(level=2, size=n, seed=0)


def test_rejection_sampling_keeps_only_verified_traces(tiny_model_dir):
    task, rows = get_task("kk"), _rows()
    generated = [
        [c.text for c in samples] for samples in sample(tiny_model_dir, [r["prompt"] for r in rows], SETTINGS)
    ]
    # Real generated completions (all wrong: a random model) mixed with the solver's correct trace for rows 0
    # and 2 (twice for row 0, to check duplicates are kept once); row 1 gets row 0's well-formed trace: wrong.
    correct = [write_trace(row) for row in rows]
    wrong = correct[0]
    assert task.score(wrong, {k: v for k, v in rows[1].items() if k != "prompt"}) < 1.0
    candidates = [
        [*generated[0], correct[0], correct[0]],
        [*generated[1], wrong],
        [*generated[2], correct[2]],
    ]
    kept, correct_counts = keep_verified(task, rows, candidates, keep_per_prompt=2)
    assert correct_counts == [2, 0, 1]
    assert [conv["messages"][-1]["content"] for conv in kept] == [correct[0], correct[2]]
    assert kept[0]["messages"][:-1] == rows[0]["prompt"] and kept[0]["messages"][-1]["role"] == "assistant"


def test_smallrl_traces_teacher_cli_writes_verified_jsonl(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "teacher.jsonl"
    traces_main(
        ["--teacher", tiny_model_dir, "--task", "kk", "--levels", "2", "--size", "2", "--samples", "2",
         "--max-new-tokens", "8", "--out", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "verified conversations (2 prompts x 2 samples)" in printed
    assert "sample_accuracy_level_2=0.000" in printed  # a random model solves nothing, and nothing is kept
    assert out.is_file() and [json.loads(line) for line in out.read_text().splitlines()] == []


def test_teacher_traces_hold_the_templates_think_prefill_and_use_the_kwargs(tiny_model_dir, tmp_path, monkeypatch):
    """An R1-Distill teacher (its real template opens `<think>` in the prompt) writes only the reasoning's rest, its
    `</think>` and the answer: the kept trace is the whole turn, `<think>` first, as the SFT warm-up must learn it.
    vLLM stands in, answering the solver's trace without its `<think>`; the verifier and the files are real."""
    import sys

    from test_generation import _FakeVLLM, _with_template

    from trl_smallrl import generation
    from trl_smallrl.configs import DataArguments
    from trl_smallrl.tasks.rows import build_rows

    (row,) = build_rows(DataArguments(task="kk", levels=[2], train_size=1, eval_size=1, task_seed=0), "train")
    completion = write_trace(row).removeprefix("<think>")
    fake = _FakeVLLM(text=completion)
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    monkeypatch.setattr(generation, "_vllm_usable", lambda: True)
    out = tmp_path / "teacher.jsonl"
    traces_main(
        ["--teacher", _with_template(tiny_model_dir, tmp_path, "deepseek_r1_distill"), "--task", "kk", "--levels", "2",
         "--size", "1", "--samples", "2", "--out", str(out), "--chat-template-kwargs", '{"enable_thinking": false}']
    )  # fmt: skip
    (kept,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept["messages"][:-1] == row["prompt"]
    assert kept["messages"][-1]["content"] == "<think>\n" + completion
    assert fake.engines[0]["chat_template_kwargs"] == {"enable_thinking": False}
