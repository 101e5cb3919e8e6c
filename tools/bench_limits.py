"""Section 0 of `make bench` (`tools.bench`): this machine's limits, which bound every figure after it: the CPU and
whether it runs bf16 natively, the matmul peak in fp32 and bf16, and the memory read bandwidth (a decode step of a
small model reads every weight once)."""

from __future__ import annotations

import os
import time

from tools.bench_cases import _seconds


def machine() -> str:
    """The CPU with the instruction sets that decide bf16's speed, the cores, memory, GPU and torch."""
    import torch

    from trl_smallrl.precision import cpu_info

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    bf16 = "native bf16" if cpu_info().native_bf16 else "bf16 emulated"
    return f"{cpu_info().describe()}, {bf16}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {gpu}; torch {torch.__version__}"


def bf16_matmul_size() -> int:
    """The bf16 matmul's n: 2048 as fp32's where the CPU has native bf16; 512 where it emulates it on one thread at
    well under 1 GFLOP/s (2048^3 six times would hold the limits, before any case, about 9 minutes)."""
    from trl_smallrl.precision import cpu_info

    return 2048 if cpu_info().native_bf16 else 512


def matmul_peak(dtype_name: str, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul on this machine's CPU, the reference for the 'fraction of peak'."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def memory_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Best GB/s of reading a large float32 tensor (a sum), the bound of a memory-bound decode step."""
    import torch

    data = torch.ones(int(gib * 1024**3 / 4))
    data.sum()
    best = min(_seconds(data.sum) for _ in range(repeats))
    return data.numel() * 4 / best / 1e9


def limits_section(peaks: dict[str, float], bandwidth: float) -> str:
    n = bf16_matmul_size()
    return "\n".join(
        [
            "## 0. This machine's limits",
            "",
            f"Matmul (2048^3, all cores): fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.1f} GFLOP/s"
            f"{'' if n == 2048 else f' ({n}^3: emulated in software)'}. "
            f"Memory read: {bandwidth:.1f} GB/s.",
            "",
        ]
    )
