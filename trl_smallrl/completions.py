"""What the rewards, the monitors and the verifiers read in a completion: its text and its `<think>/<answer>` parts.

One home for these, so that the `format` reward and the health monitor's `format_ok` can never disagree, and so
that every reader stays linear in the completion's length: a policy stuck repeating tags writes completions of
thousands of tokens, and a backtracking pattern over them stalls a whole step (DAPO-length completions of
`"<answer>" * 12500` took seconds with a lazy regex). Everything here is a plain left-to-right scan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def completion_text(completion: Any) -> str:
    """The text of a completion, whatever TRL or a user passes: a string, bytes, a list of messages (the last
    one's content), or None."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, bytes | bytearray):
        return bytes(completion).decode("utf-8", errors="replace")
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content")
        return completion_text(content) if isinstance(content, str | bytes | bytearray) else ""
    if completion is None:
        return ""
    return str(completion)


def _blank(text: str) -> bool:
    return not text.strip()


def has_strict_format(text: str) -> bool:
    """Exactly `<think>...</think>` then `<answer>...</answer>`: each tag once, in that order, only whitespace
    around and between the two blocks (the strict format of Logic-RL)."""
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    think, think_end = text.find(THINK_OPEN), text.find(THINK_CLOSE)
    answer, answer_end = text.find(ANSWER_OPEN), text.find(ANSWER_CLOSE)
    if not think + len(THINK_OPEN) <= think_end < think_end + len(THINK_CLOSE) <= answer:
        return False
    if answer + len(ANSWER_OPEN) > answer_end:
        return False
    return (
        _blank(text[:think])
        and _blank(text[think_end + len(THINK_CLOSE) : answer])
        and _blank(text[answer_end + len(ANSWER_CLOSE) :])
    )


def has_think_then_answer(text: str) -> bool:
    """Some `<think>...</think>` block followed (after whitespace only) by an `<answer>...</answer>` block,
    anywhere in the text, other text and repeated tags allowed (open-r1's soft format)."""
    first_think = text.find(THINK_OPEN)
    last_answer_end = text.rfind(ANSWER_CLOSE)
    if first_think < 0 or last_answer_end < 0:
        return False
    close = text.find(THINK_CLOSE, first_think + len(THINK_OPEN))
    while close >= 0:
        after = close + len(THINK_CLOSE)
        while after < len(text) and text[after].isspace():
            after += 1
        if text.startswith(ANSWER_OPEN, after) and last_answer_end >= after + len(ANSWER_OPEN):
            return True
        close = text.find(THINK_CLOSE, after)
    return False


def think_text(text: str) -> str:
    """The reasoning inside the first `<think>` block, up to its `</think>` or, unclosed (a truncated
    completion still reasoned), to the end; stripped. Empty without a `<think>`."""
    start = text.find(THINK_OPEN)
    if start < 0:
        return ""
    start += len(THINK_OPEN)
    end = text.find(THINK_CLOSE, start)
    return text[start : end if end >= 0 else len(text)].strip()


def first_tagged_answer(text: str) -> str | None:
    """The text inside the first `<answer>...</answer>`, stripped, else None."""
    start = text.find(ANSWER_OPEN)
    if start < 0:
        return None
    end = text.find(ANSWER_CLOSE, start + len(ANSWER_OPEN))
    return None if end < 0 else text[start + len(ANSWER_OPEN) : end].strip()


def last_tagged_answer(text: str) -> str | None:
    """The text inside the last `<answer>...</answer>` (the innermost one when tags are nested), stripped, else
    None: the answer a verifier scores."""
    close = text.rfind(ANSWER_CLOSE)
    if close < 0:
        return None
    start = text.rfind(ANSWER_OPEN, 0, close)
    if start < 0:
        return None
    return text[start + len(ANSWER_OPEN) : close].strip()


def template_prefill(tokenizer, chat_template_kwargs: Mapping[str, Any] | None = None) -> str:
    """The `<think>` a chat template writes at the end of the generation prompt (DeepSeek-R1-Distill's ends with
    `<think>\n`), else "": the model's completion then holds only `</think>`, and a reader that wants the whole
    `<think>...</think>` block must put the template's part back in front (`with_prefill`)."""
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "?"}],
            tokenize=False,
            add_generation_prompt=True,
            **(chat_template_kwargs or {}),
        )
    except Exception:  # no chat template (a plain-text run): nothing is prefilled
        return ""
    tail = rendered[rendered.rfind(THINK_OPEN) :] if THINK_OPEN in rendered else ""
    return tail if tail.strip() == THINK_OPEN else ""


def with_prefill(completion: Any, prefill: str) -> Any:
    """The completion as the template and the model wrote it together: `prefill` + its text, in its own shape."""
    if not prefill:
        return completion
    if isinstance(completion, Sequence) and not isinstance(completion, str | bytes | bytearray) and completion:
        last = completion[-1]
        if isinstance(last, Mapping):
            return [*completion[:-1], {**last, "content": prefill + completion_text(completion)}]
    return prefill + completion_text(completion)


def without_prefill(text: str, prefill: str) -> str:
    """What the model writes of a whole assistant turn `text` when the template has written `prefill`: `text` without
    the `<think>` it opens with (and the prefill's own whitespace after it). The SFT warm-up trains this part alone,
    since the template puts the prefill in the prompt; `with_prefill` puts it back. A text that does not open with
    the prefill's tag is returned as it is."""
    tag = prefill.strip()
    start = len(text) - len(text.lstrip())
    if not tag or not text.startswith(tag, start):
        return text
    rest = text[start + len(tag) :]
    after_tag = prefill[prefill.index(tag) + len(tag) :]
    return rest[len(after_tag) :] if rest.startswith(after_tag) else rest
