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
    from trl_smallrl.models import DEFAULT_MODEL, resolve_model

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
