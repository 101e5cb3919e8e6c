"""Task registry and dataset building: `get_task(name)`, `task_names()`, `build_dataset(data_args, split)`.

Our own tasks (knights_knaves, alias kk; gsm8k; math) come first; every other reasoning-gym dataset name is
a task too, generated and scored by reasoning-gym itself.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from trl_smallrl.errors import ConfigError, unknown_name
from trl_smallrl.tasks.base import SPLITS, Task
from trl_smallrl.tasks.gsm8k import BoxedNumberTask
from trl_smallrl.tasks.knights_knaves import KnightsKnavesTask
from trl_smallrl.tasks.math import MathTask
from trl_smallrl.tasks.reasoning_gym_tasks import ReasoningGymTask

__all__ = ["Task", "build_dataset", "get_task", "load_records", "read_file_records", "rows_from_records", "task_names"]

TASKS: dict[str, type[Task]] = {
    KnightsKnavesTask.name: KnightsKnavesTask,
    BoxedNumberTask.name: BoxedNumberTask,
    MathTask.name: MathTask,
}
ALIASES = {"kk": KnightsKnavesTask.name}
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


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


def read_file_records(path: str | os.PathLike, field: str = "dataset_name") -> list[dict[str, Any]]:
    """Records of a local .jsonl, .json or .parquet file; anything unreadable is one `ConfigError` naming `field`,
    the file and, for JSON lines, the line."""
    path = str(path)
    extension = os.path.splitext(path)[1].lower()
    if extension not in FILE_FORMATS:
        raise ConfigError(f"{field}: {path!r} has an unknown extension; use .jsonl, .json or .parquet.")
    try:
        if extension == ".parquet":
            import pyarrow.parquet as pq

            records = pq.read_table(path).to_pylist()
        else:
            records = _json_records(path, field)
    except ConfigError:
        raise
    except Exception as err:  # pyarrow's errors on a truncated or foreign file have no common base class
        raise ConfigError(f"{field}: cannot read {path!r} ({type(err).__name__}: {err}); write it again.") from None
    if not records:
        raise ConfigError(f"{field}: {path!r} holds no records; give a file with at least one row.")
    return records


def _json_records(path: str, field: str) -> list[dict[str, Any]]:
    """A JSON array of objects, or JSON lines (one object a line, blank lines allowed)."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{field}: {path!r} is not valid JSON at line {err.lineno} ({err.msg}).") from None
        lines = [(0, record) for record in records]
    else:
        lines = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                lines.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ConfigError(
                    f"{field}: line {number} of {path!r} is not a JSON object ({err.msg}); fix or remove that line."
                ) from None
    for number, record in lines:
        if not isinstance(record, dict):
            where = f"line {number}" if number else "an item"
            raise ConfigError(f"{field}: {where} of {path!r} is {type(record).__name__}, not a JSON object.")
    return [record for _, record in lines]


def load_records(
    source: str, config: str | None = None, split: str = "train", field: str = "dataset_name"
) -> list[dict[str, Any]]:
    """Records of a local file (parquet, jsonl, json) or of a Hub dataset split, read with `datasets`."""
    if os.path.exists(source):
        return read_file_records(source, field)
    import datasets

    try:
        dataset = datasets.load_dataset(source, config, split=split)
    except Exception as err:
        raise ConfigError(
            f"{field}: {source!r} is neither a file nor a reachable Hub dataset "
            f"(split {split!r}): {type(err).__name__}; give a local .jsonl, .json or .parquet file."
        ) from err
    return list(dataset)


def rows_from_records(
    task: Task, records: Iterable[Mapping[str, Any]], levels: Iterable[int] | None, system_prompt: str | None
) -> list[dict[str, Any]]:
    """Rows of the shared schema from a task's records, keeping only the requested levels."""
    wanted = set(levels) if levels else None
    rows = (_as_row(task, record, system_prompt) for record in records)
    return [row for row in rows if wanted is None or row["level"] in wanted]


def _as_row(task: Task, record: Mapping[str, Any], system_prompt: str | None) -> dict[str, Any]:
    """A record that already is a row of this task (e.g. written by `smallrl-data`) is kept; others convert."""
    if "prompt" in record and record.get("task") == task.name:
        row = dict(record)
        if system_prompt is not None:
            row["prompt"] = task.prompt(row["prompt"][-1]["content"], system_prompt)
        return row
    return task.row_from_record(record, system_prompt)


def _split_file_rows(rows: list[dict[str, Any]], eval_size: int, split: str) -> list[dict[str, Any]]:
    """Hold out the last `eval_size` rows of each level for evaluation; train on the rest (disjoint)."""
    by_level: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        by_level.setdefault(row["level"], []).append(index)
    held = {i for indices in by_level.values() for i in indices[len(indices) - min(eval_size, len(indices)) :]}
    return [row for i, row in enumerate(rows) if (i in held) == (split == "eval")]


def build_rows(data_args, split: str) -> list[dict[str, Any]]:
    """Rows for `split` ("train" or "eval") as `build_dataset` returns them, as a list of dicts."""
    if split not in SPLITS:
        raise ConfigError(f"split: unknown value {split!r}; use one of {', '.join(SPLITS)}.")
    task = get_task(data_args.task)
    levels = task.levels_or_default(data_args.levels)
    if data_args.dataset_name is None:
        size = data_args.train_size if split == "train" else data_args.eval_size
        return [
            row
            for level in levels
            for row in task.generate_rows(level, size, data_args.task_seed, split, data_args.system_prompt)
        ]
    eval_source = getattr(data_args, "eval_dataset_name", None)
    if split == "eval" and eval_source:
        records = load_records(eval_source, data_args.dataset_config, data_args.dataset_test_split)
        return rows_from_records(task, records, levels, data_args.system_prompt)
    records = load_records(data_args.dataset_name, data_args.dataset_config, data_args.dataset_train_split)
    rows = rows_from_records(task, records, levels, data_args.system_prompt)
    if not rows:
        raise ConfigError(
            f"dataset_name: {data_args.dataset_name!r} has no rows at levels {levels}; set `levels` to levels "
            "the file has (rows without a level, e.g. gsm8k or math files, are level 0)."
        )
    return rows if eval_source else _split_file_rows(rows, data_args.eval_size, split)


def build_dataset(data_args, split: str = "train"):
    """A `datasets.Dataset` of the shared row schema for `split`.

    Generated from (`task`, `levels`, `train_size`/`eval_size`, `task_seed`) with disjoint train/eval seeds, or
    read from `dataset_name`; a file's eval rows are `eval_dataset_name` when given, else the last `eval_size`
    rows of each level, which are then left out of training.
    """
    import datasets

    return datasets.Dataset.from_list(build_rows(data_args, split))
