"""Small statistics for the hold-out evaluation, stdlib only (the job declares no numpy/scipy).

Wilson intervals for proportions, a seeded paired bootstrap for everything else, Spearman's
rank correlation, quadratic-weighted kappa and the exact two-sided sign test. Sizes are a
hold-out set (up to a few thousand rows), so plain Python is fast enough and bounded:
``BOOTSTRAP_RESAMPLES`` resamples of ``n`` indices.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
BOOTSTRAP_RESAMPLES = 1000


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """The Wilson score interval of a proportion (sound at 0/n and n/n, unlike Wald's)."""
    if n <= 0:
        return None, None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _ranks(values: Sequence[float]) -> list[float]:
    """Average ranks (ties share the mean of their positions), 1-based."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:  # a constant side: no correlation to speak of
        return None
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's r of the average ranks; None when a side is constant."""
    return pearson(_ranks(x), _ranks(y)) if len(x) >= 2 else None


def quadratic_kappa(ref: Sequence[float], pred: Sequence[float]) -> float | None:
    """Quadratic-weighted kappa on the grade values themselves.

    1 - observed mean squared disagreement / the one expected if predictions were paired
    with references at random. For integer grades on an evenly spaced scale this equals
    Cohen's quadratic-weighted kappa; it also takes half points. None when the expected
    disagreement is 0 (both sides one constant).
    """
    n = len(ref)
    if n == 0:
        return None
    observed = sum((r - p) ** 2 for r, p in zip(ref, pred, strict=True)) / n
    mr, mp = sum(ref) / n, sum(pred) / n
    expected = (sum(r * r for r in ref) / n - 2 * mr * mp + sum(p * p for p in pred) / n)
    if expected <= 1e-12:
        return None
    return 1 - observed / expected


def sign_test(wins: int, losses: int) -> float | None:
    """Exact two-sided sign test (the exact McNemar test on discordant pairs): ties left out."""
    n = wins + losses
    if n == 0:
        return None
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def bootstrap_indices(n: int, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> list[list[int]]:
    """The same resamples for every statistic and both versions: the comparison is paired."""
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(n)] for _ in range(resamples)] if n else []


def percentile_interval(values: list[float], level: float = 0.95) -> tuple[float | None,
                                                                          float | None]:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None, None
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2

    def at(q: float) -> float:  # linear interpolation, numpy's default
        pos = q * (len(values) - 1)
        i = math.floor(pos)
        j = min(i + 1, len(values) - 1)
        return values[i] + (values[j] - values[i]) * (pos - i)

    return at(lo_q), at(hi_q)


def bootstrap(stat: Callable[[list[int]], float | None], resamples: list[list[int]]
              ) -> tuple[float | None, float | None]:
    """Percentile interval of ``stat`` over the resamples (each a list of row indices)."""
    return percentile_interval([stat(idx) for idx in resamples])


def paired_proportion_change(both: int, after_only: int, before_only: int, neither: int,
                             z: float = Z95) -> tuple[float | None, float | None]:
    """95 % interval of p_after - p_before on paired rows: Tango's score interval (1998).

    ``both``/``neither``: rows right (or wrong) for both versions; ``after_only``/
    ``before_only``: the discordant rows (gains and losses). The interval is every
    difference d whose score statistic (g - l - n d) / sqrt(n (2 q(d) + d (1 - d))), q(d)
    the constrained maximum-likelihood share of losses, stays within +-z; found by
    bisection, the statistic falling in d. It keeps its coverage at 20-60 rows, also
    when every discordant row goes one way, where a percentile bootstrap or Newcombe's
    hybrid interval is too narrow (the gate's false-promotion rate rests on this).
    """
    n = both + after_only + before_only + neither
    if n <= 0:
        return None, None
    g, lost = after_only, before_only

    def score(d: float) -> float:
        b = -(g + lost) + d * (2 * n - g + lost)
        c = -lost * d * (1 - d)
        q = (-b + math.sqrt(max(0.0, b * b - 8 * n * c))) / (4 * n)
        var = n * (2 * q + d * (1 - d))
        diff = g - lost - n * d
        if var <= 1e-15:
            return math.copysign(math.inf, diff) if diff else 0.0
        return diff / math.sqrt(var)

    def solve(target: float, lo: float, hi: float) -> float:
        for _ in range(80):  # 2^-80 of the range: far below any reported digit
            mid = (lo + hi) / 2
            if score(mid) > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    estimate = (g - lost) / n
    low = solve(z, -1.0, estimate) if score(-1.0 + 1e-12) > z else -1.0
    high = solve(-z, estimate, 1.0) if score(1.0 - 1e-12) < -z else 1.0
    return low, high
