"""Training curves and pass@k curves as PNG files, from what a run already wrote.

A run is read from the `trainer_state.json` that transformers saves (its `log_history` holds every logged
metric, TRL's and ours), and an evaluation from the `results.json` of `smallrl-eval` or its `samples.jsonl.gz`
alone; no tracker is needed. Each figure is drawn only from the metrics the run logged: a run without a curriculum
simply gets no curriculum figure. Figures are PNG (matplotlib's Agg backend, no display needed).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.trainer import TRAINER_STATE_NAME

from trl_smallrl import atomic
from trl_smallrl.checkpoints import last_complete_checkpoint
from trl_smallrl.cli import CommandParser
from trl_smallrl.errors import ConfigError, entry_point
from trl_smallrl.pass_rates import pass_at_k


@dataclass(frozen=True)
class Panel:
    """One axes: the metrics whose names fully match `patterns`, and optionally some on a right-hand axis."""

    title: str
    ylabel: str
    patterns: tuple[str, ...]
    right_patterns: tuple[str, ...] = ()
    right_label: str = ""
    right_integer: bool = False  # a level count: whole-number ticks, and a flat line still gets a readable axis


# File stem -> panels. Names are those logged by TRL's GRPO and SFT trainers and by trl-smallrl's curriculum/monitors.
RUN_FIGURES: dict[str, tuple[Panel, ...]] = {
    "loss": (
        Panel("Training loss", "loss", (r"loss",)),
        Panel("Token accuracy on the traces (SFT)", "accuracy", (r"mean_token_accuracy",)),
    ),
    "reward": (
        Panel("Reward (mean, band: std)", "reward", (r"reward",)),
        Panel("Reward components", "reward", (r"rewards/.+/mean",)),
    ),
    "accuracy_levels": (
        Panel(
            "Accuracy per level (each batch)",
            "accuracy",
            (r"health/accuracy_level_\d+", r"health/accuracy"),
            right_patterns=(r"curriculum/level",),
            right_label="curriculum level",
            right_integer=True,
        ),
        Panel(
            "Rolling accuracy per level (curriculum)",
            "accuracy",
            (r"curriculum/accuracy_level_\d+",),
            right_patterns=(r"curriculum/level",),
            right_label="curriculum level",
            right_integer=True,
        ),
    ),
    "heldout_curve": (
        Panel(
            "Held-out pass@1 per level at each checkpoint (band: 95%), training correctness",
            "pass@1 / correctness",
            (r"heldout/pass@1_level_\d+", r"health/accuracy"),
            right_patterns=(r"curriculum/level",),
            right_label="curriculum level",
            right_integer=True,
        ),
    ),
    "think_length": (Panel("Think length", "tokens", (r".*think.*(mean|min).*",)),),
    "completion_length": (
        Panel(
            "Completion length",
            "tokens",
            (r"completions/(mean|min|max)_length",),
            right_patterns=(r"completions/clipped_ratio",),
            right_label="clipped ratio",
        ),
    ),
    "kl": (Panel("KL to the reference", "KL", (r"kl",)),),
    "entropy": (Panel("Token entropy", "nats", (r"entropy",)),),
    "clip_ratio": (Panel("Clip ratio", "fraction", (r"clip_ratio/.+",)),),
    "reasoning_health": (
        Panel(
            "Reasoning health",
            "fraction",
            (r"health/answer_without_reasoning", r"health/format_right_but_wrong", r"health/truncation_rate"),
        ),
    ),
    "zero_std_groups": (Panel("Groups with equal rewards (no signal)", "fraction", (r"frac_reward_zero_std",)),),
    "informative_groups": (
        Panel("Groups trained with right and wrong answers", "groups a step", (r"informative_groups",)),
    ),
}


def find_trainer_state(run_dir: str | os.PathLike) -> Path:
    """`trainer_state.json` of a run folder, else of its newest complete `checkpoint-N` folder."""
    run_dir = Path(run_dir)
    if (run_dir / TRAINER_STATE_NAME).is_file():
        return run_dir / TRAINER_STATE_NAME
    checkpoint = last_complete_checkpoint(run_dir)
    if checkpoint is None:
        raise ConfigError(
            f"run_dir: {str(run_dir)!r} has no trainer_state.json (nor a checkpoint-N/ with one); "
            "point it at a training output_dir."
        )
    return Path(checkpoint) / TRAINER_STATE_NAME


def load_log_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    return json.loads(find_trainer_state(run_dir).read_text()).get("log_history", [])


def metric_series(log_history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged metric; entries without it (or with a non-number) are skipped."""
    steps, values = [], []
    for entry in log_history:
        value = entry.get(key)
        if "step" in entry and isinstance(value, int | float) and not isinstance(value, bool):
            steps.append(entry["step"])
            values.append(float(value))
    return steps, values


def matching_keys(log_history: Sequence[Mapping[str, Any]], patterns: Sequence[str]) -> list[str]:
    keys = {key for entry in log_history for key in entry}
    found = [key for key in keys if any(re.fullmatch(pattern, key) for pattern in patterns)]
    return sorted(found, key=_natural_order)


def _natural_order(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _std_key(key: str) -> str | None:
    """The metric drawn as a band around `key`: its std, or for a held-out pass@1 its 95% half-width."""
    if key.startswith("heldout/pass@1_level_"):
        return key.replace("pass@1_level_", "pass@1_ci95_level_")
    if key == "reward":
        return "reward_std"
    if key.endswith("/mean"):
        return key[: -len("mean")] + "std"
    return None


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _draw(ax, log_history, key: str, color, band: bool = True, **style) -> None:
    steps, values = metric_series(log_history, key)
    label = key
    if len(values) >= 20:  # RL curves are noisy: show the raw curve faintly and a moving average on top
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        values = _moving_average(values, max(2, len(values) // 20))
        label = f"{key} (moving avg)"
    ax.plot(steps, values, color=color, label=label, marker="o" if len(values) < 20 else None, markersize=3, **style)
    std_key = _std_key(key) if band else None
    if std_key:
        std_steps, stds = metric_series(log_history, std_key)
        if std_steps == steps and len(values) == len(stds):
            ax.fill_between(
                steps,
                [v - s for v, s in zip(values, stds)],
                [v + s for v, s in zip(values, stds)],
                color=color,
                alpha=0.15,
            )


def _save(fig, path: Path) -> Path:
    """Write a PNG atomically (a reader never sees half a file) and release the figure."""
    import matplotlib.pyplot as plt

    atomic.write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """One PNG per figure of `RUN_FIGURES` that has data; returns the files written (missing metrics: skipped)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    log_history = load_log_history(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    written = []
    for stem, panels in RUN_FIGURES.items():
        keyed = [(panel, matching_keys(log_history, panel.patterns)) for panel in panels]
        keyed = [(panel, keys) for panel, keys in keyed if keys]
        if not keyed:
            continue
        fig, axes = plt.subplots(1, len(keyed), figsize=(6.6 * len(keyed), 4.2), squeeze=False, layout="constrained")
        for ax, (panel, keys) in zip(axes[0], keyed):
            colors = plt.cm.tab10.colors
            for i, key in enumerate(keys):
                _draw(ax, log_history, key, colors[i % len(colors)])
            ax.set(title=panel.title, xlabel="step", ylabel=panel.ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            handles, labels = ax.get_legend_handles_labels()
            right_keys = matching_keys(log_history, panel.right_patterns) if panel.right_patterns else []
            if right_keys:
                right = ax.twinx()
                right_values: list[float] = []
                for key in right_keys:
                    steps, values = metric_series(log_history, key)
                    right.plot(steps, values, color="black", linestyle="--", drawstyle="steps-post", label=key)
                    right_values += values
                right.set_ylabel(panel.right_label)
                if panel.right_integer:
                    right.set_ylim(min(right_values) - 0.5, max(right_values) + 0.5)
                    right.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
                extra_handles, extra_labels = right.get_legend_handles_labels()
                handles, labels = handles + extra_handles, labels + extra_labels
            ax.legend(handles, labels, fontsize=7, loc="best")
        written.append(_save(fig, out_dir / f"{stem}.png"))
    return written


def plot_pass_at_1(
    eval_json: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, result: Mapping[str, Any] | None = None
) -> list[Path]:
    """pass@1 of each model in the eval's order (a data-scale curve, or a run's stages) per level, with its 95%
    interval and the task's chance (a uniform guess) beside it: the picture of a table of `smallrl-eval`. `result`:
    the eval's result when the caller has read it already."""
    plt = _pyplot()
    from trl_smallrl.tasks import get_task

    result = result if result is not None else _eval_result(eval_json)
    levels = [level for level in _levels(result) if level != "all"]
    if not levels:
        return []
    task = get_task(result["spec"]["task"]) if result.get("spec", {}).get("task") else None
    labels = [model["label"] for model in result["models"]]
    fig, axes = plt.subplots(
        1, len(levels), figsize=(1.2 + 0.9 * len(labels) * len(levels), 3.6), squeeze=False, sharey=True,
        layout="constrained",
    )  # fmt: skip
    for ax, level in zip(axes[0], levels):
        scored = [(i, model["levels"][level]) for i, model in enumerate(result["models"]) if level in model["levels"]]
        ax.errorbar(
            [i for i, _ in scored],
            [stats["pass@1"] for _, stats in scored],
            yerr=[_or_nan(stats.get("pass@1_ci95")) for _, stats in scored],  # None: one prompt, no interval
            marker="o",
            capsize=4,
            label="pass@1 (95% interval)",
        )
        chance = task.chance_pass_at_k(int(level), 1) if task is not None and level.isdigit() else None
        if chance is not None:
            ax.axhline(chance, color="gray", linestyle="--", label=f"chance {chance:.3g}")
        ax.set(title=f"level {level}", ylim=(-0.02, 1.02), xticks=range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("pass@1")
    return [_save(fig, _eval_out_dir(eval_json, out_dir) / "pass_at_1.png")]


def plot_pass_at_k(
    eval_json: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, result: Mapping[str, Any] | None = None
) -> list[Path]:
    """pass@k against k (1..n) per level, one line per model, from the per-prompt counts of an eval result
    (`result`: the eval's result when the caller has read it already)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    result = result if result is not None else _eval_result(eval_json)
    levels = _levels(result)
    if not levels:
        return []
    fig, axes = plt.subplots(
        1, len(levels), figsize=(3.6 * len(levels), 3.6), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, level in zip(axes[0], levels):
        for model in result["models"]:
            stats = model["levels"].get(level)
            if not stats:
                continue
            n, counts = stats["num_samples"], stats["correct_counts"]
            ks = list(range(1, n + 1))
            ax.plot(
                ks,
                [sum(pass_at_k(n, c, k) for c in counts) / len(counts) for k in ks],
                marker="o",
                label=model["label"],
            )
        ax.set(title=f"level {level}" if level != "all" else "all levels", xlabel="k", ylim=(-0.02, 1.02))
        if ks[-1] > 8:
            ax.set_xscale("log", base=2)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pass@k")
    axes[0][-1].legend(fontsize=8)
    return [_save(fig, _eval_out_dir(eval_json, out_dir) / "pass_at_k.png")]


def _eval_result(eval_json: str | os.PathLike) -> dict[str, Any]:
    """An eval's result from its results.json, or rebuilt from its samples.jsonl.gz alone (every completion scored
    again by the task's verifier: `evaluation.result_from_samples`)."""
    eval_json = Path(eval_json)
    if not eval_json.is_file():
        raise ConfigError(
            f"--eval: {str(eval_json)!r} does not exist; give the results.json or samples.jsonl.gz of `smallrl-eval`."
        )
    if eval_json.name.endswith(".jsonl.gz"):
        from trl_smallrl.evaluation import result_from_samples

        return result_from_samples(eval_json, ks=(1,))
    return json.loads(eval_json.read_text())


def _levels(result: Mapping[str, Any]) -> list[str]:
    """The levels any model of an eval result was scored at, in the order they first appear."""
    levels: list[str] = []
    for model in result["models"]:
        levels += [level for level in model["levels"] if level not in levels]
    return levels


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _eval_out_dir(eval_json: str | os.PathLike, out_dir: str | os.PathLike | None) -> Path:
    return Path(out_dir) if out_dir is not None else Path(eval_json).parent / "plots"


@entry_point
def main(argv: list[str] | None = None) -> None:
    """`smallrl-plot [RUN_DIR] [--eval results.json|samples.jsonl.gz] [--out DIR]`: write the PNG figures and list
    them."""
    parser = CommandParser(prog="smallrl-plot", description=main.__doc__)
    parser.add_argument("run_dir", nargs="?", help="a training output_dir (holds trainer_state.json)")
    parser.add_argument(
        "--eval",
        dest="eval_json",
        help="results.json or samples.jsonl.gz of smallrl-eval: adds pass_at_k.png and pass_at_1.png",
    )
    parser.add_argument("--out", help="folder for the PNG files (default: RUN_DIR/plots, else beside the eval)")
    args = parser.parse_args(argv)
    if not args.run_dir and not args.eval_json:
        raise ConfigError("run_dir: give a training output_dir, `--eval results.json` (or samples.jsonl.gz), or both.")
    written = plot_run(args.run_dir, args.out) if args.run_dir else []
    if args.eval_json:
        out = args.out or (Path(args.run_dir) / "plots" if args.run_dir else None)
        result = _eval_result(args.eval_json)  # once: a samples file is scored again as it is read
        written += plot_pass_at_k(args.eval_json, out, result=result) + plot_pass_at_1(
            args.eval_json, out, result=result
        )
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
