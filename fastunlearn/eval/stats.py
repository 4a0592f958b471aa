"""How sure a figure is: binomial intervals for judged accuracies, and when a change is worth a colour.

Every accuracy the library reports is a count k of n generations the judge recognised; with n of a few
dozen to a few hundred, its sampling error is points, not decimals. So tables print the count and the
95 % Wilson score interval (well behaved at 0 % and 100 %, where the normal approximation gives ±0), and a
report colours a before → after change only when a two-proportion z-test at 95 % calls it significant.
"""
from __future__ import annotations

import math

#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054


def wilson_interval(k: int | float, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``k / n`` (``(0.0, 1.0)`` when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k <= 0 else max(0.0, centre - half)
    hi = 1.0 if k >= n else min(1.0, centre + half)
    return lo, hi


def proportion_change_significant(p1: float, n1: int, p2: float, n2: int, z: float = Z95) -> bool:
    """Whether ``p1`` (of ``n1``) and ``p2`` (of ``n2``) differ at 95 % (pooled two-proportion z-test).

    Unpaired, so conservative for before/after generations drawn from the same seeded noise.
    """
    if n1 <= 0 or n2 <= 0:
        return False
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return abs(p1 - p2) > z * se if se > 0 else False


def rate_text(p: float, n: int | None, digits: int = 1) -> str:
    """``"96.2% [94.8–97.2] n=900"``: a judged share with its 95 % Wilson interval and count."""
    if not n:
        return f"{p:.{digits}%}"
    lo, hi = wilson_interval(round(p * n), n)
    return f"{p:.{digits}%} [{lo * 100:.{digits}f}–{hi * 100:.{digits}f}] n={n}"


__all__ = ["wilson_interval", "proportion_change_significant", "rate_text", "Z95"]
