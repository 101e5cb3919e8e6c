"""Dynamic sampling (DAPO; TRL issue 3708 is open): train only on groups that teach something about correctness.

A group whose answers are all right or all wrong teaches nothing about correctness, whatever length or format terms
add to its rewards (which would otherwise turn "wrong but longer" into a full-size advantage). `mask` removes those
groups from the loss and from its normalization; `resample` replaces them with groups of fresh prompts (at most
`dynamic_sampling_max_tries` extra generation rounds), drawn from the curriculum when there is one. Rows without a
task verifier fall back to TRL's rule: all rewards equal. `informative_groups` is logged every step in every mode.

TRL's hooks this relies on (signatures pinned by tests/test_trl_hooks.py): `_generate_and_score_completions` (runs
after TRL's, which scored the batch through `_calculate_rewards`: the correctness column comes from
`grpo_health.HealthHooks`), `_compute_loss` (row-mean losses renormalized without the masked rows; a micro-batch of
masked rows alone skips its forward and backward); it appends to TRL's `_metrics`.
"""

from __future__ import annotations

import logging

import torch

from trl_smallrl.configs import ROW_MEAN_LOSSES
from trl_smallrl.curriculum import local_groups
from trl_smallrl.monitors import CORRECT_COLUMN

logger = logging.getLogger(__name__)

KEEP_KEY = "dynamic_sampling_keep"  # per row: 1 where its group trains, 0 where `mask` removed it
SCALE_KEY = "dynamic_sampling_scale"  # per row, one value: all rows / kept rows of the whole generation batch


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


class DynamicSamplingHooks:
    """Mixin for `GRPOTrainer`: `args.dynamic_sampling` none | mask | resample (module docstring). Reads the last
    scored batch's `_last_health` and `_last_rewards` (all ranks), kept by the health hooks."""

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output
        metrics = self._metrics["train"]
        uninformative = self._uninformative_groups()
        fraction = uninformative.float().mean().item()
        mode = self.args.dynamic_sampling
        if mode != "none":
            metrics["dynamic_sampling/uninformative_before"].append(fraction)
        if mode == "resample":
            output, remaining, tries = self._resample(inputs, output, uninformative)
            metrics["dynamic_sampling/tries"].append(float(tries))
            metrics["dynamic_sampling/uninformative_after"].append(remaining)
            metrics["informative_groups"].append(round((1.0 - remaining) * uninformative.numel()))
            return output
        metrics["informative_groups"].append(float((~uninformative).sum().item()))
        if mode == "mask":
            output = self._mask(inputs, output, uninformative)
            metrics["dynamic_sampling/uninformative_after"].append(0.0)
            metrics["dynamic_sampling/masked_fraction"].append(fraction)
        return output

    def _uninformative_groups(self) -> torch.Tensor:
        """One bool per group of the last scored batch (all ranks): True where the group teaches nothing.

        By correctness where the rows have a task verifier (DAPO: keep a group when 0 < right < G): all right or
        all wrong is uninformative, whatever the length or format terms add to the rewards. Without a verifier,
        TRL's `frac_reward_zero_std` rule: the weighted sum of the rewards has a std close to 0."""
        correct = self._last_health[:, CORRECT_COLUMN]
        if correct.numel() and not torch.isnan(correct).any():
            right = correct.view(-1, self.num_generations).sum(dim=1)
            return (right == 0) | (right == self.num_generations)
        weights = self.reward_weights.to(self._last_rewards.device)
        rewards = (self._last_rewards * weights.unsqueeze(0)).nansum(dim=1).view(-1, self.num_generations)
        std = rewards.std(dim=1) if self.num_generations > 1 else torch.zeros(rewards.size(0))
        return torch.isclose(std, torch.zeros_like(std))

    def _mask(self, inputs, output, uninformative):
        """Take the uninformative groups' rows out of the loss and out of its normalization."""
        start = self.accelerator.process_index * len(inputs)  # groups run over the gathered batch, rank after rank
        rows = torch.arange(start, start + len(inputs), device=uninformative.device) // self.num_generations
        keep = (~uninformative[rows]).to(output["completion_mask"].dtype)
        output["completion_mask"] = output["completion_mask"] * keep.unsqueeze(1)
        output["num_items_in_batch"] = self.accelerator.gather(output["completion_mask"].sum()).sum()
        output[KEEP_KEY] = keep
        # Row-mean losses average over every row of each micro-batch; the masked rows must leave that average over
        # the whole generation batch (all micro-batches, all ranks), not per micro-batch: one global factor.
        total = self.accelerator.gather(keep.new_tensor([keep.numel()])).sum()
        kept = self.accelerator.gather(keep.sum().reshape(1)).sum()
        output[SCALE_KEY] = torch.full_like(keep, (total / kept).item() if kept > 0 else 1.0)
        return output

    def _fresh_inputs(self, batch: int, attempt: int) -> list[dict]:
        """A new local generation batch of fresh prompts, the same draw on every rank: from the curriculum's own
        draw when there is one (its level mix, its walk through each level's rows, saved in checkpoints), else
        seeded by step and try."""
        if self.curriculum is not None:
            return self.curriculum_inputs(batch)
        prompts = self.accelerator.num_processes * batch // self.num_generations
        generator = torch.Generator().manual_seed(
            self.args.seed * 1_000_003 + self.state.global_step * 1_009 + attempt
        )
        prompts = torch.randint(len(self.train_dataset), (prompts,), generator=generator).tolist()
        rows = local_groups(prompts, self.num_generations, self.accelerator.process_index, batch)
        return [self.train_dataset[i] for i in rows]

    def _resample(self, inputs, output, uninformative):
        """Replace uninformative groups with informative groups of fresh prompts; return (output, remaining
        uninformative fraction, tries). All ranks run the same number of rounds (the decision is gathered)."""
        batch, group = len(inputs), self.num_generations
        rank_groups = batch // group
        first = self.accelerator.process_index * rank_groups
        local_zero = uninformative[first : first + rank_groups].clone()
        tries = 0
        while tries < self.args.dynamic_sampling_max_tries and self.accelerator.gather(local_zero.long()).any():
            tries += 1
            fresh = super()._generate_and_score_completions(self._fresh_inputs(batch, tries))
            donors = [k for k, z in enumerate(self._uninformative_groups()[first : first + rank_groups]) if not z]
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
                "dynamic sampling: %d extra round(s); uninformative groups left: %.0f%%", tries, 100 * remaining
            )
        return output, remaining, tries

    def _compute_loss(self, model, inputs):
        keep = inputs.get(KEEP_KEY)
        if keep is not None and not keep.any() and self._skips_masked_micro_batches():
            return self._zero_loss(model)
        loss = super()._compute_loss(model, inputs)
        scale = inputs.get(SCALE_KEY)
        if scale is not None and self.loss_type in ROW_MEAN_LOSSES:
            loss = loss * scale[0]  # masked rows add 0 to the sum; take them out of the row count too
        return loss

    def _skips_masked_micro_batches(self) -> bool:
        """Whether a micro-batch whose rows `mask` all removed skips its forward and backward: its loss and its
        gradient are exactly 0 (every term of TRL's loss is multiplied by the completion mask), yet it costs as
        much as a trained one, and at a warm-up's accuracy a third to half of the groups are masked. One process
        only: DDP reduces gradients in the backward of the last micro-batch, which every rank must run through its
        wrapper, and DeepSpeed's engine counts the backward calls; and not with an MoE's router loss, which the
        mask does not cover."""
        return self.accelerator.num_processes == 1 and not self.is_deepspeed_enabled and not self.aux_loss_enabled

    def _zero_loss(self, model):
        """A loss of 0 that gives every trainable parameter a gradient of exactly 0, as the skipped forward would
        have: the optimizer step that follows is the same as without the skip, even when every group is masked."""
        trainable = [p for p in model.parameters() if p.requires_grad]
        return torch.stack([p.reshape(-1)[0] for p in trainable]).sum() * 0.0
