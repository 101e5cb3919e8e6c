"""Secrets never reach what a run writes: saved configs, cards, uploads and the pickled training arguments."""

from __future__ import annotations

from trl_smallrl.redaction import REDACTED, redact_secrets, take_secrets_out

HF = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123"
WANDB = "0123456789abcdef0123456789abcdef01234567"


def test_secret_keys_and_token_shaped_values_are_redacted_everywhere():
    config = {
        "hub_token": "anything",
        "wandb_api_key": "x",
        "run_name": f"try {HF} again",
        "notes": [f"key={WANDB}", {"password": "p"}],
        "max_completion_length": 512,  # mentions nothing secret
        "average_tokens_across_devices": True,  # a key that merely mentions tokens
    }
    redacted = redact_secrets(config)
    assert redacted["hub_token"] == redacted["wandb_api_key"] == REDACTED
    assert redacted["run_name"] == f"try {REDACTED} again" and redacted["notes"] == [f"key={REDACTED}",
                                                                                     {"password": REDACTED}]  # fmt: skip
    assert redacted["max_completion_length"] == 512 and redacted["average_tokens_across_devices"] is True
    assert HF not in str(redacted) and WANDB not in str(redacted)
    assert config["hub_token"] == "anything"  # the caller's mapping is left as it was


def test_the_token_leaves_the_training_arguments_before_they_are_pickled(tmp_path):
    from trl_smallrl.configs import GRPOConfig

    args = GRPOConfig(output_dir=str(tmp_path), hub_token=HF, run_name=f"run {HF}", use_cpu=True)
    assert take_secrets_out(args) == HF
    assert args.hub_token is None and args.run_name == f"run {REDACTED}"
