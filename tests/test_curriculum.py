"""The curriculum's decisions (advance, max steps, replay, mixed), its state round trip, and its draws."""

from __future__ import annotations

import collections
import json

import pytest

from trl_smallrl.configs import GRPOScriptArguments
from trl_smallrl.curriculum import Curriculum, levels_to_rows, local_groups, per_prompt
from trl_smallrl.errors import ConfigError

ROW_LEVELS = [2] * 40 + [3] * 30 + [4] * 20 + [5] * 10


def test_advances_when_the_rolling_accuracy_reaches_the_threshold():
    curriculum = Curriculum([2, 3, 4], threshold=0.75, window=8)
    assert curriculum.current_level == 2 and curriculum.level_weights() == {2: 1.0}
    assert not curriculum.record([2] * 4, [1.0] * 4, step=1)  # window not full yet
    assert not curriculum.record([2] * 4, [0.0, 0.0, 1.0, 0.5], step=2)  # 5.5 / 8 < 0.75
    assert curriculum.accuracy(2) == pytest.approx(5.5 / 8)
    assert not curriculum.record([2] * 2, [1.0, 1.0], step=3)  # the window slides out two 1.0: still 5.5 / 8
    assert curriculum.record([2] * 4, [1.0] * 4, step=4)  # now the zeros are out: 7.5 / 8 >= 0.75
    assert curriculum.current_level == 3 and curriculum.level_weights() == {3: 1.0}
    assert curriculum.metrics() == {
        "curriculum/level": 3.0,
        "curriculum/accuracy_level_2": pytest.approx(7.5 / 8),
        "curriculum/start_step_level_2": 0.0,
        "curriculum/start_step_level_3": 4.0,
    }
    # Results at other levels (replay) never decide; the new level starts with an empty window.
    assert not curriculum.record([2] * 8, [1.0] * 8, step=5)
    assert curriculum.accuracy(3) is None
    assert curriculum.record([3] * 8, [1.0] * 8, step=6)
    assert curriculum.current_level == 4
    assert not curriculum.record([4] * 8, [1.0] * 8, step=7)  # the last level stays
    assert curriculum.current_level == 4


def test_advances_after_max_steps_at_a_level_whatever_the_accuracy():
    curriculum = Curriculum([2, 3, 4], threshold=0.9, window=4, max_steps_per_level=3)
    assert not curriculum.record([2], [0.0], step=1)
    assert not curriculum.record([2], [0.0], step=2)
    assert curriculum.record([2], [0.0], step=3)
    assert curriculum.current_level == 3 and curriculum.start_steps == {2: 0, 3: 3}
    assert not curriculum.record([3], [0.0], step=5)
    assert curriculum.record([3], [0.0], step=6)
    assert curriculum.current_level == 4


def test_replay_keeps_drawing_earlier_levels():
    curriculum = Curriculum([2, 3, 4], threshold=0.5, window=1, replay_fraction=0.3, seed=1)
    assert curriculum.level_weights() == {2: 1.0}  # nothing to replay at the first level
    curriculum.record([2], [1.0], step=1)
    curriculum.record([3], [1.0], step=2)
    assert curriculum.level_weights() == pytest.approx({2: 0.15, 3: 0.15, 4: 0.7})
    rows_by_level = {level: [i for i, lv in enumerate(ROW_LEVELS) if lv == level] for level in (2, 3, 4, 5)}
    drawn = [ROW_LEVELS[i] for i in curriculum.draw(rows_by_level, 4000)]
    counts = collections.Counter(drawn)
    assert set(counts) == {2, 3, 4}
    assert 0.65 < counts[4] / 4000 < 0.75 and 0.12 < counts[2] / 4000 < 0.18


def test_mixed_draws_every_level_from_the_start_and_never_advances():
    curriculum = Curriculum([2, 3, 4, 5], mode="mixed", threshold=0.1, window=1)
    assert curriculum.level_weights() == {2: 0.25, 3: 0.25, 4: 0.25, 5: 0.25}
    assert not curriculum.record([2, 3], [1.0, 1.0], step=1)
    assert curriculum.current_level == 2
    assert curriculum.metrics()["curriculum/accuracy_level_3"] == 1.0


def test_state_round_trip_continues_identically(tmp_path):
    def run(curriculum, steps):
        rows_by_level = {level: [i for i, lv in enumerate(ROW_LEVELS) if lv == level] for level in (2, 3, 4)}
        trace = []
        for step in steps:
            drawn = curriculum.draw(rows_by_level, 6)
            levels = [ROW_LEVELS[i] for i in drawn]
            correct = [float((i * 7 + step) % 3 != 0) for i in drawn]
            trace.append((drawn, curriculum.record(levels, correct, step), curriculum.current_level))
        return trace

    make = lambda: Curriculum([2, 3, 4], threshold=0.6, window=10, replay_fraction=0.25, seed=5)  # noqa: E731
    straight = make()
    whole = run(straight, range(1, 31))
    first = make()
    head = run(first, range(1, 16))
    first.save_to_checkpoint(tmp_path)
    state = json.loads((tmp_path / "curriculum_state.json").read_text())
    assert set(state) >= {"stage", "results", "rng", "start_steps", "draw_positions"}
    resumed = make()
    resumed.load_from_checkpoint(tmp_path)
    assert resumed.current_level == first.current_level and resumed.metrics() == first.metrics()
    assert head + run(resumed, range(16, 31)) == whole
    assert whole[-1][2] > 2  # the run did move up
    untouched = make()
    untouched.load_from_checkpoint(tmp_path / "nowhere")  # a checkpoint of a run without a curriculum
    assert untouched.state_dict() == make().state_dict()
    with pytest.raises(ConfigError, match="resume with the same levels"):
        Curriculum([2, 3]).load_state_dict(state)


def test_draws_follow_the_level_walk_each_level_and_repeat_with_the_seed():
    rows = levels_to_rows({"level": ROW_LEVELS}, Curriculum([2, 3]))
    curriculum = Curriculum([2, 3], threshold=1.0, window=1, seed=0)
    first = curriculum.draw(rows, 40)
    assert {ROW_LEVELS[i] for i in first} == {2}  # only the current level
    assert len(set(first)) == 40  # each level is walked without repetition before any row repeats
    assert Curriculum([2, 3], seed=0).draw(rows, 40) == first  # same seed, same draws: what keeps ranks in step
    curriculum.record([2], [1.0], step=1)
    assert {ROW_LEVELS[i] for i in curriculum.draw(rows, 8)} == {3}  # the next draw follows the new level


def test_local_groups_lay_a_batch_out_as_trls_sampler_and_accelerate_do():
    # 3 prompts x 2 generations over 2 ranks of 3 rows: each prompt's group consecutive, rank after rank.
    assert local_groups([5, 7, 9], num_generations=2, rank=0, batch=3) == [5, 5, 7]
    assert local_groups([5, 7, 9], num_generations=2, rank=1, batch=3) == [7, 9, 9]
    assert local_groups([5, 7], num_generations=4, rank=0, batch=8) == [5] * 4 + [7] * 4


def test_every_curriculum_level_needs_training_rows():
    with pytest.raises(ConfigError, match=r"no rows at levels \[6\]"):
        levels_to_rows({"level": ROW_LEVELS}, Curriculum([2, 6]))


def test_single_process_record_and_per_prompt_grouping():
    levels, correct = per_prompt([2, 2, 3, 3], [1.0, 0.0, 1.0, 1.0], num_generations=2)
    assert (levels, correct) == ([2, 3], [0.5, 1.0])
    with pytest.raises(ValueError, match="groups of 3"):
        per_prompt([2, 2], [1.0, 0.0], num_generations=3)
    curriculum = Curriculum([2, 3], threshold=0.5, window=2)
    assert curriculum.record_gathered(levels, correct, step=1) is False  # one level-2 prompt so far
    assert curriculum.record_gathered([2], [1.0], step=2) is True


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("curriculum", "seq", "curriculum: unknown value 'seq'"),
        ("curriculum_threshold", 1.5, "curriculum_threshold: 1.5"),
        ("curriculum_window", 0, "curriculum_window: 0"),
        ("curriculum_max_steps", -1, "curriculum_max_steps: -1"),
        ("curriculum_replay", 1.0, "curriculum_replay: 1.0"),
    ],
)
def test_bad_curriculum_fields_fail_with_one_line(field, value, message):
    with pytest.raises(ConfigError, match=message):
        GRPOScriptArguments(**{field: value})


def test_curriculum_from_grpo_script_arguments():
    data_args = GRPOScriptArguments(
        levels=[2, 4], curriculum="mixed", curriculum_window=3, curriculum_max_steps=7, curriculum_replay=0.1
    )
    curriculum = Curriculum.from_args(data_args, seed=3)
    assert (curriculum.levels, curriculum.mode, curriculum.window) == ([2, 4], "mixed", 3)
    assert (curriculum.max_steps_per_level, curriculum.replay_fraction) == (7, 0.1)
    with pytest.raises(ConfigError, match="repeats a level"):
        Curriculum([2, 2])
