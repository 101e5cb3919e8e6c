"""The TRL internals trl-smallrl relies on, checked against the installed TRL: a changed private hook fails here,
with its name, instead of deep inside a training run."""

from __future__ import annotations

import inspect

import pytest
from trl import GRPOTrainer

from trl_smallrl.adapters import plain_model
from trl_smallrl.checkpoints import AtomicCheckpointMixin
from trl_smallrl.grpo_resets import _temperature_cell
from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer

HOOK_CLASSES = [cls for cls in SmallRLGRPOTrainer.__mro__ if cls.__module__.startswith("trl_smallrl.")]
OVERRIDES = [
    (cls, name)
    for cls in HOOK_CLASSES
    for name, member in vars(cls).items()
    if callable(member) and name != "__init__" and hasattr(GRPOTrainer, name)
]


def _positional(signature: inspect.Signature) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in signature.parameters.values() if p.kind in kinds]


def test_the_overridden_hooks_are_found():
    names = {name for _, name in OVERRIDES}
    assert {"_generate_and_score_completions", "_generate_single_turn", "_calculate_rewards", "_compute_loss"} <= names
    assert AtomicCheckpointMixin in HOOK_CLASSES and len(HOOK_CLASSES) == 7  # the trainer and its six mixins


@pytest.mark.parametrize(("cls", "name"), OVERRIDES, ids=[f"{c.__name__}.{n}" for c, n in OVERRIDES])
def test_each_override_takes_the_arguments_trl_passes(cls, name):
    """Our override's named parameters are TRL's, in TRL's order; parameters TRL has beyond them are taken by
    `*args`/`**kwargs` or have defaults that TRL's callers may leave out."""
    ours = inspect.signature(getattr(cls, name))
    theirs = inspect.signature(getattr(GRPOTrainer, name))
    ours_names, theirs_names = _positional(ours), _positional(theirs)
    takes_rest = any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in ours.parameters.values())
    assert theirs_names[: len(ours_names)] == ours_names, (
        f"TRL's {name}{theirs} no longer starts with the parameters of trl-smallrl's override {name}{ours}: "
        "update the override for this TRL version, or install the TRL minor pinned in pyproject.toml."
    )
    missing = [n for n in theirs_names[len(ours_names) :] if theirs.parameters[n].default is inspect.Parameter.empty]
    assert takes_rest or not missing, f"TRL's {name} now requires {missing}, which the override does not take."


def test_the_fused_lm_head_keeps_its_temperature_where_resets_change_it(tiny_model_dir, tmp_path):
    """Hard resets change the sampling temperature through the closure cell of TRL's fused LM head."""
    from datasets import Dataset

    from trl_smallrl.configs import GRPOConfig

    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, temperature=0.9,
                      max_completion_length=4, report_to="none", bf16=False)  # fmt: skip
    trainer = SmallRLGRPOTrainer(
        model=tiny_model_dir, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
        train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi."}]}] * 2),
    )  # fmt: skip
    assert _temperature_cell(plain_model(trainer.accelerator, trainer.model)).cell_contents == pytest.approx(0.9)


def test_pyproject_pins_the_trl_minor_these_hooks_are_written_against():
    from importlib.metadata import version
    from pathlib import Path

    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    trl = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "trl")
    installed = Version(version("trl"))
    assert installed in trl.specifier
    assert Version(f"{installed.major}.{installed.minor + 1}.0") not in trl.specifier, (
        f"pyproject.toml allows {trl}: the next TRL minor may change the private hooks overridden here"
    )
