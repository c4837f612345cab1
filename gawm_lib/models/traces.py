"""Statistics of a metric trace (a time series sampled at a fixed interval, e.g. GPU utilisation or latency).

Summaries and the Kolmogorov-Smirnov comparison ignore NaN samples (scrape gaps) and report how many were used;
autocorrelation needs an unbroken series, so there NaN is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["TraceSummary", "summarize_trace", "autocorrelation", "TraceComparison", "compare_traces"]


def _finite(values, name: str = "trace") -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if np.any(np.isinf(x)):
        raise ValueError(f"{name} contains infinite values")
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise ValueError(f"{name} has no finite samples")
    return x


@dataclass(frozen=True)
class TraceSummary:
    """Distribution of a trace's values (in the trace's unit): count of finite samples, mean, std (ddof=1; 0 for a
    single sample), min, max and the requested quantiles as ``{q: value}``."""

    n: int
    mean: float
    std: float
    min: float
    max: float
    quantiles: dict[float, float]


def summarize_trace(values, quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95, 0.99)) -> TraceSummary:
    """Summary distribution of the finite samples of ``values``."""
    x = _finite(values)
    qs = [float(q) for q in quantiles]
    if any(not 0 <= q <= 1 for q in qs):
        raise ValueError(f"quantiles must lie in [0, 1], got {qs}")
    qv = np.quantile(x, qs) if qs else []
    return TraceSummary(
        n=int(x.size),
        mean=float(x.mean()),
        std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
        min=float(x.min()),
        max=float(x.max()),
        quantiles=dict(zip(qs, (float(v) for v in qv))),
    )


def autocorrelation(values, max_lag: int) -> np.ndarray:
    """Sample autocorrelation at lags 0..max_lag (index = lag in samples; lag 0 is 1).

    Uses the standard biased estimator ``sum((x_t - m)(x_{t+k} - m)) / sum((x_t - m)^2)``, which keeps the sequence
    positive semi-definite. Raises ValueError for NaN/inf, a constant series, or ``max_lag >= len(values)``.
    """
    x = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError("autocorrelation needs an unbroken series: values contain NaN or inf")
    if int(max_lag) != max_lag or max_lag < 0 or max_lag >= x.size:
        raise ValueError(f"max_lag must be an integer in [0, {x.size - 1}], got {max_lag}")
    d = x - x.mean()
    denom = float(d @ d)
    if denom == 0:
        raise ValueError("autocorrelation of a constant series is undefined")
    return np.array([float(d[: x.size - k] @ d[k:]) / denom for k in range(int(max_lag) + 1)])


@dataclass(frozen=True)
class TraceComparison:
    """Two-sample KS comparison: statistic (max CDF gap), p-value, sample sizes, and the difference of means and
    medians (b minus a, in the trace's unit)."""

    statistic: float
    p_value: float
    n_a: int
    n_b: int
    mean_diff: float
    median_diff: float

    def same_distribution(self, alpha: float = 0.05) -> bool:
        """True when KS does not reject equality at level ``alpha``. Autocorrelated samples make the p-value
        optimistic (effective sample size is smaller), so thin a trace before relying on it."""
        return self.p_value >= alpha


def compare_traces(a, b) -> TraceComparison:
    """Kolmogorov-Smirnov two-sample test (``scipy.stats.ks_2samp``, two-sided) of the finite samples of a and b."""
    x, y = _finite(a, "trace a"), _finite(b, "trace b")
    res = stats.ks_2samp(x, y)
    return TraceComparison(
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        n_a=int(x.size),
        n_b=int(y.size),
        mean_diff=float(y.mean() - x.mean()),
        median_diff=float(np.median(y) - np.median(x)),
    )
