"""What a ProRL hard reset (`resets.HardResetCallback`) needs from the GRPO trainer, between two steps.

- `set_sampling`: the new phase's sampling settings everywhere TRL reads them, the temperature of the training
  log-probs included: TRL fixes it in the closure of its fused LM head (`trl.trainer.utils.add_fused_lm_head`) when
  the trainer is built, so the cell is rewritten (`_temperature_cell`; tests/test_trl_hooks.py checks that this TRL
  still keeps it there, and `check_temperature_can_change` refuses a reset schedule at launch where it does not);
- `restart_optimization`: a new optimizer and schedule (and, for a new adapter under DDP, a new distributed
  wrapper), the old ones taken out of accelerate's lists so their memory is freed, the callbacks pointed at the new
  ones, as `Trainer.train` does when it creates them. The training loop keeps its own reference to the old wrapper:
  `training_step` swaps in the current one.
"""

from __future__ import annotations

from trl_smallrl.adapters import plain_model
from trl_smallrl.errors import ConfigError
from trl_smallrl.rewards import follow_completion_budget


def _temperature_cell(model):
    """The closure cell holding the temperature of TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`),
    which replaced `model.forward` and which accelerate keeps as `_original_forward` when it wraps the forward
    for mixed precision. Changing the cell changes the temperature of every later log-prob computation."""
    forward = getattr(model, "_original_forward", None) or model.forward
    function = getattr(forward, "__func__", forward)
    names = getattr(getattr(function, "__code__", None), "co_freevars", ())
    if "temperature" not in names:
        raise ConfigError(
            "resets: a phase changes `temperature`, but this TRL version's fused LM head does not keep its temperature "
            "where trl-smallrl can change it; drop `temperature` from the reset phases."
        )
    return function.__closure__[names.index("temperature")]


class ResetHooks:
    """Mixin for `GRPOTrainer`: the hooks a hard reset calls (module docstring), and the step that follows it."""

    def training_step(self, model, inputs, num_items_in_batch):
        # `model` is the training loop's reference to `model_wrapped`, taken once before the loop; after a hard
        # reset `restart_optimization` has re-wrapped the model for its new adapter, so take the current wrapper
        # (the same object when there was no reset). The loop's `no_sync` (a micro-batch before the last of an
        # accumulation window) went to the old DDP wrapper: its flag says so, and the current wrapper gets it too.
        current = self.model_wrapped
        if current is not model and not getattr(model, "require_backward_grad_sync", True):
            with self.accelerator.no_sync(current):
                return super().training_step(current, inputs, num_items_in_batch)
        return super().training_step(current, inputs, num_items_in_batch)

    def set_sampling(
        self, temperature: float | None = None, top_p: float | None = None, max_completion_length: int | None = None
    ) -> None:
        """Change how the next generations sample (None keeps a setting), everywhere TRL reads it: the config,
        the trainer, transformers' generation config, vLLM's sampler and, for the temperature, the fused LM head
        that computes the training log-probs, whose temperature TRL fixes when the trainer is built (left alone,
        the loss would keep scoring completions at the old temperature)."""
        generation_keys = {"temperature": "temperature", "top_p": "top_p", "max_completion_length": "max_new_tokens"}
        values = {"temperature": temperature, "top_p": top_p, "max_completion_length": max_completion_length}
        for key, value in values.items():
            if value is None:
                continue
            setattr(self.args, key, value)
            setattr(self, key, value)  # GRPOTrainer reads self.temperature, self.top_p, ...
            if getattr(self, "generation_config", None) is not None:
                setattr(self.generation_config, generation_keys[key], value)
            if getattr(self, "generation_kwargs", None) is not None:
                self.generation_kwargs[generation_keys[key]] = value
            vllm = getattr(self, "vllm_generation", None)
            if vllm is not None and hasattr(vllm, key):
                setattr(vllm, key, value)
        if max_completion_length is not None:
            follow_completion_budget(self.reward_funcs, max_completion_length)
        if temperature is not None:
            for model in self._fused_head_models():
                _temperature_cell(model).cell_contents = float(temperature)

    def check_temperature_can_change(self) -> None:
        """Raise `ConfigError` now if `set_sampling(temperature=...)` could not reach the fused LM head."""
        for model in self._fused_head_models():
            _temperature_cell(model)

    def _fused_head_models(self) -> list:
        """The models TRL gave a fused LM head: the policy (its base model under PEFT) and the reference."""
        models = [plain_model(self.accelerator, self.model)]
        if getattr(self, "ref_model", None) is not None:
            models.append(self.accelerator.unwrap_model(self.ref_model))
        return models

    def restart_optimization(self, remaining_steps: int, new_parameters: bool) -> None:
        """Start optimizing anew between two steps: a new optimizer and learning-rate schedule over
        `remaining_steps` (at `args.learning_rate`), with the callback handler pointed at them as `Trainer.train`
        does when it creates them. `new_parameters` (a new adapter): under DDP the model also gets a new wrapper,
        since the old one's reducer knows only the old parameters.
        """
        accelerator = self.accelerator
        # accelerate keeps every prepared model, optimizer and scheduler in its own lists: take the old ones out, or
        # the old optimizer's states (twice the trained weights in float32) stay alive for the rest of the run.
        accelerator._optimizers = [o for o in accelerator._optimizers if o is not self.optimizer]
        accelerator._schedulers = [s for s in accelerator._schedulers if s is not self.lr_scheduler]
        unwrapped = accelerator.unwrap_model(self.model)
        if new_parameters and self.model_wrapped is not unwrapped:
            accelerator._models = [m for m in accelerator._models if m is not self.model_wrapped]
            self.model_wrapped = accelerator.prepare_model(unwrapped)
        self.optimizer = None
        self.lr_scheduler = None
        self.create_optimizer()
        self.optimizer = self.accelerator.prepare_optimizer(self.optimizer)
        self.create_scheduler(num_training_steps=remaining_steps, optimizer=self.optimizer)
        for attr in ("model", "optimizer", "lr_scheduler"):
            setattr(self.callback_handler, attr, getattr(self, attr))
