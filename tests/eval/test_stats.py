"""Binomial intervals and the significance rule the report colours by, against scipy."""
import pytest
from scipy.stats import binomtest, norm

from fastunlearn.eval.stats import Z95, proportion_change_significant, rate_text, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 8), (0, 100), (2, 100), (50, 100), (866, 900), (900, 900), (1, 1)])
def test_wilson_interval_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert Z95 == pytest.approx(norm.ppf(0.975), abs=1e-12)


def test_two_proportion_rule():
    # 97.8 % vs 96.2 % of 900 each: pooled z = 1.98 (> 1.96); the same rates on 100 each are noise
    assert proportion_change_significant(0.978, 900, 0.962, 900)
    assert not proportion_change_significant(0.978, 100, 0.962, 100)
    assert not proportion_change_significant(0.9375, 16, 0.875, 16)
    assert proportion_change_significant(1.0, 100, 0.02, 100)
    assert not proportion_change_significant(0.0, 100, 0.0, 100) and not proportion_change_significant(0.5, 0, 0.4, 9)


def test_rate_text():
    assert rate_text(0.02, 100) == "2.0% [0.6–7.0] n=100"
    assert rate_text(0.5, None) == "50.0%"
