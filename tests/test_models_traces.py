"""Trace statistics: summary, autocorrelation, two-sample KS."""

import math

import numpy as np
import pytest
from scipy import stats

from gawm_lib.models import autocorrelation, compare_traces, summarize_trace


def test_summary_values_and_nan_gaps():
    s = summarize_trace([1.0, 2.0, 3.0, 4.0, math.nan], quantiles=(0.5, 0.25))
    assert s.n == 4
    assert s.mean == pytest.approx(2.5) and s.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert (s.min, s.max) == (1.0, 4.0)
    assert s.quantiles == {0.5: pytest.approx(2.5), 0.25: pytest.approx(1.75)}
    assert summarize_trace([7.0]).std == 0.0
    with pytest.raises(ValueError, match="no finite samples"):
        summarize_trace([math.nan])
    with pytest.raises(ValueError, match="quantiles must lie in"):
        summarize_trace([1.0, 2.0], quantiles=(95,))


def test_autocorrelation_of_ar1():
    rng = np.random.default_rng(0)
    x = np.empty(20_000)
    x[0] = 0.0
    eps = rng.standard_normal(x.size)
    for t in range(1, x.size):
        x[t] = 0.8 * x[t - 1] + eps[t]
    acf = autocorrelation(x, 5)
    assert acf.shape == (6,) and acf[0] == 1.0
    np.testing.assert_allclose(acf, 0.8 ** np.arange(6), atol=0.03)
    white = autocorrelation(rng.standard_normal(20_000), 3)
    np.testing.assert_allclose(white[1:], 0.0, atol=0.03)


def test_autocorrelation_hand_checked():
    # x = [1, 2, 3, 4]: d = [-1.5, -.5, .5, 1.5], sum d^2 = 5; lag 1: (.75 - .25 + .75) / 5 = 0.25.
    np.testing.assert_allclose(autocorrelation([1, 2, 3, 4], 2), [1.0, 0.25, (-0.75 - 0.75) / 5])


@pytest.mark.parametrize(
    "values, lag, match",
    [
        ([1.0, 1.0, 1.0], 1, "constant"),
        ([1.0, math.nan, 2.0], 1, "unbroken"),
        ([1.0, 2.0, 3.0], 3, "max_lag must be"),
        ([1.0, 2.0, 3.0], -1, "max_lag must be"),
    ],
)
def test_autocorrelation_errors(values, lag, match):
    with pytest.raises(ValueError, match=match):
        autocorrelation(values, lag)


def test_ks_comparison():
    rng = np.random.default_rng(1)
    a, b = rng.normal(10, 1, 2000), rng.normal(10, 1, 2000)
    same = compare_traces(a, b)
    assert same.same_distribution() and same.p_value > 0.05
    ref = stats.ks_2samp(a, b)
    assert same.statistic == pytest.approx(ref.statistic) and same.p_value == pytest.approx(ref.pvalue)
    shifted = compare_traces(a, b + 0.5)
    assert not shifted.same_distribution() and shifted.p_value < 1e-6
    assert shifted.mean_diff == pytest.approx(b.mean() + 0.5 - a.mean())
    assert compare_traces(a, a).statistic == 0.0
    gap = compare_traces(np.append(a, math.nan), b)
    assert gap.n_a == 2000
    with pytest.raises(ValueError, match="trace b has no finite samples"):
        compare_traces(a, [math.nan])
