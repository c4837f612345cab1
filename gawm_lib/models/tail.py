"""A configuration's p95 latency against its open-loop load: Kingman's heavy-traffic form, fitted to one sweep.

Kingman's formula puts a G/G/1 queue's mean wait at ``(ca² + cs²) / 2 · S · ρ / (1 - ρ)``, and its tail grows the same
way. A served model is not one queue (decode threads, the batcher and the GPU, one GIL), but on the H200 its p95 under
Poisson load followed the same form closely once the utilisation is taken against what open-loop arrivals can use::

    p95(λ) = t0 + k · x / (1 - x),    x = λ / (headroom · capacity)

``capacity``: the configuration's highest measured throughput (its closed-loop peak, or a Poisson step's where that
was higher; measured, not fitted); ``headroom``: the share of it a Poisson stream can use before the queue runs away
(bursts of arrivals cost the servers capacity, so it is < 1);
``t0``: the p95 with no queueing; ``k``: the queueing scale, which takes in the service time and its variability.

:func:`fit_tail_curve` fits ``t0``, ``k`` and ``headroom`` by least squares on log p95 over a sweep's steps, so each
step counts by its relative error. It predicts other rates of the configuration it was fitted on; ``k`` and
``headroom`` are the configuration's own (on the H200 they did not carry over from one replica count to another), so a
new replica count or batch setting needs a sweep of its own. :meth:`TailCurve.max_rate` turns it around for capacity:
the highest rate whose p95 meets an SLO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

__all__ = ["TailCurve", "fit_tail_curve"]

MIN_STEPS = 4  # three parameters: a fourth step leaves something to fit


@dataclass(frozen=True)
class TailCurve:
    """``p95(λ) = t0_s + k_s · x / (1 - x)``, ``x = λ / (headroom · capacity_rps)``; times in s, rates in req/s."""

    t0_s: float
    k_s: float
    headroom: float
    capacity_rps: float

    def __post_init__(self) -> None:
        for name in ("t0_s", "k_s", "headroom", "capacity_rps"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not (self.headroom > 0 and self.capacity_rps > 0):
            raise ValueError(f"headroom and capacity_rps must be > 0, got {self.headroom} and {self.capacity_rps}")

    @property
    def limit_rps(self) -> float:
        """The open-loop rate at which the predicted p95 grows without bound (``headroom · capacity``)."""
        return self.headroom * self.capacity_rps

    def p95_s(self, rate_rps) -> np.ndarray:
        """Predicted p95 [s] at each rate (``inf`` at or past :attr:`limit_rps`)."""
        x = np.asarray(rate_rps, dtype=float) / self.limit_rps
        if np.any(~np.isfinite(x) | (x < 0)):
            raise ValueError("rate_rps must be finite rates >= 0 requests/s")
        with np.errstate(divide="ignore"):
            return np.where(x < 1, self.t0_s + self.k_s * x / np.maximum(1 - x, 1e-300), np.inf)

    def max_rate(self, slo_p95_s: float) -> float:
        """The highest rate [req/s] whose predicted p95 is within ``slo_p95_s`` (0 where even an idle server's p95,
        ``t0_s``, misses it)."""
        if not slo_p95_s > 0:
            raise ValueError(f"slo_p95_s must be > 0 s, got {slo_p95_s}")
        room = slo_p95_s - self.t0_s
        if room <= 0:
            return 0.0
        return self.limit_rps * room / (room + self.k_s)


def fit_tail_curve(rates_rps, p95_s, capacity_rps: float) -> TailCurve:
    """The :class:`TailCurve` through one configuration's open-loop steps (offered rate, measured p95), with its
    measured ``capacity_rps``. Needs at least four steps at two or more rates below the capacity."""
    rates = np.asarray(rates_rps, dtype=float).ravel()
    p95 = np.asarray(p95_s, dtype=float).ravel()
    if rates.shape != p95.shape:
        raise ValueError(f"rates_rps and p95_s must pair up, got {rates.size} rates and {p95.size} p95s")
    if not (np.isfinite(capacity_rps) and capacity_rps > 0):
        raise ValueError(f"capacity_rps must be > 0 requests/s, got {capacity_rps}")
    if rates.size < MIN_STEPS:
        raise ValueError(f"fit_tail_curve needs at least {MIN_STEPS} steps (three parameters), got {rates.size}")
    if not (np.all(np.isfinite(rates) & (rates > 0)) and np.all(np.isfinite(p95) & (p95 > 0))):
        raise ValueError("rates_rps and p95_s must be finite and > 0")
    if np.any(rates >= capacity_rps):
        raise ValueError(
            f"steps at {rates[rates >= capacity_rps].tolist()} req/s are at or past the capacity "
            f"({capacity_rps:.4g} req/s): leave out saturated steps"
        )
    if np.unique(rates).size < 2:
        raise ValueError("fit_tail_curve needs steps at two or more rates")
    top = rates.max() / capacity_rps

    def residuals(p: np.ndarray) -> np.ndarray:
        t0, k, headroom = p
        x = rates / (headroom * capacity_rps)
        return np.log(t0 + k * x / (1 - x)) - np.log(p95)

    # headroom from just above the fastest step (its x < 1) to 1.5x the measured capacity
    lower = np.array([1e-9, 0.0, top * 1.0001])
    upper = np.array([p95.max(), 100 * p95.max(), max(1.5, top * 1.01)])
    start = np.clip([p95.min(), p95.min(), max(1.0, top * 1.1)], lower, upper)
    fit = optimize.least_squares(residuals, start, bounds=(lower, upper), x_scale=[p95.min(), p95.min(), 0.1])
    t0, k, headroom = (float(v) for v in fit.x)
    return TailCurve(t0_s=t0, k_s=k, headroom=headroom, capacity_rps=float(capacity_rps))
