"""Recipe parsing: a YAML recipe plus command-line overrides, into TRL's config dataclasses and ours.

TRL's own `TrlParser` does the parsing; this module adds the one-line errors a user needs (which key, which
file, what was meant), and the copy of the resolved recipe that is saved beside each run with secrets removed
(`smallrl_config.json`), so that a run says exactly how it was made.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from trl import TrlParser

from trl_smallrl import atomic
from trl_smallrl.errors import ConfigError
from trl_smallrl.precision import use_cpu_default
from trl_smallrl.redaction import redact_secrets

RESOLVED_CONFIG_FILE = "smallrl_config.json"
# Keys whose value is a mapping: YAML in a recipe, YAML or JSON text on a command line (TRL reads its own such keys
# only as JSON that starts with "{", and our dataclasses not at all), read by `mapping_value` once a recipe is parsed.
MAPPING_KEYS = ("chat_template_kwargs",)


def _field_names(dataclass_types: Sequence[type]) -> list[str]:
    return sorted({f.name for cls in dataclass_types for f in dataclasses.fields(cls)})


def parse_recipe(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Parse `--config recipe.yaml` and command-line overrides into instances of `dataclass_types`.

    Unknown keys, in the recipe or on the command line, raise `ConfigError` naming the key, the file and
    the closest known key, instead of TRL's generic message.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise ConfigError(
                "--config: missing the recipe path; use `--config recipes/<model>/<method>/<name>.yaml`."
            )
        recipe = Path(argv[index + 1])
        if not recipe.is_file():
            raise ConfigError(f"--config: the recipe {str(recipe)!r} does not exist; see the recipes/ folder.")
    else:
        recipe = None

    recipe_values = {} if recipe is None else read_recipe(recipe)
    if recipe is not None:
        check_recipe_values(recipe, recipe_values, dataclass_types)
    known = _field_names(dataclass_types)
    parser = TrlParser(dataclass_types)
    if "use_cpu" in known:  # a training run: the machine decides where it trains unless the recipe says
        parser.set_defaults(use_cpu=use_cpu_default(_asks_for_the_cpu(recipe_values, argv)))
    try:
        *parsed, config_rest, cli_rest = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except SystemExit as err:
        if err.code in (0, None):  # `--help` printed the options: a normal exit, not a mistake
            raise
        # argparse already printed what was wrong with a command-line value
        raise ConfigError("command line: see the message above; `--help` lists every option.") from err
    except ValueError as err:  # a config's own validation (TRL's or ours) rejected a combination
        raise ConfigError(f"{f'recipe {recipe}' if recipe else 'command line'}: {err}") from err
    for source, rest in ((f"recipe {recipe}", config_rest), ("command line", cli_rest)):
        keys = [item[2:].split("=")[0] for item in rest if item.startswith("--")]
        if keys or rest:
            key = keys[0] if keys else rest[0]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else " `--help` lists every option."
            raise ConfigError(f"{source}: unknown key {key!r}.{hint}")
    for config in parsed:
        for name in MAPPING_KEYS:
            if hasattr(config, name):
                setattr(config, name, mapping_value(getattr(config, name), name))
    return tuple(parsed)


def mapping_value(value, name: str) -> dict | None:
    """The value of a mapping key (`MAPPING_KEYS`; also the teacher's `--chat-template-kwargs`) as a dict, None when
    unset: a recipe's YAML mapping, or its YAML or JSON text; anything else is one `ConfigError` naming `name`."""
    try:
        parsed = yaml.safe_load(value) if isinstance(value, str) else value
    except yaml.YAMLError:
        parsed = value
    if parsed is not None and not (isinstance(parsed, Mapping) and all(isinstance(key, str) for key in parsed)):
        example = "'{\"enable_thinking\": false}'"
        raise ConfigError(f"{name}: {value!r} is not a mapping; write it as YAML or JSON, e.g. {example}.")
    return None if parsed is None else dict(parsed)


def _asks_for_the_cpu(recipe_values: dict, argv: Sequence[str]) -> bool:
    """Whether the recipe or the command line sets `use_cpu: true` (the command line wins)."""
    asked = str(recipe_values.get("use_cpu")).lower() in ("true", "1", "yes")
    for index, item in enumerate(argv):
        key, _, value = item.partition("=")
        if key in ("--use_cpu", "--use-cpu"):
            if not value:
                following = argv[index + 1] if index + 1 < len(argv) else ""
                value = "true" if not following or following.startswith("--") else following
            asked = value.lower() in ("true", "1", "yes")
    return asked


def read_recipe(path: Path) -> dict:
    """The recipe's YAML mapping; a file that is not YAML, or not a mapping, is one `ConfigError` with the line."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"recipe {path}: not valid YAML{where} ({problem}); check the indentation and quotes."
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config: cannot read the recipe {str(path)!r} ({err}).") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"recipe {path}: must be a YAML mapping of `key: value` lines, not {type(loaded).__name__}.")
    return loaded


def _numeric_kinds(hint) -> tuple[set, bool] | None:
    """For a field whose type is numbers or booleans only (optionally None, or a list of them): the kinds
    (int, float, bool) and whether a list is meant; None for any other type, left to the config's checks."""
    args = [
        a for a in (typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint])
    ]
    args = [a for a in args if a is not type(None)]
    is_list = len(args) == 1 and typing.get_origin(args[0]) is list
    if is_list:
        args = list(typing.get_args(args[0]))
    if not args or not all(a in (int, float, bool) for a in args):
        return None
    return set(args), is_list


def _fits(value, kinds: set) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int):
        return bool(kinds & {int, float})
    if isinstance(value, float):
        return float in kinds and not math.isnan(value)
    if isinstance(value, str):  # YAML reads 1e-4 as a string; argparse converts it as from a command line
        text = value.strip().lower()
        if bool in kinds and text in ("true", "false", "yes", "no"):
            return True
        try:
            number = float(text)
        except ValueError:
            return False
        return not math.isnan(number) and (
            float in kinds or (int in kinds and number.is_integer() and "." not in text)
        )
    return False


_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false"}


def check_recipe_values(path: Path, recipe_values: dict, dataclass_types: Sequence[type]) -> None:
    """A recipe value (`recipe_values`, read from `path`) of the wrong type (`max_steps: [1, 2]`, `learning_rate: fast`, `beta: .nan`) is one
    `ConfigError` naming the recipe, the key and the value, before TRL or transformers trip over it later."""
    hints: dict = {}
    for cls in dataclass_types:
        try:
            hints.update(typing.get_type_hints(cls))
        except Exception:  # a type hint that does not resolve: that class's fields are left to its own checks
            continue
    for key, value in recipe_values.items():
        kinds = _numeric_kinds(hints.get(key))
        if kinds is None or value is None:
            continue
        allowed, is_list = kinds
        values = value if is_list and isinstance(value, list) else [value]
        if all(_fits(v, allowed) for v in values):
            continue
        expected = " or ".join(sorted(_KIND_WORDS[k] for k in allowed))
        expected = f"a list of {expected.replace('an ', '').replace('a ', '')}s" if is_list else expected
        raise ConfigError(f"recipe {path}: {key}: {value!r} is not {expected}; fix the value in the recipe.")


def resolved_config(*configs) -> dict:
    """One flat mapping of every field of the given dataclasses, as JSON-safe values, secrets removed."""
    merged: dict = {}
    for config in configs:
        for config_field in dataclasses.fields(config):
            value = getattr(config, config_field.name)
            merged[config_field.name] = json.loads(json.dumps(value, default=str))
    return redact_secrets(merged)


def save_resolved_config(output_dir: str | os.PathLike, *configs, name: str = RESOLVED_CONFIG_FILE) -> Path:
    """Write the resolved recipe beside the run (atomically), so a run says exactly how it was made."""
    return atomic.write_json(Path(output_dir) / name, resolved_config(*configs), indent=2, sort_keys=True)
