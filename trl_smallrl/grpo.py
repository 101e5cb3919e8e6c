"""`smallrl-grpo`: GRPO from a recipe, on TRL's `GRPOTrainer` with the few hooks that small reasoning models need.

Everything TRL already does is switched on from the recipe (`loss_type: dapo`, `epsilon_high`,
`mask_truncated_completions`, `scale_rewards`, `beta: 0`, ...). The subclass adds only what TRL lacks:

- dynamic sampling (DAPO; TRL issue 3708 is open): a group whose rewards are all equal has advantage 0 and
  teaches nothing. `mask` removes those groups from the loss and from its normalization; `resample` replaces
  them with groups of fresh prompts (at most `dynamic_sampling_max_tries` extra generation rounds);
- the curriculum: prompts come from a `CurriculumSampler`, per-prompt correctness (the task verifier, gathered
  from every rank) feeds `Curriculum.record` once per generation, and its state lives in each checkpoint;
- reasoning-health metrics in every log line, a NaN/inf guard, and checkpoint-on-signal (`monitors`).

Hooks: `_get_train_sampler` (curriculum), `_calculate_rewards` (non-finite guard, health table, curriculum
statistics), `_generate_and_score_completions` (dynamic sampling, after TRL computed the advantages),
`_compute_loss` (normalization without masked groups), `training_step` (non-finite loss), `log`,
`_save_checkpoint` / `_load_optimizer_and_scheduler` (curriculum state).
"""

from __future__ import annotations

import logging
import os
import sys

import torch
import trl
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import GRPOTrainer

from trl_smallrl import configs
from trl_smallrl.errors import ConfigError, exit_on_config_error
from trl_smallrl.hub import defer_push_to_hub, push_run
from trl_smallrl.monitors import (
    CheckpointOnSignal,
    CollapseMonitor,
    NonFiniteError,
    completion_health,
    health_metrics,
)
from trl_smallrl.rewards import completion_text, get_reward_funcs, score_rows
from trl_smallrl.tracking import setup_tracking

logger = logging.getLogger("trl_smallrl.grpo")  # not __name__: it is "__main__" under `python -m`

# Loss types that average over sequences (rows) rather than over tokens: a masked row must leave their mean.
ROW_MEAN_LOSSES = ("grpo", "sapo", "dr_grpo", "luspo")
KEEP_KEY = "dynamic_sampling_keep"


def _pad_width(tensor: torch.Tensor, width: int, left: bool, value) -> torch.Tensor:
    """Pad a (B, T) tensor to (B, width) on the left or right."""
    missing = width - tensor.size(1)
    if missing <= 0:
        return tensor
    pad = tensor.new_full((tensor.size(0), missing), value)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)


def replace_rows(dst: dict, src: dict, dst_rows: list[int], src_rows: list[int], pad_token_id: int) -> dict:
    """Copy rows of one scored generation batch into another, re-padding (prompts left, completions right)."""
    out = dict(dst)
    batch = dst["completion_ids"].size(0)
    for key, value in dst.items():
        if not (isinstance(value, torch.Tensor) and value.dim() >= 1 and value.size(0) == batch):
            continue
        other = src[key]
        if value.dim() == 2:
            width = max(value.size(1), other.size(1))
            left = key.startswith("prompt")
            fill = pad_token_id if key in ("prompt_ids", "completion_ids") else 0
            value, other = _pad_width(value, width, left, fill), _pad_width(other, width, left, fill)
        value = value.clone()
        value[dst_rows] = other[src_rows]
        out[key] = value
    return out


class SmallRLGRPOTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` plus dynamic sampling, curriculum wiring, health metrics and guards (module docstring).

    `curriculum`: a `trl_smallrl.curriculum.Curriculum`, or None for TRL's own sampler.
    """

    def __init__(self, *args, curriculum=None, **kwargs):
        self.curriculum = curriculum
        self._last_rewards: torch.Tensor | None = None
        super().__init__(*args, **kwargs)
        per_rank = self.args.per_device_train_batch_size * self.args.steps_per_generation
        if self.args.dynamic_sampling == "resample" and per_rank % self.num_generations:
            raise ConfigError(
                f"dynamic_sampling: resample needs whole groups on each process, but per_device_train_batch_size * "
                f"steps_per_generation = {per_rank} is not a multiple of num_generations = {self.num_generations}; "
                "change one of them."
            )
        if self.args.dynamic_sampling == "mask" and self.loss_type in ROW_MEAN_LOSSES and self.args.entropy_coef:
            raise ConfigError(
                f"dynamic_sampling: mask with loss_type {self.loss_type!r} rescales the whole loss, which would also "
                "rescale the entropy bonus; set entropy_coef: 0 or use loss_type: dapo (token-normalized)."
            )

    # ----- curriculum -----
    def _get_train_sampler(self, dataset=None):
        if self.curriculum is None:
            return super()._get_train_sampler(dataset)
        from trl_smallrl.curriculum import CurriculumSampler

        dataset = self.train_dataset if dataset is None else dataset
        return CurriculumSampler(
            row_levels=dataset["level"],
            curriculum=self.curriculum,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
        )

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.curriculum is not None and self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            self.curriculum.save(folder)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.curriculum is not None and checkpoint and self.curriculum.load(checkpoint):
            logger.info("curriculum restored from %s: level %s", checkpoint, self.curriculum.current_level)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.curriculum is not None and self.model.training:
            logs.update(self.curriculum.metrics())
            # Every rank calls log: check that all ranks draw from the same level (a desync would mix groups).
            level = torch.tensor([float(self.curriculum.current_level)], device=self.accelerator.device)
            levels = self.accelerator.gather(level)
            logs["curriculum/levels_agree"] = float(bool((levels == levels[0]).all()))
            if not logs["curriculum/levels_agree"]:
                logger.warning("curriculum levels differ across ranks: %s", levels.tolist())
        super().log(logs, start_time)

    # ----- rewards: guard, health, curriculum statistics -----
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        bad = ~torch.isfinite(rewards_per_func)
        if bad.any():  # gathered: every rank sees it and stops at the same point
            column = int(bad.any(dim=0).nonzero()[0])
            value = rewards_per_func[bad[:, column], column][0].item()
            raise NonFiniteError(
                f"step {self.state.global_step + 1}: reward {self.reward_func_names[column]!r} returned {value}; "
                f"stopping before the update. The last good checkpoint is in {self.args.output_dir}."
            )
        self._last_rewards = rewards_per_func
        self._record_health(inputs, completions, completion_ids_list)
        return rewards_per_func

    def _record_health(self, inputs, completions, completion_ids_list) -> None:
        """Health metrics of this generation batch (all ranks) and, in training, the curriculum's statistics."""
        mode = "train" if self.model.training else "eval"
        texts = [completion_text(c) for c in completions]
        rows = [{k: v for k, v in x.items() if k != "prompt"} for x in inputs]
        correct = score_rows(texts, rows) if rows and "task" in rows[0] else [float("nan")] * len(texts)
        eos_and_pad = {*self.eos_token_ids, self._tokenizer.pad_token_id}
        table = []
        for text, row, score, ids in zip(texts, rows, correct, completion_ids_list):
            think_tokens, without_reasoning, format_ok = completion_health(text, self._tokenizer)
            truncated = not ids or ids[-1] not in eos_and_pad
            table.append([row.get("level", -1), score, think_tokens, without_reasoning, format_ok, truncated])
        table = self.accelerator.gather(torch.tensor(table, dtype=torch.float32, device=self.accelerator.device))
        for name, value in health_metrics(table).items():
            self._metrics[mode][name].append(value)
        if self.curriculum is not None and mode == "train" and not torch.isnan(table[:, 1]).any():
            from trl_smallrl.curriculum import broadcast_from_rank0, per_prompt

            correct = (table[:, 1] >= 1.0).float().tolist()
            levels, accuracy = per_prompt(table[:, 0].tolist(), correct, self.num_generations)
            self.curriculum.record(levels, accuracy, step=self.state.global_step)
            broadcast_from_rank0(self.curriculum)  # guard: every rank continues from rank 0's decision

    # ----- dynamic sampling -----
    def _zero_variance_groups(self) -> torch.Tensor:
        """One bool per group of the last scored batch (all ranks): True where every reward in the group is equal.

        Same rule as TRL's `frac_reward_zero_std` (weighted sum of the rewards, std close to 0)."""
        weights = self.reward_weights.to(self._last_rewards.device)
        rewards = (self._last_rewards * weights.unsqueeze(0)).nansum(dim=1).view(-1, self.num_generations)
        std = rewards.std(dim=1) if self.num_generations > 1 else torch.zeros(rewards.size(0))
        return torch.isclose(std, torch.zeros_like(std))

    def _local_groups(self, flags: torch.Tensor, batch: int) -> torch.Tensor:
        """Per local row: the flag of its group (groups run over the gathered batch, rank after rank)."""
        start = self.accelerator.process_index * batch
        return flags[torch.arange(start, start + batch, device=flags.device) // self.num_generations]

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training or self.args.dynamic_sampling == "none":
            return output
        metrics = self._metrics["train"]
        zero = self._zero_variance_groups()
        metrics["dynamic_sampling/zero_variance_before"].append(zero.float().mean().item())
        if self.args.dynamic_sampling == "resample":
            output, remaining, tries = self._resample(inputs, output, zero)
            metrics["dynamic_sampling/tries"].append(float(tries))
            metrics["dynamic_sampling/zero_variance_after"].append(remaining)
            return output
        keep = (~self._local_groups(zero, len(inputs))).to(output["completion_mask"].dtype)
        output["completion_mask"] = output["completion_mask"] * keep.unsqueeze(1)
        output["num_items_in_batch"] = self.accelerator.gather(output["completion_mask"].sum()).sum()
        output[KEEP_KEY] = keep
        metrics["dynamic_sampling/zero_variance_after"].append(0.0)
        metrics["dynamic_sampling/masked_fraction"].append(zero.float().mean().item())
        return output

    def _fresh_inputs(self, batch: int, attempt: int) -> list[dict]:
        """A new local generation batch of fresh prompts, the same draw on every rank (seeded by step and try),
        from the curriculum's current level mix when there is one."""
        generator = torch.Generator().manual_seed(
            self.args.seed * 1_000_003 + self.state.global_step * 1_009 + attempt
        )
        prompts = self.accelerator.num_processes * batch // self.num_generations
        dataset = self.train_dataset
        if self.curriculum is not None:
            levels = torch.tensor(dataset["level"])
            weights = torch.zeros(len(dataset))
            for level, weight in self.curriculum.level_weights().items():
                at_level = levels == level
                if at_level.any():
                    weights[at_level] = weight / at_level.sum()
            index = torch.multinomial(weights, prompts, replacement=True, generator=generator)
        else:
            index = torch.randint(len(dataset), (prompts,), generator=generator)
        index = index.repeat_interleave(self.num_generations)
        start = self.accelerator.process_index * batch
        return [dataset[int(i)] for i in index[start : start + batch]]

    def _resample(self, inputs, output, zero):
        """Replace zero-variance groups with informative groups of fresh prompts; return (output, remaining
        zero-variance fraction, tries). All ranks run the same number of rounds (the decision is gathered)."""
        batch, group = len(inputs), self.num_generations
        rank_groups = batch // group
        first = self.accelerator.process_index * rank_groups
        local_zero = zero[first : first + rank_groups].clone()
        tries = 0
        while tries < self.args.dynamic_sampling_max_tries and self.accelerator.gather(local_zero.long()).any():
            tries += 1
            fresh = super()._generate_and_score_completions(self._fresh_inputs(batch, tries))
            donors = [k for k, z in enumerate(self._zero_variance_groups()[first : first + rank_groups]) if not z]
            dst_rows, src_rows = [], []
            for j in local_zero.nonzero().flatten().tolist():
                if not donors:
                    break
                k = donors.pop(0)
                dst_rows += range(j * group, (j + 1) * group)
                src_rows += range(k * group, (k + 1) * group)
                local_zero[j] = False
            if dst_rows:
                output = replace_rows(output, fresh, dst_rows, src_rows, self._tokenizer.pad_token_id)
        output["num_items_in_batch"] = self.accelerator.gather(output["completion_mask"].sum()).sum()
        remaining = self.accelerator.gather(local_zero.float()).mean().item()
        if tries:
            logger.info(
                "dynamic sampling: %d extra round(s); zero-variance groups left: %.0f%%", tries, 100 * remaining
            )
        return output, remaining, tries

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        keep = inputs.get(KEEP_KEY)
        if keep is not None and self.loss_type in ROW_MEAN_LOSSES:
            # Masked rows contribute 0 to the sum; take them out of the row count too.
            kept = keep.sum()
            if kept > 0:
                loss = loss * (keep.numel() / kept)
        return loss

    def training_step(self, model, inputs, num_items_in_batch):
        # `model` is the training loop's reference to `model_wrapped`; a hard reset (resets.py) re-wraps the model
        # under DDP for its new adapter, so take the current wrapper (the same object when there was no reset).
        loss = super().training_step(self.model_wrapped, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteError(
                f"step {self.state.global_step + 1}: the loss is {loss.item()}; stopping before the optimizer step. "
                f"The last good checkpoint is in {self.args.output_dir}."
            )
        return loss


def resume_checkpoint(training_args) -> str | None:
    """`resume_from_checkpoint`: a checkpoint folder, or `last` / `true` for the newest one in output_dir (None
    when there is none yet, so the same recipe starts or resumes)."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "no", "none"):
        return None
    if str(value).lower() in ("last", "true", "yes", "auto"):
        return get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
    if not os.path.isdir(value):
        raise ConfigError(f"resume_from_checkpoint: {value!r} is not a folder; give a checkpoint folder or `last`.")
    return value


def build_trainer(script_args, training_args, model_args) -> SmallRLGRPOTrainer:
    """The trainer a recipe describes: datasets, rewards, curriculum, PEFT and monitors."""
    from trl_smallrl.models import prepare_model_args
    from trl_smallrl.tasks import build_dataset

    prepare_model_args(model_args, training_args)
    train_dataset = build_dataset(script_args, "train")
    eval_dataset = build_dataset(script_args, "eval") if training_args.eval_strategy != "no" else None
    reward_params = vars(script_args).copy()
    reward_params["overlong_max_len"] = script_args.overlong_max_len or training_args.max_completion_length
    reward_funcs = get_reward_funcs(script_args.reward_funcs, **reward_params)
    curriculum = None
    if script_args.curriculum != "off":
        from trl_smallrl.curriculum import Curriculum

        present = set(train_dataset["level"])
        levels = [level for level in script_args.levels if level in present]  # the recipe's order
        curriculum = Curriculum.from_args(script_args, levels=levels, seed=training_args.seed)
        # The curriculum's saved state decides the next prompts; replaying the skipped batches would move it on.
        training_args.ignore_data_skip = True
    trainer = SmallRLGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=trl.get_peft_config(model_args),
        curriculum=curriculum,
    )
    trainer.add_callback(
        CollapseMonitor(
            trainer,
            fraction=training_args.collapse_fraction,
            patience=training_args.collapse_patience,
            warmup=training_args.collapse_warmup,
            action=training_args.collapse_action,
        )
    )
    if training_args.resets:
        from trl_smallrl.resets import HardResetCallback, parse_reset_phases

        resets = HardResetCallback(trainer, parse_reset_phases(training_args.resets))
        resets.restore(resume_checkpoint(training_args))  # the phase's adapter shape, before train() loads it
        trainer.add_callback(resets)
    return trainer


def train(argv: list[str] | None = None) -> SmallRLGRPOTrainer:
    """Parse a recipe, train (resuming when asked), save the model/adapter and trainer state in output_dir."""
    script_args, training_args, model_args = configs.parse_recipe(
        (configs.GRPOScriptArguments, configs.GRPOConfig, trl.ModelConfig), argv
    )
    setup_tracking(training_args)  # wandb without a key runs offline, never prompts
    push_at_end = defer_push_to_hub(training_args)  # the Trainer's own push would upload training_args.bin
    trainer = build_trainer(script_args, training_args, model_args)
    stop_on_signal = CheckpointOnSignal()
    trainer.add_callback(stop_on_signal)
    if trainer.accelerator.is_main_process:
        configs.save_resolved_config(training_args.output_dir, script_args, training_args, model_args)
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
        push_run(training_args.output_dir, token=training_args.hub_token)
    return trainer


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    """Run GRPO from a recipe: `smallrl-grpo --config recipes/<model>/grpo/<name>.yaml [--key value ...]`."""
    try:
        train(argv)
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
