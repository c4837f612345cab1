"""Open-loop (Poisson arrivals) latency predictions for single- and multi-server FCFS queues.

Arrival rates are requests/s, times seconds, ``service_scv`` is the squared coefficient of variation of the service
time (0 deterministic, 1 exponential). Means are exact for M/M/1, M/D/1, M/G/1 (Pollaczek-Khinchine) and M/M/c
(Erlang C); M/G/c uses the Allen-Cunneen / Lee-Longton approximation ``Wq ~ Wq(M/M/c) * (1 + scv) / 2``.

Quantiles: the waiting time is modelled as an atom at 0 of mass ``1 - P(wait)`` plus an exponential tail whose mean
matches ``Wq``; the sojourn is that wait plus an independent gamma service time with the right mean and SCV. This is
exact for M/M/1 and M/M/c and an approximation for M/D/1, M/G/1 and M/G/c (``QueuePrediction.exact_quantiles``).
Any utilisation >= 1 raises ``UnstableSystemError``: no infinite or negative numbers are returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize, stats

__all__ = ["UnstableSystemError", "QueuePrediction", "erlang_c", "mm1", "md1", "mg1", "mmc", "mgc", "sweep"]


class UnstableSystemError(ValueError):
    """Raised when the offered load reaches or exceeds capacity (utilisation >= 1): no steady state exists."""

    def __init__(self, utilisation: float, what: str = "queue"):
        self.utilisation = float(utilisation)
        super().__init__(
            f"unstable {what}: utilisation {utilisation:.4g} >= 1 (arrivals reach or exceed service capacity)"
        )


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _servers(servers: int) -> int:
    if int(servers) != servers or servers < 1:
        raise ValueError(f"servers must be a positive integer, got {servers}")
    return int(servers)


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability an arrival waits in M/M/c with ``offered_load = lambda * E[S]`` (Erlangs), c = ``servers``.

    Computed from the Erlang B recursion ``B_k = a B_{k-1} / (k + a B_{k-1})``, which never forms ``a^c / c!`` and so
    stays accurate for thousands of servers; then ``C = B / (1 - rho (1 - B))`` with ``rho = a / c``.
    """
    c = _servers(servers)
    a = _positive("offered_load", offered_load)
    rho = a / c
    if rho >= 1:
        raise UnstableSystemError(rho, f"M/M/{c}")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b / (1.0 - rho * (1.0 - b))


@dataclass(frozen=True)
class QueuePrediction:
    """Steady-state prediction for one queue at one arrival rate. Times in seconds, rates in requests/s."""

    model: str
    arrival_rate: float
    servers: int
    utilisation: float
    prob_wait: float
    mean_wait_s: float
    service_mean_s: float
    service_scv: float
    exact_quantiles: bool

    @property
    def mean_response_s(self) -> float:
        """Mean sojourn (wait + service) [s]."""
        return self.mean_wait_s + self.service_mean_s

    @property
    def mean_queue_length(self) -> float:
        """Mean number waiting (Little: lambda * Wq)."""
        return self.arrival_rate * self.mean_wait_s

    @property
    def mean_in_system(self) -> float:
        """Mean number waiting or in service (Little: lambda * W)."""
        return self.arrival_rate * self.mean_response_s

    def wait_survival(self, t: float) -> float:
        """P(wait > t): atom at 0 plus exponential tail of rate ``prob_wait / mean_wait_s``."""
        if t < 0:
            return 1.0
        if self.prob_wait <= 0:
            return 0.0
        return self.prob_wait * math.exp(-t * self.prob_wait / self.mean_wait_s)

    def wait_quantile(self, q: float) -> float:
        """q-quantile of the waiting time [s] (0 when q falls in the no-wait atom)."""
        _check_q(q)
        if q <= 1.0 - self.prob_wait:
            return 0.0
        return -math.log((1.0 - q) / self.prob_wait) * self.mean_wait_s / self.prob_wait

    def response_survival(self, t: float) -> float:
        """P(wait + service > t) under the module's waiting-time model."""
        if t <= 0:
            return 1.0
        s_mean, scv = self.service_mean_s, self.service_scv
        if scv == 0:
            return 1.0 if t < s_mean else self.wait_survival(t - s_mean)
        service = stats.gamma(1.0 / scv, scale=s_mean * scv)
        if self.prob_wait <= 0:
            return float(service.sf(t))
        eta = self.prob_wait / self.mean_wait_s
        # P(E + S > t) = P(S > t) + int_0^t f_S(s) exp(-eta (t - s)) ds for E ~ Exp(eta) independent of S.
        shape, rate = 1.0 / scv, 1.0 / (s_mean * scv)
        if eta < rate:
            # Closed form: exp(-eta s) tilts the gamma density into another gamma of rate (rate - eta).
            log_conv = -eta * t + shape * math.log(rate / (rate - eta))
            conv = math.exp(log_conv) * stats.gamma.cdf(t, shape, scale=1.0 / (rate - eta))
        else:
            conv, _ = integrate.quad(lambda s: service.pdf(s) * math.exp(-eta * (t - s)), 0.0, t, limit=200)
        return float(service.sf(t) + self.prob_wait * conv)

    def response_quantile(self, q: float) -> float:
        """q-quantile of the sojourn time [s] (exact for M/M/1 and M/M/c, see ``exact_quantiles``)."""
        _check_q(q)
        if self.service_scv == 0:
            return self.service_mean_s + self.wait_quantile(q)
        hi = self.service_mean_s + self.mean_wait_s + 1e-12
        while self.response_survival(hi) > 1.0 - q:
            hi *= 2.0
        return float(optimize.brentq(lambda t: self.response_survival(t) - (1.0 - q), 0.0, hi, xtol=1e-12, rtol=1e-10))

    @property
    def p50_s(self) -> float:
        """Median sojourn [s]."""
        return self.response_quantile(0.5)

    @property
    def p95_s(self) -> float:
        """95th-percentile sojourn [s]."""
        return self.response_quantile(0.95)


def _check_q(q: float) -> None:
    if not 0 < q < 1:
        raise ValueError(f"quantile must be in (0, 1), got {q}")


def _single(model: str, arrival_rate: float, service_mean_s: float, scv: float, exact: bool) -> QueuePrediction:
    lam = _positive("arrival_rate", arrival_rate)
    s = _positive("service_time_s", service_mean_s)
    if not (scv >= 0 and math.isfinite(scv)):
        raise ValueError(f"service_scv must be >= 0, got {scv}")
    rho = lam * s
    if rho >= 1:
        raise UnstableSystemError(rho, model)
    # Pollaczek-Khinchine: Wq = rho * E[S] * (1 + scv) / (2 (1 - rho)); in M/G/1 P(wait > 0) = rho exactly.
    wq = rho * s * (1.0 + scv) / (2.0 * (1.0 - rho))
    return QueuePrediction(model, lam, 1, rho, rho, wq, s, float(scv), exact)


def mm1(arrival_rate: float, service_time_s: float) -> QueuePrediction:
    """M/M/1: ``W = 1 / (mu - lambda)`` with ``mu = 1 / service_time_s``; sojourn is exponential (exact quantiles)."""
    return _single("M/M/1", arrival_rate, service_time_s, 1.0, True)


def md1(arrival_rate: float, service_time_s: float) -> QueuePrediction:
    """M/D/1: ``Wq = rho / (2 mu (1 - rho))``. Quantiles use the exponential-tail approximation (not exact)."""
    return _single("M/D/1", arrival_rate, service_time_s, 0.0, False)


def mg1(arrival_rate: float, service_time_s: float, service_scv: float) -> QueuePrediction:
    """M/G/1 mean wait by Pollaczek-Khinchine (exact); quantiles approximate unless ``service_scv == 1``."""
    return _single("M/G/1", arrival_rate, service_time_s, float(service_scv), service_scv == 1)


def mmc(arrival_rate: float, service_time_s: float, servers: int) -> QueuePrediction:
    """M/M/c with Erlang C: ``Wq = C(c, a) / (c mu - lambda)``; the waiting-time distribution is exact."""
    return mgc(arrival_rate, service_time_s, 1.0, servers)


def mgc(arrival_rate: float, service_time_s: float, service_scv: float, servers: int) -> QueuePrediction:
    """M/G/c by Allen-Cunneen / Lee-Longton: ``Wq ~ C(c, a) / (c mu - lambda) * (1 + scv) / 2``.

    ``P(wait)`` is taken as Erlang C (an approximation for non-exponential service). Exact when ``service_scv == 1``.
    """
    c = _servers(servers)
    lam = _positive("arrival_rate", arrival_rate)
    s = _positive("service_time_s", service_time_s)
    if not (service_scv >= 0 and math.isfinite(service_scv)):
        raise ValueError(f"service_scv must be >= 0, got {service_scv}")
    rho = lam * s / c
    model = f"M/{'M' if service_scv == 1 else 'G'}/{c}"
    if rho >= 1:
        raise UnstableSystemError(rho, model)
    pw = erlang_c(c, lam * s)
    wq = pw / (c / s - lam) * (1.0 + service_scv) / 2.0
    return QueuePrediction(model, lam, c, rho, pw, wq, s, float(service_scv), service_scv == 1)


def sweep(model, arrival_rates, **kwargs):
    """Evaluate ``model(rate, **kwargs)`` at each arrival rate; a tidy frame of utilisation, mean, p50, p95 [s]."""
    import pandas as pd  # local: keeps the module import light

    rows = []
    for lam in np.asarray(arrival_rates, dtype=float).ravel():
        pred = model(float(lam), **kwargs)
        rows.append(
            {
                "arrival_rate": float(lam),
                "utilisation": pred.utilisation,
                "mean_s": pred.mean_response_s,
                "p50_s": pred.p50_s,
                "p95_s": pred.p95_s,
            }
        )
    return pd.DataFrame(rows)
