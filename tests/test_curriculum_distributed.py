"""Two real processes (torchrun, gloo): the curriculum and its draws agree on every step across ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent(
    """
    import json, os, sys

    import torch.distributed as dist

    from trl_smallrl.curriculum import Curriculum, broadcast_from_rank0, levels_to_rows, local_groups, per_prompt

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    row_levels = [2] * 20 + [3] * 20 + [4] * 20
    curriculum = Curriculum([2, 3, 4], threshold=0.6, window=8, replay_fraction=0.25, seed=0)
    rows = levels_to_rows({"level": row_levels}, curriculum)
    log = []
    for step in range(1, 31):
        batch = curriculum.draw(rows, 4)  # 4 prompts x 2 generations, split between the ranks, as the trainer draws
        mine = local_groups(batch, num_generations=2, rank=rank, batch=4)
        # Rank 0 is always right, rank 1 right one step in three: alone, they would decide differently.
        correct = [1.0 if rank == 0 or step % 3 == 0 else 0.0 for _ in mine]
        levels, accuracy = per_prompt([row_levels[i] for i in mine], correct, num_generations=2)
        gathered = [None] * dist.get_world_size()  # what the trainer gathers from every rank, in rank order
        dist.all_gather_object(gathered, (levels, accuracy))
        curriculum.record_gathered(
            [level for part in gathered for level in part[0]], [value for part in gathered for value in part[1]], step
        )
        log.append({"step": step, "level": curriculum.current_level, "batch": batch, "metrics": curriculum.metrics()})
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as handle:
        json.dump(log, handle)
    # The guard: a rank whose state drifted (here rank 1's RNG) gets rank 0's state back.
    if rank == 1:
        curriculum.rng.random()
    broadcast_from_rank0(curriculum)
    with open(os.path.join(sys.argv[1], f"state{rank}.json"), "w") as handle:
        json.dump(curriculum.state_dict(), handle)
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_two_ranks_log_the_same_level_at_every_step(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*command, str(worker), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert len(rank0) == len(rank1) == 30
    assert [entry["level"] for entry in rank0] == [entry["level"] for entry in rank1]
    assert rank0 == rank1  # same prompts drawn, same metrics, at every step
    # Rank 0 alone was always right: its window holds rank 1's results too (2 of the 4 prompts at step 1).
    assert rank0[0]["metrics"]["curriculum/accuracy_level_2"] == 0.5
    assert (tmp_path / "state0.json").read_text() == (tmp_path / "state1.json").read_text()
    levels = [entry["level"] for entry in rank0]
    assert levels[0] == 2 and levels[-1] > 2  # the gathered accuracy (2/3 on most windows) moved the run up
    assert levels == sorted(levels)
