"""Offline command-line tools around the tasks: write rows, write SFT traces, score outside generations.

- `smallrl-data --task kk --levels 2-6 --size N --seed S --out PATH` writes rows of the shared schema
  (jsonl or parquet by extension); the file loads back with `dataset_name: PATH`.
- `smallrl-traces --task kk (--levels 2-6 --size N | --dataset PATH) --out PATH.jsonl` writes one SFT
  conversation a puzzle (`messages`: system, user, assistant trace), in input order; with `--teacher MODEL`
  (any task) the traces are a local model's completions that the verifier accepts (`trl_smallrl.teacher`).
- `smallrl-score --task kk --dataset PATH --completions PATH.jsonl [--out PATH]` scores generations made
  elsewhere (`{"index": i, "completion": "..."}` a line) with the same verifier the rewards use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from trl_smallrl import atomic
from trl_smallrl.cli import CommandParser
from trl_smallrl.configs import DataArguments
from trl_smallrl.errors import ConfigError, entry_point
from trl_smallrl.generation import SamplingSettings
from trl_smallrl.recipe import mapping_value
from trl_smallrl.tasks import TASKS, Task, get_task
from trl_smallrl.tasks.rows import build_rows, read_file_records, rows_from_records
from trl_smallrl.teacher import teacher_traces


def parse_levels(text: str) -> list[int]:
    """'2-6' -> [2, 3, 4, 5, 6]; '2,4,6' and '2-4,6' work too."""
    levels: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            levels.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ConfigError(f"--levels: {text!r} is not a level list; write e.g. 2-6 or 2,3,5.") from None
    if not levels:
        raise ConfigError(f"--levels: {text!r} names no level; write e.g. 2-6.")
    return levels


def _write_out(path: str, write) -> None:
    """Write `--out` atomically; a folder that cannot be written is one line, not a traceback."""
    try:
        atomic.write_file(path, write)
    except OSError as err:
        raise ConfigError(f"--out: cannot write {path!r} ({err.strerror or err}); choose a writable path.") from None


def write_jsonl(path: str, lines: Sequence[dict[str, Any]]) -> None:
    def write(tmp) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")

    _write_out(path, write)


def write_rows(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Rows as jsonl (.jsonl/.json) or parquet (.parquet), chosen by the extension."""
    extension = os.path.splitext(path)[1].lower()
    if extension in (".jsonl", ".json"):
        write_jsonl(path, rows)
    elif extension == ".parquet":
        import datasets

        _write_out(path, lambda tmp: datasets.Dataset.from_list(list(rows)).to_parquet(str(tmp)))
    else:
        raise ConfigError(f"--out: {path!r} has an unknown extension; use .jsonl or .parquet.")


def _data_args(task: str, levels: list[int], size: int, seed: int, system_prompt: str | None):
    return DataArguments(
        task=task, levels=levels, train_size=size, eval_size=size, task_seed=seed, system_prompt=system_prompt
    )


def _file_rows(task: Task, path: str, system_prompt: str | None = None) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        raise ConfigError(f"--dataset: {path!r} does not exist; give a .jsonl, .json or .parquet file.")
    return rows_from_records(
        task, read_file_records(path, field="--dataset"), levels=None, system_prompt=system_prompt
    )


def _quiet_progress_bars() -> None:
    """The tools print one summary line; `datasets`' per-file progress bars would bury it."""
    import datasets

    datasets.disable_progress_bars()


def _common_arguments(parser: CommandParser) -> None:
    parser.add_argument("--task", default="knights_knaves", help="Task name (kk = knights_knaves).")
    parser.add_argument("--system-prompt", default=None, help="System prompt; default: the task's own.")


def _generation_arguments(parser: CommandParser, required: bool) -> None:
    parser.add_argument("--levels", type=str, required=required, default=None, help="e.g. 2-6 or 2,3,5.")
    parser.add_argument("--size", type=int, default=100, help="Rows per level.")
    parser.add_argument("--seed", type=int, default=0, help="Task seed (train and eval never overlap).")
    parser.add_argument("--split", choices=("train", "eval"), default="train")


@entry_point
def data_main(argv: Sequence[str] | None = None) -> None:
    """smallrl-data: generate rows of a task and write them to jsonl or parquet."""
    parser = CommandParser(prog="smallrl-data", description=data_main.__doc__)
    _common_arguments(parser)
    _generation_arguments(parser, required=True)
    parser.add_argument("--out", required=True, help="Output file: .jsonl or .parquet.")
    args = parser.parse_args(argv)
    _quiet_progress_bars()
    data_args = _data_args(args.task, parse_levels(args.levels), args.size, args.seed, args.system_prompt)
    rows = build_rows(data_args, args.split)
    write_rows(args.out, rows)
    print(f"wrote {len(rows)} rows of {get_task(args.task).name} to {args.out}")


def solver_traces(task: Task, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The task's own solver traces, one per row, in order."""
    if not task.writes_traces:
        solvers = [name for name, task_class in TASKS.items() if task_class.writes_traces]
        raise ConfigError(
            f"--task: {task.name!r} has no solver traces; tasks with a solver: {', '.join(solvers)} "
            "(for the others, sample verified traces with --teacher MODEL)."
        )
    return [task.write_trace(row) for row in rows]


def conversations(rows: Sequence[dict[str, Any]], traces: Sequence[str]) -> list[dict[str, Any]]:
    """SFT conversations: the row's prompt (system + user) followed by the assistant's trace."""
    return [
        {"messages": [*row["prompt"], {"role": "assistant", "content": trace}]} for row, trace in zip(rows, traces)
    ]


@entry_point
def traces_main(argv: Sequence[str] | None = None) -> None:
    """smallrl-traces: write SFT conversations (system, user, assistant trace), one line a puzzle."""
    parser = CommandParser(prog="smallrl-traces", description=traces_main.__doc__)
    _common_arguments(parser)
    _generation_arguments(parser, required=False)
    parser.add_argument("--dataset", default=None, help="Rows or records file instead of --levels.")
    parser.add_argument("--out", required=True, help="Output .jsonl file.")
    parser.add_argument("--teacher", default=None, help="Local teacher model: rejection-sampled traces (any task).")
    parser.add_argument("--samples", type=int, default=8, help="--teacher: completions sampled a prompt (k).")
    parser.add_argument("--keep-per-prompt", type=int, default=1, help="--teacher: verified traces kept a prompt.")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="--teacher: completion tokens at most.")
    parser.add_argument("--temperature", type=float, default=0.8, help="--teacher: sampling temperature.")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="--teacher: auto = bfloat16 on a GPU, float32 on a CPU (where bf16 is often emulated).",
    )
    parser.add_argument(
        "--chat-template-kwargs",
        default=None,
        help="--teacher: keyword arguments of its chat template as JSON, e.g. '{\"enable_thinking\": false}'.",
    )
    args = parser.parse_args(argv)
    _quiet_progress_bars()
    if (args.levels is None) == (args.dataset is None):
        raise ConfigError("--levels/--dataset: give exactly one: generated levels (e.g. 2-6) or a dataset file.")
    task = get_task(args.task)
    if args.dataset is not None:
        rows = _file_rows(task, args.dataset, args.system_prompt)
    else:
        data_args = _data_args(args.task, parse_levels(args.levels), args.size, args.seed, args.system_prompt)
        rows = build_rows(data_args, args.split)
    if args.teacher is not None:
        settings = SamplingSettings(
            args.samples,
            args.max_new_tokens,
            args.temperature,
            seed=args.seed,
            dtype=args.dtype,
            chat_template_kwargs=mapping_value(args.chat_template_kwargs, "--chat-template-kwargs"),
        )
        kept, stats = teacher_traces(args.teacher, task, rows, settings, args.keep_per_prompt)
        write_jsonl(args.out, kept)
        print(f"wrote {len(kept)} verified conversations ({len(rows)} prompts x {args.samples} samples) to {args.out}")
        print(" ".join(f"{key}={value:.3f}" for key, value in stats.items()))
        return
    traces = solver_traces(task, rows)
    write_jsonl(args.out, conversations(rows, traces))
    print(f"wrote {len(rows)} conversations to {args.out}")


def read_completions(path: str, num_rows: int) -> list[tuple[int, str]]:
    """(index, completion) pairs of a completions file; bad lines raise ConfigError naming the line."""
    if not os.path.exists(path):
        raise ConfigError(f"--completions: {path!r} does not exist.")
    pairs = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                index, completion = item["index"], item["completion"]
                if type(index) is not int or not isinstance(completion, str):  # not 1.7, not true
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise ConfigError(
                    f'--completions: line {number} of {path} is not {{"index": i, "completion": "..."}}.'
                ) from None
            if not 0 <= index < num_rows:
                raise ConfigError(f"--completions: line {number} has index {index}; the dataset has {num_rows} rows.")
            pairs.append((index, completion))
    return pairs


def score_completions(
    task: Task, rows: Sequence[dict[str, Any]], pairs: Sequence[tuple[int, str]]
) -> list[dict[str, Any]]:
    """One result a completion: index, level, correct (reward == 1) and reward."""
    results = []
    for index, completion in pairs:
        row = {key: value for key, value in rows[index].items() if key != "prompt"}
        reward = task.score(completion, row)
        results.append({"index": index, "level": row["level"], "correct": reward == 1.0, "reward": reward})
    return results


def accuracy_report(results: Sequence[dict[str, Any]]) -> str:
    """'accuracy 0.500 (2/4)' overall, then one such line per level."""

    def line(label: str, items: Sequence[dict[str, Any]]) -> str:
        right = sum(item["correct"] for item in items)
        return f"{label} {right / len(items) if items else 0.0:.3f} ({right}/{len(items)})"

    lines = [line("accuracy", results)]
    for level in sorted({item["level"] for item in results}):
        lines.append(line(f"  level {level}:", [item for item in results if item["level"] == level]))
    return "\n".join(lines)


@entry_point
def score_main(argv: Sequence[str] | None = None) -> None:
    """smallrl-score: score completions made elsewhere with the task's verifier; print accuracy per level."""
    parser = CommandParser(prog="smallrl-score", description=score_main.__doc__)
    parser.add_argument("--task", default="knights_knaves", help="Task name (kk = knights_knaves).")
    parser.add_argument("--dataset", required=True, help="The rows the completions answer (.jsonl/.parquet).")
    parser.add_argument("--completions", required=True, help='jsonl: {"index": i, "completion": "..."} a line.')
    parser.add_argument("--out", default=None, help="Optional jsonl of index, level, correct, reward.")
    args = parser.parse_args(argv)
    _quiet_progress_bars()
    task = get_task(args.task)
    rows = _file_rows(task, args.dataset)
    results = score_completions(task, rows, read_completions(args.completions, len(rows)))
    if args.out:
        write_jsonl(args.out, results)
    print(accuracy_report(results))
