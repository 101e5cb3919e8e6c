"""Recipe parsing: YAML plus overrides, one-line errors for unknown keys, secrets never saved."""

from __future__ import annotations

import json

import pytest
import yaml
from trl import ModelConfig

from trl_smallrl.configs import DataArguments, GRPOConfig
from trl_smallrl.errors import ConfigError
from trl_smallrl.recipe import parse_recipe, save_resolved_config

TYPES = (DataArguments, GRPOConfig, ModelConfig)


def write_recipe(tmp_path, **keys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), **keys}))
    return str(path)


def test_recipe_values_and_command_line_overrides(tmp_path):
    recipe = write_recipe(tmp_path, learning_rate=1e-5, levels=[2, 3], model_name_or_path="smollm2-135m-instruct")
    data, training, model = parse_recipe(TYPES, ["--config", recipe, "--learning_rate", "3e-4"])
    assert training.learning_rate == 3e-4
    assert data.levels == [2, 3]
    assert model.model_name_or_path == "smollm2-135m-instruct"


def test_cpu_machine_runs_bf16_recipes_on_cpu(tmp_path):
    import torch

    _, training, _ = parse_recipe(TYPES, ["--config", write_recipe(tmp_path)])
    assert training.use_cpu == (not torch.cuda.is_available())


@pytest.mark.parametrize(
    ("recipe_keys", "extra", "message"),
    [
        (
            {"lerning_rate": 1e-5},
            [],
            r"recipe .*recipe.yaml: unknown key 'lerning_rate'. Did you mean 'learning_rate'\?",
        ),
        (
            {},
            ["--num_generashions", "4"],
            r"command line: unknown key 'num_generashions'. Did you mean 'num_generations'",
        ),
        ({"num_generations": 3}, [], r"generation_batch_size \(8\) must be divisible by num_generations \(3\)"),
    ],
)
def test_mistakes_get_one_line_errors(tmp_path, recipe_keys, extra, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_recipe(TYPES, ["--config", write_recipe(tmp_path, **recipe_keys), *extra])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["sft", "eval"])
def test_sft_and_eval_recipes_refuse_curriculum_keys(tmp_path, kind):
    """The curriculum is a GRPO run's: an SFT or eval recipe that sets it would be silently ignored."""
    from trl_smallrl.configs import EvalArguments, GRPOScriptArguments, SFTConfig, SFTScriptArguments

    types = {"sft": (SFTScriptArguments, SFTConfig, ModelConfig), "eval": (DataArguments, EvalArguments)}[kind]
    with pytest.raises(ConfigError, match=r"unknown key 'curriculum_window'") as err:
        parse_recipe(types, ["--config", write_recipe(tmp_path, curriculum_window=16)])
    assert "\n" not in str(err.value)
    script = parse_recipe(
        (GRPOScriptArguments, GRPOConfig, ModelConfig), ["--config", write_recipe(tmp_path, curriculum_window=16)]
    )[0]
    assert script.curriculum_window == 16


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_recipe(TYPES, ["--config", str(tmp_path / "nope.yaml")])


def test_saved_config_has_no_secrets(tmp_path):
    token = "hf_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3"
    recipe = write_recipe(tmp_path, hub_token=token, run_name=f"run-{token}")
    configs = parse_recipe(TYPES, ["--config", recipe])
    path = save_resolved_config(tmp_path / "out", *configs)
    text = path.read_text()
    assert token not in text
    saved = json.loads(text)
    assert saved["hub_token"] == "<redacted>"
    assert saved["run_name"] == "run-<redacted>"
    assert saved["levels"] == [2, 3, 4, 5, 6]
    assert saved["average_tokens_across_devices"] is True  # a setting that mentions tokens is no secret
