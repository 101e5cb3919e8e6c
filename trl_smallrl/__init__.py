"""trl-smallrl: teach small language models to reason with RL, on top of Hugging Face TRL."""

__version__ = "0.1.0"
