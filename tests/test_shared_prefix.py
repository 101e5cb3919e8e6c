"""A prefix shared by a group's rows runs once, and the backbone still gives the full forward's hidden states and
gradients: on the tiny random Llama, directly and through the GRPO trainer's scoring."""

from __future__ import annotations

import pytest
import torch

from trl_smallrl.shared_prefix import prefixes_shared


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).train()


def _group_batch(prompt_lengths=(9, 6), completions=3, completion_length=7):
    """Left-padded prompts, each followed by `completions` different completions (some ending in padding)."""
    torch.manual_seed(1)
    width = max(prompt_lengths)
    rows, masks = [], []
    for length in prompt_lengths:
        prompt = torch.randint(5, 500, (length,))
        for c in range(completions):
            completion = torch.randint(5, 500, (completion_length,))
            rows.append(torch.cat([torch.zeros(width - length, dtype=torch.long), prompt, completion]))
            end = completion_length - 2 * c  # completions of different lengths, padded on the right
            masks.append(torch.cat([torch.zeros(width - length), torch.ones(length), torch.ones(end),
                                    torch.zeros(completion_length - end)]).long())  # fmt: skip
    return torch.stack(rows), torch.stack(masks)


def _positions_run(model, run):
    """What `run()` returns, and how many token positions the embedding layer saw meanwhile."""
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].numel()))
    try:
        return run(), sum(seen)
    finally:
        hook.remove()


def _hidden_and_grads(model, ids, mask, shared):
    backbone = model.get_base_model().model
    model.zero_grad()

    def run():
        if shared:
            with prefixes_shared(backbone):
                return backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

    hidden, positions = _positions_run(model, run)
    (hidden * mask[..., None]).square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return hidden.detach(), grads, positions


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4, 5], [4, 0, 3, 5, 2, 1]])  # TRL shuffles a generation batch
def test_each_prompt_runs_once_with_the_full_forwards_hidden_states_and_gradients(lora_model, order):
    ids, mask = (t[order] for t in _group_batch())
    full, full_grads, full_positions = _hidden_and_grads(lora_model, ids, mask, shared=False)
    shared, shared_grads, shared_positions = _hidden_and_grads(lora_model, ids, mask, shared=True)
    valid = mask.bool()
    torch.testing.assert_close(shared[valid], full[valid], rtol=1e-4, atol=1e-5)
    # All gradients together: this random model's are ill-conditioned (running the same rows in another batch moves
    # them by about 0.5%, in float64 too: its norms compute in float32); without the gradient through the shared
    # cache they move by about 93%.
    full_grad, shared_grad = (torch.cat([g.flatten() for g in grads.values()]) for grads in (full_grads, shared_grads))
    assert (shared_grad - full_grad).norm() / full_grad.norm() < 0.05
    assert full_positions == 6 * 16
    assert shared_positions == 2 * 9 + 6 * 7  # two prompts once each (padded to 9), then every completion


def test_rows_sharing_too_little_run_the_backbones_own_forward(lora_model):
    ids, mask = _group_batch(completions=1)  # two rows, different prompts: nothing shared
    backbone = lora_model.get_base_model().model
    with torch.no_grad(), prefixes_shared(backbone):
        _, positions = _positions_run(lora_model, lambda: backbone(input_ids=ids, attention_mask=mask))
    assert positions == ids.numel()
    assert "forward" not in vars(backbone)  # the context put the class's forward back


@pytest.mark.parametrize("padding_columns", [0, 3])  # TRL pads to the generation batch's longest completion
def test_grpo_scoring_on_a_cpu_shares_the_prompt_and_heads_the_completions_alone_with_trls_values(
    tiny_model_dir, tmp_path, padding_columns
):
    """The trainer's CPU scoring gives TRL's log-probabilities, entropies and gradients, while the backbone runs each
    prompt once and no column of padding alone, and the LM head sees the completion tokens alone (TRL's fused head on
    a CPU: every position)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOTrainer

    from trl_smallrl.configs import GRPOConfig
    from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=3, num_generations=3,
                      max_completion_length=7, report_to="none", bf16=False)  # fmt: skip
    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": "Say 1."}]}] * 3)
    trainer = SmallRLGRPOTrainer(
        model=tiny_model_dir, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
        train_dataset=prompts, peft_config=LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    )  # fmt: skip
    ids, mask = (torch.nn.functional.pad(t, (0, padding_columns)) for t in _group_batch())
    keep = 7 + padding_columns
    head = trainer.model.get_output_embeddings()
    headed = []
    hook = head.register_forward_hook(lambda m, args, out: headed.append(args[0].shape[:-1].numel()))
    scored = {}
    for name, scoring in (("ours", trainer._get_per_token_logps_and_entropies),
                          ("trl", lambda *a, **k: GRPOTrainer._get_per_token_logps_and_entropies(trainer, *a, **k))):  # fmt: skip
        trainer.model.zero_grad()
        headed.clear()
        (logps, entropy, _), positions = _positions_run(
            trainer.model, lambda scoring=scoring: scoring(trainer.model, ids, mask, keep, compute_entropy=True)
        )
        assert logps.shape == entropy.shape == (len(ids), keep)
        (logps * torch.linspace(-1, 1, logps.numel()).view_as(logps)).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.requires_grad])
        scored[name] = logps.detach(), entropy, grads, positions, sum(headed)
    hook.remove()
    ours_logps, ours_entropy, ours_grads, ours_positions, ours_headed = scored["ours"]
    trl_logps, trl_entropy, trl_grads, trl_positions, _ = scored["trl"]
    torch.testing.assert_close(ours_logps, trl_logps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours_entropy, trl_entropy, rtol=1e-4, atol=1e-5)
    assert (ours_grads - trl_grads).norm() / trl_grads.norm() < 0.05  # the shared prompt's rounding, as above
    assert (ours_logps[~mask[:, -keep:].bool()] == 0).all() and ours_entropy.grad_fn is None
    assert trl_positions == ids.numel()
    assert ours_positions == 2 * 9 + 6 * 7  # two prompts once each (padded to 9), then every completion, unpadded
    assert ours_headed == int(mask[:, -keep:].sum())  # TRL's fused head on a CPU projects every position


def test_whole_groups_recuts_a_shuffled_generation_batch_into_groups():
    from trl_smallrl.grpo_rollouts import whole_groups

    prompt = torch.tensor([[0, 7, 8], [5, 6, 9]])  # two prompts, the first left-padded
    rows = [1, 0, 0, 1, 0, 1, 1, 0]  # a shuffled generation batch of 2 groups of 4
    batch = {
        "prompt_ids": prompt[rows],
        "prompt_mask": (prompt[rows] != 0).long(),
        "completion_ids": torch.arange(8)[:, None].repeat(1, 2),
        "texts": [f"row {i}" for i in range(8)],
        "num_items_in_batch": torch.tensor(16),
    }
    halves = [{k: (v[:4] if k != "num_items_in_batch" else v) for k, v in batch.items()},
              {k: (v[4:] if k != "num_items_in_batch" else v) for k, v in batch.items()}]  # fmt: skip
    cut = whole_groups(halves)
    assert [len(torch.unique(part["prompt_ids"], dim=0)) for part in cut] == [1, 1]
    completions = torch.cat([part["completion_ids"][:, 0] for part in cut])
    assert sorted(completions.tolist()) == list(range(8))
    for part in cut:  # each row's fields moved together
        for prompt_row, completion, text in zip(part["prompt_ids"], part["completion_ids"][:, 0], part["texts"]):
            assert torch.equal(prompt_row, prompt[rows[completion]]) and text == f"row {completion}"
        assert int(part["num_items_in_batch"]) == 16


def test_a_cpu_grpo_step_scores_whole_groups_and_keeps_the_loss(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig

    from trl_smallrl import grpo_rollouts
    from trl_smallrl.configs import GRPOConfig
    from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer

    def run(regroup):
        args = GRPOConfig(output_dir=str(tmp_path / str(regroup)), per_device_train_batch_size=2, num_generations=2,
                          gradient_accumulation_steps=2, max_completion_length=6, max_steps=1, loss_type="dapo",
                          report_to="none", bf16=False, seed=0, logging_steps=1, save_strategy="no")  # fmt: skip
        prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Say {i}."}]} for i in range(4)])
        trainer = SmallRLGRPOTrainer(
            model=tiny_model_dir, args=args, train_dataset=prompts,
            reward_funcs=lambda completions, **kw: [float(len(c)) for c in completions],
            peft_config=LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
        )  # fmt: skip
        seen = []
        original = grpo_rollouts.whole_groups
        grpo_rollouts.whole_groups = lambda batches: original(batches) if regroup else batches
        scoring = trainer._get_per_token_logps_and_entropies

        def recorded(model, ids, mask, logits_to_keep, *args, **kwargs):
            seen.append(ids[:, :-logits_to_keep])  # the prompts of the micro-batch
            return scoring(model, ids, mask, logits_to_keep, *args, **kwargs)

        trainer._get_per_token_logps_and_entropies = recorded
        try:
            trainer.train()
        finally:
            grpo_rollouts.whole_groups = original
        return trainer.state.log_history[0]["loss"], seen

    loss, seen = run(regroup=True)
    shuffled_loss, shuffled = run(regroup=False)
    assert [len(torch.unique(prompts, dim=0)) for prompts in seen] == [1, 1]  # each micro-batch: one prompt
    assert [len(torch.unique(prompts, dim=0)) for prompts in shuffled] != [1, 1]  # TRL's cut, with this seed
    assert loss == pytest.approx(shuffled_loss, rel=1e-4, abs=1e-6)
