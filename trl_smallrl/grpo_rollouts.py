"""GRPO rollouts and scoring on a CPU: the trainer's hooks where a CPU step spends its time.

TRL's hooks this relies on (signatures pinned by tests/test_trl_hooks.py):
- `_generate_single_turn`: text rollouts on a CPU run `decoding.sample_tokens` (the LoRA update added into the
  base, matmuls in the training's autocast dtype) instead of transformers' `generate` (about twice its tokens a
  second at 32 rows, measured on a 2-core AMD EPYC);
- `_get_per_token_logps_and_entropies`: each group's shared prompt runs once (`shared_prefix`), since the training
  forward and backward are most of a CPU step and the prompt about half of each row; and in one process, the LM head
  projects the completion tokens alone (`completion_logps_and_entropies`);
- `_prepare_inputs`: TRL shuffles a new generation batch and cuts it into micro-batches (a new batch is seen as a
  new `_buffered_inputs` object); where the loss allows it, the cut is redone so each micro-batch holds whole
  groups (`whole_groups`), which is what lets prompts be shared. It reads TRL's `_buffered_inputs` and `_step`.
GPUs, vLLM and multimodal rows keep TRL's own path.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy, split_tensor_dict

from trl_smallrl.adapters import adapter_added_to_base, plain_model
from trl_smallrl.decoding import DECODER_FAMILIES, sample_tokens, supports_sample_tokens
from trl_smallrl.grpo_dynamic_sampling import KEEP_KEY
from trl_smallrl.precision import autocast_dtype
from trl_smallrl.shared_prefix import prefixes_shared


def whole_groups(batches: list[dict]) -> list[dict]:
    """The same rows cut into as many micro-batches again, with the rows of one prompt next to each other (TRL
    shuffles a generation batch before it cuts it), so that a micro-batch holds whole groups when the group size
    divides its size; the groups dynamic sampling masked come last, so that as many micro-batches as possible hold
    masked rows alone (they skip their forward and backward). Scalars (`num_items_in_batch`) are the generation
    batch's and stay as they are."""
    prompts = torch.cat([torch.cat([batch["prompt_ids"], batch["prompt_mask"]], dim=1) for batch in batches])
    group = torch.unique(prompts, dim=0, return_inverse=True)[1]
    if KEEP_KEY in batches[0]:
        masked = torch.cat([batch[KEEP_KEY] for batch in batches]).to(group.device) == 0
        group = group + masked.long() * len(group)
    order = torch.sort(group, stable=True).indices
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


class CPURolloutHooks:
    """Mixin for `GRPOTrainer`: CPU rollouts through `sample_tokens`, and scoring with shared prompts."""

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
                compute_dtype=autocast_dtype(self.args),
            )
        return completion_ids, None  # as TRL's transformers path: no sampling log-probs

    def _samples_on_cpu(self, images, multimodal_fields) -> bool:
        """Whether this generation runs on `decoding.sample_tokens`: text rollouts on a CPU, without vLLM, with
        only the sampling settings it reproduces (temperature, top-p, top-k); TRL's own path otherwise."""
        if self.use_vllm or self.use_transformers_continuous_batching or self.accelerator.device.type != "cpu":
            return False
        if images or multimodal_fields or self.args.generation_kwargs:
            return False
        if self.min_p is not None or self.repetition_penalty not in (None, 1.0):
            return False
        return supports_sample_tokens(plain_model(self.accelerator, self.model))

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

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, *args, **kwargs
    ):
        """TRL's scoring; on a CPU, text-only, in the families whose cache tests check (`DECODER_FAMILIES`): the
        columns of completion padding every row of the micro-batch has are cut (TRL pads each completion to the
        longest of the whole generation batch, and at 3-4 people one 448-token completion doubles every row), the
        prompt each group's completions share runs once (`shared_prefix`), and in one process the LM head projects
        the completion tokens alone (`completion_logps_and_entropies`). GPUs keep TRL's own path."""
        scoring = super()._get_per_token_logps_and_entropies
        images = any(value is not None for key, value in kwargs.items() if key != "compute_aux_loss")
        if args or images or not self._shares_prompts(model):
            return scoring(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, *args, **kwargs
            )
        kwargs = {"batch_size": batch_size, "compute_entropy": compute_entropy, **kwargs}
        filled = attention_mask[:, -logits_to_keep:].any(0).nonzero()
        kept = int(filled[-1]) + 1 if len(filled) else 1  # the completion columns some row fills
        width = input_ids.size(1) - (logits_to_keep - kept)  # right padding changes no earlier position's value
        input_ids, attention_mask = input_ids[:, :width], attention_mask[:, :width]
        base = plain_model(self.accelerator, model)
        with prefixes_shared(getattr(base, base.base_model_prefix)):
            if self._scores_completions_alone(input_ids.size(0), kept, **kwargs):
                batch_size = batch_size or input_ids.size(0)
                with self.accelerator.autocast():
                    scored = [
                        completion_logps_and_entropies(
                            base,
                            input_ids[start : start + batch_size],
                            attention_mask[start : start + batch_size],
                            kept,
                            temperature=self.temperature,
                            head_in_float32=self.args.cast_lm_head_to_fp32,
                            entropy=compute_entropy,
                            entropy_grad=self._entropy_bonus_enabled,
                        )
                        for start in range(0, input_ids.size(0), batch_size)
                    ]
                logps = torch.cat([logps for logps, _ in scored])
                entropies = torch.cat([entropy for _, entropy in scored]) if compute_entropy else None
                aux_loss = None
            else:
                logps, entropies, aux_loss = scoring(model, input_ids, attention_mask, kept, **kwargs)
        cut = logits_to_keep - kept  # the cut columns score 0, as TRL's masked positions do
        return F.pad(logps, (0, cut)), None if entropies is None else F.pad(entropies, (0, cut)), aux_loss

    def _scores_completions_alone(self, rows, logits_to_keep, batch_size=None, compute_aux_loss=False, **_) -> bool:
        """Whether a scoring call runs `completion_logps_and_entropies` rather than TRL's fused LM head, which on a
        CPU (no Triton) projects every position of every row, the prompt's and the padding's too (about 2.7 times
        the completion tokens of a reference-recipe micro-batch), and folds each vocabulary tile in a dozen
        elementwise passes: about half of a CPU step's training time. One process only, as for the skip of masked
        micro-batches (the backbone and the head are called past the DDP or DeepSpeed wrapper); no MoE router loss
        (images never reach it: the caller keeps TRL's path for them); and while a call's completion logits fit
        `COMPLETION_LOGITS_BUDGET`."""
        if compute_aux_loss or self.aux_loss_enabled:
            return False
        if self.accelerator.num_processes != 1 or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return False
        vocab = plain_model(self.accelerator, self.model).get_output_embeddings().weight.size(0)
        return min(batch_size or rows, rows) * logits_to_keep * vocab * 4 <= COMPLETION_LOGITS_BUDGET

    def _shares_prompts(self, model) -> bool:
        """Whether scoring `model` runs a group's shared prompt once: on a CPU, in the families whose cache the
        tests check (`DECODER_FAMILIES`)."""
        return (
            self.accelerator.device.type == "cpu"
            and plain_model(self.accelerator, model).config.model_type in DECODER_FAMILIES
        )


COMPLETION_LOGITS_BUDGET = 2 * 1024**3  # bytes of float32 completion logits a scoring call may hold at once


def completion_logps_and_entropies(
    model,
    input_ids,
    attention_mask,
    logits_to_keep: int,
    *,
    temperature: float,
    head_in_float32: bool,
    entropy: bool,
    entropy_grad: bool,
):
    """The log-probability of each of the last `logits_to_keep` tokens of each row and, with `entropy`, the entropy
    of its distribution, as TRL's fused LM head gives them (0 where `attention_mask` is 0; the entropy None
    without `entropy`), with the LM head run on the completion tokens alone.

    `model` is the plain transformers causal LM (its layers may be PEFT-wrapped, its backbone `prefixes_shared`):
    the backbone runs every position, the head projects only the positions that predict a completion token, and
    TRL's `selective_log_softmax` (`selective_log_softmax_and_entropy`) reads their logits in float32, divided by
    `temperature`. With `head_in_float32` (TRL's `cast_lm_head_to_fp32`) the head runs outside autocast, as TRL's
    does. The entropy carries a gradient only with `entropy_grad` (TRL's entropy bonus)."""
    hidden = getattr(model, model.base_model_prefix)(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    scored = attention_mask[:, -logits_to_keep:].bool()
    hidden = hidden[:, -logits_to_keep - 1 : -1][scored]  # each position predicts the next token
    targets = input_ids[:, -logits_to_keep:][scored]
    head = model.get_output_embeddings()
    outside_autocast = (
        torch.autocast(hidden.device.type, enabled=False) if head_in_float32 else contextlib.nullcontext()
    )
    with outside_autocast:
        logits = head(hidden.float() if head_in_float32 else hidden).float()[None]  # one row: one logsumexp call
    if entropy:
        logps, entropies = selective_log_softmax_and_entropy(
            logits, targets[None], entropy_requires_grad=entropy_grad, temperature=temperature
        )
    else:
        logps, entropies = selective_log_softmax(logits, targets[None], temperature=temperature), None
    return tuple(
        None if values is None else values.new_zeros(scored.shape).masked_scatter(scored, values[0])
        for values in (logps, entropies)
    )
