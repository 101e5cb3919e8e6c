"""pass@k and its interval: the statistics of an eval, in a leaf so that plots and cards use them without the eval.

pass@k is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code"); the
interval treats the prompts as the sampled unit (Miller 2024, "Adding Error Bars to Evals").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from trl_smallrl.errors import ConfigError

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n - c, k) / C(n, k).

    Computed as 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms the huge binomials; it is
    exactly 1 when fewer than k samples are wrong (every draw of k then holds a correct one).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ConfigError(f"pass@k: needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}; use k <= samples.")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_interval(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean of per-prompt scores and the half-width of its 95% interval, z * sd / sqrt(m).

    The prompts are the sampled unit (the samples of one prompt are not independent), so the spread is taken
    over per-prompt scores, as the central limit theorem gives it. With every prompt alike (all 0 or all 1)
    the half-width is 0: say how many prompts there were beside such a figure. One prompt has no interval (None).
    """
    m = len(values)
    mean = sum(values) / m
    if m < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (m - 1)
    return mean, Z_95 * math.sqrt(variance / m)
