"""The tiny GRPO run whose curriculum moves on a fixed schedule, shared by the tests that stop and resume it."""

from __future__ import annotations

LEVELS = [2, 3, 4]
CURRICULUM_RUN = {  # the curriculum moving up every 2 steps (an unreachable threshold), masked groups, three rewards
    "task": "knights_knaves", "levels": LEVELS, "eval_size": 2, "curriculum": "sequential",
    "curriculum_threshold": 1.0, "curriculum_window": 1000, "curriculum_max_steps": 2,
    "reward_funcs": ["format", "accuracy", "cosine"], "cosine_max_len": 8, "loss_type": "dapo",
    "dynamic_sampling": "mask", "num_generations": 4, "per_device_train_batch_size": 4,
}  # fmt: skip


def expected_level(step: int) -> int:
    """The level the log of step s shows: one up every 2 steps from the first (the record made at generation time,
    global_step s - 1)."""
    return min(LEVELS[0] + (step - 1) // 2, LEVELS[-1])
