"""Fidelity of synthetic traces to real ones: one function per metric, each with its unit and direction in
:data:`METRICS`. ``real`` and ``synthetic`` are lists of 1-D series (one per segment: a run's step), in the unit of
what they hold; distribution metrics pool the segments, sequence metrics never join two.

- :func:`ks_distance`: ``sup_x |F_real(x) - F_syn(x)|``, the two-sample Kolmogorov-Smirnov statistic; 0 = same
  distribution, 1 = disjoint. Unitless, lower is better.
- :func:`wasserstein`: ``integral |F_real(x) - F_syn(x)| dx``, the earth mover's distance, in the values' unit; lower
  is better.
- :func:`acf_error`: ``mean_{k=1..L} |rho_real(k) - rho_syn(k)|``, the autocorrelations being those of all segments
  pooled (each segment centred on its own mean, so that steps at different levels add no correlation of their own;
  lag products summed within segments only); 0 = same correlation structure up to lag ``L``. Unitless, lower is
  better.
- :func:`discriminative_score`: the cross-validated accuracy of a classifier (a random forest on each window's
  values, sorted values and first differences) telling real windows of ``window`` samples from synthetic ones;
  0.5 = indistinguishable, 1 = always told apart. The score reported is ``max(0, accuracy - 0.5)``, lower is better:
  accuracy below chance is no evidence of a difference (identical sets give it, as each test window has a twin of
  the other label in the training folds).
- :func:`predictive_score`: train-on-synthetic, test-on-real: a ridge regression predicting each sample from the
  ``window`` before it is trained once on synthetic and once on real training segments, and both are tested on the
  real held-out segments; the score is ``MAE_synthetic / MAE_real`` (1 = the synthetic data teach as much as real data,
  above 1 worse). Unitless, lower is better (1 is the target).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str  # 'value': the unit of the series compared
    lower_is_better: bool
    perfect: float
    meaning: str


METRICS = {
    m.name: m
    for m in (
        Metric("ks", "1", True, 0.0, "Kolmogorov-Smirnov distance of the pooled values"),
        Metric("wasserstein", "value", True, 0.0, "Wasserstein-1 distance of the pooled values"),
        Metric("acf_error", "1", True, 0.0, "mean absolute autocorrelation difference at lags 1..L"),
        Metric("discriminative", "1", True, 0.0, "max(0, accuracy - 0.5) of a real-vs-synthetic window classifier"),
        Metric("predictive", "1", True, 1.0, "MAE train-on-synthetic / MAE train-on-real, tested on real"),
    )
}


def _series(segments) -> list[np.ndarray]:
    if isinstance(segments, np.ndarray) and segments.ndim == 1:
        segments = [segments]
    out = [np.asarray(s, dtype=float)[np.isfinite(np.asarray(s, dtype=float))] for s in segments]
    return [s for s in out if len(s)]


def _pooled(segments) -> np.ndarray:
    series = _series(segments)
    if not series:
        raise ValueError("no finite values to compare")
    return np.concatenate(series)


def ks_distance(real, synthetic) -> float:
    """Two-sample KS statistic of the pooled values (0 = identical distributions)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ties: scipy falls back from the exact p-value, unused here
        return float(stats.ks_2samp(_pooled(real), _pooled(synthetic)).statistic)


def wasserstein(real, synthetic) -> float:
    """Wasserstein-1 distance of the pooled values, in their unit (0 = identical distributions)."""
    return float(stats.wasserstein_distance(_pooled(real), _pooled(synthetic)))


def pooled_acf(segments, max_lag: int) -> np.ndarray:
    """Autocorrelation at lags 0..max_lag of segments taken together (see the module docstring); NaN where no
    segment is longer than the lag or the values are constant."""
    centred = [s - s.mean() for s in _series(segments)]
    denom = sum(float(d @ d) for d in centred)
    acf = np.full(max_lag + 1, np.nan)
    if denom == 0:
        return acf
    for k in range(max_lag + 1):
        if any(len(d) > k for d in centred):
            acf[k] = sum(float(d[: len(d) - k] @ d[k:]) for d in centred if len(d) > k) / denom
    return acf


def acf_error(real, synthetic, max_lag: int = 5) -> float:
    """Mean absolute difference of the pooled autocorrelations at lags 1..max_lag (lags where either is undefined
    are left out; NaN if all are)."""
    diff = np.abs(pooled_acf(real, max_lag)[1:] - pooled_acf(synthetic, max_lag)[1:])
    return float(np.nanmean(diff)) if np.isfinite(diff).any() else float("nan")


def windows(segments, window: int, stride: int = 1) -> np.ndarray:
    """Every run of ``window`` consecutive samples within a segment, ``stride`` apart: ``[n, window]``."""
    out = [np.lib.stride_tricks.sliding_window_view(s, window)[::stride] for s in _series(segments) if len(s) >= window]
    return np.vstack(out) if out else np.empty((0, window))


def _window_features(w: np.ndarray) -> np.ndarray:
    return np.hstack([w, np.sort(w, axis=1), np.diff(w, axis=1)])


def discriminative_accuracy(real, synthetic, window: int = 5, seed: int = 0, folds: int = 5) -> float:
    """Cross-validated accuracy of a random forest telling real windows from synthetic ones (classes balanced by
    subsampling the larger); NaN with fewer than ``2 * folds`` windows of either."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    rng = np.random.default_rng(seed)
    a, b = windows(real, window), windows(synthetic, window)
    n = min(len(a), len(b))
    if n < 2 * folds:
        return float("nan")
    a, b = a[rng.choice(len(a), n, replace=False)], b[rng.choice(len(b), n, replace=False)]
    X = _window_features(np.vstack([a, b]))
    y = np.r_[np.zeros(n), np.ones(n)]
    clf = RandomForestClassifier(n_estimators=50, max_depth=4, random_state=seed, n_jobs=1)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, X, y, cv=cv).mean())


def discriminative_score(real, synthetic, window: int = 5, seed: int = 0) -> float:
    """``max(0, accuracy - 0.5)`` of :func:`discriminative_accuracy` (0 = indistinguishable)."""
    return max(0.0, discriminative_accuracy(real, synthetic, window, seed) - 0.5)


def _lagged(segments, window: int) -> tuple[np.ndarray, np.ndarray]:
    w = windows(segments, window + 1)
    return w[:, :-1], w[:, -1]


def predictive_maes(synthetic, real_train, real_test, window: int = 3) -> tuple[float, float]:
    """Test MAE on ``real_test`` of a ridge one-step predictor trained on ``synthetic`` and on ``real_train``."""
    from sklearn.linear_model import Ridge

    X_test, y_test = _lagged(real_test, window)
    if len(y_test) == 0:
        return float("nan"), float("nan")
    maes = []
    for train in (synthetic, real_train):
        X, y = _lagged(train, window)
        if len(y) < window + 1:
            maes.append(float("nan"))
            continue
        model = Ridge(alpha=1e-3).fit(X, y)
        maes.append(float(np.mean(np.abs(model.predict(X_test) - y_test))))
    return maes[0], maes[1]


def predictive_score(synthetic, real_train, real_test, window: int = 3) -> float:
    """``MAE(train on synthetic) / MAE(train on real)`` on the real test segments (1 = as good as real data)."""
    synthetic_mae, real_mae = predictive_maes(synthetic, real_train, real_test, window)
    if not np.isfinite(real_mae) or real_mae == 0:
        return float("nan") if synthetic_mae != real_mae else 1.0
    return synthetic_mae / real_mae


def score_all(real, synthetic, real_train, max_lag: int = 5, window: int = 5, seed: int = 0) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one series: ``real`` (held-out segments), ``synthetic`` (generated for the
    same conditions and lengths), ``real_train`` (the segments the generator was fitted on); plus
    ``discriminative_accuracy`` and the two MAEs of the predictive score."""
    accuracy = discriminative_accuracy(real, synthetic, window, seed)
    mae_synthetic, mae_real = predictive_maes(synthetic, real_train, real, min(window, 3))
    return {
        "ks": ks_distance(real, synthetic),
        "wasserstein": wasserstein(real, synthetic),
        "acf_error": acf_error(real, synthetic, max_lag),
        "discriminative": max(0.0, accuracy - 0.5) if np.isfinite(accuracy) else accuracy,
        "discriminative_accuracy": accuracy,
        "predictive": mae_synthetic / mae_real if mae_real and np.isfinite(mae_real) else float("nan"),
        "mae_train_synthetic": mae_synthetic,
        "mae_train_real": mae_real,
        "n_real": int(sum(len(s) for s in _series(real))),
        "n_synthetic": int(sum(len(s) for s in _series(synthetic))),
    }
