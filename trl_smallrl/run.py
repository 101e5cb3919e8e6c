"""One run loop for every training entry point (SFT and GRPO).

What happens around `Trainer.train` is the same for both methods and must not drift between them: tracking that
works without an account, the Trainer's own Hub push and the Hub token taken away from it (it would pickle the
token into `training_args.bin`), one run at a time in an output folder that can be written, the resolved recipe
saved beside the run, `--resume_from_checkpoint last`, a checkpoint on SIGTERM or Ctrl-C, the final save, and
the allow-listed push. `train` does these in that order; an entry point only says which dataclasses its recipe
parses into and how its trainer is built.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from filelock import FileLock, Timeout
from transformers import Trainer

from trl_smallrl import console
from trl_smallrl.checkpoints import resume_checkpoint
from trl_smallrl.engines import check_engine_combinations
from trl_smallrl.errors import ConfigError
from trl_smallrl.models import resolve_model
from trl_smallrl.monitors import CheckpointOnSignal
from trl_smallrl.precision import decide_training_precision
from trl_smallrl.recipe import parse_recipe, save_resolved_config
from trl_smallrl.redaction import take_secrets_out
from trl_smallrl.tasks.rows import build_rows
from trl_smallrl.tracking import setup_tracking

logger = logging.getLogger(__name__)

LOCK_FILE = ".smallrl-run.lock"


def prepare_model_args(model_args, training_args) -> None:
    """Resolve `model_args.model_name_or_path` in place and hand the recipe's loading options to TRL.

    TRL's trainers load a model given by name with `args.model_init_kwargs`; we fill those from TRL's
    `ModelConfig` (dtype, attention implementation, revision) exactly as TRL's own scripts do, after the
    precision for this machine is decided (`precision.decide_training_precision`: no emulated bf16 on a CPU),
    and refuse what cannot train right under the launch's engine (`engines.check_engine_combinations`).
    """
    decide_training_precision(training_args, model_args)
    model_args.model_name_or_path = resolve_model(model_args.model_name_or_path)
    check_engine_combinations(training_args, model_args)
    init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,  # on the training config since TRL 1.x
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    if training_args.distributed_state.distributed_type != "NO":
        init_kwargs["device_map"] = None  # each process holds its own copy or shard; "auto" would spread one copy
    init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = init_kwargs


def train(
    argv: Sequence[str] | None, arg_types: tuple, build_trainer: Callable[[object, object, object], Trainer]
) -> Trainer:
    """Parse a recipe into `arg_types` (script arguments, training config, `ModelConfig`), build the trainer
    with `build_trainer(script_args, training_args, model_args)`, train (resuming when asked), save the model
    or adapter and the trainer state in `output_dir`, and push when the recipe asks; return the trainer.

    A SIGTERM or Ctrl-C ends the run at the end of the current step with a checkpoint, and exits with status
    128 + the signal (SystemExit).
    """
    script_args, training_args, model_args = parse_recipe(arg_types, argv)
    setup_tracking(training_args)  # wandb without a key runs offline, never prompts
    push_at_end = defer_push_to_hub(training_args)
    hub_token = take_secrets_out(training_args)  # the Trainer pickles its arguments into every checkpoint
    heldout_rows = heldout_curve_rows(script_args, training_args)
    with output_dir_lock(training_args.output_dir):
        trainer = build_trainer(script_args, training_args, model_args)
        console.install(trainer)  # a bar and a short line a step, not the whole dictionary of metrics
        if heldout_rows:
            from trl_smallrl.heldout import HeldOutCurve  # the eval's scoring: loaded only for the curve

            samples, tokens = training_args.heldout_num_samples, training_args.heldout_max_new_tokens
            trainer.add_callback(HeldOutCurve(trainer, heldout_rows, samples, tokens, training_args.heldout_steps))
        stop_on_signal = CheckpointOnSignal()
        trainer.add_callback(stop_on_signal)
        if trainer.accelerator.is_main_process:
            save_resolved_config(training_args.output_dir, script_args, training_args, model_args)
        checkpoint = resume_checkpoint(training_args)
        if checkpoint:
            logger.info("resuming from %s", checkpoint)
        trainer.train(resume_from_checkpoint=checkpoint)
        if stop_on_signal.received:
            logger.warning(
                "stopped by signal %d at step %d; resume with `--resume_from_checkpoint last`.",
                stop_on_signal.received,
                trainer.state.global_step,
            )
            raise SystemExit(128 + stop_on_signal.received)
        trainer.save_model(training_args.output_dir)
        trainer.save_state()
    if push_at_end and trainer.accelerator.is_main_process:
        from trl_smallrl.hub import push_run  # the card's plots and eval tables: loaded only for a push

        push_run(training_args.output_dir, token=hub_token)
    return trainer


def heldout_curve_rows(script_args, training_args) -> list:
    """The eval split's rows that the held-out curve scores at each checkpoint (`heldout`), built before any model
    loads; none when the recipe asks for no curve (`heldout_num_samples: 0`)."""
    samples = getattr(training_args, "heldout_num_samples", 0)
    if samples < 0:
        raise ConfigError(f"heldout_num_samples: {samples} must be >= 0 (0: no held-out curve).")
    best = training_args.metric_for_best_model or ""
    best_on_curve = best.startswith("heldout/")
    if best_on_curve and not samples:
        raise ConfigError(
            f"metric_for_best_model: {best!r} is a held-out curve metric, and heldout_num_samples is 0 (no curve); "
            "set heldout_num_samples > 0 or name another metric."
        )
    evaluating = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    if best_on_curve and evaluating != "no":
        raise ConfigError(
            f"metric_for_best_model: {best!r} is scored by the held-out curve, not by eval_strategy: {evaluating} "
            "(the Trainer would look for it in its own eval's metrics); set eval_strategy: no."
        )
    if not samples:
        return []
    every, save_steps, logging_steps = (
        training_args.heldout_steps,
        training_args.save_steps,
        training_args.logging_steps,
    )
    if training_args.save_strategy != "steps" or every < 0 or (every and every % save_steps):
        raise ConfigError(
            f"heldout_steps: {every} must be 0 or a multiple of save_steps ({save_steps}), with save_strategy: steps "
            f"(not {training_args.save_strategy}): the held-out curve is scored at checkpoints."
        )
    if (every or save_steps) % logging_steps:
        raise ConfigError(
            f"logging_steps: {logging_steps} must divide the steps between held-out points ({every or save_steps}), so "
            "that each point is logged at its own step and lands in its checkpoint."
        )
    rows = build_rows(script_args, "eval")
    if not rows:
        raise ConfigError(
            "heldout_num_samples: the eval split is empty; set eval_size > 0, or heldout_num_samples: 0."
        )
    if best_on_curve:
        from trl_smallrl.heldout import best_metric_keys

        keys = best_metric_keys(sorted({row["level"] for row in rows}))
        if best not in keys:
            raise ConfigError(
                f"metric_for_best_model: {best!r} is not a metric of this held-out curve; use one of {', '.join(keys)}."
            )
    return rows


def defer_push_to_hub(training_args) -> bool:
    """Take `push_to_hub` away from the Trainer, so that the entry point pushes the finished run with `push_run`.

    The Trainer's own push contacts the Hub while the trainer is built, uploads `training_args.bin` (a pickle of
    the arguments) and a generic card. Call this before building the trainer; it returns whether to call
    `push_run(output_dir, token=...)` after the final save.
    """
    wanted = bool(training_args.push_to_hub)
    if wanted and not training_args.hub_model_id:
        raise ConfigError("hub_model_id: push_to_hub is on but no repository is named; set hub_model_id: ORG/NAME.")
    training_args.push_to_hub = False
    return wanted


@contextlib.contextmanager
def output_dir_lock(output_dir: str | os.PathLike) -> Iterator[None]:
    """Hold `output_dir` for this launch: refuse, on every rank, a folder that cannot be written or that another
    run is writing to (two runs would interleave their checkpoints). The lock is an OS file lock held by the
    main process, so a run that died holds nothing; it is taken before any model loads."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    lock, problem = None, None
    if state.is_main_process:
        path = Path(output_dir) / LOCK_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=True)  # a read-only folder fails here, with the OS's reason
            lock = FileLock(str(path), timeout=0)
            lock.acquire()
        except Timeout:
            problem = (
                f"output_dir: another run is writing to {str(output_dir)!r}; wait for it to finish, or give this run "
                "another output_dir."
            )
        except OSError as err:
            problem = (
                f"output_dir: cannot write to {str(output_dir)!r} ({err.strerror or err}); choose a folder you can "
                "write to."
            )
    problem = broadcast_object_list([problem])[0] if state.num_processes > 1 else problem
    if problem:
        raise ConfigError(problem)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
