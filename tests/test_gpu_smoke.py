"""The GPU smoke script's checks that need no GPU, run as a user would: `python -m tools.gpu_smoke --cpu`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_checks_of_the_gpu_smoke_script_pass():
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "tools.gpu_smoke", "--cpu"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert [line.split(":")[0] for line in lines] == ["ok   kk-steps", "ok   temperature-reset", "ok   fsdp-refusal"]
    assert "of the weights moved in 3 steps" in lines[0] and "reset refused in one line" in lines[2]
