"""Rewards, verifiers and the health monitor stay fast on any completion a stuck policy can write.

A policy that repeats tags or junk words writes completions of thousands of tokens; a reader whose cost grows
faster than its input then stalls a whole step (measured before the fix on 100 KB: `format_soft` took seconds
on 20 KB, the K&K verifier over 60 s, reasoning-gym's propositional_logic 3.7 s, math-verify 2.4 s). Each
reader is timed on adversarial 100 KB shapes against a bound loose enough for a loaded CI machine (the
measured costs are in the issue note: milliseconds).
"""

from __future__ import annotations

import time

import pytest

from trl_smallrl.completions import has_strict_format, has_think_then_answer
from trl_smallrl.monitors import completion_health
from trl_smallrl.rewards import REWARDS, get_reward_funcs
from trl_smallrl.tasks import get_task

SIZE = 100_000
BOUND_SECONDS = 1.0
SHAPES = {
    "repeated think/answer tags": "<think>a</think><answer>" * (SIZE // 24),
    "repeated answer opening": "<answer>" * (SIZE // 8),
    "unbalanced tags": "<think>" * (SIZE // 14) + "</answer>" * (SIZE // 18),
    "words with quotes": "<answer>" + "a'" * (SIZE // 2) + "</answer>",
    "words with hyphens": "<answer>" + "a-" * (SIZE // 2) + " is a knight</answer>",
    "role sentences": "<answer>" + "Zoey is a knight and Bob is not a knave, " * (SIZE // 42) + "</answer>",
    "nested boxes": "<answer>" + "\\boxed{" * (SIZE // 8) + "</answer>",
    "digits and dots": "<think>x</think><answer>" + "1.2-3." * (SIZE // 6) + "</answer>",
}
TASKS = ("knights_knaves", "gsm8k", "math", "syllogism", "propositional_logic")


def _row(name: str) -> dict:
    task = get_task(name)
    if name == "gsm8k":
        return {"task": name, "level": 0, "answer": "42"}
    if name == "math":
        return {"task": name, "level": 0, "answer": "\\frac{1}{2}"}
    (row,) = task.generate_rows(task.levels_or_default(None)[0], 1, seed=0)
    return {key: value for key, value in row.items() if key != "prompt"}


def _seconds(call) -> float:
    call()  # first call pays imports and caches
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("task_name", TASKS)
def test_verifiers_are_fast_on_adversarial_completions(task_name, shape):
    task, row = get_task(task_name), _row(task_name)
    assert task.score(SHAPES[shape], row) == 0.0  # none of these is a right answer, and none raises
    assert _seconds(lambda: task.score(SHAPES[shape], row)) < BOUND_SECONDS


@pytest.mark.parametrize("shape", SHAPES)
def test_rewards_are_fast_on_adversarial_completions(shape):
    text, row = SHAPES[shape], _row("knights_knaves")
    kwargs = {
        "prompts": [[{"role": "user", "content": "Who is a knight?"}]],
        "completions": [[{"role": "assistant", "content": text}]],
        "completion_ids": [list(range(len(text) // 4))],
        **{key: [value] for key, value in row.items()},
    }
    for name, reward in zip(REWARDS, get_reward_funcs(list(REWARDS))):
        assert _seconds(lambda reward=reward: reward(**kwargs)) < BOUND_SECONDS, name


@pytest.mark.parametrize("shape", SHAPES)
def test_format_checks_and_health_are_fast_on_adversarial_completions(shape, tokenizer):
    text = SHAPES[shape]
    assert has_strict_format(text) == (shape == "digits and dots")  # the one shape that is well-formed
    assert _seconds(lambda: (has_strict_format(text), has_think_then_answer(text))) < BOUND_SECONDS
    assert _seconds(lambda: completion_health(text, tokenizer)) < BOUND_SECONDS


def test_linear_format_checks_agree_with_their_definitions():
    """The scans replace backtracking patterns: same answers on the cases that define them."""
    assert has_strict_format("<think>a</think>\n<answer>b</answer>")
    assert has_strict_format("  <think></think> <answer></answer>\n")
    assert not has_strict_format("x<think>a</think><answer>b</answer>")
    assert not has_strict_format("<think>a</think>x<answer>b</answer>")
    assert not has_strict_format("<answer>b</answer><think>a</think>")
    assert not has_strict_format("<think>a</think><answer>b</answer><answer>c</answer>")
    assert has_think_then_answer("junk <think>a</think> \n <answer>b</answer> more <think>")
    assert has_think_then_answer("<think><think>a</think></think><answer>b</answer>")
    assert not has_think_then_answer("<think>a</think> x <answer>b</answer>")
    assert not has_think_then_answer("<answer>b</answer><think>a</think>")
    assert not has_think_then_answer("<think>a</think><answer>b")
