"""Closed-loop scaling: Universal Scalability Law fits and exact Mean Value Analysis.

Concurrency ``N`` is the number of clients (or in-flight requests), throughput is requests/s, times are seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize
from scipy.special import gammaln, logsumexp

__all__ = ["USLModel", "fit_usl", "MVAResult", "mva"]


@dataclass(frozen=True)
class USLModel:
    """``X(N) = lam * N / (1 + sigma (N-1) + kappa N (N-1))``: lam [requests/s per client at N=1], sigma (contention)
    and kappa (coherency) dimensionless, with standard errors from the curve_fit covariance."""

    lam: float
    sigma: float
    kappa: float
    lam_se: float = 0.0
    sigma_se: float = 0.0
    kappa_se: float = 0.0

    def predict(self, concurrency):
        """Throughput [requests/s] at concurrency N (scalar or array, N > 0)."""
        n = np.asarray(concurrency, dtype=float)
        if np.any(~(n > 0)):
            raise ValueError(f"concurrency must be > 0, got {concurrency!r}")
        out = self.lam * n / (1.0 + self.sigma * (n - 1.0) + self.kappa * n * (n - 1.0))
        return float(out) if out.ndim == 0 else out

    @property
    def n_peak(self) -> float:
        """Concurrency of maximum throughput, ``sqrt((1 - sigma) / kappa)`` (>= 1); inf when kappa == 0 and
        sigma < 1 (throughput then rises monotonically towards ``lam / sigma``)."""
        if self.sigma >= 1:
            return 1.0
        if self.kappa == 0:
            return math.inf
        return max(1.0, math.sqrt((1.0 - self.sigma) / self.kappa))

    @property
    def peak_throughput(self) -> float:
        """Maximum throughput [requests/s]: X(n_peak), or the asymptote ``lam / sigma`` when kappa == 0."""
        if math.isinf(self.n_peak):
            return self.lam / self.sigma if self.sigma > 0 else math.inf
        return self.predict(self.n_peak)


def _usl(n, lam, sigma, kappa):
    return lam * n / (1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0))


def fit_usl(concurrency, throughput) -> USLModel:
    """Least-squares USL fit with bounds lam > 0, sigma >= 0, kappa >= 0 (scipy ``curve_fit``, trust-region).

    Needs at least 3 points with positive concurrency and throughput [requests/s].
    """
    n = np.asarray(concurrency, dtype=float).ravel()
    x = np.asarray(throughput, dtype=float).ravel()
    if n.size != x.size:
        raise ValueError(f"concurrency and throughput have different lengths ({n.size} != {x.size})")
    if n.size < 3:
        raise ValueError(f"need at least 3 (concurrency, throughput) points to fit the USL, got {n.size}")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(x))) or np.any(n <= 0) or np.any(x <= 0):
        raise ValueError("concurrency and throughput must be positive finite numbers")
    if np.unique(n).size < 3:
        raise ValueError("need at least 3 distinct concurrency levels to fit sigma and kappa")
    # Start from the per-client rate at the lowest concurrency and a small, interior contention (bounds are strict).
    lam0 = float(x[np.argmin(n)] / n.min())
    popt, pcov = optimize.curve_fit(
        _usl, n, x, p0=[lam0, 0.01, 1e-4], bounds=([1e-300, 0.0, 0.0], np.inf), max_nfev=10_000
    )
    se = np.sqrt(np.clip(np.diag(pcov), 0.0, None)) if np.all(np.isfinite(pcov)) else np.full(3, math.nan)
    return USLModel(*(float(v) for v in popt), *(float(v) for v in se))


@dataclass(frozen=True, eq=False)
class MVAResult:
    """Per population N = 1..n_users: throughput [requests/s], response time at the queueing station [s] (think time
    excluded), mean number at the station, and per-server utilisation."""

    population: np.ndarray
    throughput: np.ndarray
    response_time: np.ndarray
    queue_length: np.ndarray
    utilisation: np.ndarray
    method: str = field(default="exact")

    def to_frame(self):
        import pandas as pd  # local: keeps the module import light

        return pd.DataFrame(
            {
                "population": self.population,
                "throughput": self.throughput,
                "response_time_s": self.response_time,
                "queue_length": self.queue_length,
                "utilisation": self.utilisation,
            }
        )


def _mva_single(s: float, n_users: int, z: float) -> tuple[np.ndarray, np.ndarray]:
    # Exact MVA (Reiser-Lavenberg): an arrival sees the station as it is with one user fewer.
    x, r = np.empty(n_users), np.empty(n_users)
    q = 0.0
    for k in range(1, n_users + 1):
        r[k - 1] = s * (1.0 + q)
        x[k - 1] = k / (r[k - 1] + z)
        q = x[k - 1] * r[k - 1]
    return x, r


def _product_form(s: float, n_users: int, z: float, c: int) -> tuple[np.ndarray, np.ndarray]:
    # Exact c-server station + delay: P(j at station) ∝ z^(N-j)/(N-j)! * s^j / prod_{i<=j} min(i, c). This is what
    # load-dependent MVA computes, but in log space, so it avoids the recursion's cancellation in P(0 | N) at high load.
    x, r = np.empty(n_users), np.empty(n_users)
    jj = np.arange(n_users + 1)
    log_beta = np.concatenate([[0.0], np.cumsum(np.log(np.minimum(jj[1:], c)))])
    for n in range(1, n_users + 1):
        j = jj[: n + 1]
        if z > 0:
            logw = (n - j) * math.log(z) - gammaln(n - j + 1) + j * math.log(s) - log_beta[: n + 1]
        else:
            logw = np.where(j == n, 0.0, -np.inf)
        prob = np.exp(logw - logsumexp(logw))
        x[n - 1] = float(prob @ np.minimum(j, c)) / s
        r[n - 1] = float(prob @ j) / x[n - 1]
    return x, r


def mva(
    service_time_s: float, n_users: int, think_time_s: float = 0.0, servers: int = 1, *, method: str = "exact"
) -> MVAResult:
    """Closed network of ``n_users`` clients: a FCFS station with ``servers`` exponential servers (mean
    ``service_time_s``) plus a think (delay) station of mean ``think_time_s``.

    One server: exact MVA recursion. Several servers: ``method="exact"`` solves the load-dependent station exactly
    (product form, normalised in log space; O(N^2)); ``method="seidmann"`` is Seidmann's approximation (a single
    server of demand S/c plus a pure delay S(c-1)/c). With think time 0 and one server, response time at N is N*S.
    """
    s = float(service_time_s)
    z = float(think_time_s)
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"service_time_s must be a positive finite number, got {service_time_s}")
    if not (z >= 0 and math.isfinite(z)):
        raise ValueError(f"think_time_s must be >= 0, got {think_time_s}")
    if int(n_users) != n_users or n_users < 1:
        raise ValueError(f"n_users must be a positive integer, got {n_users}")
    if int(servers) != servers or servers < 1:
        raise ValueError(f"servers must be a positive integer, got {servers}")
    if method not in ("exact", "seidmann"):
        raise ValueError(f"method must be 'exact' or 'seidmann', got {method!r}")
    n, c = int(n_users), int(servers)
    if c == 1:
        x, r = _mva_single(s, n, z)
        method = "exact"
    elif method == "exact":
        x, r = _product_form(s, n, z, c)
    else:
        extra = s * (c - 1) / c
        x, r = _mva_single(s / c, n, z + extra)
        r = r + extra
    return MVAResult(np.arange(1, n + 1), x, r, x * r, x * s / c, method)
