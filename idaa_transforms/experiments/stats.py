"""Small, exact statistics for comparing training runs paired by seed.

Every variant is trained with the same seeds, so run ``i`` of a variant and run ``i`` of the baseline share their
initialisation, data order and augmentations: the right comparison is the *paired* difference per seed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Summary", "PairedComparison", "summarize", "paired_comparison", "sign_flip_p_value", "paired_t_p_value"]


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (``n - 1`` in the denominator) of ``n`` values."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}"


@dataclass(frozen=True)
class PairedComparison:
    """``variant - baseline`` per seed, summarised, with two-sided p-values for "no difference"."""

    differences: tuple[float, ...]
    summary: Summary
    t_p_value: float
    sign_flip_p_value: float


def summarize(values: Sequence[float]) -> Summary:
    """Mean ± sample std.

    Example:
        >>> str(summarize([1.0, 2.0, 3.0]))
        '2.00 ± 1.00'
    """
    if len(values) == 0:
        raise ValueError("summarize: expected at least one value, got none.")
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return Summary(mean, std, n)


def sign_flip_p_value(differences: Sequence[float]) -> float:
    """Exact two-sided permutation p-value of the mean paired difference under random sign flips.

    Under "no difference" each difference is as likely positive as negative; the p-value is the fraction of the
    ``2 ** n`` sign patterns whose mean is at least as far from zero as the observed one. With 5 seeds the smallest
    possible value is 2 / 32 = 0.0625: five seeds cannot show significance at 0.05 with this test.

    Example:
        >>> sign_flip_p_value([1.0, 2.0, 3.0])
        0.25
    """
    n = len(differences)
    if n == 0:
        raise ValueError("sign_flip_p_value: expected at least one difference, got none.")
    observed = abs(sum(differences))
    hits = sum(
        abs(sum(s * d for s, d in zip(signs, differences))) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=n)
    )
    return hits / 2**n


def paired_t_p_value(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test (Student's t with ``n - 1`` degrees of freedom).

    NaN where the test is undefined: fewer than 2 differences, or differences without spread (all equal), whose t
    statistic is 0 / 0 or infinite (``scipy.stats.ttest_1samp`` gives NaN there too).

    Example:
        >>> round(paired_t_p_value([1.0, 2.0, 3.0]), 4)
        0.0742
    """
    n = len(differences)
    if n < 2:
        return float("nan")
    s = summarize(differences)
    if s.std == 0:
        return float("nan")
    t = s.mean / (s.std / math.sqrt(n))
    return 2 * _student_t_sf(abs(t), n - 1)


def paired_comparison(variant: Sequence[float], baseline: Sequence[float]) -> PairedComparison:
    """Compare two lists of per-seed results (same seeds, same order).

    Example:
        >>> c = paired_comparison([71.0, 73.0, 72.0], [70.0, 71.0, 71.5])
        >>> [round(d, 1) for d in c.differences], str(c.summary)
        ([1.0, 2.0, 0.5], '1.17 ± 0.76')
    """
    if len(variant) != len(baseline):
        raise ValueError(f"paired_comparison: expected results for the same seeds, got {len(variant)} and {len(baseline)}.")
    differences = tuple(v - b for v, b in zip(variant, baseline))
    return PairedComparison(differences, summarize(differences), paired_t_p_value(differences),
                            sign_flip_p_value(differences))


def _student_t_sf(t: float, dof: int) -> float:
    """``P(T > t)`` for Student's t, via the regularised incomplete beta function."""
    x = dof / (dof + t * t)
    return 0.5 * _betainc(dof / 2, 0.5, x)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)`` by its continued fraction (Numerical Recipes' ``betacf``)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f / a
