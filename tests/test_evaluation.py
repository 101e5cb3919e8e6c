"""pass@k estimator, per-level summaries and the Markdown table; eval recipe parsing; a real eval on the tiny model."""

from __future__ import annotations

import gzip
import itertools
import math

import pytest

from trl_smallrl.configs import DataArguments, EvalArguments
from trl_smallrl.errors import ConfigError
from trl_smallrl.eval_samples import SAMPLES_FILE, progress_path, read_samples, write_samples
from trl_smallrl.evaluation import result_from_samples, results_table, summarize, table_main
from trl_smallrl.pass_rates import pass_at_k
from trl_smallrl.recipe import parse_recipe


def exact_pass_at_k(n, c, k):
    return 1 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_pass_at_k_equals_exact_combinatorics(n):
    for c, k in itertools.product(range(n + 1), range(1, n + 1)):
        assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edge_cases():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 0, 10) == 0.0  # nothing correct
    assert pass_at_k(10, 8, 3) == 1.0  # n - c = 2 < k: every draw of 3 holds a correct sample
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # C(3,2)/C(4,2) = 3/6
    # Large n: the binomials would overflow floats; the product form stays exact to rounding.
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert 0.0 < pass_at_k(2000, 3, 10) < 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, 1, 5), (4, 1, 0), (4, -1, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ConfigError, match="pass@k"):
        pass_at_k(n, c, k)


def record(level, correct, formatted=None, lengths=None):
    n = len(correct)
    return {
        "level": level,
        "correct": correct,
        "formatted": formatted or [True] * n,
        "lengths": lengths or [10] * n,
        "truncated": [False] * n,
    }


def test_summary_and_table_on_a_known_result():
    records = [
        record(2, [True, False, False, False], formatted=[True, True, False, False], lengths=[10, 20, 30, 40]),
        record(2, [True, True, True, True]),
        record(3, [False, False, False, False]),
    ]
    summary = summarize(records, [1, 2])
    assert summary["2"]["correct_counts"] == [1, 4]
    assert summary["2"]["pass@1"] == pytest.approx((0.25 + 1.0) / 2)
    assert summary["2"]["pass@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert summary["2"]["format_rate"] == pytest.approx(6 / 8)
    assert summary["2"]["mean_length"] == pytest.approx((100 + 40) / 8)
    assert summary["3"]["pass@2"] == 0.0
    assert summary["all"]["prompts"] == 3
    assert summary["all"]["pass@1"] == pytest.approx((0.25 + 1.0 + 0.0) / 3)

    grpo = summarize([record(2, [True] * 4), record(2, [True] * 4), record(3, [True, False, False, False])], [1, 2])
    result = {
        "spec": {"task": "knights_knaves", "k": [1, 2]},
        "models": [{"label": "base", "levels": summary}, {"label": "grpo", "levels": grpo}],
    }
    lines = results_table(result).splitlines()
    assert lines[0] == "| level | model | prompts | pass@1 | pass@2 | chance | format | mean tokens | truncated |"
    # pass@1 of level 2 is the mean of 0.25 and 1.0; its half-width 1.96 * sd / sqrt(2), sd = 0.75 / sqrt(2);
    # a random guess among the 4 role assignments of 2 people: pass@1 0.25, pass@2 1 - 0.75^2
    assert lines[2] == "| 2 | base | 2 | 0.625 ± 0.735 | 0.750 ± 0.490 | 0.250 / 0.438 | 0.750 | 17.5 | 0.000 |"
    assert lines[3] == "| 2 | grpo | 2 | 1.000 ± 0.000 | 1.000 ± 0.000 | 0.250 / 0.438 | 1.000 | 10.0 | 0.000 |"
    assert lines[4].startswith("| 3 | base | 1 | 0.000 | 0.000 | 0.125 / 0.234 |")  # one prompt: no interval
    assert lines[5].startswith("| 3 | grpo | 1 | 0.250 | 0.500 |")
    assert lines[7].startswith("| all | grpo | 3 | 0.750 ± ") and "| - |" in lines[7]  # levels mixed: no chance
    # grpo minus base, prompt by prompt: level 2 gains 0.75 and 0 at pass@1, level 3 gains 0.25 on one prompt
    assert lines[9] == "grpo minus base, paired by prompt (95% interval):"
    assert lines[13] == "| 2 | +0.375 ± 0.735 | +0.250 ± 0.490 |"
    assert lines[14] == "| 3 | +0.250 | +0.500 |"
    assert len(lines) == 16


def test_interval_of_a_mean_and_paired_difference():
    from trl_smallrl.evaluation import paired_differences
    from trl_smallrl.pass_rates import mean_interval

    assert mean_interval([0.0, 1.0] * 50) == pytest.approx((0.5, 1.959964 * math.sqrt(0.25 * 100 / 99 / 100)))
    assert mean_interval([0.3]) == (0.3, None)
    before = summarize([record(2, [False, True]), record(2, [True, True]), record(2, [False, False])], [1])
    after = summarize([record(2, [True, True]), record(2, [True, True]), record(2, [False, True])], [1])
    # The same gain on every prompt would be certain however small; here the gains are 0.5, 0 and 0.5
    difference, half = paired_differences(before, after, [1])["2"]["pass@1"]
    assert difference == pytest.approx(1 / 3) and half == pytest.approx(1.959964 * math.sqrt(1 / 12 / 3))
    fewer = summarize([record(2, [True, True])], [1])
    assert "2" not in paired_differences(before, fewer, [1])  # different rows are never paired


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            ["--eval_k", "1", "8", "--eval_num_samples", "4"],
            r"eval_k: \[1, 8\] needs values from 1 to eval_num_samples",
        ),
        (["--eval_temperature", "0"], "eval_temperature: 0 .greedy. gives 4 identical samples"),
        (["--eval_dtype", "fp32"], "eval_dtype: unknown value 'fp32'"),
    ],
)
def test_eval_spec_mistakes_get_one_line_errors(keys, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_recipe((DataArguments, EvalArguments), keys)
    assert "\n" not in str(err.value)


def test_default_eval_recipe_parses():
    data, spec = parse_recipe(
        (DataArguments, EvalArguments), ["--config", "recipes/smollm2-135m-instruct/eval/kk_levels.yaml"]
    )
    assert data.task in ("knights_knaves", "kk") and spec.eval_num_samples >= max(spec.eval_k)


def test_duplicate_model_labels_are_refused(tmp_path):
    from trl_smallrl.evaluation import evaluate

    data, spec = parse_recipe((DataArguments, EvalArguments), ["--eval_models", "a=x", "a=y"])
    with pytest.raises(ConfigError, match="eval_models: the label 'a' is used twice"):
        evaluate(data, spec, rows=[{"prompt": [], "task": "kk", "level": 2, "answer": ""}])


def test_scoring_uses_the_task_verifier_and_the_strict_format():
    from trl_smallrl.evaluation import score_samples
    from trl_smallrl.generation import Completion
    from trl_smallrl.tasks import get_task
    from trl_smallrl.tasks.knights_knaves_traces import write_trace

    (row,) = get_task("knights_knaves").generate_rows(2, 1, seed=0, split="eval")
    right = write_trace(row)
    texts = [right, right.replace("<think>", "", 1), "<think>guess</think>\n<answer>nobody</answer>", "\x00 ??"]
    samples = [[Completion(text=t, length=3, truncated=False) for t in texts]]
    (scored,) = score_samples([row], samples)
    assert scored["level"] == 2
    assert scored["correct"] == [True, True, False, False]  # the answer counts, the format does not
    assert scored["formatted"] == [True, False, True, False]


def test_tiny_models_side_by_side(tiny_model_dir, tiny_grpo_run, tmp_path, capsys):
    """A real eval: generated K&K rows, HF generate, verifier, files; the adapter run loads as its merge."""
    import json

    from trl_smallrl.evaluation import main

    main(
        [
            "--levels", "2", "3",
            "--eval_size", "2",
            "--eval_models", f"base={tiny_model_dir}", f"same={tiny_model_dir}", f"grpo={tiny_grpo_run}",
            "--eval_num_samples", "2",
            "--eval_k", "1", "2",
            "--eval_max_new_tokens", "6",
            "--eval_generation_batch_size", "3",
            "--eval_output_dir", str(tmp_path / "eval"),
        ]
    )  # fmt: skip
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [m["label"] for m in result["models"]] == ["base", "same", "grpo"]
    base, same, _ = result["models"]
    assert set(base["levels"]) == {"2", "3", "all"}
    assert base["levels"]["2"]["prompts"] == 2 and base["levels"]["all"]["prompts"] == 4
    assert len(base["levels"]["3"]["correct_counts"]) == 2
    assert 1 <= base["levels"]["all"]["mean_length"] <= 6
    assert base["levels"] == same["levels"]  # each model samples from the same seeded stream
    assert sorted(path.name for path in (tmp_path / "eval").iterdir()) == ["results.json", "results.md", SAMPLES_FILE]
    table = (tmp_path / "eval" / "results.md").read_text()
    assert table == results_table(result) and "| all | grpo | 4 |" in table
    out = capsys.readouterr().out
    assert table in out and "eval: model grpo (3 of 3): 4 prompts x 2" in out  # which model the eval is on
    # The samples file alone rebuilds the same tables (every completion scored again by the verifier).
    samples = tmp_path / "eval" / SAMPLES_FILE
    with gzip.open(samples, "rt") as handle:
        lines = [json.loads(line) for line in handle]
    assert read_samples(samples) == lines
    assert [line["model"] for line in lines] == ["base"] * 4 + ["same"] * 4 + ["grpo"] * 4
    assert [line["level"] for line in lines[:4]] == [2, 2, 3, 3]  # the rows' order, as the tools read them
    first = lines[0]
    assert set(first) == {"model", "level", "puzzle_id", "row", "completions", "correct", "lengths", "truncated"}
    assert first["row"]["task"] == "knights_knaves" and "prompt" not in first["row"] and len(first["completions"]) == 2
    assert first["puzzle_id"] == lines[4]["puzzle_id"] != lines[1]["puzzle_id"]  # the same puzzle across models
    table_main([str(samples), "--k", "1", "2"])
    assert capsys.readouterr().out == table
    with pytest.raises(SystemExit):
        table_main([str(tmp_path / "none.jsonl.gz")])
    assert "none.jsonl.gz' does not exist; give the samples.jsonl.gz of an eval." in capsys.readouterr().err


def test_an_eval_run_again_keeps_the_models_it_scored_with_the_same_settings_and_weights(
    tiny_model_dir, tmp_path, capsys
):
    """A killed or repeated eval into the same folder does not sample a model again whose settings and weights are
    the ones it scored (the reference run's final eval is longer than a sitting); other weights or settings are."""
    import json
    import os
    import shutil

    from trl_smallrl.evaluation import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    argv = ["--levels", "2", "--eval_size", "2", "--eval_models", f"a={model}", f"b={tiny_model_dir}",
            "--eval_num_samples", "2", "--eval_k", "1", "2", "--eval_max_new_tokens", "6",
            "--eval_output_dir", str(tmp_path / "eval")]  # fmt: skip
    out_dir = tmp_path / "eval"

    def run(*extra):
        capsys.readouterr()
        main([*argv, *extra])
        printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval: model")]
        return printed, json.loads((out_dir / "results.json").read_text()), read_samples(out_dir / SAMPLES_FILE)

    _, first, first_samples = run()
    printed, again, again_samples = run()
    assert printed == [f"eval: model a (1 of 2): kept from {out_dir} (the same settings and weights)",
                       f"eval: model b (2 of 2): kept from {out_dir} (the same settings and weights)"]  # fmt: skip
    assert again == first and again_samples == first_samples
    weights = next(model.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the model was trained on
    printed, _, _ = run()
    assert printed == ["eval: model a (1 of 2): 2 prompts x 2",
                       f"eval: model b (2 of 2): kept from {out_dir} (the same settings and weights)"]  # fmt: skip
    printed, other, _ = run("--eval_temperature", "0.5")
    assert printed == ["eval: model a (1 of 2): 2 prompts x 2", "eval: model b (2 of 2): 2 prompts x 2"]
    assert other["spec"]["temperature"] == 0.5


def test_an_eval_run_again_keeps_an_adapter_run_it_scored(tiny_grpo_run, tmp_path, capsys):
    """An adapter run is sampled as its float32 merge, which the first eval writes into the run's folder: that cache
    is not a change of weights, so the eval run again keeps the model (the reference run's GRPO model is one)."""
    import shutil

    from trl_smallrl.evaluation import main
    from trl_smallrl.models import MERGED_SUBDIR

    run = tmp_path / "run"
    shutil.copytree(tiny_grpo_run, run, ignore=shutil.ignore_patterns(MERGED_SUBDIR))
    argv = ["--levels", "2", "--eval_size", "2", "--eval_models", f"grpo={run}", "--eval_num_samples", "2",
            "--eval_k", "1", "2", "--eval_max_new_tokens", "6", "--eval_output_dir", str(tmp_path / "eval")]  # fmt: skip
    main(argv)
    assert (run / MERGED_SUBDIR).is_dir()  # written by the first eval
    capsys.readouterr()
    main(argv)
    assert f"eval: model grpo (1 of 1): kept from {tmp_path / 'eval'} (the same settings and weights)" in (
        capsys.readouterr().out
    )


def test_an_eval_killed_inside_a_model_resumes_at_its_next_batch_with_the_same_draws(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """A model's sampling killed after a generation batch resumes there, from the saved random state: the samples
    an unbroken eval draws. A progress file of other settings is not taken; it goes once its model is done."""
    from trl_smallrl import generation
    from trl_smallrl.evaluation import main

    argv = ["--levels", "2", "3", "--eval_size", "3", "--eval_models", f"a={tiny_model_dir}",
            "--eval_num_samples", "2", "--eval_k", "1", "2", "--eval_max_new_tokens", "8",
            "--eval_generation_batch_size", "2"]  # fmt: skip
    main([*argv, "--eval_output_dir", str(tmp_path / "unbroken")])
    unbroken = read_samples(tmp_path / "unbroken" / SAMPLES_FILE)
    saved, save = [], generation.SamplingProgress.save

    def save_then_kill(kill_after):
        def saving(progress, completions):
            save(progress, completions)
            saved.append(len(completions))
            if len(saved) == kill_after:
                raise KeyboardInterrupt  # killed once that batch was saved

        monkeypatch.setattr(generation.SamplingProgress, "save", saving)

    out = tmp_path / "eval"
    save_then_kill(2)
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--eval_output_dir", str(out)])
    assert saved == [2, 4] and progress_path(out, "a").exists() and not (out / SAMPLES_FILE).exists()
    capsys.readouterr()
    main([*argv, "--eval_output_dir", str(out)])  # 3 batches of 2 prompts: the third is the one left
    assert saved == [2, 4, 6]
    assert f"resuming the sampling after 4 prompts, from {progress_path(out, 'a')}" in capsys.readouterr().err
    assert read_samples(out / SAMPLES_FILE) == unbroken and not progress_path(out, "a").exists()

    other = tmp_path / "other"
    saved.clear()
    save_then_kill(1)
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--eval_output_dir", str(other), "--eval_temperature", "0.5"])
    main([*argv, "--eval_output_dir", str(other)])  # the 0.5 run's first batch is not taken
    assert saved == [2, 2, 4, 6] and read_samples(other / SAMPLES_FILE) == unbroken


def test_the_samples_file_refuses_verdicts_the_verifier_does_not_give(tmp_path):
    right = "<think>x</think>\n<answer>(1) Ava is a knight\n(2) Ben is a knave</answer>"
    row = {"task": "knights_knaves", "level": 2, "names": ["Ava", "Ben"], "solution": [True, False],
           "knight_knave": {"knight": "knight", "knave": "knave"}}  # fmt: skip
    line = {"model": "m", "level": 2, "puzzle_id": "p", "row": row, "completions": [right, "no"],
            "correct": [True, False], "lengths": [9, 1], "truncated": [False, False]}  # fmt: skip
    write_samples([line], tmp_path / "ok.jsonl.gz")
    assert result_from_samples(tmp_path / "ok.jsonl.gz", [1, 2])["models"][0]["levels"]["2"]["pass@1"] == 0.5
    write_samples([{**line, "correct": [True, True]}], tmp_path / "edited.jsonl.gz")
    with pytest.raises(ConfigError, match="m/p: the stored verdicts"):
        result_from_samples(tmp_path / "edited.jsonl.gz")


def test_eval_recipe_takes_the_chat_template_kwargs(tmp_path):
    """As a training recipe's: a YAML mapping, or JSON on the command line; anything else is one line."""
    recipe = tmp_path / "eval.yaml"
    recipe.write_text("chat_template_kwargs: {enable_thinking: false}\n")
    _, spec = parse_recipe((DataArguments, EvalArguments), ["--config", str(recipe)])
    assert spec.chat_template_kwargs == {"enable_thinking": False}
    _, spec = parse_recipe((DataArguments, EvalArguments), ["--chat_template_kwargs", '{"enable_thinking": true}'])
    assert spec.chat_template_kwargs == {"enable_thinking": True}
    assert parse_recipe((DataArguments, EvalArguments), [])[1].chat_template_kwargs is None
    with pytest.raises(ConfigError, match="chat_template_kwargs: 'thinking' is not a mapping") as err:
        parse_recipe((DataArguments, EvalArguments), ["--chat_template_kwargs", "thinking"])
    assert "\n" not in str(err.value)


def test_eval_reads_the_templates_think_prefill_and_renders_with_the_kwargs(tiny_model_dir, tmp_path, monkeypatch):
    """R1-Distill's real template opens `<think>` in the prompt, so its model writes only `...</think>` and the
    answer: the format rate counts the template's `<think>` as GRPO's reward does (vLLM stands in with that text)."""
    import sys

    from test_generation import _FakeVLLM, _with_template

    from trl_smallrl import generation
    from trl_smallrl.evaluation import evaluate

    fake = _FakeVLLM(text="two steps of reasoning\n</think>\n<answer>nobody</answer>")
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    monkeypatch.setattr(generation, "_vllm_usable", lambda: True)
    r1 = _with_template(tiny_model_dir, tmp_path, "deepseek_r1_distill")
    data, spec = parse_recipe(
        (DataArguments, EvalArguments),
        ["--levels", "2", "--eval_size", "2", "--eval_models", f"r1={r1}", f"plain={tiny_model_dir}",
         "--eval_num_samples", "2", "--eval_k", "1", "--eval_output_dir", str(tmp_path / "eval"),
         "--chat_template_kwargs", '{"enable_thinking": false}'],
    )  # fmt: skip
    result = evaluate(data, spec)
    r1_result, plain = result["models"]
    assert r1_result["levels"]["all"]["format_rate"] == 1.0
    assert plain["levels"]["all"]["format_rate"] == 0.0  # no prefill: the same text has no `<think>`
    lines = read_samples(tmp_path / "eval" / SAMPLES_FILE)
    assert [line["model"] for line in lines] == ["r1"] * 2 + ["plain"] * 2
    texts = lines[0]["completions"]
    assert texts == ["<think>\ntwo steps of reasoning\n</think>\n<answer>nobody</answer>"] * 2
    assert lines[2]["completions"] == ["two steps of reasoning\n</think>\n<answer>nobody</answer>"] * 2
    assert [engine["chat_template_kwargs"] for engine in fake.engines] == [{"enable_thinking": False}] * 2
    assert result["spec"]["chat_template_kwargs"] == {"enable_thinking": False}


def test_an_eval_of_other_models_or_order_keeps_each_models_progress_and_samples(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """An eval of one model killed midway, then the eval of two that begins with the other model: the first model's
    progress is not replaced by the second's, and a model kept from an earlier eval stays in the files whatever its
    place (the reference run's GRPO model was sampled alone, then the whole eval ran with the warm-up first)."""
    import json

    from trl_smallrl import generation
    from trl_smallrl.evaluation import main

    argv = ["--levels", "2", "3", "--eval_size", "3", "--eval_num_samples", "2", "--eval_k", "1", "2",
            "--eval_max_new_tokens", "8", "--eval_generation_batch_size", "2"]  # fmt: skip
    both = ["--eval_models", f"a={tiny_model_dir}", f"b={tiny_model_dir}"]
    main([*argv, *both, "--eval_output_dir", str(tmp_path / "unbroken")])
    unbroken = read_samples(tmp_path / "unbroken" / SAMPLES_FILE)
    saves, save = [], generation.SamplingProgress.save

    def kill_after(batches):
        def saving(progress, completions):
            save(progress, completions)
            saves.append(progress.path.name)
            if len(saves) == batches:
                raise KeyboardInterrupt

        monkeypatch.setattr(generation.SamplingProgress, "save", saving)

    out = tmp_path / "eval"
    kill_after(2)  # b: 2 batches of 2 prompts
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--eval_models", f"b={tiny_model_dir}", "--eval_output_dir", str(out)])
    kill_after(3)  # a: 1 batch
    with pytest.raises(KeyboardInterrupt):
        main([*argv, *both, "--eval_output_dir", str(out)])
    assert progress_path(out, "a").exists() and progress_path(out, "b").exists()
    capsys.readouterr()
    monkeypatch.setattr(generation.SamplingProgress, "save", save)
    main([*argv, *both, "--eval_output_dir", str(out)])
    printed = capsys.readouterr().err
    assert f"resuming the sampling after 2 prompts, from {progress_path(out, 'a')}" in printed
    assert f"resuming the sampling after 4 prompts, from {progress_path(out, 'b')}" in printed
    assert read_samples(out / SAMPLES_FILE) == unbroken

    single = tmp_path / "single"
    main([*argv, "--eval_models", f"b={tiny_model_dir}", "--eval_output_dir", str(single)])
    main([*argv, *both, "--eval_output_dir", str(single)])  # a sampled, then b kept
    assert read_samples(single / SAMPLES_FILE) == unbroken
    assert [model["label"] for model in json.loads((single / "results.json").read_text())["models"]] == ["a", "b"]
