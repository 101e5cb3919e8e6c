"""wandb without an account logs offline (no prompt, no crash); missing trackers get a one-line error."""

from __future__ import annotations

import importlib.util
import os

import pytest

from trl_smallrl.errors import ConfigError
from trl_smallrl.tracking import setup_tracking, wandb_has_credentials


class Args:
    def __init__(self, report_to, project="huggingface"):
        self.report_to = report_to
        self.project = project


@pytest.fixture
def no_wandb_account(tmp_path, monkeypatch):
    """A fresh user: no WANDB_API_KEY, no ~/.netrc, no WANDB_MODE chosen."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "NETRC", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_wandb_without_key_goes_offline_and_logs_a_real_grpo_run(no_wandb_account, tiny_model_dir):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(no_wandb_account / "out"),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=4,
        logging_steps=1,
        report_to=["wandb"],
        log_completions=True,
        save_strategy="no",
        use_cpu=True,
        bf16=False,
    )
    assert setup_tracking(args) == ["wandb"]
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_PROJECT"] == "trl-smallrl"
    assert args.project == "trl-smallrl"

    def length(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    rows = [{"prompt": [{"role": "user", "content": f"Count to {i}."}]} for i in range(4)]
    trainer = GRPOTrainer(model=tiny_model_dir, reward_funcs=length, args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()  # pytest's stdin cannot be read: a login prompt would fail here
    import wandb

    wandb.finish()
    (run_dir,) = (no_wandb_account / "wandb").glob("offline-run-*")
    assert list(run_dir.glob("*.wandb"))
    tables = list(run_dir.rglob("completions*.table.json"))
    assert tables, "TRL's completion table was not logged"


def test_wandb_credentials_are_respected(no_wandb_account, monkeypatch):
    assert not wandb_has_credentials()
    (no_wandb_account / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    (no_wandb_account / ".netrc").chmod(0o600)
    assert wandb_has_credentials()
    setup_tracking(Args(["wandb"]))
    assert "WANDB_MODE" not in os.environ  # online: the user is logged in

    monkeypatch.setenv("WANDB_MODE", "disabled")  # a user's own choice is kept
    setup_tracking(Args("wandb"))
    assert os.environ["WANDB_MODE"] == "disabled"


def test_no_tracker_is_a_no_op(no_wandb_account):
    assert setup_tracking(Args("none")) == []
    assert setup_tracking(Args([])) == []
    assert "WANDB_MODE" not in os.environ


@pytest.mark.parametrize("tracker", ["tensorboard", "trackio"])
def test_missing_tracker_gets_an_install_hint(tracker):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    with pytest.raises(ConfigError, match=rf"report_to: '{tracker}' is not installed; run `pip install"):
        setup_tracking(Args([tracker]))
