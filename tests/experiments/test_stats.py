"""The comparison statistics on numbers whose answers are known."""

from __future__ import annotations

import math

import pytest

from idaa_transforms.experiments.stats import paired_comparison, paired_t_p_value, sign_flip_p_value, summarize


def test_summary_mean_and_sample_std():
    s = summarize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert s.mean == 5.0
    assert math.isclose(s.std, math.sqrt(32 / 7))  # sample std: sum of squares 32 over n - 1 = 7
    assert str(summarize([1.0, 3.0])) == "2.00 ± 1.41"
    assert math.isnan(summarize([1.0]).std)
    with pytest.raises(ValueError, match="at least one value"):
        summarize([])


def test_paired_differences_are_per_seed():
    c = paired_comparison([10.0, 12.0, 11.0, 15.0], [9.0, 12.5, 10.0, 13.0])
    assert c.differences == (1.0, -0.5, 1.0, 2.0)
    assert c.summary.mean == pytest.approx(0.875)
    with pytest.raises(ValueError, match="same seeds"):
        paired_comparison([1.0, 2.0], [1.0])


def test_sign_flip_is_exact():
    # All positive: only the all-plus and all-minus patterns are as extreme -> 2 / 2**n.
    assert sign_flip_p_value([0.5, 1.0, 2.0, 0.1, 0.3]) == 2 / 32
    # Symmetric differences: every pattern is at least as extreme as a zero mean.
    assert sign_flip_p_value([1.0, -1.0]) == 1.0
    # [3, 1, -1] sums to 3; over the 8 sign patterns the sums are 3, 5, 1, 3, -3, -1, -5, -3: 6 reach |3|.
    assert sign_flip_p_value([3.0, 1.0, -1.0]) == 0.75


def test_paired_t_matches_reference_values():
    # Reference: scipy.stats.ttest_1samp(d, 0).pvalue, and the closed form for 1 degree of freedom.
    assert paired_t_p_value([1.0, 2.0, 3.0]) == pytest.approx(0.0741799002, rel=1e-8)
    d = [1.0, 3.0]  # t = 2 / (sqrt(2) / sqrt(2)) = 2 with 1 dof: p = 1 - 2 * atan(2) / pi
    assert paired_t_p_value(d) == pytest.approx(1 - 2 * math.atan(2) / math.pi, rel=1e-10)
    # No spread: t is infinite or 0 / 0, the test undefined (scipy says NaN too), never "p = 0".
    assert math.isnan(paired_t_p_value([0.5, 0.5])) and math.isnan(paired_t_p_value([0.0, 0.0]))
    assert math.isnan(paired_t_p_value([1.0]))


def test_paired_t_agrees_with_scipy_when_available():
    stats = pytest.importorskip("scipy.stats")
    for d in ([0.3, -1.2, 2.2, 0.7, 0.1], [5.0, 4.0, 6.5, 5.5], [-0.01, 0.02, -0.03, 0.05, 0.04, -0.02]):
        assert paired_t_p_value(d) == pytest.approx(stats.ttest_1samp(d, 0).pvalue, rel=1e-9)
