"""ProRL-style hard resets of a LoRA run: merge the adapter, start a fresh one, a fresh optimizer, new sampling.

ProRL (Liu et al., 2025, "ProRL: Prolonged Reinforcement Learning Expands Reasoning Boundaries in LLMs")
keeps RL improving over thousands of steps by periodically resetting: the reference policy becomes the
current policy and the optimizer state is dropped, with the sampling settings of the next phase. With LoRA
a reset is also the moment to fold the adapter into the weights and start a new (possibly larger, or
differently placed) adapter, so that the low-rank update never caps what the run can still learn.

A recipe lists the phases after the first one, each with a trigger and overrides::

    resets:
      - {at_step: 200, temperature: 1.1, lora_r: 64}
      - {patience: 3, metric: eval_reward, learning_rate: 5.0e-7, max_completion_length: 768}

`at_step: N` fires once `global_step` reaches N; `patience: P` fires when `metric` (an evaluation metric,
`mode: max` or `min`) has not improved on its best value since the last reset for P evaluations. Overrides
accumulate: a phase changes only what it names. At a reset, on every rank alike:

1. the LoRA update is added to the base weights in float32, whatever the training dtype (bf16 merge and
   unmerge cycles drift by up to 1.5e-2, TRL issue 6688; we merge once and never unmerge);
2. a fresh adapter "default" is attached with the phase's rank, alpha and target modules;
3. the phase's generation settings and learning rate are applied, and a new optimizer and learning-rate
   schedule (over the remaining steps) are built;
4. the reference model becomes the current policy when beta > 0: with PEFT it is the base with adapters
   disabled, i.e. the merged weights; a full model's separate reference copy is overwritten.

A checkpoint holds the phase index, the reset history and, once a reset has happened, the merged base
weights (`smallrl_merged_base.safetensors`; TRL saves only the adapter of a PEFT model). `load_from_checkpoint`
(`checkpoints.CheckpointState`) rebuilds the phase before the Trainer loads the adapter, so a run resumed in phase 2
continues phase 2 at its step (TRL issue 3635: PEFT GRPO runs restarting at step 0). The same file beside a
final adapter makes the output folder resolvable (`models.merged_adapter_path`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from trl_smallrl import atomic
from trl_smallrl.adapters import base_weight_name, merge_adapter_float32
from trl_smallrl.configs import ResetPhase
from trl_smallrl.errors import ConfigError
from trl_smallrl.models import MERGED_BASE_FILE

logger = logging.getLogger(__name__)

STATE_FILE = "smallrl_resets.json"


def _peft_model(model):
    from peft import PeftModel

    return model if isinstance(model, PeftModel) else None


def _lora_config(template, phase_overrides: Mapping[str, Any]):
    """The next adapter's config: the previous one with the phase's rank, alpha and target modules."""
    import dataclasses

    changes = {}
    if phase_overrides.get("lora_r") is not None:
        changes["r"] = phase_overrides["lora_r"]
    if phase_overrides.get("lora_alpha") is not None:
        changes["lora_alpha"] = phase_overrides["lora_alpha"]
    if phase_overrides.get("lora_target_modules") is not None:
        targets = phase_overrides["lora_target_modules"]
        changes["target_modules"] = targets if isinstance(targets, str) else list(targets)
    config = dataclasses.replace(template, **changes)
    config.inference_mode = False
    return config


def _named_base_weights(peft_model) -> dict[str, Any]:
    return {base_weight_name(name): param for name, param in peft_model.named_parameters() if "lora_" not in name}


def save_merged_base(peft_model, names: Sequence[str], path: str | os.PathLike) -> None:
    """Write the merged base weights (those a reset changed) atomically as safetensors."""
    from safetensors.torch import save_file

    weights = _named_base_weights(peft_model)
    tensors = {name: weights[name].detach().contiguous().cpu() for name in sorted(names)}
    atomic.write_file(path, lambda tmp: save_file(tensors, str(tmp)))


def load_merged_base(peft_model, path: str | os.PathLike) -> set[str]:
    """Copy saved merged base weights into the model (the inverse of `save_merged_base`)."""
    import torch
    from safetensors.torch import load_file

    weights = _named_base_weights(peft_model)
    tensors = load_file(str(path))
    missing = sorted(set(tensors) - set(weights))
    if missing:
        raise ConfigError(f"resume_from_checkpoint: {path} holds weights this model lacks, e.g. {missing[0]!r}.")
    with torch.no_grad():
        for name, tensor in tensors.items():
            weights[name].copy_(tensor.to(weights[name].dtype))
    return set(tensors)


class HardResetCallback(TrainerCallback):
    """Runs the recipe's resets on a `SmallRLGRPOTrainer`, which restarts its own optimization for each phase
    (`restart_optimization`).

    Bound to its trainer: `trainer.add_callback(HardResetCallback(trainer, phases))`. Decisions use only the
    global step and gathered evaluation metrics, so every DDP rank resets at the same step.
    """

    def __init__(self, trainer, phases: Sequence[ResetPhase]):
        self.trainer = trainer
        self.phases = list(phases)
        self.phase = 0  # index of the running phase: 0 before the first reset
        self.history: list[dict[str, Any]] = []  # one entry per reset: phase, step, trigger
        self.merged_weights: set[str] = set()
        self.best: float | None = None
        self.evals_without_improvement = 0
        self._lora_template = None
        self._resumed_reset_step: int | None = None
        peft_model = _peft_model(trainer.accelerator.unwrap_model(trainer.model))
        if peft_model is not None:
            self._lora_template = peft_model.peft_config[peft_model.active_adapter]
        if any(phase.temperature is not None for phase in self.phases):
            trainer.check_temperature_can_change()  # at launch, not at the reset

    # ---- triggers ----
    @property
    def next_phase(self) -> ResetPhase | None:
        return self.phases[self.phase] if self.phase < len(self.phases) else None

    def on_step_end(self, args, state, control, **kwargs):
        phase = self.next_phase
        if phase is not None and phase.at_step is not None and state.global_step >= phase.at_step:
            self.reset(trigger=f"at_step {phase.at_step}")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        phase = self.next_phase
        if phase is None or phase.patience is None or not metrics or phase.metric not in metrics:
            return
        value = float(metrics[phase.metric])
        improved = self.best is None or (value > self.best if phase.mode == "max" else value < self.best)
        if improved:
            self.best, self.evals_without_improvement = value, 0
        else:
            self.evals_without_improvement += 1
        if self.evals_without_improvement >= phase.patience:
            self.reset(trigger=f"{phase.metric} flat for {phase.patience} evaluations")

    # ---- the reset ----
    def overrides(self, upto: int) -> dict[str, Any]:
        """What phases 1..`upto` change, later phases winning."""
        merged: dict[str, Any] = {}
        for phase in self.phases[:upto]:
            merged.update({k: v for k, v in asdict(phase).items() if v is not None})
        return merged

    def reset(self, trigger: str) -> None:
        """Start the next phase now (between two optimizer steps)."""
        trainer = self.trainer
        step = trainer.state.global_step
        self.phase += 1
        self.history.append({"phase": self.phase, "step": step, "trigger": trigger})
        self.best, self.evals_without_improvement = None, 0
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        peft_model = _peft_model(unwrapped)
        if peft_model is not None:
            self.merged_weights |= merge_adapter_float32(peft_model)
            self._new_adapter(peft_model)
        elif getattr(trainer, "ref_model", None) is not None:
            ref = trainer.accelerator.unwrap_model(trainer.ref_model)
            ref.load_state_dict(unwrapped.state_dict())
        self._apply_phase_settings()
        trainer.restart_optimization(
            remaining_steps=max(trainer.state.max_steps - step, 1), new_parameters=peft_model is not None
        )
        logger.info("Hard reset at step %d (%s): phase %d, %s", step, trigger, self.phase, self.overrides(self.phase))

    def _new_adapter(self, peft_model) -> None:
        for name in list(peft_model.peft_config):  # "default", and TRL's "ref" copy when it made one
            peft_model.base_model.delete_adapter(name)
        peft_model.add_adapter("default", _lora_config(self._lora_template, self.overrides(self.phase)))
        peft_model.set_adapter("default")

    def _apply_phase_settings(self) -> None:
        """Sampling settings and learning rate of the running phase, where generation and the loss read them."""
        settings = self.overrides(self.phase)
        self.trainer.set_sampling(
            temperature=settings.get("temperature"),
            top_p=settings.get("top_p"),
            max_completion_length=settings.get("max_completion_length"),
        )
        if "learning_rate" in settings:
            self.trainer.args.learning_rate = settings["learning_rate"]

    # ---- checkpoints ----
    def state_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "history": self.history,
            "merged_weights": sorted(self.merged_weights),
            "best": self.best,
            "evals_without_improvement": self.evals_without_improvement,
        }

    def save(self, folder: str | os.PathLike) -> None:
        """Write the reset state (and, after a reset, the merged base weights) into a checkpoint folder."""
        folder = Path(folder)
        peft_model = _peft_model(self.trainer.accelerator.unwrap_model(self.trainer.model))
        if peft_model is not None and self.merged_weights:
            save_merged_base(peft_model, sorted(self.merged_weights), folder / MERGED_BASE_FILE)
        atomic.write_json(folder / STATE_FILE, self.state_dict(), indent=2, sort_keys=True)

    def save_to_checkpoint(self, folder: str) -> None:
        """Called by the trainer (main process) while a checkpoint is staged, before it becomes visible."""
        self.save(folder)

    def on_train_end(self, args, state, control, **kwargs):
        """The final adapter only makes sense on the merged base: leave both in the output folder."""
        if state.is_world_process_zero and self.phase > 0:
            self.save(args.output_dir)

    def load_from_checkpoint(self, checkpoint: str) -> None:
        """Rebuild the checkpoint's phase before the Trainer loads its adapter (`checkpoints.CheckpointState`)."""
        state_path = Path(checkpoint) / STATE_FILE
        if not state_path.is_file():
            return  # a checkpoint of a run without resets, or written before the first save of one
        saved = json.loads(state_path.read_text())
        if saved["phase"] > len(self.phases):
            raise ConfigError(
                f"resets: the checkpoint {checkpoint} is in phase {saved['phase']} but the recipe lists "
                f"{len(self.phases)} resets; resume with the recipe that wrote it."
            )
        self.phase = saved["phase"]
        self.history = saved["history"]
        self.best, self.evals_without_improvement = saved["best"], saved["evals_without_improvement"]
        if self.phase == 0:
            return
        unwrapped = self.trainer.accelerator.unwrap_model(self.trainer.model)
        peft_model = _peft_model(unwrapped)
        if peft_model is not None:
            self.merged_weights = load_merged_base(peft_model, Path(checkpoint) / MERGED_BASE_FILE)
            self._new_adapter(peft_model)  # the phase's shape; Trainer then loads the saved adapter into it
        self._apply_phase_settings()
        self._resumed_reset_step = self.history[-1]["step"]

    def on_train_begin(self, args, state, control, **kwargs):
        """After a resume in phase > 0, the schedule spans the steps after the last reset, as it did before."""
        reset_step = self._resumed_reset_step
        if reset_step is None:
            return
        trainer = self.trainer
        loaded = trainer.lr_scheduler.state_dict()
        trainer.lr_scheduler = None
        trainer.create_scheduler(num_training_steps=max(state.max_steps - reset_step, 1), optimizer=trainer.optimizer)
        trainer.lr_scheduler.load_state_dict(loaded)
        trainer.callback_handler.lr_scheduler = trainer.lr_scheduler
        self._resumed_reset_step = None
