"""`SmallRLGRPOTrainer`: TRL's `GRPOTrainer` with the few hooks that small reasoning models need.

Everything TRL already does is switched on from the recipe (`loss_type: dapo`, `epsilon_high`,
`mask_truncated_completions`, `scale_rewards`, `beta: 0`, ...). What TRL lacks comes as one mixin per concern,
each in its own module, each naming the TRL hooks it overrides (tests/test_trl_hooks.py pins their signatures to the
installed TRL).

A training step, top to bottom, and the module that acts at each point:

1. `training_step` (`grpo_resets`): the current model wrapper, which a hard reset may have replaced, with the
   training loop's `no_sync`.
2. `_prepare_inputs` (`grpo_rollouts`): when a new generation batch is due, TRL's `_generate_and_score_completions`
   runs (`grpo_curriculum` first replaces the fetched prompts with the curriculum's draw), which is
   a. `_generate_single_turn` (`grpo_rollouts`): on a CPU, `decoding.sample_tokens` samples the group's
      completions, the LoRA update added into the base; where TRL needs old or reference log-probs (beta > 0, or
      a generation batch for several optimizer steps) it scores them here through `_get_per_token_logps_and_entropies` (step 3's);
   b. `_calculate_rewards`: `grpo_health` puts the template's `<think>` prefill back, calls TRL's reward functions,
      stops on a NaN or inf reward and keeps the health table (correctness by the task's verifier, think length,
      ...); then `grpo_curriculum` gives each prompt's accuracy to the curriculum, which may move up a level;
   c. TRL's advantages; then `grpo_dynamic_sampling` masks the groups that are all right or all wrong, or
      replaces them with groups of fresh prompts (the curriculum's draw, else seeded by step), each extra round
      running a-c again (its health metrics and curriculum update included).
   TRL shuffles and cuts the batch into micro-batches; where the loss allows it (on a CPU, one optimizer step a
   generation batch, a loss that sums over micro-batches), `grpo_rollouts` cuts it again into whole groups.
3. `compute_loss` (`grpo_health`: a NaN or inf loss on any rank stops all, before the backward pass) ->
   `_compute_loss` (`grpo_dynamic_sampling`: row-mean losses without the masked rows) ->
   `_get_per_token_logps_and_entropies` (`grpo_rollouts`: on a CPU each group's prompt runs once).
4. `log` (`grpo_curriculum`: the curriculum's metrics, levels agreeing across ranks).

Outside the step: checkpoints appear whole, with each `CheckpointState` (the curriculum here, the reset phase in `resets`) through
`checkpoints.AtomicCheckpointMixin`; between steps a hard reset (`resets.HardResetCallback`) calls `set_sampling`
and `restart_optimization` (`grpo_resets`).
"""

from __future__ import annotations

from trl import GRPOTrainer

from trl_smallrl.checkpoints import AtomicCheckpointMixin
from trl_smallrl.completions import template_prefill
from trl_smallrl.curriculum import levels_to_rows
from trl_smallrl.grpo_curriculum import CurriculumHooks
from trl_smallrl.grpo_dynamic_sampling import DynamicSamplingHooks
from trl_smallrl.grpo_health import HealthHooks
from trl_smallrl.grpo_resets import ResetHooks
from trl_smallrl.grpo_rollouts import CPURolloutHooks


class SmallRLGRPOTrainer(
    CurriculumHooks,  # its `_calculate_rewards` runs after the health hooks' (it reads their table)
    HealthHooks,
    DynamicSamplingHooks,
    CPURolloutHooks,
    ResetHooks,
    AtomicCheckpointMixin,  # after the hooks: their `own_checkpoint_states` (the curriculum) replaces its default
    GRPOTrainer,
):
    """TRL's `GRPOTrainer` plus dynamic sampling, the curriculum, health metrics and guards, CPU rollouts and what
    hard resets need (module docstring).

    `curriculum`: a `trl_smallrl.curriculum.Curriculum`, which draws each generation batch (give `train_dataset`
    by keyword), or None for the prompts TRL's sampler fetches.
    """

    def __init__(self, *args, curriculum=None, **kwargs):
        self.curriculum = curriculum
        # The training rows at each level, which the curriculum draws from; checked before the model loads.
        self._rows_by_level = None if curriculum is None else levels_to_rows(kwargs.get("train_dataset"), curriculum)
        self._last_rewards = None  # the last scored batch (all ranks): rewards per function,
        self._last_health = None  # and its health table (`monitors.HEALTH_COLUMNS`)
        super().__init__(*args, **kwargs)
        # A template that ends the prompt with `<think>` (R1-Distill): rewards and monitors read it back in front.
        self.think_prefill = template_prefill(self._tokenizer, self.chat_template_kwargs)
