"""Model resolution: embedded alias, local folders, Hub ids, and the errors for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from trl_smallrl.embedded import EMBEDDED_MODELS
from trl_smallrl.errors import ConfigError
from trl_smallrl.models import main, public_model_id, resolve_model


def test_embedded_alias_is_a_loadable_folder_with_chat_template(embedded_model_dir, tokenizer):
    folder = Path(embedded_model_dir)
    assert (folder / "config.json").is_file()
    assert list(folder.glob("*.safetensors"))
    assert (folder / "generation_config.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"


def test_alias_is_case_insensitive_and_reuses_the_cache(embedded_model_dir):
    before = Path(embedded_model_dir, "config.json").stat().st_mtime_ns
    assert resolve_model("SmolLM2-135M-Instruct") == embedded_model_dir
    assert Path(embedded_model_dir, "config.json").stat().st_mtime_ns == before


def test_local_folder_and_hub_id(tiny_model_dir, monkeypatch):
    assert resolve_model(tiny_model_dir) == str(Path(tiny_model_dir).resolve())
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("smollm2-135m-instruc", "Did you mean 'smollm2-135m-instruct'"),
        ("./no/such/model", "does not exist"),
        ("outputs/run/checkpoint-3", "does not exist"),
        ("", "no model given"),
    ],
)
def test_bad_model_names_get_one_line_errors(name, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve_model(name)
    assert "\n" not in str(err.value)


def test_uncached_hub_id_offline_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="not in the local Hub cache.*smollm2-135m-instruct"):
        resolve_model("someone/not-downloaded-model")


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ConfigError, match="without config.json"):
        resolve_model(str(tmp_path))


def test_hub_id_of_alias():
    assert public_model_id("smollm2-135m-instruct") == EMBEDDED_MODELS["smollm2-135m-instruct"].hub_id
    assert public_model_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"


def test_cli_prints_path_and_exits_2_on_error(embedded_model_dir, capsys):
    main(["smollm2-135m-instruct"])
    assert capsys.readouterr().out.strip() == embedded_model_dir
    with pytest.raises(SystemExit) as exit_info:
        main(["nope"])
    assert exit_info.value.code == 2
    assert "Valid values: smollm2-135m-instruct" in capsys.readouterr().err


@pytest.mark.slow
def test_real_embedded_model_generates_text(embedded_model_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text


def test_a_dora_adapter_folder_is_refused_not_merged_wrongly(tiny_model_dir, tmp_path):
    """The float32 merge adds the low-rank product; DoRA's magnitude would be left out silently, so such an adapter
    is refused by name, with the fix."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    dora.save_pretrained(tmp_path / "dora")
    with pytest.raises(ConfigError, match="use_dora / lora_bias: .*use_dora: false") as err:
        resolve_model(str(tmp_path / "dora"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "dora" / "merged-float32" / "config.json").exists()
