"""Dynamic sampling on a batch with known zero-variance groups, with TRL's real GRPO loss on the tiny model."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl import GRPOTrainer

from trl_smallrl import configs
from trl_smallrl.grpo_dynamic_sampling import KEEP_KEY, SCALE_KEY
from trl_smallrl.grpo_trainer import SmallRLGRPOTrainer

GROUP = 4
CONSTANT = [True, False, True, False]  # prompts 0 and 2 get the same reward for every completion


def reward_constant_or_varied(completions, completion_ids, constant, **kwargs):
    """1.0 for the rows marked constant; a value that differs between completions otherwise."""
    return [1.0 if c else sum(ids) / 1000.0 for c, ids in zip(constant, completion_ids)]


def _rows(n_prompts):
    return [
        {"prompt": [{"role": "user", "content": f"Say something about {i}."}], "constant": CONSTANT[i % 4]}
        for i in range(n_prompts)
    ]


def _trainer(tiny_model_dir, tmp_path, mode, reward=None, rows=None, curriculum=None, **overrides):
    """A trainer on groups of GROUP completions, 4 prompts a batch (rows: CONSTANT's, unless given)."""
    args = configs.GRPOConfig(
        output_dir=str(tmp_path / mode),
        num_generations=GROUP,
        per_device_train_batch_size=GROUP * len(CONSTANT),
        max_completion_length=8,
        dynamic_sampling=mode,
        report_to="none",
        seed=0,
        bf16=False,
        **overrides,
    )
    return SmallRLGRPOTrainer(
        model=tiny_model_dir,
        reward_funcs=[reward or reward_constant_or_varied],
        args=args,
        train_dataset=Dataset.from_list(rows or _rows(16)),
        curriculum=curriculum,
    )


def _batch():
    return [row for row in _rows(len(CONSTANT)) for _ in range(GROUP)]


def _grads(trainer, loss_fn, inputs):
    trainer.model.zero_grad()
    loss_fn(trainer.model, inputs).backward()
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])


def _select(output, rows):
    batch = output["completion_ids"].size(0)
    sub = {
        k: v[rows] if isinstance(v, torch.Tensor) and v.dim() and v.size(0) == batch else v for k, v in output.items()
    }
    sub.pop(KEEP_KEY)
    sub.pop(SCALE_KEY)
    sub["num_items_in_batch"] = sub["completion_mask"].sum()
    return sub


@pytest.fixture(scope="module")
def mask_trainer(tiny_model_dir, tmp_path_factory):
    trainer = _trainer(tiny_model_dir, tmp_path_factory.mktemp("ds"), "mask")
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def test_mask_excludes_exactly_the_zero_variance_groups(mask_trainer):
    output = mask_trainer._generate_and_score_completions(_batch())
    masked_rows = output["completion_mask"].sum(dim=1) == 0
    expected = torch.tensor([c for c in CONSTANT for _ in range(GROUP)])
    assert torch.equal(masked_rows, expected)
    assert torch.equal(output[KEEP_KEY].bool(), ~expected)
    assert output["num_items_in_batch"].item() == output["completion_mask"].sum().item()
    metrics = mask_trainer._metrics["train"]
    assert metrics["dynamic_sampling/uninformative_before"][-1] == pytest.approx(0.5)
    assert metrics["dynamic_sampling/uninformative_after"][-1] == 0.0


@pytest.fixture(scope="module")
def masked_batch(mask_trainer):
    torch.manual_seed(0)
    return mask_trainer._generate_and_score_completions(_batch())


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "bnpo", "dapo"])
def test_masked_loss_equals_trl_loss_on_the_informative_groups_alone(mask_trainer, masked_batch, loss_type):
    """Gradient of the masked full batch == TRL's gradient on the informative rows only (loss and normalization).
    For the row-mean losses, TRL alone on the masked batch would still count the dead rows: ours must differ."""
    mask_trainer.loss_type = mask_trainer.args.loss_type = loss_type
    trl_loss = lambda m, x: GRPOTrainer._compute_loss(mask_trainer, m, x)  # noqa: E731
    kept_rows = masked_batch[KEEP_KEY].bool()
    masked = _grads(mask_trainer, mask_trainer._compute_loss, masked_batch)
    alone = _grads(mask_trainer, trl_loss, _select(masked_batch, kept_rows))
    assert masked.abs().sum() > 0
    torch.testing.assert_close(masked, alone, rtol=1e-4, atol=1e-7)
    if loss_type in ("grpo", "dr_grpo"):
        counted = _grads(mask_trainer, trl_loss, masked_batch)
        torch.testing.assert_close(counted, masked * kept_rows.float().mean(), rtol=1e-4, atol=1e-7)


class _ScoringCounter(SmallRLGRPOTrainer):
    """Records each micro-batch the loss sees (whether it keeps a row) and each forward of the training scores."""

    skip = True

    def _skips_masked_micro_batches(self):
        return self.skip and super()._skips_masked_micro_batches()

    def _compute_loss(self, model, inputs):
        self.kept_rows.append(bool(inputs[KEEP_KEY].any()))
        return super()._compute_loss(model, inputs)

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        self.forwards += 1
        return super()._get_per_token_logps_and_entropies(*args, **kwargs)


def _train_masked(tiny_model_dir, output_dir, skip):
    args = configs.GRPOConfig(
        output_dir=str(output_dir),
        num_generations=GROUP,
        per_device_train_batch_size=GROUP,  # a micro-batch is one group: two of the four are masked each step
        gradient_accumulation_steps=len(CONSTANT),
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-2,
        dynamic_sampling="mask",
        loss_type="dapo",
        report_to="none",
        save_strategy="no",
        seed=0,
        bf16=False,
    )
    trainer = _ScoringCounter(
        model=tiny_model_dir,
        reward_funcs=[reward_constant_or_varied],
        args=args,
        train_dataset=Dataset.from_list(_rows(len(CONSTANT))),
    )
    trainer.skip, trainer.kept_rows, trainer.forwards = skip, [], 0
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    return trainer, before


def test_micro_batches_of_masked_groups_alone_skip_their_forward_and_change_nothing(tiny_model_dir, tmp_path):
    skipped, before = _train_masked(tiny_model_dir, tmp_path / "skip", skip=True)
    full, _ = _train_masked(tiny_model_dir, tmp_path / "full", skip=False)
    # The masked groups come last in each generation batch, and only the micro-batches with a kept row run.
    assert skipped.kept_rows == full.kept_rows == [True, True, False, False] * 2
    assert (skipped.forwards, full.forwards) == (4, 8)
    after = list(skipped.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # it trained
    for a, b in zip(after, full.model.parameters()):
        assert torch.equal(a, b)  # the skipped micro-batches' gradients were exactly 0 anyway


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_row_mean_rescale_spans_the_whole_generation_batch(mask_trainer, masked_batch, loss_type):
    """Two micro-batches of one accumulation window, one holding only masked groups: their summed gradient is
    TRL's gradient on the informative rows alone (a per-micro-batch rescale would halve it)."""
    mask_trainer.loss_type = mask_trainer.args.loss_type = loss_type
    kept_rows = masked_batch[KEEP_KEY].bool()
    batch = masked_batch["completion_ids"].size(0)
    micro = [{k: v[rows] if isinstance(v, torch.Tensor) and v.dim() and v.size(0) == batch else v
              for k, v in masked_batch.items()} for rows in (~kept_rows, kept_rows)]  # fmt: skip
    mask_trainer.current_gradient_accumulation_steps = 2
    try:
        accumulated = sum(_grads(mask_trainer, mask_trainer._compute_loss, x) for x in micro)
    finally:
        mask_trainer.current_gradient_accumulation_steps = 1
    alone = _grads(
        mask_trainer, lambda m, x: GRPOTrainer._compute_loss(mask_trainer, m, x), _select(masked_batch, kept_rows)
    )
    assert alone.abs().sum() > 0
    torch.testing.assert_close(accumulated, alone, rtol=1e-4, atol=1e-7)


def test_resample_replaces_zero_variance_groups_with_fresh_prompts(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, "resample", dynamic_sampling_max_tries=4)
    trainer.model.train()
    output = trainer._generate_and_score_completions(_batch())
    metrics = trainer._metrics["train"]
    assert metrics["dynamic_sampling/uninformative_before"][-1] == pytest.approx(0.5)
    assert metrics["dynamic_sampling/tries"][-1] >= 1
    assert metrics["dynamic_sampling/uninformative_after"][-1] == 0.0
    # Every group of the batch that trains now has a non-zero advantage somewhere.
    advantages = output["advantages"].view(-1, GROUP)
    assert bool((advantages.abs().sum(dim=1) > 0).all())
    assert output["num_items_in_batch"].item() == output["completion_mask"].sum().item()
    assert output["completion_ids"].size(0) == GROUP * len(CONSTANT)


def test_unknown_mode_is_a_config_error(tmp_path):
    from trl_smallrl.errors import ConfigError

    with pytest.raises(ConfigError, match="dynamic_sampling: unknown value 'maks'.*mask"):
        configs.GRPOConfig(output_dir=str(tmp_path), dynamic_sampling="maks")


# ----- with a task verifier: groups chosen by correctness (DAPO), not by the spread of the total reward -----
VERDICTS = ["right", "wrong", "parity", "parity"]  # prompt i's answers: all right, all wrong, right when even length


class _ScriptedTask:
    """A task whose verifier the test controls per row: `verdict` right, wrong, or by the completion's parity."""

    name = "scripted"

    def is_correct(self, completion, row):
        return {"right": True, "wrong": False}.get(row["verdict"], len(completion) % 2 == 0)


def reward_varied(completions, completion_ids, **kwargs):
    """Differs between any two completions: a length or format term of the kind that made every group 'vary'."""
    return [sum(ids) / 1000.0 for ids in completion_ids]


@pytest.fixture
def scripted_task(monkeypatch):
    from trl_smallrl import tasks

    tasks._task.cache_clear()
    monkeypatch.setitem(tasks.TASKS, "scripted", _ScriptedTask)
    yield
    tasks._task.cache_clear()


def _scripted_rows(n_prompts):
    return [
        {"prompt": [{"role": "user", "content": f"Answer {i}."}], "task": "scripted", "level": 2,
         "verdict": VERDICTS[i % 4]}
        for i in range(n_prompts)
    ]  # fmt: skip


@pytest.mark.parametrize("mode", ["none", "mask", "resample"])
def test_groups_are_kept_by_correctness_whatever_the_reward_spread(tiny_model_dir, tmp_path, scripted_task, mode):
    torch.manual_seed(0)
    trainer = _trainer(tiny_model_dir, tmp_path, mode, reward_varied, _scripted_rows(16), dynamic_sampling_max_tries=4)
    trainer.model.train()
    batch = [row for row in _scripted_rows(len(VERDICTS)) for _ in range(GROUP)]
    output = trainer._generate_and_score_completions(batch)
    metrics = trainer._metrics["train"]
    if mode == "resample":
        # every group that trains now holds a right and a wrong answer: the all-right/all-wrong ones were replaced
        assert metrics["dynamic_sampling/uninformative_before"][-1] >= 0.5
        assert metrics["dynamic_sampling/uninformative_after"][-1] == 0.0
        assert metrics["informative_groups"][-1] == len(VERDICTS)
        advantages = output["advantages"].view(-1, GROUP)
        assert bool((advantages.abs().sum(dim=1) > 0).all())
        return
    texts = trainer.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
    right = torch.tensor([_ScriptedTask().is_correct(t, r) for t, r in zip(texts, batch)]).view(-1, GROUP).sum(dim=1)
    informative = (right > 0) & (right < GROUP)
    assert not informative[0] and not informative[1]  # all right, all wrong: their rewards still differ
    assert metrics["informative_groups"][-1] == informative.sum().item()
    if mode == "mask":
        kept = output[KEEP_KEY].view(-1, GROUP)[:, 0].bool()
        assert torch.equal(kept, informative)
        assert metrics["dynamic_sampling/uninformative_before"][-1] == pytest.approx(1 - informative.float().mean())


def test_resampled_prompts_come_from_the_curriculums_own_draw(tiny_model_dir, tmp_path, scripted_task):
    """Fresh prompts are drawn by the curriculum (its level mix and its walk through the rows, which checkpoints
    save), so a resumed run draws them again the same way."""
    from trl_smallrl.curriculum import Curriculum

    curriculum = Curriculum([2, 3], threshold=1.0, window=1000, seed=0)
    rows = _scripted_rows(16) + [{**row, "level": 3} for row in _scripted_rows(4)]
    trainer = _trainer(
        tiny_model_dir, tmp_path, "resample", reward_varied, rows, curriculum, dynamic_sampling_max_tries=2
    )
    trainer.model.train()
    torch.manual_seed(0)
    trainer._generate_and_score_completions([row for row in _scripted_rows(len(VERDICTS)) for _ in range(GROUP)])
    tries = trainer._metrics["train"]["dynamic_sampling/tries"][-1]
    assert tries >= 1
    # The generation batch itself is the curriculum's draw (made when TRL generates), then one draw a resample round.
    assert curriculum.draw_positions == {2: (1 + tries) * len(VERDICTS), 3: 0}  # level 3 is not open yet
