"""Shared fixtures: the real embedded tokenizer and a tiny random model built with it."""

from __future__ import annotations

import os

import pytest

# No test may reach a hub: the suite runs offline, as in CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded_model_dir() -> str:
    """The embedded SmolLM2-135M-Instruct as a Hugging Face folder (converted once, then cached)."""
    from trl_smallrl.embedded import DEFAULT_MODEL
    from trl_smallrl.models import resolve_model

    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_model_dir) -> str:
    """A 2-layer random Llama with the embedded tokenizer: real trainers run on it in seconds."""
    from trl_smallrl.testing import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-model"), tokenizer_source=embedded_model_dir))


@pytest.fixture(scope="session")
def tiny_grpo_run(tmp_path_factory, tiny_model_dir) -> str:
    """A finished 4-step LoRA run of plain `trl.GRPOTrainer` on the tiny model: adapter, tokenizer, trainer_state.

    Plots, model cards and pushes read real TRL output this way, not hand-written files.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    def accuracy(completions, answer, **kwargs):
        return [float(a in c[0]["content"]) for c, a in zip(completions, answer)]

    def brevity(completions, **kwargs):
        return [-len(c[0]["content"]) / 100 for c in completions]

    run_dir = tmp_path_factory.mktemp("tiny-grpo-run")
    rows = [{"prompt": [{"role": "user", "content": f"Say {i}."}], "answer": str(i)} for i in range(8)]
    args = GRPOConfig(
        output_dir=str(run_dir),
        max_steps=4,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        logging_steps=1,
        beta=0.04,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=tiny_model_dir,
        reward_funcs=[accuracy, brevity],
        args=args,
        train_dataset=Dataset.from_list(rows),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    trainer.train()
    trainer.save_model()
    trainer.save_state()
    return str(run_dir)
