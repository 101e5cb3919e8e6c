"""Each reward against its formula on crafted completions, through the registry as a recipe builds them."""

from __future__ import annotations

import math
import pickle

import pytest

from trl_smallrl.errors import ConfigError
from trl_smallrl.rewards import REWARDS, get_reward_funcs


@pytest.fixture(scope="module")
def kk_row():
    from trl_smallrl.tasks import get_task

    row = get_task("knights_knaves").generate_rows(level=2, size=1, seed=3)[0]
    return {k: v for k, v in row.items() if k != "prompt"}, row["prompt"]


def _msg(text):
    return [{"role": "assistant", "content": text}]


def _call(func, texts, row, prompt, ids=None):
    """Call a reward the way TRL does: columns as keyword lists plus completions/prompts/completion_ids."""
    n = len(texts)
    columns = {k: [v] * n for k, v in row.items()}
    ids = ids if ids is not None else [[1] * max(1, len(t) // 4) for t in texts]
    return func(prompts=[prompt] * n, completions=[_msg(t) for t in texts], completion_ids=ids, **columns)


def _right(row):
    names = row["names"]
    roles = ["knight" if s else "knave" for s in row["solution"]]
    lines = "\n".join(f"({i + 1}) {n} is a {r}" for i, (n, r) in enumerate(zip(names, roles)))
    return f"<think>reasoning</think>\n<answer>\n{lines}\n</answer>"


def _wrong(row):
    names = row["names"]
    roles = ["knave" if s else "knight" for s in row["solution"]]
    lines = "\n".join(f"({i + 1}) {n} is a {r}" for i, (n, r) in enumerate(zip(names, roles)))
    return f"<think>reasoning</think>\n<answer>\n{lines}\n</answer>"


def test_format_variants(kk_row):
    row, prompt = kk_row
    texts = [
        "<think>a</think>\n<answer>b</answer>",  # strict
        "  <think>a</think><answer>b</answer>\n",  # strict, whitespace around
        "Sure! <think>a</think> <answer>b</answer> done",  # soft only
        "<think>a</think><think>c</think><answer>b</answer>",  # repeated think tags: soft, 2/4 tags once
        "<answer>b</answer><think>a</think>",  # wrong order: all tags once
        "<think>a",  # one tag
        "",
    ]
    strict, soft, tags = get_reward_funcs(["format", "format_soft", "tag_count"])
    assert _call(strict, texts, row, prompt) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert _call(soft, texts, row, prompt) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert _call(tags, texts, row, prompt) == [1.0, 1.0, 1.0, 0.5, 1.0, 0.25, 0.0]


def test_accuracy_and_binary_use_the_rows_verifier(kk_row):
    row, prompt = kk_row
    accuracy, binary = get_reward_funcs(["accuracy", "accuracy_binary"])
    texts = [_right(row), _wrong(row), "no answer at all"]
    assert _call(accuracy, texts, row, prompt) == [1.0, 0.0, 0.0]
    assert _call(binary, texts, row, prompt) == [1.0, -1.0, -1.0]


def test_accuracy_mixes_tasks_in_one_batch(kk_row):
    from trl_smallrl.tasks import get_task

    row, _ = kk_row
    other_row = {k: v for k, v in get_task("gcd").generate_rows(level=1, size=1, seed=0)[0].items() if k != "prompt"}
    keys = sorted(set(row) | set(other_row))
    columns = {k: [row.get(k), other_row.get(k)] for k in keys}
    texts = [_right(row), f"<think>x</think><answer>{other_row['answer']}</answer>"]
    (accuracy,) = get_reward_funcs(["accuracy"])
    assert accuracy(completions=[_msg(t) for t in texts], completion_ids=[[1], [1]], **columns) == [1.0, 1.0]


@pytest.mark.parametrize("length", [0, 1, 50, 100, 150, 400])
def test_cosine_formula_in_tokens(kk_row, length):
    row, prompt = kk_row
    (cosine,) = get_reward_funcs(
        ["cosine"],
        cosine_max_len=100,
        cosine_min_value_wrong=-1.0,
        cosine_max_value_wrong=-0.5,
        cosine_min_value_correct=0.5,
        cosine_max_value_correct=1.0,
    )
    ids = [[7] * length, [7] * length]
    # Same text, different token counts: only completion_ids decide the length.
    right, wrong = _call(cosine, [_right(row), _wrong(row)], row, prompt, ids=ids)
    c = math.cos(min(length / 100, 1.0) * math.pi)
    assert right == pytest.approx(0.5 + 0.5 * (1.0 - 0.5) * (1 + c))
    assert wrong == pytest.approx(-0.5 + 0.5 * (-1.0 + 0.5) * (1 + c))


def test_cosine_matches_trl_on_math(kk_row):
    """TRL's get_cosine_scaled_reward (math verifier) and ours (task verifier) agree when correctness agrees."""
    from trl.rewards import get_cosine_scaled_reward

    row, prompt = kk_row
    trl_cosine = get_cosine_scaled_reward(max_len=64)
    (ours,) = get_reward_funcs(["cosine"], cosine_max_len=64)
    ids = [[1] * 20, [1] * 90]
    expected = trl_cosine(
        [[{"content": r"\boxed{\frac{1}{3}}"}], [{"content": r"\boxed{2}"}]], [r"\frac{1}{3}"] * 2, ids
    )
    assert _call(ours, [_right(row), _wrong(row)], row, prompt, ids=ids) == pytest.approx(expected)


def test_soft_overlong_and_repetition_are_trls(kk_row):
    row, prompt = kk_row
    overlong, repetition = get_reward_funcs(
        ["soft_overlong", "repetition_penalty"],
        overlong_max_len=100,
        overlong_cache=20,
        repetition_n_grams=2,
        repetition_max_penalty=-1.0,
    )
    ids = [[1] * 70, [1] * 90, [1] * 120]
    assert _call(overlong, ["a"] * 3, row, prompt, ids=ids) == [0.0, -0.5, -1.0]
    assert _call(repetition, ["a", "b"], row, prompt, ids=[[1, 2, 3, 4], [5, 5, 5, 5, 5]]) == [0.0, -0.75]
    assert overlong.__name__ == "soft_overlong" and repetition.__name__ == "repetition_penalty"


def test_language_penalizes_drift_out_of_the_prompts_script(kk_row):
    row, prompt = kk_row
    (language,) = get_reward_funcs(["language"])
    texts = ["<think>all english</think>", "完全中文回答", "half 中文", "1234 !!", ""]
    rewards = _call(language, texts, row, prompt)
    assert rewards[0] == 0.0 and rewards[1] == -1.0 and rewards[3] == 0.0 and rewards[4] == 0.0
    assert rewards[2] == pytest.approx(4 / 6 - 1)  # 4 Latin letters of 6


def test_no_reward_raises_on_any_completion_and_all_pickle(kk_row):
    row, prompt = kk_row
    junk = ["", "\x00\xff\ufffd" * 50, "<think>" * 2000, "</answer><answer>", "a" * 200_000, "<answer></answer>"]
    funcs = get_reward_funcs(sorted(REWARDS), cosine_max_len=10)
    for func in funcs:
        ids = [[], [0] * 5, [1] * 3000, [2], [3] * 50_000, [4]]
        rewards = _call(func, junk, row, prompt, ids=ids)
        assert len(rewards) == len(junk) and all(isinstance(r, float) and math.isfinite(r) for r in rewards)
        clone = pickle.loads(pickle.dumps(func))
        assert _call(clone, junk, row, prompt, ids=ids) == rewards


def test_unknown_reward_lists_the_valid_names():
    with pytest.raises(ConfigError, match="reward_funcs: unknown value 'cosin'.*Did you mean 'cosine'.*format_soft"):
        get_reward_funcs(["cosin"])
    with pytest.raises(ConfigError, match="cosine_max_len"):
        get_reward_funcs(["cosine"], cosine_max_len=0)


def test_soft_overlong_follows_the_completion_budget_unless_set():
    from trl_smallrl.rewards import follow_completion_budget

    ids = [[0] * 45]
    following = get_reward_funcs(["soft_overlong", "format"], max_completion_length=100, overlong_cache=10)
    fixed = get_reward_funcs(["soft_overlong"], max_completion_length=100, overlong_max_len=100, overlong_cache=10)
    assert following[0](completion_ids=ids) == [0.0] == fixed[0](completion_ids=ids)
    follow_completion_budget(following, 50)  # a reset lowers max_completion_length to 50
    follow_completion_budget(fixed, 50)
    assert following[0](completion_ids=ids) == [pytest.approx(-0.5)]  # 45 tokens: halfway into the 40-50 band
    assert following[0].__name__ == "soft_overlong" and following[1].__name__ == "format"
    assert fixed[0](completion_ids=ids) == [0.0]  # the recipe's own L_max stays


def test_reward_defaults_are_the_recipe_dataclass_defaults():
    """A reward built without a parameter uses the default the recipe's `--help` shows (GRPOScriptArguments)."""
    import dataclasses

    from trl_smallrl.configs import GRPOScriptArguments
    from trl_smallrl.rewards import get_reward_funcs

    defaults = {f.name: f.default for f in dataclasses.fields(GRPOScriptArguments)}
    overlong, cosine = get_reward_funcs(["soft_overlong", "cosine"], max_completion_length=512)
    assert overlong.overlong_cache == defaults["overlong_cache"]
    assert (cosine.max_len, cosine.min_value_wrong) == (defaults["cosine_max_len"], defaults["cosine_min_value_wrong"])
    assert get_reward_funcs(["soft_overlong"], max_completion_length=512, overlong_cache=8)[0].overlong_cache == 8


def test_a_recipe_names_its_own_reward_by_import_path(tmp_path, monkeypatch):
    """`reward_funcs: [format, my_rewards:brevity]` uses a function of the run's own module, as TRL's script does."""
    import sys

    from trl_smallrl.errors import ConfigError
    from trl_smallrl.rewards import get_reward_funcs

    (tmp_path / "my_rewards.py").write_text(
        "def brevity(completions, **kwargs):\n    return [-len(str(c)) / 100 for c in completions]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    fmt, brevity = get_reward_funcs(["format", "my_rewards:brevity"])
    assert brevity.__module__ == "my_rewards" and brevity(["abcd"]) == [-0.04]
    assert get_reward_funcs(["my_rewards.brevity"])[0] is brevity
    with pytest.raises(ConfigError, match=r"reward_funcs: cannot import 'my_rewards:nothing'.*module:function"):
        get_reward_funcs(["my_rewards:nothing"])
    with pytest.raises(ConfigError, match=r"reward_funcs: cannot import 'no_such_module:f'"):
        get_reward_funcs(["format", "no_such_module:f"])
