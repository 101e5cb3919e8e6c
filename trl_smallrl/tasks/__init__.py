"""The task registry: `get_task(name)`, `task_names()`. A task is one file (rows, verifier, levels); the rows a
run trains and evaluates on are built in `tasks.rows`.

Our own tasks (knights_knaves, alias kk; gsm8k; math) come first; every other reasoning-gym dataset name is
a task too, generated and scored by reasoning-gym itself.
"""

from __future__ import annotations

import functools

from trl_smallrl.errors import unknown_name
from trl_smallrl.tasks.base import Task
from trl_smallrl.tasks.gsm8k import BoxedNumberTask
from trl_smallrl.tasks.knights_knaves import KnightsKnavesTask
from trl_smallrl.tasks.math import MathTask
from trl_smallrl.tasks.reasoning_gym_tasks import ReasoningGymTask

__all__ = ["TASKS", "Task", "get_task", "task_names"]

TASKS: dict[str, type[Task]] = {
    KnightsKnavesTask.name: KnightsKnavesTask,
    BoxedNumberTask.name: BoxedNumberTask,
    MathTask.name: MathTask,
}
ALIASES = {"kk": KnightsKnavesTask.name}


def _reasoning_gym_names() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return [name for name in DATASETS if name not in TASKS]


def task_names() -> list[str]:
    """Every valid task name: ours, their aliases, then reasoning-gym's."""
    return sorted(TASKS) + sorted(ALIASES) + sorted(_reasoning_gym_names())


def get_task(name: str) -> Task:
    """The task registered under `name` (`kk` is `knights_knaves`); unknown names raise ConfigError."""
    return _task(ALIASES.get(name, name))


@functools.cache
def _task(name: str) -> Task:
    if name in TASKS:
        return TASKS[name]()
    if name in _reasoning_gym_names():
        return ReasoningGymTask(name)
    raise unknown_name("task", name, task_names())
