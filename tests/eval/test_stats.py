import math

import pytest

from panacea.eval.stats import auroc, binomial_ci_halfwidth, mean_ci, t_quantile, wilson_interval


def test_wilson_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(40.38, abs=0.01) and hi == pytest.approx(59.62, abs=0.01)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(27.75, abs=0.01)
    lo, hi = wilson_interval(10, 10)
    assert hi == 100.0 and lo == pytest.approx(72.25, abs=0.01)


def test_wilson_rejects_bad_counts():
    for k, n in [(1, 0), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError):
            wilson_interval(k, n)


def test_binomial_halfwidth_matches_protocol():
    # docs/protocol.md#judge-variance-and-intervals: about ±3.1 points at HS = 50 over 1000 prompts
    assert binomial_ci_halfwidth(500, 1000) == pytest.approx(3.099, abs=1e-3)
    assert binomial_ci_halfwidth(0, 1000) == 0.0


def test_mean_ci():
    mean, half = mean_ci([1.0, 2.0, 3.0])  # s = 1, t(2) = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3), rel=1e-9)
    mean, half = mean_ci([5.0])
    assert mean == 5.0 and math.isnan(half)
    assert mean_ci([4.0, 4.0])[1] == 0.0
    assert t_quantile(1) == 12.706 and t_quantile(30) == 2.042 and t_quantile(100) == 1.96
    with pytest.raises(ValueError):
        mean_ci([])


def test_auroc():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert auroc([0.5] * 4, [0, 1, 0, 1]) == 0.5
    # one positive ties one negative: pairs (pos>neg) = 3 of 4, tie counts 1/2 -> 3.5/4
    assert auroc([0.3, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))
