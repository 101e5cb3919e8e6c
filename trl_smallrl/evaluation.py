"""pass@k evaluation: sample n completions per prompt, score them with the task's verifier, report per level.

A run is judged by how often the model solves a puzzle at each difficulty, not by its training reward. For
every model (base, SFT, GRPO side by side) we sample `eval_num_samples` completions for each held-out row,
count the correct ones with the same verifier the rewards use (`Task.is_correct`), and report per level the
unbiased pass@k of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code"), the share of
completions in the strict `<think>/<answer>` format, and the mean completion length. The per-prompt counts
are kept in the JSON so that pass@k curves for any k <= n can be drawn later without sampling again.

Each pass@k comes with a 95% interval, and each model with its difference from the model listed before it
(base -> SFT -> GRPO), paired prompt by prompt: every model answers the same rows, so the paired interval is
the honest test of "this stage added something" (Miller 2024, "Adding Error Bars to Evals").
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trl_smallrl import atomic
from trl_smallrl.completions import has_strict_format
from trl_smallrl.configs import DataArguments, EvalArguments
from trl_smallrl.errors import ConfigError, entry_point
from trl_smallrl.eval_samples import (
    SAMPLES_FILE,
    earlier_models,
    progress_path,
    puzzle_id,
    read_samples,
    sample_records,
    weights_fingerprint,
    write_samples,
)
from trl_smallrl.generation import Completion, SamplingProgress, SamplingSettings, sample
from trl_smallrl.models import public_model_id
from trl_smallrl.pass_rates import mean_interval, pass_at_k
from trl_smallrl.recipe import parse_recipe
from trl_smallrl.tasks import get_task
from trl_smallrl.tasks.rows import build_dataset

ALL_LEVELS = "all"


def level_order(level: str) -> tuple[bool, int]:
    """Sort key of summary levels: numeric levels in order, then "all"."""
    return level == ALL_LEVELS, int(level) if level.lstrip("-").isdigit() else 0


def parse_model_spec(spec: str) -> tuple[str, str]:
    """`label=model` or `model` (labelled by its last path component) -> (label, model)."""
    label, sep, name = spec.partition("=")
    if not sep:
        name = spec
        label = Path(spec.rstrip("/")).name or spec
    if not label or not name:
        raise ConfigError(f"eval_models: {spec!r} is not `label=model` or `model`; e.g. `sft=outputs/sft`.")
    return label, name


def _model_specs(models: Sequence[str]) -> list[tuple[str, str]]:
    specs = [parse_model_spec(spec) for spec in models]
    labels = [label for label, _ in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"eval_models: the label {duplicates[0]!r} is used twice; name them as `label=model`.")
    return specs


def sampling_settings(args: EvalArguments) -> SamplingSettings:
    """The eval recipe's sampling fields as the generation backend's settings."""
    return SamplingSettings(
        num_samples=args.eval_num_samples,
        max_new_tokens=args.eval_max_new_tokens,
        temperature=args.eval_temperature,
        top_p=args.eval_top_p,
        batch_size=args.eval_generation_batch_size,
        seed=args.eval_sampling_seed,
        dtype=args.eval_dtype,
        gpu_memory_utilization=args.eval_vllm_gpu_memory_utilization,
        chat_template_kwargs=args.chat_template_kwargs,
    )


def score_samples(rows: Sequence[Mapping[str, Any]], samples: Sequence[Sequence[Completion]]) -> list[dict]:
    """One record per row: its level, and per sample whether it is correct and in the strict format.

    Correct means the task's verifier gives full credit (1.0); the format check is the strict `format`
    reward's (`completions.has_strict_format`), so the eval's format rate is that reward's mean. Each text starts
    with the template's `<think>` prefill where it has one (`generation.sample`), as the reward reads it in GRPO.
    """
    records = []
    for row, row_samples in zip(rows, samples, strict=True):
        fields = {key: value for key, value in row.items() if key != "prompt"}
        task = get_task(row["task"])
        texts = [completion.text for completion in row_samples]
        records.append(
            {
                "level": int(row["level"]),
                "answer": row.get("answer"),
                "correct": [task.is_correct(text, fields) for text in texts],
                "formatted": [has_strict_format(text) for text in texts],
                "lengths": [completion.length for completion in row_samples],
                "truncated": [completion.truncated for completion in row_samples],
                "texts": texts,
            }
        )
    return records


def summarize(records: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per level (and over all rows, under "all"): pass@k for each k, format rate, mean and truncated length.

    `correct_counts` (c per prompt) and `num_samples` (n) are kept so that any pass@k can be recomputed.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in sorted(records, key=lambda r: r["level"]):
        groups.setdefault(str(record["level"]), []).append(record)
    groups[ALL_LEVELS] = list(records)
    summary = {}
    for level, group in groups.items():
        if not group:
            continue
        n = len(group[0]["correct"])
        counts = [sum(record["correct"]) for record in group]
        flat = [value for record in group for value in record["formatted"]]
        lengths = [value for record in group for value in record["lengths"]]
        truncated = [value for record in group for value in record["truncated"]]
        intervals = {k: mean_interval([pass_at_k(n, c, k) for c in counts]) for k in ks}
        summary[level] = {
            "prompts": len(group),
            "num_samples": n,
            "correct_counts": counts,
            **{f"pass@{k}": mean for k, (mean, _) in intervals.items()},
            **{f"pass@{k}_ci95": half for k, (_, half) in intervals.items()},
            "format_rate": sum(flat) / len(flat),
            "mean_length": sum(lengths) / len(lengths),
            "truncated_rate": sum(truncated) / len(truncated),
        }
    return summary


def paired_differences(
    before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]], ks: Sequence[int]
) -> dict[str, dict[str, tuple[float, float | None]]]:
    """Per level, pass@k of `after` minus that of `before` and the 95% half-width, paired prompt by prompt.

    Both summaries must come from the same rows in the same order (as `evaluate` gives every model); a level
    whose prompt count differs is left out rather than paired wrongly.
    """
    differences = {}
    for level, stats in after.items():
        other = before.get(level)
        if other is None or other["prompts"] != stats["prompts"]:
            continue
        n_before, n_after = other["num_samples"], stats["num_samples"]
        differences[level] = {
            f"pass@{k}": mean_interval(
                [
                    pass_at_k(n_after, c_after, k) - pass_at_k(n_before, c_before, k)
                    for c_before, c_after in zip(other["correct_counts"], stats["correct_counts"], strict=True)
                ]
            )
            for k in ks
        }
    return differences


def _with_interval(value: float, half_width: float | None, sign: str = "") -> str:
    return f"{value:{sign}.3f}" if half_width is None else f"{value:{sign}.3f} ± {half_width:.3f}"


def _chance(task, level: str, ks: Sequence[int]) -> str:
    """pass@k of a uniform guess at this level, for each k (`Task.chance_pass_at_k`), or "-" where none."""
    chances = [task.chance_pass_at_k(int(level), k) for k in ks] if task and level.isdigit() else [None]
    return "-" if None in chances else " / ".join(f"{chance:.3f}" for chance in chances)


def results_table(result: Mapping[str, Any]) -> str:
    """Markdown tables of an eval result: one row per level and model (models side by side per level), pass@k
    with its 95% half-width and the pass@k of a random guess beside it ("chance", one figure per k); then, with
    several models, each one's paired difference from the one before."""
    ks = result["spec"]["k"]
    task = get_task(result["spec"]["task"]) if result["spec"].get("task") else None
    header = ["level", "model", "prompts", *[f"pass@{k}" for k in ks], "chance", "format", "mean tokens", "truncated"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    levels = []
    for model in result["models"]:
        levels += [level for level in model["levels"] if level not in levels]
    levels.sort(key=level_order)
    for level in levels:
        for model in result["models"]:
            stats = model["levels"].get(level)
            if stats is None:
                continue
            cells = [
                level,
                model["label"],
                str(stats["prompts"]),
                *[_with_interval(stats[f"pass@{k}"], stats.get(f"pass@{k}_ci95")) for k in ks],
                _chance(task, level, ks),
                f"{stats['format_rate']:.3f}",
                f"{stats['mean_length']:.1f}",
                f"{stats['truncated_rate']:.3f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    for previous, model in zip(result["models"], result["models"][1:]):
        differences = paired_differences(previous["levels"], model["levels"], ks)
        if not differences:
            continue
        lines += ["", f"{model['label']} minus {previous['label']}, paired by prompt (95% interval):", ""]
        lines += ["| level | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
        for level in levels:
            if level in differences:
                cells = [_with_interval(*differences[level][f"pass@{k}"], sign="+") for k in ks]
                lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_result(result: Mapping[str, Any], output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """results.json and results.md in `output_dir`, each written atomically."""
    output_dir = Path(output_dir)
    json_path, table_path = output_dir / "results.json", output_dir / "results.md"
    atomic.write_json(json_path, result, indent=2)
    atomic.write_text(table_path, results_table(result))
    return json_path, table_path


def result_from_samples(path: str | os.PathLike, ks: Sequence[int] = (1, 4)) -> dict[str, Any]:
    """The eval result (per model and level, pass@k with intervals) from a `samples.jsonl.gz` alone.

    Every completion is scored again by its row's task verifier, and a stored `correct` that disagrees is an error:
    the table is rebuilt from the texts, not only from their recorded verdicts. Models keep the file's order; each
    model's rows are put in the first model's puzzle order, so the paired differences pair the same puzzles.
    """
    lines = read_samples(path)
    if not lines:
        raise ConfigError(f"samples: {str(path)!r} holds no samples; give the samples.jsonl.gz of an eval.")
    by_model: dict[str, dict[str, dict]] = {}
    for line in lines:
        puzzles = by_model.setdefault(line["model"], {})
        if line["puzzle_id"] in puzzles:
            raise ConfigError(
                f"samples: {line['model']}/{line['puzzle_id']} appears twice; one line a puzzle a model."
            )
        puzzles[line["puzzle_id"]] = line
    order = list(next(iter(by_model.values())))
    task_name = lines[0]["row"]["task"]
    n = len(lines[0]["completions"])
    models = []
    for label, puzzles in by_model.items():
        records = []
        for pid in [pid for pid in order if pid in puzzles]:
            line = puzzles[pid]
            task = get_task(line["row"]["task"])
            correct = [task.is_correct(text, line["row"]) for text in line["completions"]]
            if correct != line["correct"]:
                raise ConfigError(f"samples: {label}/{pid}: the stored verdicts {line['correct']} are not the "
                                  f"verifier's {correct}; the file was edited or written by another verifier.")  # fmt: skip
            records.append({"level": line["level"], "correct": correct, "lengths": line["lengths"],
                            "formatted": [has_strict_format(text) for text in line["completions"]],
                            "truncated": line["truncated"]})  # fmt: skip
        models.append({"label": label, "levels": summarize(records, [k for k in ks if k <= n])})
    spec = {"task": task_name, "k": [k for k in ks if k <= n], "num_samples": n, "samples_file": str(path)}
    return {"spec": spec, "models": models}


def evaluate(data_args: DataArguments, eval_args: EvalArguments, rows: Sequence[Mapping[str, Any]] | None = None):
    """Evaluate every model of `eval_args` on the eval rows; write and return the result.

    The result is rewritten after each model, so a long comparison killed midway keeps the models done, and a run
    again into the same `eval_output_dir` takes them from there (`eval_samples.earlier_models`: the same settings,
    label and weights) instead of sampling them again; a model it was on resumes at its next generation batch with
    the same draws (`generation.SamplingProgress`, one file a model: `eval_samples.progress_path`): the reference
    run's final eval takes hours, more than a sitting.
    All models' completions, with the rows they were scored against, go to `samples.jsonl.gz` (rewritten after each
    model too; read it with `read_samples`), from which `smallrl-eval-table` rebuilds the tables alone.
    """
    specs = _model_specs(eval_args.eval_models)
    if rows is None:
        rows = list(build_dataset(data_args, "eval"))
    if not rows:
        raise ConfigError("eval_size: the eval split is empty; set eval_size > 0 or give a dataset_name with rows.")
    result = {
        "spec": {
            "task": data_args.task,
            "levels": sorted({int(row["level"]) for row in rows}),
            "dataset_name": data_args.dataset_name,
            "eval_size": data_args.eval_size,
            "task_seed": data_args.task_seed,
            "num_samples": eval_args.eval_num_samples,
            "k": list(eval_args.eval_k),
            "temperature": eval_args.eval_temperature,
            "top_p": eval_args.eval_top_p,
            "max_new_tokens": eval_args.eval_max_new_tokens,
            "seed": eval_args.eval_sampling_seed,
            "chat_template_kwargs": eval_args.chat_template_kwargs,
        },
        "models": [],
    }
    output_dir = Path(eval_args.eval_output_dir)
    settings = sampling_settings(eval_args)  # the same seed for every model: they draw from the same stream
    earlier = earlier_models(output_dir, result["spec"])
    fingerprints = {label: weights_fingerprint(name) for label, name in specs}
    done: dict[str, tuple[dict, list[dict]]] = {  # label -> (its result, its sample lines)
        label: earlier[label]
        for label, name in specs
        if label in earlier
        and fingerprints[label] is not None
        and earlier[label][0]["model"] == name
        and earlier[label][0].get("weights") == fingerprints[label]
    }  # written with each model sampled, whatever their places: a model kept is never dropped from the files

    def write_done() -> None:
        ordered = [done[label] for label, _ in specs if label in done]
        write_samples([line for _, lines in ordered for line in lines], output_dir / SAMPLES_FILE)
        write_result({**result, "models": [model for model, _ in ordered]}, output_dir)

    for number, (label, name) in enumerate(specs, 1):
        if label in done:
            print(f"eval: model {label} ({number} of {len(specs)}): kept from {output_dir} (the same settings and "
                  "weights)", flush=True)  # fmt: skip
            continue
        print(
            f"eval: model {label} ({number} of {len(specs)}): {len(rows)} prompts x {settings.num_samples}", flush=True
        )
        started = time.perf_counter()
        identity = {"spec": result["spec"], "sampling": asdict(settings), "label": label, "model": name,
                    "weights": fingerprints[label], "puzzles": [puzzle_id(row) for row in rows]}  # fmt: skip
        progress = SamplingProgress(progress_path(output_dir, label), identity)
        samples = sample(name, [row["prompt"] for row in rows], settings, field="eval_models", progress=progress)
        records = score_samples(rows, samples)
        model = {
            "label": label,
            "model": name,
            "base_model": public_model_id(name),
            "weights": fingerprints[label],
            "wall_seconds": round(time.perf_counter() - started, 1),
            "levels": summarize(records, eval_args.eval_k),
        }
        done[label] = (model, sample_records(label, rows, records))
        write_done()
        progress.clear()
    result["models"] = [done[label][0] for label, _ in specs]
    return result


@entry_point
def table_main(argv: list[str] | None = None) -> None:
    """`smallrl-eval-table SAMPLES [--k 1 4]`: the results table and paired intervals from an eval's samples alone."""
    from trl_smallrl.cli import CommandParser

    parser = CommandParser(prog="smallrl-eval-table", description=table_main.__doc__)
    parser.add_argument("samples", help="samples.jsonl.gz written by smallrl-eval")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4], help="the k of pass@k (<= samples a puzzle)")
    args = parser.parse_args(argv)
    print(results_table(result_from_samples(args.samples, args.k)), end="")


@entry_point
def main(argv: list[str] | None = None) -> None:
    """`smallrl-eval --config recipes/.../eval/<name>.yaml [--eval_models base=... grpo=outputs/grpo]`."""
    data_args, eval_args = parse_recipe((DataArguments, EvalArguments), argv)
    result = evaluate(data_args, eval_args)
    print(results_table(result), end="")
    print(f"written: {Path(eval_args.eval_output_dir) / 'results.json'} and results.md")


if __name__ == "__main__":
    main()
