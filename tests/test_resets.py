"""Hard resets on a real `SmallRLGRPOTrainer` with a PEFT adapter on the tiny model."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback

from trl_smallrl import grpo_rollouts
from trl_smallrl.configs import GRPOConfig, parse_reset_phases
from trl_smallrl.errors import ConfigError
from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer
from trl_smallrl.models import MERGED_BASE_FILE
from trl_smallrl.resets import STATE_FILE, HardResetCallback

PROBE_IDS = torch.tensor([[1, 17, 42, 256, 1000, 7, 99, 3]])


def length_reward(completions, **kwargs):
    """Any reward with spread inside a group, so every step has a gradient."""
    return [float(len(c[0]["content"])) / 10 for c in completions]


def _dataset(n=16):
    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"Count to {i}."}]} for i in range(n)])


def _trainer(model_dir, out, resets, max_steps=5, save_steps=100, **overrides):
    args = GRPOConfig(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=5e-2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        report_to="none",
        bf16=False,
        seed=0,
        **overrides,
    )
    trainer = SmallRLGRPOTrainer(
        model=model_dir,
        reward_funcs=length_reward,
        args=args,
        train_dataset=_dataset(),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    callback = HardResetCallback(trainer, parse_reset_phases(resets))
    return trainer, callback


def _logits(trainer):
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=PROBE_IDS).logits.float().clone()
    model.train(was_training)
    return logits


class Probe(TrainerCallback):
    """Records the policy's logits at a step's end; placed before and after the reset callback."""

    def __init__(self, trainer, at_step):
        self.trainer, self.at_step, self.logits = trainer, at_step, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            self.logits = _logits(self.trainer)


class GenerationSpy:
    """Records the sampling settings of every rollout, on whichever path generates it: `decoding.sample_tokens`
    on a CPU, transformers' `generate` elsewhere. Both still run for real."""

    def __init__(self, trainer, monkeypatch):
        self.trainer, self.calls = trainer, []
        model = trainer.accelerator.unwrap_model(trainer.model)
        original_generate, original_sample = model.generate, grpo_rollouts.sample_tokens

        def generate(*args, **kwargs):
            config = kwargs["generation_config"]
            self._record(config.temperature, config.top_p, config.max_new_tokens)
            return original_generate(*args, **kwargs)

        def sample_tokens(*args, **kwargs):
            self._record(kwargs["temperature"], kwargs["top_p"], kwargs["max_new_tokens"])
            return original_sample(*args, **kwargs)

        model.generate = generate
        monkeypatch.setattr(grpo_rollouts, "sample_tokens", sample_tokens)

    def _record(self, temperature, top_p, max_new_tokens):
        self.calls.append((self.trainer.state.global_step, temperature, top_p, max_new_tokens))


def _lora_b(trainer):
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


@pytest.fixture(scope="module")
def reset_run(tmp_path_factory, tiny_model_dir):
    """5 steps; at step 2 a reset to rank 8 on q/k/v/o with new sampling settings; checkpoints at 3 and 5."""
    out = tmp_path_factory.mktemp("resets")
    phase = {"at_step": 2, "lora_r": 8, "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
             "temperature": 0.7, "top_p": 0.9, "max_completion_length": 5, "learning_rate": 1e-2}  # fmt: skip
    trainer, callback = _trainer(tiny_model_dir, out, [phase], save_steps=3)
    before, after = Probe(trainer, 2), Probe(trainer, 2)
    at_checkpoint = Probe(trainer, 3)
    for cb in (before, callback, after, at_checkpoint):
        trainer.add_callback(cb)
    adapters = {}

    class AdapterSnapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            adapters[state.global_step] = _lora_b(trainer)

    trainer.add_callback(AdapterSnapshot())
    first_optimizer = []

    class OptimizerRef(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                first_optimizer.append(weakref.ref(trainer.optimizer.optimizer))

    trainer.add_callback(OptimizerRef())
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = GenerationSpy(trainer, monkeypatch)
        trainer.train()
    return {
        "trainer": trainer, "callback": callback, "before": before, "after": after, "spy": spy,
        "adapters": adapters, "out": out, "at_checkpoint": at_checkpoint, "phase": phase,
        "first_optimizer": first_optimizer[0],
    }  # fmt: skip


def test_the_optimizer_before_a_reset_is_freed(reset_run):
    """A reset's new optimizer replaces the old one everywhere: accelerate's lists hold only the new one and the old
    one (with its states: twice the trained weights) is collected."""
    gc.collect()
    assert reset_run["first_optimizer"]() is None
    trainer = reset_run["trainer"]
    assert trainer.accelerator._optimizers == [trainer.optimizer]
    assert all(s is trainer.lr_scheduler for s in trainer.accelerator._schedulers)


def test_reset_keeps_the_policy_and_starts_a_fresh_adapter(reset_run):
    trainer, callback = reset_run["trainer"], reset_run["callback"]
    assert callback.phase == 1 and callback.history[0]["step"] == 2
    # The adapter had learned something, yet merging it into the base changed no logit.
    assert any(b.abs().max() > 0 for b in reset_run["adapters"][1].values())
    torch.testing.assert_close(reset_run["after"].logits, reset_run["before"].logits, atol=1e-5, rtol=1e-5)
    # The new adapter has the phase's rank and targets, starts at zero and then trains.
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert model.peft_config["default"].r == 8
    assert set(model.peft_config["default"].target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    after_reset = reset_run["adapters"][2]
    assert any("k_proj" in n for n in after_reset) and all(b.abs().max() == 0 for b in after_reset.values())
    assert any(b.abs().max() > 0 for b in reset_run["adapters"][5].values())
    # A new optimizer over exactly the new adapter's parameters, at the phase's learning rate.
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert trainable == in_optimizer and len(trainable) == 2 * 4 * 2  # A and B, 4 modules, 2 layers
    assert trainer.args.learning_rate == 1e-2
    assert trainer.optimizer.param_groups[0]["initial_lr"] == 1e-2


def test_phase_overrides_reach_generation(reset_run):
    calls = reset_run["spy"].calls
    assert calls and all(call[1:] == (1.0, 1.0, 8) for call in calls if call[0] < 2)
    assert any(call[0] >= 2 for call in calls)
    assert all(call[1:] == (0.7, 0.9, 5) for call in calls if call[0] >= 2)
    completion_lengths = [e["completions/max_length"] for e in reset_run["trainer"].state.log_history[2:5]]
    assert max(completion_lengths) <= 5


def test_checkpoint_holds_phase_and_merged_weights(reset_run):
    checkpoint = reset_run["out"] / "checkpoint-3"
    assert (checkpoint / STATE_FILE).is_file() and (checkpoint / MERGED_BASE_FILE).is_file()
    assert (reset_run["out"] / "checkpoint-5" / STATE_FILE).is_file()


def test_resume_in_phase_two_restores_phase_two(reset_run, tiny_model_dir, monkeypatch):
    """The checkpoint-state protocol gives the callback its phase when `train` resumes, before the adapter loads."""
    trainer, callback = _trainer(tiny_model_dir, reset_run["out"], [reset_run["phase"]], save_steps=3)
    trainer.add_callback(callback)
    assert callback in trainer.checkpoint_states()
    spy = GenerationSpy(trainer, monkeypatch)
    resumed_at = {}

    class FirstStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            resumed_at.setdefault("step", state.global_step)
            resumed_at.setdefault("logits", _logits(trainer))
            resumed_at.setdefault("sampling", (trainer.temperature, trainer.generation_config.max_new_tokens))

    trainer.add_callback(FirstStep())
    trainer.train(resume_from_checkpoint=str(reset_run["out"] / "checkpoint-3"))
    assert resumed_at["step"] == 3  # not step 0 (TRL issue 3635)
    assert resumed_at["sampling"] == (0.7, 5)  # phase 2's settings from the first resumed step on
    # Merged base + phase-2 adapter from the checkpoint reproduce the policy of step 3 exactly.
    torch.testing.assert_close(resumed_at["logits"], reset_run["at_checkpoint"].logits, atol=1e-5, rtol=1e-5)
    assert trainer.state.global_step == 5 and callback.phase == 1
    assert spy.calls and all(call[1:] == (0.7, 0.9, 5) for call in spy.calls)
    assert trainer.accelerator.unwrap_model(trainer.model).peft_config["default"].r == 8
    # The schedule still spans the steps after the reset (3 of them), as in the uninterrupted run.
    assert trainer.lr_scheduler.lr_lambdas[0](1) == reset_run["trainer"].lr_scheduler.lr_lambdas[0](1)


def test_patience_trigger_fires_after_flat_evaluations(tiny_model_dir, tmp_path):
    trainer, callback = _trainer(tiny_model_dir, tmp_path, [{"patience": 2, "metric": "eval_reward"}])
    for value in (0.5, 0.6, 0.6):
        callback.on_evaluate(trainer.args, trainer.state, trainer.control, metrics={"eval_reward": value})
    assert callback.phase == 0
    callback.on_evaluate(trainer.args, trainer.state, trainer.control, metrics={"eval_reward": 0.55})
    assert callback.phase == 1 and "flat for 2" in callback.history[0]["trigger"]


@pytest.mark.parametrize(
    "value, message",
    [
        ('[{"temperature": 1.0}]', "exactly one trigger"),
        ('[{"at_step": 3, "lora_rank": 8}]', "unknown key 'lora_rank'"),
        ('[{"at_step": 5}, {"at_step": 3}]', "must increase"),
        ('[{"at_step": 0}]', "positive integer"),
        ('[{"patience": 2, "top_p": 1.5}]', r"top_p: 1.5 must be in \(0, 1\]"),
        ('[{"patience": 2, "mode": "up"}]', "mode"),
        ("at_step: [", "not a YAML/JSON list"),
    ],
)
def test_bad_phases_are_config_errors(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_reset_phases(value)


def test_recipe_list_and_command_line_json_parse_alike():
    as_yaml = parse_reset_phases([{"at_step": 10, "temperature": 1.1, "lora_r": 16}])
    as_json = parse_reset_phases('[{"at_step": 10, "temperature": 1.1, "lora_r": 16}]')
    assert as_yaml == as_json and as_yaml[0].lora_r == 16


DDP_WORKER = """
import hashlib, json, os, sys

import torch.distributed as dist
from trl import GRPOTrainer

from trl_smallrl.grpo import train

# Each micro-batch as TRL's training step receives it from trl-smallrl's `training_step`: which DDP wrapper runs it
# (0 the first, 1 the one the reset made) and whether that wrapper reduces gradients in its backward pass.
micro_batches, wrappers = [], []
trl_training_step = GRPOTrainer.training_step


def training_step(self, model, inputs, num_items_in_batch):
    if not any(model is w for w in wrappers):
        wrappers.append(model)
    index = next(i for i, w in enumerate(wrappers) if w is model)
    micro_batches.append([index, bool(model.require_backward_grad_sync)])
    return trl_training_step(self, model, inputs, num_items_in_batch)


GRPOTrainer.training_step = training_step
out, model = sys.argv[1], sys.argv[2]
argv = ["--model_name_or_path", model, "--output_dir", out, "--task", "kk", "--levels", "2", "--train_size", "8",
        "--curriculum", "off", "--reward_funcs", "format", "--entropy_coef", "0.5",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
        "--num_generations", "4",
        "--max_completion_length", "8", "--learning_rate", "5e-2", "--bf16", "false", "--report_to", "none",
        "--save_strategy", "no", "--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
        "--resets", '[{"at_step": 1, "lora_r": 8, "lora_target_modules": ["q_proj", "k_proj"], "temperature": 0.5}]']
trainer = train(argv)
model = trainer.accelerator.unwrap_model(trainer.model)
params = {n: p.detach() for n, p in model.named_parameters()}
digest = hashlib.sha256(b"".join(params[n].numpy().tobytes() for n in sorted(params))).hexdigest()
lora_b = [float(p.abs().max()) for n, p in params.items() if "lora_B" in n]
resets = [cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "HardResetCallback"][0]
with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as handle:
    json.dump({"digest": digest, "phase": resets.phase, "r": model.peft_config["default"].r,
               "lora_b_max": max(lora_b), "temperature": trainer.generation_config.temperature,
               "step": trainer.state.global_step, "micro_batches": micro_batches}, handle)
"""


@pytest.mark.slow
def test_reset_under_ddp_keeps_ranks_identical(tmp_path, tiny_model_dir):
    import json
    import os
    import subprocess
    import sys

    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*command, str(worker), str(tmp_path / "out"), tiny_model_dir], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1  # same phase, same adapter, bit-identical weights after the reset and a step more
    assert rank0["phase"] == 1 and rank0["r"] == 8 and rank0["temperature"] == 0.5 and rank0["step"] == 2
    # Two micro-batches a step: the first accumulates without reducing (the training loop's `no_sync`), the last
    # reduces. After the reset at step 1 the loop still holds the old wrapper and gives it the `no_sync`; the new
    # wrapper, which runs step 2, must get it too (`ResetHooks.training_step`), or it reduces every micro-batch.
    assert rank0["micro_batches"] == [[0, False], [0, True], [1, False], [1, True]]
    # The new adapter trained (a random model gets no reward spread: the entropy bonus gives the gradient), its
    # gradients reduced across both ranks by the new DDP wrapper: different local batches, identical weights.
    assert rank0["lora_b_max"] > 0
    # The final adapter sits on merged weights: both are in the output folder, which resolves to one model.
    assert (tmp_path / "out" / MERGED_BASE_FILE).is_file()


def test_output_folder_after_resets_resolves_to_the_trained_policy(reset_run):
    from transformers import AutoModelForCausalLM

    from trl_smallrl.models import resolve_model

    trainer, out = reset_run["trainer"], reset_run["out"]
    trainer.save_model(str(out))  # the adapter of the last phase; on_train_end left the merged base beside it
    assert (out / MERGED_BASE_FILE).is_file()
    merged = AutoModelForCausalLM.from_pretrained(resolve_model(str(out))).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=PROBE_IDS).logits, _logits(trainer), atol=1e-5, rtol=1e-5)


def test_reset_temperature_reaches_the_training_log_probs(reset_run):
    """TRL fixes the temperature of its fused LM head when the trainer is built; after the reset to T = 0.7 the
    log-probs the loss uses must be log_softmax(logits / 0.7), not / 1.0."""
    trainer = reset_run["trainer"]
    assert trainer.temperature == 0.7
    model = trainer.model
    was_training = model.training
    model.eval()
    mask = torch.ones_like(PROBE_IDS)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(model, PROBE_IDS, mask, PROBE_IDS.size(1) - 1)
        logits = model(input_ids=PROBE_IDS).logits[:, :-1].float()
    model.train(was_training)
    for temperature, close in ((0.7, True), (1.0, False)):
        expected = torch.log_softmax(logits / temperature, dim=-1).gather(-1, PROBE_IDS[:, 1:, None]).squeeze(-1)
        assert torch.allclose(logps, expected, atol=1e-4) == close, temperature


def test_set_sampling_reaches_vllm_and_the_fused_head(tiny_model_dir, tmp_path):
    """With `use_vllm`, TRL's VLLMGeneration reads temperature, top_p and max_completion_length from its own
    attributes at each call; a reset must change those too. vLLM needs a GPU, so its object is stood in for by
    one with the same attributes."""
    from types import SimpleNamespace

    from trl_smallrl.grpo_resets import _temperature_cell

    trainer, _ = _trainer(tiny_model_dir, tmp_path / "vllm", [{"at_step": 1, "temperature": 1.3}])
    trainer.vllm_generation = SimpleNamespace(temperature=1.0, top_p=1.0, max_completion_length=8)
    trainer.set_sampling(temperature=1.3, top_p=0.8, max_completion_length=6)
    assert vars(trainer.vllm_generation) == {"temperature": 1.3, "top_p": 0.8, "max_completion_length": 6}
    assert (trainer.temperature, trainer.top_p, trainer.max_completion_length) == (1.3, 0.8, 6)
    assert trainer.generation_config.max_new_tokens == 6
    model = trainer.accelerator.unwrap_model(trainer.model).get_base_model()
    assert _temperature_cell(model).cell_contents == 1.3
