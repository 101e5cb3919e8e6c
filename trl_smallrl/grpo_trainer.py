"""`SmallRLGRPOTrainer`: TRL's `GRPOTrainer` with the few hooks that small reasoning models need.

Everything TRL already does is switched on from the recipe (`loss_type: dapo`, `epsilon_high`,
`mask_truncated_completions`, `scale_rewards`, `beta: 0`, ...). The subclass adds only what TRL lacks:

- dynamic sampling (DAPO; TRL issue 3708 is open): a group whose answers are all right or all wrong teaches
  nothing about correctness, whatever length or format terms add to its rewards (which would otherwise turn
  "wrong but longer" into a full-size advantage). `mask` removes those groups from the loss and from its
  normalization; `resample` replaces them with groups of fresh prompts (at most `dynamic_sampling_max_tries`
  extra generation rounds). Rows without a task verifier fall back to TRL's rule: all rewards equal;
- the curriculum: prompts come from a `CurriculumSampler`, per-prompt correctness (the task verifier, gathered
  from every rank) feeds the curriculum once per generation, and its state lives in each checkpoint;
- reasoning-health metrics in every log line and a NaN/inf guard (`monitors`);
- what a ProRL hard reset (`resets`) needs from the trainer: `restart_optimization` (a new distributed wrapper
  for a new adapter, a new optimizer and schedule, the callbacks pointed at them) and `set_sampling` (the new
  phase's sampling settings, the temperature of the training log-probs included).

A step, in the order it runs our hooks (TRL's methods of the same names run inside them; tests/test_trl_hooks.py
pins their signatures to the installed TRL):

1. `training_step`: the current model wrapper (a reset may have replaced it), with the loop's `no_sync`;
2. `_prepare_inputs`: when a new generation batch is due, TRL calls
   `_generate_and_score_completions`, which (in TRL) samples through `_generate_single_turn` (ours on a CPU:
   `generation.sample_tokens`, the LoRA update added into the base), scores through `_calculate_rewards` (ours
   adds the template's `<think>` prefill, the non-finite guard, the health table and correctness, then advances
   the curriculum) and computes advantages; ours then applies dynamic sampling (mask, or resample from the
   curriculum's draw). Back in `_prepare_inputs`, TRL shuffles and cuts the batch; ours re-cuts whole groups;
3. `compute_loss` (a non-finite loss on any rank, before the backward pass) -> `_compute_loss` (normalization
   without masked groups) -> `_get_per_token_logps_and_entropies` (on a CPU, each group's prompt run once);
4. `log` (curriculum metrics, levels agreeing across ranks).

Outside the step: `_get_train_sampler` (the curriculum's sampler, when the dataloader is built), and the checkpoint
mixin (`checkpoints.AtomicCheckpointMixin`: checkpoints appear whole, with each `CheckpointState`: the curriculum
here, the reset phase in `resets`).
"""

from __future__ import annotations

import logging

import torch
from peft import PeftModel
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import split_tensor_dict

from trl_smallrl.adapters import adapter_added_to_base
from trl_smallrl.checkpoints import AtomicCheckpointMixin
from trl_smallrl.completions import completion_text, template_prefill, with_prefill
from trl_smallrl.configs import ROW_MEAN_LOSSES
from trl_smallrl.curriculum import CurriculumSampler, per_prompt, rows_by_level
from trl_smallrl.errors import ConfigError
from trl_smallrl.generation import DECODER_FAMILIES, sample_tokens, supports_sample_tokens
from trl_smallrl.monitors import NonFiniteError, completion_health, health_metrics
from trl_smallrl.rewards import correct_rows, follow_completion_budget
from trl_smallrl.shared_prefix import prefixes_shared

logger = logging.getLogger(__name__)

KEEP_KEY = "dynamic_sampling_keep"  # per row: 1 where its group trains, 0 where `mask` removed it
SCALE_KEY = "dynamic_sampling_scale"  # per row, one value: all rows / kept rows of the whole generation batch


def _pad_width(tensor: torch.Tensor, width: int, left: bool, value) -> torch.Tensor:
    """Pad a (B, T) tensor to (B, width) on the left or right."""
    missing = width - tensor.size(1)
    if missing <= 0:
        return tensor
    pad = tensor.new_full((tensor.size(0), missing), value)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)


def replace_rows(dst: dict, src: dict, dst_rows: list[int], src_rows: list[int], pad_token_id: int) -> dict:
    """Copy rows of one scored generation batch into another, re-padding (prompts left, completions right)."""
    out = dict(dst)
    batch = dst["completion_ids"].size(0)
    for key, value in dst.items():
        if not (isinstance(value, torch.Tensor) and value.dim() >= 1 and value.size(0) == batch):
            continue
        other = src[key]
        if value.dim() == 2:
            width = max(value.size(1), other.size(1))
            left = key.startswith("prompt")
            fill = pad_token_id if key in ("prompt_ids", "completion_ids") else 0
            value, other = _pad_width(value, width, left, fill), _pad_width(other, width, left, fill)
        value = value.clone()
        value[dst_rows] = other[src_rows]
        out[key] = value
    return out


def whole_groups(batches: list[dict]) -> list[dict]:
    """The same rows cut into as many micro-batches again, with the rows of one prompt next to each other (TRL
    shuffles a generation batch before it cuts it), so that a micro-batch holds whole groups when the group size
    divides its size. Scalars (`num_items_in_batch`) are the generation batch's and stay as they are."""
    prompts = torch.cat([torch.cat([batch["prompt_ids"], batch["prompt_mask"]], dim=1) for batch in batches])
    order = torch.sort(torch.unique(prompts, dim=0, return_inverse=True)[1], stable=True).indices
    merged = {}
    for key, value in batches[0].items():
        if isinstance(value, list):
            items = [item for batch in batches for item in batch[key]]
            merged[key] = [items[i] for i in order.tolist()]
        elif isinstance(value, torch.Tensor) and value.dim() >= 1:
            merged[key] = torch.cat([batch[key] for batch in batches])[order.to(value.device)]
        else:
            merged[key] = value
    return split_tensor_dict(merged, len(batches))


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


class SmallRLGRPOTrainer(AtomicCheckpointMixin, GRPOTrainer):
    """TRL's `GRPOTrainer` plus dynamic sampling, curriculum wiring, health metrics and guards (module docstring).

    `curriculum`: a `trl_smallrl.curriculum.Curriculum`, or None for TRL's own sampler.
    """

    def __init__(self, *args, curriculum=None, **kwargs):
        self.curriculum = curriculum
        self._rows_by_level: dict[int, list[int]] | None = None  # the training rows at each level, for resampling
        self._last_rewards: torch.Tensor | None = None
        self._last_correct: torch.Tensor | None = None  # per completion, all ranks: 1.0 right, 0.0 wrong, NaN unknown
        super().__init__(*args, **kwargs)
        # A template that ends the prompt with `<think>` (R1-Distill): rewards and monitors read it back in front.
        self.think_prefill = template_prefill(self._tokenizer, self.chat_template_kwargs)

    # ----- curriculum -----
    def _get_train_sampler(self, dataset=None):
        if self.curriculum is None:
            return super()._get_train_sampler(dataset)
        dataset = self.train_dataset if dataset is None else dataset
        return CurriculumSampler(
            row_levels=dataset["level"],
            curriculum=self.curriculum,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
        )

    def own_checkpoint_states(self) -> list:
        return [] if self.curriculum is None else [self.curriculum]  # saved and restored with every checkpoint

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.curriculum is not None and self.model.training:
            logs.update(self.curriculum.metrics())
            # Every rank calls log: check that all ranks draw from the same level (a desync would mix groups).
            level = torch.tensor([float(self.curriculum.current_level)], device=self.accelerator.device)
            levels = self.accelerator.gather(level)
            logs["curriculum/levels_agree"] = float(bool((levels == levels[0]).all()))
            if not logs["curriculum/levels_agree"]:
                logger.warning("curriculum levels differ across ranks: %s", levels.tolist())
        super().log(logs, start_time)

    # ----- rewards: guard, health, curriculum statistics -----
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        completions = [with_prefill(c, self.think_prefill) for c in completions]
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        bad = ~torch.isfinite(rewards_per_func)
        if bad.any():  # gathered: every rank sees it and stops at the same point
            column = int(bad.any(dim=0).nonzero()[0])
            value = rewards_per_func[bad[:, column], column][0].item()
            raise NonFiniteError(
                f"step {self.state.global_step + 1}: reward {self.reward_func_names[column]!r} returned {value}; "
                f"stopping before the update. The last good checkpoint is in {self.args.output_dir}."
            )
        self._last_rewards = rewards_per_func
        table = self._record_health(inputs, completions, completion_ids_list)
        if self.curriculum is not None and self.model.training:
            self._advance_curriculum(table)
        return rewards_per_func

    def _record_health(self, inputs, completions, completion_ids_list) -> torch.Tensor:
        """Health metrics of this generation batch; returns their table, gathered from all ranks (`HEALTH_COLUMNS`),
        and keeps its correctness column for dynamic sampling."""
        mode = "train" if self.model.training else "eval"
        texts = [completion_text(c) for c in completions]
        rows = [{k: v for k, v in x.items() if k != "prompt"} for x in inputs]
        correct = correct_rows(texts, rows) if rows and "task" in rows[0] else [float("nan")] * len(texts)
        eos_and_pad = {*self.eos_token_ids, self._tokenizer.pad_token_id}
        table = []
        for text, row, score, ids in zip(texts, rows, correct, completion_ids_list):
            think_tokens, without_reasoning, format_ok = completion_health(text, self._tokenizer)
            truncated = not ids or ids[-1] not in eos_and_pad
            table.append([row.get("level", -1), score, think_tokens, without_reasoning, format_ok, truncated])
        table = self.accelerator.gather(torch.tensor(table, dtype=torch.float32, device=self.accelerator.device))
        self._last_correct = table[:, 1]
        for name, value in health_metrics(table).items():
            self._metrics[mode][name].append(value)
        return table

    def _advance_curriculum(self, table: torch.Tensor) -> None:
        """Give the curriculum each prompt's accuracy (all ranks) in this generation batch; it may move up a level."""
        if not torch.isnan(table[:, 1]).any():
            levels, accuracy = per_prompt(table[:, 0].tolist(), table[:, 1].tolist(), self.num_generations)
            self.curriculum.record_gathered(levels, accuracy, step=self.state.global_step)

    # ----- dynamic sampling -----
    def _uninformative_groups(self) -> torch.Tensor:
        """One bool per group of the last scored batch (all ranks): True where the group teaches nothing.

        By correctness where the rows have a task verifier (DAPO: keep a group when 0 < right < G): all right or
        all wrong is uninformative, whatever the length or format terms add to the rewards. Without a verifier,
        TRL's `frac_reward_zero_std` rule: the weighted sum of the rewards has a std close to 0."""
        correct = self._last_correct
        if correct is not None and correct.numel() and not torch.isnan(correct).any():
            right = correct.view(-1, self.num_generations).sum(dim=1)
            return (right == 0) | (right == self.num_generations)
        weights = self.reward_weights.to(self._last_rewards.device)
        rewards = (self._last_rewards * weights.unsqueeze(0)).nansum(dim=1).view(-1, self.num_generations)
        std = rewards.std(dim=1) if self.num_generations > 1 else torch.zeros(rewards.size(0))
        return torch.isclose(std, torch.zeros_like(std))

    def _local_groups(self, flags: torch.Tensor, batch: int) -> torch.Tensor:
        """Per local row: the flag of its group (groups run over the gathered batch, rank after rank)."""
        start = self.accelerator.process_index * batch
        return flags[torch.arange(start, start + batch, device=flags.device) // self.num_generations]

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output
        metrics = self._metrics["train"]
        zero = self._uninformative_groups()
        if self.args.dynamic_sampling == "none":
            metrics["informative_groups"].append(float((~zero).sum().item()))
            return output
        metrics["dynamic_sampling/uninformative_before"].append(zero.float().mean().item())
        if self.args.dynamic_sampling == "resample":
            output, remaining, tries = self._resample(inputs, output, zero)
            metrics["dynamic_sampling/tries"].append(float(tries))
            metrics["dynamic_sampling/uninformative_after"].append(remaining)
            metrics["informative_groups"].append(round((1.0 - remaining) * zero.numel()))
            return output
        keep = (~self._local_groups(zero, len(inputs))).to(output["completion_mask"].dtype)
        output["completion_mask"] = output["completion_mask"] * keep.unsqueeze(1)
        output["num_items_in_batch"] = self.accelerator.gather(output["completion_mask"].sum()).sum()
        output[KEEP_KEY] = keep
        # Row-mean losses average over every row of each micro-batch; the masked rows must leave that average over
        # the whole generation batch (all micro-batches, all ranks), not per micro-batch: one global factor.
        rows = self.accelerator.gather(keep.new_tensor([keep.numel()])).sum()
        kept = self.accelerator.gather(keep.sum().reshape(1)).sum()
        output[SCALE_KEY] = torch.full_like(keep, (rows / kept).item() if kept > 0 else 1.0)
        metrics["dynamic_sampling/uninformative_after"].append(0.0)
        metrics["dynamic_sampling/masked_fraction"].append(zero.float().mean().item())
        metrics["informative_groups"].append(float((~zero).sum().item()))
        return output

    def _fresh_inputs(self, batch: int, attempt: int) -> list[dict]:
        """A new local generation batch of fresh prompts, the same draw on every rank: from the curriculum's own
        draw when there is one (its level mix, its walk through each level's rows, saved in checkpoints), else
        seeded by step and try."""
        prompts = self.accelerator.num_processes * batch // self.num_generations
        dataset = self.train_dataset
        if self.curriculum is not None:
            if self._rows_by_level is None:
                self._rows_by_level = rows_by_level(dataset["level"])
            index = self.curriculum.draw(self._rows_by_level, prompts)
        else:
            generator = torch.Generator().manual_seed(
                self.args.seed * 1_000_003 + self.state.global_step * 1_009 + attempt
            )
            index = torch.randint(len(dataset), (prompts,), generator=generator).tolist()
        index = [i for i in index for _ in range(self.num_generations)]
        start = self.accelerator.process_index * batch
        return [dataset[i] for i in index[start : start + batch]]

    def _resample(self, inputs, output, zero):
        """Replace uninformative groups with informative groups of fresh prompts; return (output, remaining
        uninformative fraction, tries). All ranks run the same number of rounds (the decision is gathered)."""
        batch, group = len(inputs), self.num_generations
        rank_groups = batch // group
        first = self.accelerator.process_index * rank_groups
        local_zero = zero[first : first + rank_groups].clone()
        tries = 0
        while tries < self.args.dynamic_sampling_max_tries and self.accelerator.gather(local_zero.long()).any():
            tries += 1
            fresh = super()._generate_and_score_completions(self._fresh_inputs(batch, tries))
            donors = [k for k, z in enumerate(self._uninformative_groups()[first : first + rank_groups]) if not z]
            dst_rows, src_rows = [], []
            for j in local_zero.nonzero().flatten().tolist():
                if not donors:
                    break
                k = donors.pop(0)
                dst_rows += range(j * group, (j + 1) * group)
                src_rows += range(k * group, (k + 1) * group)
                local_zero[j] = False
            if dst_rows:
                output = replace_rows(output, fresh, dst_rows, src_rows, self._tokenizer.pad_token_id)
        output["num_items_in_batch"] = self.accelerator.gather(output["completion_mask"].sum()).sum()
        remaining = self.accelerator.gather(local_zero.float()).mean().item()
        if tries:
            logger.info(
                "dynamic sampling: %d extra round(s); uninformative groups left: %.0f%%", tries, 100 * remaining
            )
        return output, remaining, tries

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        scale = inputs.get(SCALE_KEY)
        if scale is not None and self.loss_type in ROW_MEAN_LOSSES:
            loss = loss * scale[0]  # masked rows add 0 to the sum; take them out of the row count too
        return loss

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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss, checked on every rank before the backward pass: a NaN or inf loss on any rank stops every
        rank at the same micro-batch with the same message, before gradients are reduced (DDP) or the optimizer
        steps inside backward (DeepSpeed)."""
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.model.training:
            losses = self.accelerator.gather(loss.detach().float().reshape(1))
            bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
            if bad:
                raise NonFiniteError(
                    f"step {self.state.global_step + 1}: the loss is {losses[bad[0]].item()} on rank(s) {bad}; "
                    f"stopping before the backward pass. The last good checkpoint is in {self.args.output_dir}."
                )
        return loss

    # ----- scoring and rollouts on a CPU -----
    def _prepare_inputs(self, generation_batch):
        """TRL's; then, where `_get_per_token_logps_and_entropies` shares prompts, the new generation batch's
        micro-batches cut again so that each holds whole groups (`whole_groups`). Only where one optimizer step
        takes the whole generation batch and the loss sums over its micro-batches whatever their rows (not `bnpo`,
        the entropy bonus or the entropy mask, which normalize or rank within each micro-batch)."""
        buffered = self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch)
        regroup = (
            self._buffered_inputs is not buffered  # TRL generated and cut a new generation batch
            and self._shares_prompts(self.model)
            and self.args.steps_per_generation == self.args.gradient_accumulation_steps > 1
            and self.num_iterations == 1
            and self.loss_type in ("grpo", "dr_grpo", "dapo", "cispo")
            and not self._entropy_bonus_enabled
            and self.top_entropy_quantile == 1.0
        )
        if regroup:
            self._buffered_inputs = whole_groups(self._buffered_inputs)
            inputs = self._buffered_inputs[self._step % self.args.steps_per_generation]
        return inputs

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """TRL's scoring; on a CPU, text-only, in the families whose cache tests check (`DECODER_FAMILIES`), the
        prompt each group's completions share runs once (`shared_prefix`): the training forward and backward are
        most of a CPU step, and the prompt half of each row. GPUs keep TRL's own path."""
        scoring = super()._get_per_token_logps_and_entropies
        if kwargs.get("pixel_values") is not None or not self._shares_prompts(model):
            return scoring(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        base = self._transformers_model(model)
        with prefixes_shared(getattr(base, base.base_model_prefix)):
            return scoring(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)

    def _shares_prompts(self, model) -> bool:
        """Whether scoring `model` runs a group's shared prompt once: on a CPU, in the families whose cache the
        tests check (`DECODER_FAMILIES`)."""
        return self.accelerator.device.type == "cpu" and self._transformers_model(model).config.model_type in (
            DECODER_FAMILIES
        )

    def _transformers_model(self, model):
        """`model` without its distributed wrapper and, under PEFT, without its adapter wrapper."""
        unwrapped = self.accelerator.unwrap_model(model)
        return unwrapped.get_base_model() if isinstance(unwrapped, PeftModel) else unwrapped

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if not self._samples_on_cpu(images, multimodal_fields):
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as model,
            torch.no_grad(),
            adapter_added_to_base(model) as plain,
        ):
            completion_ids = sample_tokens(
                plain,
                prompt_ids,
                max_new_tokens=self.max_completion_length,
                eos_ids=self.eos_token_ids,
                pad_id=self._tokenizer.pad_token_id,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=self.top_k or 0,
                compute_dtype=torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None,
            )
        return completion_ids, None  # as TRL's transformers path: no sampling log-probs

    def _samples_on_cpu(self, images, multimodal_fields) -> bool:
        """Whether this generation runs on `generation.sample_tokens`: text rollouts on a CPU, without vLLM, with
        only the sampling settings it reproduces (temperature, top-p, top-k); TRL's own path otherwise."""
        if self.use_vllm or self.use_transformers_continuous_batching or self.accelerator.device.type != "cpu":
            return False
        if images or multimodal_fields or self.args.generation_kwargs:
            return False
        if self.min_p is not None or self.repetition_penalty not in (None, 1.0):
            return False
        return supports_sample_tokens(self._transformers_model(self.model))

    # ----- hard resets -----
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
        models = [self._transformers_model(self.model)]
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
