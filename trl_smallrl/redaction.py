"""Secrets never reach what a run writes: saved configs, model cards and uploads go through `redact_secrets`,
and the training arguments, which the Trainer pickles into `training_args.bin` in the output folder and every
checkpoint, go through `take_secrets_out` before the trainer exists.

A recipe may carry a Hub token (`hub_token`), a tracker's key, or a token pasted into a free-text field; output
folders get copied, shared and uploaded. Values under secret-looking keys and token-shaped strings anywhere
are replaced before anything is written.
"""

from __future__ import annotations

import dataclasses
import re

# Keys whose value is a secret: `hub_token`, `wandb_key`, `api_key`, `client_secret`, `password`, ...; not keys that
# merely mention tokens (`average_tokens_across_devices`, `max_completion_length`).
_SECRET_KEY = re.compile(r"(^|_)(token|key)$|secret|passw(or)?d|api_?key|credential", re.IGNORECASE)
# Token-shaped values anywhere: Hugging Face (`hf_` + letters, digits, `_`), OpenAI-style `sk-...`, 40-hex keys
# (wandb). Bounded on both sides by a character that cannot be part of the token.
_SECRET_VALUE = re.compile(
    r"(?<![A-Za-z0-9_])(hf_[A-Za-z0-9_]{20,}|sk-[A-Za-z0-9_-]{20,}|[0-9a-f]{40})(?![A-Za-z0-9_-])"
)
REDACTED = "<redacted>"


def redact_secrets(value):
    """`value` with secrets replaced: values under secret-looking keys, and token-shaped strings anywhere."""
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) and v else redact_secrets(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_secrets(v) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    return value


def take_secrets_out(training_args) -> str | None:
    """Take the Hub token out of the training arguments (returned, for the final push alone) and replace
    token-shaped strings in their other text fields (a token pasted into `run_name`, say), in place."""
    token = training_args.hub_token
    training_args.hub_token = None
    for field in dataclasses.fields(training_args):
        value = getattr(training_args, field.name)
        if isinstance(value, str) and _SECRET_VALUE.search(value):
            setattr(training_args, field.name, _SECRET_VALUE.sub(REDACTED, value))
    return token
