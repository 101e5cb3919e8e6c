"""The K&K verifier on hand-written answers: the formats people and models write, and the ways they go wrong."""

from __future__ import annotations

import pytest

from trl_smallrl.tasks import get_task
from trl_smallrl.tasks.knights_knaves import KnightsKnavesTask
from trl_smallrl.tasks.knights_knaves_logic import Roles

# Emma is a knight, Noah a knave, Liam a knight (the statements do not matter to the verifier).
ROW = {
    "task": "knights_knaves",
    "level": 3,
    "names": ["Emma", "Noah", "Liam"],
    "solution": [True, False, True],
    "knight_knave": Roles().as_dict(),
    "quiz": "A very special island is inhabited only by knights and knaves. ...",
}
# The same roles in a puzzle that says saint/sinner, with no knight_knave column (Logic-RL files).
SAINT_ROW = {
    "task": "knights_knaves",
    "level": 2,
    "names": ["Zoey", "Oliver"],
    "solution": [False, True],
    "quiz": "A very special island is inhabited only by saints and sinners. Saints always tell the truth.",
}


def tagged(text: str) -> str:
    return f"<think>some reasoning</think>\n<answer>{text}</answer>"


RIGHT = [
    "(1) Emma is a knight\n(2) Noah is a knave\n(3) Liam is a knight",
    "Emma is a knight, Noah is a knave, and Liam is a knight.",
    "Emma is a knight\nNoah is a knave\nLiam is a knight",
    "emma is a KNIGHT, noah is a knave, liam is a knight",
    "Liam is a knight, Emma is a knight, and Noah is a knave.",
    "Emma and Liam are knights, and Noah is a knave.",
    "Emma: knight; Noah: knave; Liam: knight",
    "Emma is a knight. Noah is not a knight. Liam is a knight.",
    "Emma is a knight, Noah isn't a knight, Liam is a knight",
    "Emma is a knight, not a knave; Noah is a knave; Liam is a knight",
    " \n  (1) Emma is a knight \n\n (2) Noah is a knave \n (3) Liam is a knight  \n",
    "The answer is: Emma is a knight, Noah is a knave and Liam is a knight",
    "Emma - knight, Noah - knave, Liam - knight",
    "Emma is a knight, Noah is a knave, Liam is a knight, and Emma is a knight.",  # repeated, consistent
]
WRONG = [
    "Emma is a knave, Noah is a knave, and Liam is a knight.",  # one role wrong
    "Emma is a knight, Noah is a knight, and Liam is a knight.",  # one role wrong
    "Emma is a knight and Noah is a knave.",  # leaves Liam out
    "Emma is a knight, Noah is a knave, Liam is a knight, and Noah is a knight.",  # two roles for Noah
    "Emma is a knight/knave, Noah is a knight/knave, and Liam is a knight/knave",  # the format placeholder
    "Emma is a knight/knave, Noah is a knave, and Liam is a knight",  # one placeholder left
    "Emma is a knight and a knave, Noah is a knave, and Liam is a knight",  # two roles at once
    "Emma is a knight, Noah is a knave, Liam is a knight, and Zed is a knave.",  # a stranger
    "Emma is a knight, Noah is a knave, Liam is a knight, Bob is a knight.",  # a stranger
    "Emma: knight; Zed: knave; Noah: knave; Liam: knight",  # a stranger's role lands on Emma: two roles
    "Emma is a saint, Noah is a sinner, and Liam is a saint.",  # words of another puzzle
    "Emma is a knight, Noah is not a knave, Liam is a knight",  # negation flips the role
    "",  # empty answer
    "knight knave knight",  # no names
    "Emma, Noah, Liam",  # no roles
    "Emma and Noah and Liam are knights",  # everyone a knight
]


@pytest.mark.parametrize("answer", RIGHT)
def test_right_answers_score_one(answer):
    assert get_task("kk").score(tagged(answer), ROW) == 1.0


@pytest.mark.parametrize("answer", WRONG)
def test_wrong_answers_score_zero(answer):
    assert get_task("kk").score(tagged(answer), ROW) == 0.0


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<answer>Zoey is a sinner, and Oliver is a saint.</answer>", 1.0),
        ("<answer>(1) Zoey is a sinner\n(2) Oliver is a saint</answer>", 1.0),
        ("<answer>ZOEY IS A SINNER, OLIVER IS A SAINT</answer>", 1.0),
        ("<answer>Zoey is a knave and Oliver is a knight</answer>", 1.0),  # the generic words are fine too
        ("<answer>Zoey is a saint, and Oliver is a sinner.</answer>", 0.0),
        ("<answer>Zoey is a sinner, Oliver is a saint, Emma is a saint</answer>", 0.0),
    ],
)
def test_the_puzzles_own_words(completion, expected):
    assert get_task("kk").score(completion, SAINT_ROW) == expected


MALFORMED = [
    "Emma is a knight, Noah is a knave, and Liam is a knight.",  # no tags
    "<answer>Emma is a knight, Noah is a knave, and Liam is a knight.",  # unclosed
    "Emma is a knight, Noah is a knave, and Liam is a knight.</answer>",  # never opened
    "<answer>Emma is a knight, Noah is a knave, and Liam is a knight.</answer><answer>all knaves</answer>",
    "<answer></answer>",
    "<think>Emma is a knight, Noah is a knave, Liam is a knight</think>",  # answer only in the thinking
]


@pytest.mark.parametrize("completion", MALFORMED)
def test_malformed_completions_score_zero(completion):
    assert get_task("kk").score(completion, ROW) == 0.0


def test_articles_follow_the_puzzles_words():
    roles = Roles("angel", "devil")
    assert (roles.a(True), roles.a(False)) == ("an angel", "a devil")
    angel_row = {**SAINT_ROW, "quiz": "A very special island is inhabited only by angels and devils."}
    assert get_task("kk").score("<answer>Zoey is a devil, and Oliver is an angel.</answer>", angel_row) == 1.0


def test_the_last_and_innermost_answer_counts():
    right = "Emma is a knight, Noah is a knave, and Liam is a knight."
    task = get_task("kk")
    assert task.score(f"<answer>all knaves</answer> then <answer>{right}</answer>", ROW) == 1.0
    assert task.score(f"<answer><answer>{right}</answer></answer>", ROW) == 1.0
    assert task.extract_answer(f"x <answer> {right} </answer> y") == right


def test_conversational_completions_are_read_like_text():
    messages = [{"role": "assistant", "content": tagged(RIGHT[0])}]
    assert get_task("kk").score(messages, ROW) == 1.0


def test_partial_credit_is_the_fraction_of_people_right_and_off_by_default():
    one_wrong = tagged("Emma is a knave, Noah is a knave, and Liam is a knight.")
    assert KnightsKnavesTask().score(one_wrong, ROW) == 0.0
    partial = KnightsKnavesTask(partial_credit=True)
    assert partial.score(one_wrong, ROW) == pytest.approx(2 / 3)
    assert partial.score(tagged("Emma is a knight and Noah is a knave."), ROW) == pytest.approx(2 / 3)
    assert partial.score(tagged("Emma is a knight/knave, Noah is a knave, Liam is a knight"), ROW) == pytest.approx(
        2 / 3
    )
    assert partial.score(tagged("Emma is a knight, Noah is a knave, Liam is a knight, Zed is a knight"), ROW) == 0.0
    assert partial.score(tagged(RIGHT[1]), ROW) == 1.0


JUNK = [
    "",
    None,
    b"<answer>Emma is a knight\xff\xfe</answer>",
    "\x00\x01\x02<answer>\ud800</answer>",
    "<answer>" * 10_000 + "Emma" + "</answer>" * 10_000,
    "<answer>" + "Emma is a knight, " * 50_000 + "</answer>",
    "<answer>(((((" + "[" * 1000 + "\\boxed{" * 100 + "</answer>",
    "<answer>Emma is a knight, Noah is a knave, and Liam is a .*+?(knight)[</answer>",
    12345,
    [{"role": "assistant"}],
    "<answer>🙂 Emma est un chevalier, 诺亚 是 骗子</answer>",
]


@pytest.mark.parametrize("completion", JUNK, ids=range(len(JUNK)))
def test_never_raises_on_junk(completion):
    for task in (KnightsKnavesTask(), KnightsKnavesTask(partial_credit=True)):
        assert 0.0 <= task.score(completion, ROW) <= 1.0
