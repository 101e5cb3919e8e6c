"""Reward registry: recipes name their rewards (`reward_funcs: [format, cosine]`) and set parameters by name.

Every reward has TRL's reward-function signature (`completions`, `completion_ids`, the dataset columns as
keyword lists, ...), is a picklable class instance (TRL forwards rewards to other processes), and returns one
float per completion for any completion text: empty, huge, junk, missing tags. Correctness always comes from
the row's task verifier (`trl_smallrl.tasks.get_task(row["task"]).score(text, row)`), so one batch may mix
tasks. Where TRL ships the reward (DAPO's soft overlong punishment, the repetition penalty) the registry hands
out TRL's own implementation.
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trl.rewards import get_repetition_penalty_reward, get_soft_overlong_punishment

from trl_smallrl.completions import TAGS, completion_text, has_strict_format, has_think_then_answer
from trl_smallrl.errors import ConfigError, unknown_name
from trl_smallrl.tasks import get_task

# Keyword arguments TRL passes to every reward that are not dataset columns.
_NON_COLUMN_KWARGS = frozenset(
    {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}
)


def rows_from_kwargs(n: int, kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rebuild the `n` dataset rows (without `prompt`) from the column lists TRL passes as keyword arguments."""
    columns = {k: v for k, v in kwargs.items() if k not in _NON_COLUMN_KWARGS and isinstance(v, list) and len(v) == n}
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def verifier_scores(completions: Sequence[Any], kwargs: Mapping[str, Any]) -> list[float]:
    """Score each completion with its row's task verifier (1.0 correct, 0.0 wrong, partial credit between)."""
    return score_rows([completion_text(c) for c in completions], rows_from_kwargs(len(completions), kwargs))


def verifier_correct(completions: Sequence[Any], kwargs: Mapping[str, Any]) -> list[bool]:
    """Whether each completion is right by its row's task verifier (`Task.is_correct`)."""
    return correct_rows([completion_text(c) for c in completions], rows_from_kwargs(len(completions), kwargs))


def _require_task_column(rows: Sequence[Mapping[str, Any]]) -> None:
    if rows and "task" not in rows[0]:
        raise ConfigError("dataset: rows have no `task` column; correctness rewards need it to find the verifier.")


def score_rows(texts: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Score completion texts against their rows (dataset rows without `prompt`) with each row's task verifier."""
    _require_task_column(rows)
    return [float(get_task(row["task"]).score(text, row)) for text, row in zip(texts, rows)]


def correct_rows(texts: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Whether each completion text is right for its row (dataset row without `prompt`), by `Task.is_correct`."""
    _require_task_column(rows)
    return [get_task(row["task"]).is_correct(text, row) for text, row in zip(texts, rows)]


class StrictFormatReward:
    """1.0 when the completion is exactly `<think>...</think>` then `<answer>...</answer>` (each tag once, in that
    order, only whitespace around them), else 0.0. The strict format reward of Logic-RL (Xie et al. 2025,
    arXiv:2502.14768), here on a 0/1 scale."""

    __name__ = "format"

    def __call__(self, completions, **kwargs) -> list[float]:
        return [1.0 if has_strict_format(completion_text(c)) else 0.0 for c in completions]


class SoftFormatReward:
    """1.0 when a `<think>...</think>` block is followed by an `<answer>...</answer>` block anywhere in the
    completion (other text and repeated tags allowed), else 0.0. open-r1's soft format reward; it gives a
    signal earlier than the strict one."""

    __name__ = "format_soft"

    def __call__(self, completions, **kwargs) -> list[float]:
        return [1.0 if has_think_then_answer(completion_text(c)) else 0.0 for c in completions]


class TagCountReward:
    """Partial format credit: 0.25 for each of `<think>`, `</think>`, `<answer>`, `</answer>` that appears exactly
    once (so 0.0 to 1.0). open-r1's `tag_count_reward`, without its newline requirements; it rewards the
    first steps toward the format that the strict reward cannot see."""

    __name__ = "tag_count"

    def __call__(self, completions, **kwargs) -> list[float]:
        return [float(sum(0.25 for tag in TAGS if completion_text(c).count(tag) == 1)) for c in completions]


class AccuracyReward:
    """The row's task verifier: 1.0 correct, 0.0 wrong (partial credit in between where the task gives it).
    Rule-based outcome reward as in DeepSeek-R1 (arXiv:2501.12948) and Logic-RL."""

    __name__ = "accuracy"

    def __call__(self, completions, **kwargs) -> list[float]:
        return verifier_scores(completions, kwargs)


class BinaryAccuracyReward:
    """+1 when the row's task verifier says correct (score 1.0), else -1: the symmetric answer reward of Logic-RL
    (arXiv:2502.14768), which punishes a wrong answer as much as it rewards a right one."""

    __name__ = "accuracy_binary"

    def __call__(self, completions, **kwargs) -> list[float]:
        return [1.0 if right else -1.0 for right in verifier_correct(completions, kwargs)]


class CosineScaledReward:
    """Length-scaled correctness ("Demystifying Long Chain-of-Thought Reasoning", Yeo et al. 2025,
    arXiv:2502.03373, App. C.1; used by Open-RS), over any task verifier.

    With L the number of completion tokens, p = min(L / max_len, 1) and c = cos(p * pi):
    correct: lo, hi = min_value_correct, max_value_correct; wrong: lo, hi = max_value_wrong, min_value_wrong;
    reward = lo + 0.5 * (hi - lo) * (1 + c). A short right answer earns most, a short wrong answer loses most.
    Same formula, clamp and defaults as TRL's `get_cosine_scaled_reward`, which only verifies math; length is
    counted in tokens, not characters (open-r1 issue 312).
    """

    __name__ = "cosine"

    def __init__(
        self,
        max_len: int = 1000,
        min_value_wrong: float = -1.0,
        max_value_wrong: float = -0.5,
        min_value_correct: float = 0.5,
        max_value_correct: float = 1.0,
    ):
        if max_len <= 0:
            raise ConfigError(f"cosine_max_len: {max_len} must be a positive number of tokens.")
        self.max_len = max_len
        self.min_value_wrong, self.max_value_wrong = min_value_wrong, max_value_wrong
        self.min_value_correct, self.max_value_correct = min_value_correct, max_value_correct

    def __call__(self, completions, completion_ids, **kwargs) -> list[float]:
        rewards = []
        for right, ids in zip(verifier_correct(completions, kwargs), completion_ids):
            progress = min(len(ids) / self.max_len, 1.0)
            cosine = math.cos(progress * math.pi)
            if right:
                lo, hi = self.min_value_correct, self.max_value_correct
            else:
                lo, hi = self.max_value_wrong, self.min_value_wrong
            rewards.append(lo + 0.5 * (hi - lo) * (1.0 + cosine))
        return rewards


@functools.lru_cache(maxsize=65536)
def _script(char: str) -> str:
    """The Unicode script of a letter, from its character name ("LATIN SMALL LETTER A" -> "LATIN")."""
    try:
        return unicodedata.name(char).split(" ", 1)[0]
    except ValueError:
        return "UNKNOWN"


def _script_counts(text: str) -> Counter:
    """Letters per script; each distinct character is looked up once (a 100 KB text has few of them)."""
    counts: Counter = Counter()
    for char, n in Counter(text).items():
        if char.isalpha():
            counts[_script(char)] += n
    return counts


class LanguageConsistencyReward:
    """Penalty for drifting out of the prompt's script: reward = (share of the completion's letters written in a
    script the prompt uses) - 1, so 0.0 for a completion in the prompt's script(s) and -1.0 for one entirely
    in another (0.0 when the completion has no letters). The language-consistency reward of DeepSeek-R1
    (arXiv:2501.12948, sec. 2.3.2), measured on Unicode scripts so it needs no language model; a script counts
    as the prompt's when it holds at least `min_share` of the prompt's letters."""

    __name__ = "language"

    def __init__(self, min_share: float = 0.05):
        if not 0.0 <= min_share < 1.0:
            raise ConfigError(f"language_min_share: {min_share} must be in [0, 1).")
        self.min_share = min_share

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        rewards = []
        for prompt, completion in zip(prompts, completions):
            if isinstance(prompt, str):
                prompt_text = prompt
            else:
                prompt_text = " ".join(str(m.get("content", "")) for m in prompt if isinstance(m, Mapping))
            prompt_counts = _script_counts(prompt_text)
            total = sum(prompt_counts.values())
            allowed = {s for s, n in prompt_counts.items() if total and n / total >= self.min_share}
            counts = _script_counts(completion_text(completion))
            letters = sum(counts.values())
            if not letters or not allowed:
                rewards.append(0.0)
                continue
            rewards.append(sum(n for s, n in counts.items() if s in allowed) / letters - 1.0)
        return rewards


def _named(func: Callable, name: str) -> Callable:
    """Give TRL's reward instance our registry name, so metrics read `rewards/<name>/mean`."""
    func.__name__ = name
    return func


def _soft_overlong(max_len: int, cache: int, follows_budget: bool) -> Callable:
    """TRL's soft overlong punishment, remembering its settings: when L_max is the completion budget (no
    `overlong_max_len` in the recipe), a reset that changes `max_completion_length` rebuilds it for the new
    budget (`follow_completion_budget`), or the penalty would stay at the old one."""
    if cache < 0 or cache >= max_len:
        raise ConfigError(
            f"overlong_cache: {cache} must be in [0, L_max = {max_len}); lower it or raise overlong_max_len."
        )
    func = _named(get_soft_overlong_punishment(max_len, cache), "soft_overlong")
    func.overlong_cache, func.follows_budget = cache, follows_budget
    return func


def follow_completion_budget(reward_funcs: list, max_completion_length: int) -> None:
    """Rebuild, in place, the rewards whose length limit is the completion budget for a new budget."""
    for index, func in enumerate(reward_funcs):
        if getattr(func, "follows_budget", False):
            reward_funcs[index] = _soft_overlong(max_completion_length, func.overlong_cache, follows_budget=True)


def _repetition_penalty(ngram_size: int, max_penalty: float) -> Callable:
    if ngram_size < 1 or max_penalty > 0:
        raise ConfigError(
            f"repetition_n_grams/repetition_max_penalty: ({ngram_size}, {max_penalty}) must be >= 1 and <= 0."
        )
    return get_repetition_penalty_reward(ngram_size=ngram_size, max_penalty=max_penalty)


# name -> factory taking the reward parameters (all of them, by their recipe names, with the defaults of
# `configs.GRPOScriptArguments` filled in by `get_reward_funcs`) and returning the reward.
REWARDS: dict[str, Callable[..., Callable]] = {
    "format": lambda **p: StrictFormatReward(),
    "format_soft": lambda **p: SoftFormatReward(),
    "tag_count": lambda **p: TagCountReward(),
    "accuracy": lambda **p: AccuracyReward(),
    "accuracy_binary": lambda **p: BinaryAccuracyReward(),
    "cosine": lambda **p: CosineScaledReward(
        max_len=p["cosine_max_len"],
        min_value_wrong=p["cosine_min_value_wrong"],
        max_value_wrong=p["cosine_max_value_wrong"],
        min_value_correct=p["cosine_min_value_correct"],
        max_value_correct=p["cosine_max_value_correct"],
    ),
    "soft_overlong": lambda **p: _soft_overlong(
        p["overlong_max_len"] or p["max_completion_length"],
        p["overlong_cache"],
        follows_budget=p["overlong_max_len"] is None,
    ),
    "repetition_penalty": lambda **p: _named(
        _repetition_penalty(p["repetition_n_grams"], p["repetition_max_penalty"]), "repetition_penalty"
    ),
    "language": lambda **p: LanguageConsistencyReward(min_share=p["language_min_share"]),
}


def reward_parameter_defaults() -> dict[str, Any]:
    """Every reward parameter's default, from the one place a recipe's keys are declared (`GRPOScriptArguments`),
    and the completion budget (TRL's `GRPOConfig.max_completion_length`)."""
    import dataclasses

    import trl

    from trl_smallrl.configs import GRPOScriptArguments

    defaults = {
        f.name: f.default for f in dataclasses.fields(GRPOScriptArguments) if f.default is not dataclasses.MISSING
    }
    defaults["max_completion_length"] = trl.GRPOConfig.__dataclass_fields__["max_completion_length"].default
    return defaults


def register_reward(name: str, factory: Callable[..., Callable]) -> None:
    """Make a reward available to recipes as `reward_funcs: [name]`.

    `factory(**params)` receives every reward parameter of the recipe (by recipe name) and returns a reward
    with TRL's signature; a name already taken is refused, so a plugin cannot silently replace a built-in.
    """
    if name in REWARDS:
        raise ConfigError(f"reward_funcs: {name!r} is already a reward; register yours under another name.")
    REWARDS[name] = factory


def get_reward_funcs(names: Sequence[str], **params) -> list[Callable]:
    """The reward functions named in a recipe's `reward_funcs`, built with the recipe's reward parameters.

    A name is a registered reward (`REWARDS`, `register_reward`) or an import path to a function with TRL's reward
    signature (`my_rewards:brevity`, or `my_rewards.brevity` as in TRL's script), used as it is.

    `params` are the recipe's reward fields (`cosine_max_len`, `repetition_n_grams`, ...); unknown parameters
    are ignored so a whole `GRPOScriptArguments` can be passed. An unknown reward name raises `ConfigError`
    listing the valid ones.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ConfigError(f"reward_funcs: empty; name at least one of: {', '.join(sorted(REWARDS))}.")
    funcs = {name: REWARDS.get(name) or _imported_reward(name) for name in names}  # every name checked first
    params = {**reward_parameter_defaults(), **{k: v for k, v in params.items() if v is not None}}
    return [REWARDS[name](**params) if name in REWARDS else funcs[name] for name in names]


def _imported_reward(name: str) -> Callable:
    """A reward named by import path, as TRL's GRPO script takes it: `package.module.function` or
    `package.module:function`, found from the working directory too (a recipe's own rewards.py)."""
    import importlib
    import os
    import sys

    if ":" not in name and "." not in name:
        raise unknown_name("reward_funcs", name, REWARDS)
    module_name, _, attribute = name.rpartition(":") if ":" in name else name.rpartition(".")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        func = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"reward_funcs: cannot import {name!r} ({err}); give `module:function` of a module on the Python path "
            f"or in the working directory, or one of: {', '.join(sorted(REWARDS))}."
        ) from None
    if not callable(func):
        raise ConfigError(f"reward_funcs: {name!r} is not a function; point it at a reward function.")
    return func
