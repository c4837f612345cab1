"""Model validation: fit on some measured configurations, predict held-out ones, report errors.

Generic over the model: a *predictor* is a callable ``predictor(fit_frame, holdout_frame) -> DataFrame`` that fits
whatever it needs on ``fit_frame`` and returns one row per ``holdout_frame`` row (same order) with predicted metric
columns. Metrics default to ``throughput`` [requests/s], ``p50`` and ``p95`` [s]; any numeric columns work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["mape", "ValidationReport", "validate"]

DEFAULT_METRICS = ("throughput", "p50", "p95")


def mape(measured, predicted) -> float:
    """Mean absolute percentage error, ``100 * mean(|predicted - measured| / |measured|)`` [%].

    Raises ValueError for empty or mismatched inputs, non-finite values, or a zero measured value (undefined).
    """
    m = np.asarray(measured, dtype=float).ravel()
    p = np.asarray(predicted, dtype=float).ravel()
    if m.size == 0:
        raise ValueError("mape of an empty sample is undefined: no measured values")
    if m.size != p.size:
        raise ValueError(f"measured and predicted have different lengths ({m.size} != {p.size})")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(p))):
        raise ValueError("measured and predicted must be finite numbers")
    if np.any(m == 0):
        raise ValueError(f"mape is undefined when a measured value is zero ({int(np.sum(m == 0))} zero(s))")
    return float(100.0 * np.mean(np.abs(p - m) / np.abs(m)))


@dataclass(frozen=True, eq=False)
class ValidationReport:
    """``table``: tidy rows (config columns..., metric, measured, predicted, ape_pct); ``mape``: MAPE [%] per metric."""

    table: pd.DataFrame
    mape: dict[str, float]


Predictor = Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]


def validate(
    fit_frame: pd.DataFrame,
    holdout_frame: pd.DataFrame,
    predictor: Predictor,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    config_columns: Sequence[str] | None = None,
) -> ValidationReport:
    """Fit with ``predictor`` on ``fit_frame``, compare its predictions with the measured ``holdout_frame``.

    ``config_columns`` (default: every holdout column that is not a metric) identify each configuration in the table.
    Metrics missing from the holdout or the prediction raise KeyError; a zero measured value raises ValueError.
    """
    metrics = list(metrics)
    if len(holdout_frame) == 0:
        raise ValueError("holdout_frame is empty: nothing to validate")
    missing = [m for m in metrics if m not in holdout_frame.columns]
    if missing:
        raise KeyError(f"holdout_frame lacks measured metric column(s) {missing}")
    predicted = pd.DataFrame(predictor(fit_frame, holdout_frame))
    if len(predicted) != len(holdout_frame):
        raise ValueError(f"predictor returned {len(predicted)} rows for {len(holdout_frame)} holdout rows")
    missing = [m for m in metrics if m not in predicted.columns]
    if missing:
        raise KeyError(f"predictor output lacks metric column(s) {missing}")
    if config_columns is None:
        config_columns = [c for c in holdout_frame.columns if c not in metrics]
    configs = holdout_frame[list(config_columns)].reset_index(drop=True)
    parts = []
    for metric in metrics:
        measured = holdout_frame[metric].to_numpy(dtype=float)
        pred = predicted[metric].to_numpy(dtype=float)
        part = configs.copy()
        part["metric"] = metric
        part["measured"] = measured
        part["predicted"] = pred
        with np.errstate(divide="ignore", invalid="ignore"):
            part["ape_pct"] = 100.0 * np.abs(pred - measured) / np.abs(measured)
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    return ValidationReport(table, {m: mape(holdout_frame[m], predicted[m]) for m in metrics})
