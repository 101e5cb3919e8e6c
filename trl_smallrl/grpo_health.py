"""Each GRPO batch checked and measured as it is scored: the non-finite guards and the reasoning-health table.

TRL's hooks this relies on (signatures pinned by tests/test_trl_hooks.py):
- `_calculate_rewards`: the completions get the template's `<think>` prefill back in front (R1-Distill templates
  open the think block in the prompt), then TRL's rewards; a NaN or inf reward stops the run before the update;
  the health table (`monitors.HEALTH_COLUMNS`: level, correctness by the task's verifier, think length, ...) is
  gathered from every rank, logged through TRL's `_metrics`, and kept as `_last_health` for dynamic sampling and
  the curriculum, with the rewards as `_last_rewards`;
- `compute_loss`: a NaN or inf loss on any rank stops every rank at the same micro-batch, before the backward pass.
"""

from __future__ import annotations

import torch

from trl_smallrl.completions import completion_text, with_prefill
from trl_smallrl.monitors import NonFiniteError, completion_health, health_metrics
from trl_smallrl.rewards import correct_rows


class HealthHooks:
    """Mixin for `GRPOTrainer`: guards and health metrics (module docstring)."""

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        completions = [with_prefill(c, self.think_prefill) for c in completions]
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
        self._last_health = self._record_health(inputs, completions, completion_ids_list)
        return rewards_per_func

    def _record_health(self, inputs, completions, completion_ids_list) -> torch.Tensor:
        """Health metrics of this generation batch; returns their table, gathered from all ranks."""
        mode = "train" if self.model.training else "eval"
        texts = [completion_text(c) for c in completions]
        rows = [{k: v for k, v in x.items() if k != "prompt"} for x in inputs]
        correct = correct_rows(texts, rows) if rows and "task" in rows[0] else [float("nan")] * len(texts)
        eos_and_pad = {*self.eos_token_ids, self._tokenizer.pad_token_id}
        table = []
        for text, row, score, ids in zip(texts, rows, correct, completion_ids_list):
            think_tokens, without_reasoning, format_ok = completion_health(text, self._tokenizer)
            truncated = not ids or ids[-1] not in eos_and_pad
            table.append([row.get("level", -1), score, think_tokens, without_reasoning, format_ok, truncated])
        table = self.accelerator.gather(torch.tensor(table, dtype=torch.float32, device=self.accelerator.device))
        for name, value in health_metrics(table).items():
            self._metrics[mode][name].append(value)
        return table

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss, checked on every rank before the backward pass: a NaN or inf loss on any rank stops every
        rank at the same micro-batch with the same message, before gradients are reduced (DDP) or the optimizer
        steps inside backward (DeepSpeed)."""
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.model.training:
            losses = self.accelerator.gather(loss.detach().float().reshape(1))
            bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
            if bad:
                raise NonFiniteError(
                    f"step {self.state.global_step + 1}: the loss is {losses[bad[0]].item()} on rank(s) {bad}; "
                    f"stopping before the backward pass. The last good checkpoint is in {self.args.output_dir}."
                )
        return loss
