"""The model card, from what a run logged: the curriculum's history, the rewards, and how to load each kind."""

from __future__ import annotations

import pytest

from trl_smallrl.model_card import build_model_card, curriculum_history

LOGS = [
    {"step": 1, "curriculum/level": 2, "curriculum/accuracy_level_2": 0.25, "rewards/format/mean": 0.5},
    {"step": 2, "curriculum/level": 2, "curriculum/accuracy_level_2": 0.75, "rewards/format/mean": 0.9},
    {"step": 3, "curriculum/level": 3, "curriculum/accuracy_level_3": 0.1, "rewards/format/mean": 1.0},
]


def test_curriculum_history_gives_each_level_its_start_and_last_accuracy():
    assert curriculum_history(LOGS) == [
        {"level": 2, "start_step": 1, "last_accuracy": 0.75},
        {"level": 3, "start_step": 3, "last_accuracy": 0.1},
    ]
    assert curriculum_history([{"step": 1, "loss": 0.3}]) == []


@pytest.mark.parametrize(
    ("kind", "library", "loader"),
    [("adapter", "peft", "AutoPeftModelForCausalLM"), ("merged", "transformers", "AutoModelForCausalLM"),
     ("full", "transformers", "AutoModelForCausalLM")],
)  # fmt: skip
def test_each_kind_of_upload_says_how_it_loads(kind, library, loader):
    card = build_model_card(
        title="me/run", base_model="org/base", kind=kind, config={"reward_funcs": ["format"]}, log_history=LOGS,
        recipe_yaml="learning_rate: 1.0e-06", eval_table=None, plot_files=[],
    )  # fmt: skip
    assert f"library_name: {library}" in card and f'{loader}.from_pretrained("me/run")' in card
    assert ("- lora" in card) == (kind == "adapter")
    assert "| format | 1 | 1.000 |" in card  # the reward, its weight and its last logged mean
    with pytest.raises(ValueError, match="kind"):
        build_model_card(title="t", base_model="b", kind="lora", config={}, log_history=[], recipe_yaml="",
                         eval_table=None, plot_files=[])  # fmt: skip
