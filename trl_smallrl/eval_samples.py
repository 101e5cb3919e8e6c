"""The samples file of an eval, `samples.jsonl.gz`: the one home of its completions, and what it already scored.

One line a puzzle and model: the model's label, the level, the puzzle's id (a digest of its prompt, the same across
models and runs: the pairing key), the row as the task's verifier takes it, the completions, whether each is correct,
their lengths and whether each was cut at the token budget. `smallrl-eval-table` rebuilds an eval's tables from it
alone (`evaluation.result_from_samples`); the K&K tools read it too. An eval run again into the same folder takes
from it (and from `results.json`) the models it scored with the same settings and weights (`earlier_models`), and
a model it was on from its last batch (`progress_path`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trl_smallrl import atomic
from trl_smallrl.errors import ConfigError
from trl_smallrl.models import MERGED_SUBDIR

SAMPLES_FILE = "samples.jsonl.gz"


def puzzle_id(row: Mapping[str, Any]) -> str:
    """A row's identity across models and runs: a digest of its prompt (the pairing key of `samples.jsonl.gz`)."""
    return hashlib.sha1(json.dumps(row["prompt"], sort_keys=True).encode()).hexdigest()[:16]


def progress_path(output_dir: str | os.PathLike, label: str) -> Path:
    """Where an eval keeps a model's sampling batch by batch (`generation.SamplingProgress`): one file a model, so
    that an eval of other models or in another order, run into the same folder, does not replace it (a sampling of
    over two hours here)."""
    return Path(output_dir) / f"sampling_progress.{re.sub(r'[^A-Za-z0-9._-]', '_', label)}.json.gz"


def sample_records(label: str, rows: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]) -> list:
    """One line a row for `samples.jsonl.gz`: the model's label, the level, the puzzle's id, the row as the task's
    `is_correct` takes it (every column but the prompt), the completions, whether each is correct, their lengths in
    tokens and whether each was cut at the token budget."""
    return [
        {
            "model": label,
            "level": record["level"],
            "puzzle_id": puzzle_id(row),
            "row": {key: value for key, value in row.items() if key != "prompt"},
            "completions": record["texts"],
            "correct": record["correct"],
            "lengths": record["lengths"],
            "truncated": record["truncated"],
        }
        for row, record in zip(rows, records, strict=True)
    ]


def write_samples(lines: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """`lines` as gzip-compressed JSON lines, written atomically (mtime 0: the same samples give the same bytes)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
            handle.write("".join(json.dumps(line) + "\n" for line in lines).encode())

    return atomic.write_file(path, write)


def read_samples(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a `samples.jsonl.gz` (as `write_samples` wrote them), in the file's order: models in the order the
    eval ran them, each model's puzzles in row order."""
    if not os.path.isfile(path):
        raise ConfigError(f"samples: {str(path)!r} does not exist; give the samples.jsonl.gz of an eval.")
    with gzip.open(path, "rt") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def samples_by_model(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """`read_samples` per model label: the models in the order the eval ran them, each one's puzzles in row order."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for line in read_samples(path):
        by_model.setdefault(line["model"], []).append(line)
    return by_model


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.json")  # what a model folder's weights and config live in


def weights_fingerprint(name: str) -> str | None:
    """A digest of the sizes and modification times of the weight and config files under a local model folder (its
    checkpoints included: a run that trained on has another), or None for a Hub id, whose files are not ours to
    watch. It tells an eval that a model it scored before is still the same. An adapter's float32 merge
    (`models.MERGED_SUBDIR`) is left out: the eval's own sampling writes it, from the adapter files counted here."""
    folder = Path(name)
    if not folder.is_dir():
        return None
    files = sorted(
        {
            path
            for pattern in WEIGHT_FILES
            for path in folder.rglob(pattern)
            if path.is_file() and MERGED_SUBDIR not in path.relative_to(folder).parts
        }
    )
    listing = [(str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def earlier_models(output_dir: Path, spec: Mapping[str, Any]) -> dict[str, tuple[dict, list[dict]]]:
    """The models an earlier eval wrote into `output_dir` with the same settings (`spec`), by label, each with its
    lines of the samples file; nothing when the settings differ or a file is missing or unreadable."""
    try:
        earlier = json.loads((output_dir / "results.json").read_text())
        lines = samples_by_model(output_dir / SAMPLES_FILE)
    except (OSError, ValueError, ConfigError):
        return {}
    if earlier.get("spec") != json.loads(json.dumps(spec)):
        return {}
    return {model["label"]: (model, lines.get(model["label"], [])) for model in earlier.get("models", [])}
