"""The TRL and transformers internals trl-smallrl relies on, checked against the installed versions: a changed or
removed private hook fails here, with its name, instead of deep inside a training run.

Every overridden hook is named by hand below, (the mixin that overrides it, its name), and compared whole with the
library's: parameter names, order, kinds and defaults. An override that takes `**kwargs` passes on what it does not
name, so only its named parameters must match the library's where they overlap, and the library's others must reach
its `*args`/`**kwargs`. A scan of the trainers' MRO makes sure that no override goes unlisted."""

from __future__ import annotations

import importlib
import inspect

import pytest
from transformers import Trainer
from trl import GRPOTrainer, SFTTrainer

from trl_smallrl.adapters import plain_model
from trl_smallrl.checkpoints import AtomicCheckpointMixin
from trl_smallrl.grpo_curriculum import CurriculumHooks
from trl_smallrl.grpo_dynamic_sampling import DynamicSamplingHooks
from trl_smallrl.grpo_health import HealthHooks
from trl_smallrl.grpo_resets import ResetHooks, _temperature_cell
from trl_smallrl.grpo_rollouts import CPURolloutHooks
from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer
from trl_smallrl.sft import SmallRLSFTTrainer

# Every TRL hook trl-smallrl's trainers override: (our class that overrides it, the hook's name).
GRPO_HOOKS = [
    (CurriculumHooks, "_generate_and_score_completions"),
    (CurriculumHooks, "_calculate_rewards"),
    (CurriculumHooks, "log"),
    (HealthHooks, "_calculate_rewards"),
    (HealthHooks, "compute_loss"),
    (DynamicSamplingHooks, "_generate_and_score_completions"),
    (DynamicSamplingHooks, "_compute_loss"),
    (CPURolloutHooks, "_generate_single_turn"),
    (CPURolloutHooks, "_prepare_inputs"),
    (CPURolloutHooks, "_get_per_token_logps_and_entropies"),
    (ResetHooks, "training_step"),
    (AtomicCheckpointMixin, "_get_output_dir"),
    (AtomicCheckpointMixin, "_save_checkpoint"),
    (AtomicCheckpointMixin, "train"),
]
SFT_HOOKS = [
    (SmallRLSFTTrainer, "_prepare_dataset"),
    (AtomicCheckpointMixin, "_get_output_dir"),
    (AtomicCheckpointMixin, "_save_checkpoint"),
    (AtomicCheckpointMixin, "train"),
]
TRL_HOOKS = [(SmallRLGRPOTrainer, GRPOTrainer, GRPO_HOOKS), (SmallRLSFTTrainer, SFTTrainer, SFT_HOOKS)]
TRL_CASES = [(theirs, ours, name) for _, theirs, hooks in TRL_HOOKS for ours, name in hooks]

# The transformers `Trainer` methods that `checkpoints.AtomicCheckpointMixin` overrides (the Trainer's training loop
# calls them, under TRL's overrides of some of them).
TRANSFORMERS_HOOKS = [
    (AtomicCheckpointMixin, "_get_output_dir"),
    (AtomicCheckpointMixin, "_save_checkpoint"),
    (AtomicCheckpointMixin, "train"),
]

POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _ours(cls) -> bool:
    return cls.__module__.startswith("trl_smallrl.")


def overrides_found(trainer: type, library: type) -> set[tuple[type, str]]:
    """(our class, name) for every method a trl-smallrl class in `trainer`'s MRO defines over one of `library`'s
    (constructors and other dunders aside)."""
    return {
        (cls, name)
        for cls in trainer.__mro__
        if _ours(cls)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("__") and hasattr(library, name)
    }


def _shape(parameters) -> list[tuple]:
    return [(p.name, p.kind.description, p.default) for p in parameters]


def signature_difference(ours, theirs) -> str | None:
    """Why the override `ours` does not take what the library's `theirs` takes, or None when it does: the same
    parameters (names, order, kinds, defaults; annotations aside); for an override with `**kwargs`, its positional
    parameters are the first of `theirs` and alike, its keyword-only ones are among `theirs` and alike, and the
    others of `theirs` reach its `*args` (positional ones) or `**kwargs`."""
    ours_params = list(inspect.signature(ours).parameters.values())
    theirs_params = list(inspect.signature(theirs).parameters.values())
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ours_params):
        if _shape(ours_params) != _shape(theirs_params):
            return "the parameters differ (names, order, kinds or defaults)"
        return None
    positional = [p for p in ours_params if p.kind in POSITIONAL]
    if _shape(positional) != _shape(theirs_params[: len(positional)]):
        return f"the override's named parameters {[p.name for p in positional]} are not the library's first ones"
    theirs_by_name = {p.name: p for p in theirs_params}
    for p in ours_params:
        if p.kind is inspect.Parameter.KEYWORD_ONLY and (
            p.name not in theirs_by_name or _shape([p]) != _shape([theirs_by_name[p.name]])
        ):
            return f"the override's keyword-only parameter {p.name!r} is not the library's"
    takes_rest = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in ours_params)
    named = {p.name for p in ours_params}
    unreachable = [
        p.name
        for p in theirs_params[len(positional) :]
        if p.name not in named and p.kind in (*POSITIONAL, inspect.Parameter.VAR_POSITIONAL) and not takes_rest
    ]
    if unreachable:
        return f"the library's {unreachable} can be passed by position, and the override has no *args for them"
    return None


def assert_same_hook(library: type, ours: type, name: str, remedy: str) -> None:
    theirs = getattr(library, name, None)
    assert theirs is not None, (
        f"{library.__module__}.{library.__name__} no longer has {name}, which trl-smallrl's {ours.__name__}.{name} "
        f"overrides: the override would never run. {remedy}"
    )
    ours_hook = vars(ours).get(name)
    assert ours_hook is not None, f"trl-smallrl's {ours.__name__} no longer overrides {name}: unpin it here"
    why = signature_difference(ours_hook, theirs)
    assert why is None, (
        f"{library.__name__}.{name}{inspect.signature(theirs)} no longer matches trl-smallrl's override "
        f"{ours.__name__}.{name}{inspect.signature(ours_hook)}: {why}. {remedy}"
    )


TRL_REMEDY = "Update the override for this TRL version, or install the TRL minor pinned in pyproject.toml."
TRANSFORMERS_REMEDY = (
    "Update the override for this transformers version, or install the transformers minor pinned in pyproject.toml."
)


@pytest.mark.parametrize(("trainer", "library", "hooks"), TRL_HOOKS, ids=["grpo", "sft"])
def test_every_override_of_a_trl_hook_is_pinned(trainer, library, hooks):
    """The MRO scan finds no override missing from the literal list, and every listed override is still ours."""
    found = overrides_found(trainer, library)
    unpinned = sorted(f"{cls.__name__}.{name}" for cls, name in found - set(hooks))
    assert not unpinned, f"{unpinned} override {library.__name__} hooks: add them to this test's pinned hooks"
    stale = [f"{cls.__name__}.{name}" for cls, name in hooks if name not in vars(cls) or cls not in trainer.__mro__]
    assert not stale, f"{stale} are pinned here but no longer overridden by {trainer.__name__}: unpin them"


@pytest.mark.parametrize(
    ("library", "ours", "name"), TRL_CASES, ids=[f"{lib.__name__}-{c.__name__}.{n}" for lib, c, n in TRL_CASES]
)
def test_each_override_takes_exactly_what_trl_passes(library, ours, name):
    """TRL still defines the hook, and the override's signature is TRL's (module docstring)."""
    assert_same_hook(library, ours, name, TRL_REMEDY)


def _defined_by(library: type, name: str) -> type:
    return next(cls for cls in library.__mro__ if name in vars(cls))


@pytest.mark.parametrize(("trainer", "library", "hooks"), TRL_HOOKS, ids=["grpo", "sft"])
def test_every_override_of_a_transformers_trainer_method_is_pinned(trainer, library, hooks):
    """Our overrides of methods that TRL's trainer takes from transformers' `Trainer` as they are."""
    found = {
        (cls, name)
        for cls, name in overrides_found(trainer, Trainer)
        if _defined_by(library, name).__module__.startswith("transformers.")
    }
    unpinned = sorted(f"{cls.__name__}.{name}" for cls, name in found - set(TRANSFORMERS_HOOKS))
    assert not unpinned, f"{unpinned} override transformers Trainer methods: add them to TRANSFORMERS_HOOKS"


@pytest.mark.parametrize(("ours", "name"), TRANSFORMERS_HOOKS, ids=[n for _, n in TRANSFORMERS_HOOKS])
def test_each_override_takes_exactly_what_the_transformers_trainer_passes(ours, name):
    assert_same_hook(Trainer, ours, name, TRANSFORMERS_REMEDY)


# Names trl-smallrl imports from transformers modules that are not its top-level API: (module, name, used by).
TRANSFORMERS_NAMES = [
    ("transformers.trainer", "TRAINER_STATE_NAME", "checkpoints, plots"),
    ("transformers.trainer_utils", "PREFIX_CHECKPOINT_DIR", "checkpoints"),
    ("transformers.trainer_utils", "rotate_checkpoints", "checkpoints"),
    ("transformers.integrations.integration_utils", "INTEGRATION_TO_CALLBACK", "tracking"),
]


@pytest.mark.parametrize(("module", "name", "user"), TRANSFORMERS_NAMES, ids=[n for _, n, _ in TRANSFORMERS_NAMES])
def test_the_transformers_internals_imported_are_there(module, name, user):
    assert hasattr(importlib.import_module(module), name), (
        f"{module}.{name} is gone in this transformers version (trl_smallrl.{user} imports it). {TRANSFORMERS_REMEDY}"
    )


def _rotate_checkpoints():
    return importlib.import_module("transformers.trainer_utils").rotate_checkpoints


def _trainer_state():
    from transformers import TrainerState

    return TrainerState


# transformers internals trl-smallrl calls, with the arguments it passes: (what, the callable, args, kwargs).
TRANSFORMERS_CALLS = [
    ("rotate_checkpoints (checkpoints)", _rotate_checkpoints, (),
     {"output_dir": "run", "save_total_limit": 2, "best_model_checkpoint": None, "use_mtime": True}),
    ("Trainer._load_from_checkpoint (monitors)", lambda: Trainer._load_from_checkpoint, ("trainer", "folder"), {}),
    ("Trainer.create_optimizer (grpo_resets)", lambda: Trainer.create_optimizer, ("trainer",), {}),
    ("Trainer.create_scheduler (grpo_resets, resets)", lambda: Trainer.create_scheduler, ("trainer",),
     {"num_training_steps": 3, "optimizer": None}),
    ("TrainerState.save_to_json (checkpoints)", lambda: _trainer_state().save_to_json, ("state", "path"), {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "get", "args", "kwargs"), TRANSFORMERS_CALLS, ids=[w.split()[0] for w, *_ in TRANSFORMERS_CALLS]
)
def test_the_transformers_internals_called_take_our_arguments(what, get, args, kwargs):
    try:
        inspect.signature(get()).bind(*args, **kwargs)
    except (AttributeError, TypeError) as error:
        pytest.fail(
            f"{what}: this transformers version no longer takes trl-smallrl's call ({error}). {TRANSFORMERS_REMEDY}"
        )


def test_the_trainer_state_and_callback_handler_keep_what_we_read_and_write():
    """checkpoints reads and rewrites `state.best_model_checkpoint`; resets read `global_step` and `max_steps`;
    `restart_optimization` points the callback handler's `model`, `optimizer` and `lr_scheduler` at new ones."""
    from transformers.trainer_callback import CallbackHandler

    state = _trainer_state()()
    missing = [
        f"TrainerState.{a}" for a in ("best_model_checkpoint", "global_step", "max_steps") if not hasattr(state, a)
    ]
    handler = CallbackHandler([], None, None, None, None)
    missing += [
        f"CallbackHandler.{a}" for a in ("callbacks", "model", "optimizer", "lr_scheduler") if not hasattr(handler, a)
    ]
    assert not missing, f"{missing} are gone in this transformers version. {TRANSFORMERS_REMEDY}"


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


@pytest.mark.parametrize("package", ["trl", "transformers"])
def test_pyproject_pins_the_minor_these_hooks_are_written_against(package):
    from importlib.metadata import version
    from pathlib import Path

    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    pin = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == package)
    installed = Version(version(package))
    assert installed in pin.specifier, f"the installed {package} {installed} is outside pyproject.toml's {pin}"
    assert Version(f"{installed.major}.{installed.minor + 1}.0") not in pin.specifier, (
        f"pyproject.toml allows {pin}: the next {package} minor may change the private hooks overridden here"
    )
