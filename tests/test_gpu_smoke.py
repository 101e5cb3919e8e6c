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


def test_every_gpu_check_runs_or_says_why_not():
    """Without DeepSpeed or vLLM, their checks print SKIP with the reason and the install line; none is dropped."""
    import importlib.util

    from tools import gpu_smoke

    checks = gpu_smoke._checks(cpu=False)
    names = [name for name, _, _ in checks]
    assert {"memory-0.5b", "memory-1.5b", "zero2", "zero3", "vllm-lora", "fsdp"} <= set(names)
    skips = {name: why for name, _, why in checks if why}
    if importlib.util.find_spec("vllm") is None:
        assert skips["vllm-lora"] == "vllm is not installed (pip install -e '.[vllm]')"
        assert "vllm is not installed" in skips["memory-0.5b"]  # the recipe rolls out with vLLM: measured with it
    if importlib.util.find_spec("deepspeed") is None:
        assert skips["zero3"] == "deepspeed is not installed (pip install -e '.[deepspeed]')"
        assert skips["memory-1.5b"].startswith("deepspeed is not installed")
    assert dict(zip(names, (config for _, config, _ in checks)))["memory-1.5b"] == "accelerate_configs/zero2.yaml"
    assert gpu_smoke.MEMORY_CHECKS["memory-1.5b"][0].name == "open_rs_cosine.yaml"
