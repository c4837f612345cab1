"""Latency of a dynamic-batching server (Triton-style) under Poisson arrivals.

Server: max batch ``B`` items, max queue delay ``D`` seconds, batch time ``s(b) = max(floor, alpha*b + beta)``
(:class:`~gawm_lib.models.service.BatchLatencyModel`). When it is free it dispatches, FIFO, the requests queued at
``max(free, min(oldest arrival + D, arrival of the B-th queued request))``, at most B of them.

Method (numerical, no simulation): an embedded Markov chain at dispatch epochs with state (requests left queued
``m``, size of the batch just dispatched ``b``); ``m > 0`` only after a full batch. From ``m = 0`` the next dispatch is
exactly ``max(s(b), min(u1 + D, uB))`` for the arrival times ``u`` after the dispatch, which splits into four cases
with closed-form probabilities (full batch during service; timeout already expired; timeout; batch fills while
waiting). Each request's latency (age at dispatch + s(batch)) is integrated on a grid in the cycle where it arrives,
giving the per-request latency distribution, its mean and quantiles. Approximations (documented, checked against
:func:`~gawm_lib.models.simulate.simulate_batching` in the tests):

* a request left behind by a full batch waits whole extra full-batch cycles ``s(B)`` and is itself served in a batch
  taking ``s(B)`` (its batch may really be smaller when the backlog is short);
* with a backlog the next batch is dispatched as soon as the server frees (exact when ``D <= s(B)``, since the oldest
  request has then waited at least ``s(B)``).

Batch times are deterministic given b (as in the simulator). With B = 1 the model is exactly M/D/1. Measured against
the simulator it is within ~1% for mean, p50 and p95 up to 85% utilisation (see tests/test_models_batching.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from .queueing import UnstableSystemError
from .service import BatchLatencyModel, BatchLatencyTable

__all__ = ["BatchingPrediction", "predict_batching"]

_NX = 96  # midpoint-rule points per service window: quantiles resolve to ~ s / 100, well inside simulation noise


@dataclass(frozen=True)
class BatchingPrediction:
    """Steady-state prediction at one arrival rate [requests/s]; times in seconds.

    ``utilisation`` is load relative to full-batch capacity ``lambda * s(B) / B`` (stability needs < 1);
    ``busy_fraction`` is the share of time the server computes; ``mean_batch_size`` is items per dispatched batch.
    ``requests_per_cycle`` is the model's count of requests arriving per dispatch; it must equal the mean batch size
    (flow balance), so their ratio is a check on the numerics.
    """

    arrival_rate: float
    max_batch: int
    max_delay_s: float
    utilisation: float
    busy_fraction: float
    mean_batch_size: float
    mean_response_s: float
    requests_per_cycle: float
    _latency: np.ndarray = field(repr=False, compare=False)
    _cdf: np.ndarray = field(repr=False, compare=False)

    def response_quantile(self, q: float) -> float:
        """q-quantile of per-request latency [s] (arrival to batch completion)."""
        if not 0 < q < 1:
            raise ValueError(f"quantile must be in (0, 1), got {q}")
        return float(np.interp(q, self._cdf, self._latency))

    @property
    def p50_s(self) -> float:
        return self.response_quantile(0.5)

    @property
    def p95_s(self) -> float:
        return self.response_quantile(0.95)


def _grid(lo: float, hi: float, n: int = _NX) -> tuple[np.ndarray, float]:
    if hi <= lo:
        return np.empty(0), 0.0
    dx = (hi - lo) / n
    return lo + (np.arange(n) + 0.5) * dx, dx


def _poisson_top(mean: float) -> int:
    """A count beyond which a Poisson(mean) has negligible (< 1e-12) mass."""
    return int(mean + 12.0 * math.sqrt(mean) + 15)


def _transition_matrix(lam: float, sb: np.ndarray, big: int, delay: float, n_left: int) -> np.ndarray:
    """Row-stochastic matrix over states: index b-1 is (m=0, batch b); index B-1+m is (m queued, batch B).

    With q requests queued at a dispatch the next state index is q-1 in both halves, which keeps the rows simple.
    The backlog is truncated at ``n_left``; the tail is folded into the last state.
    """
    size = big + n_left
    p = np.zeros((size, size))
    kb = np.arange(1, big)
    for b in range(1, big + 1):
        s = sb[b - 1]
        k = np.arange(big, size)
        p[b - 1, k - 1] = stats.poisson.pmf(k, lam * s)  # >= B arrived during service: full batch, rest left
        p[b - 1, size - 1] += stats.poisson.sf(size - 1, lam * s)
        if delay < s:  # timeout already expired at the free epoch: dispatch the K < B queued at once
            p[b - 1, kb - 1] += stats.poisson.pmf(kb, lam * s) * (1.0 - (delay / s) ** kb)
        # timeout: first arrival after s - D and fewer than B by u1 + D
        p[b - 1, kb - 1] += math.exp(-lam * max(0.0, s - delay)) * stats.poisson.pmf(kb - 1, lam * delay)
        p[b - 1, big - 1] += _fill_weights(lam, s, big, delay)[1].sum()
    # Backlog m >= 1: dispatch at the free epoch; q = m + K queued -> index m - 1 + K.
    m = np.arange(1, n_left + 1)
    top = min(size, _poisson_top(lam * sb[-1]))
    pmf = stats.poisson.pmf(np.arange(top), lam * sb[-1])
    for k in range(top):
        p[big - 1 + m, np.minimum(m - 1 + k, size - 1)] += pmf[k]
    p[big - 1 + m, size - 1] += max(0.0, 1.0 - pmf.sum())
    return p


def _fill_weights(lam: float, s: float, big: int, delay: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid over the fill span G = u_B - u_1 <= D (G ~ Gamma(B-1, lambda)) and the probability the batch fills then
    (first arrival after s - G and after s - D). With B = 1 an arrival to an idle server goes alone at once."""
    if big == 1:
        return np.zeros(1), np.array([math.exp(-lam * s)])
    g, dg = _grid(0.0, delay, 4 * _NX)
    if g.size == 0:
        return g, g
    return g, stats.gamma.pdf(g, big - 1, scale=1.0 / lam) * np.exp(-lam * np.maximum(0.0, s - g)) * dg


def _window_parts(weights: np.ndarray, s: float, lam: float, sb: np.ndarray, big: int) -> tuple[list, list]:
    """(latency, expected count) pairs for requests arriving in a service window of ``s`` seconds that follows a
    dispatch leaving m queued, m ~ ``weights[m]``: those in the next full batch, those in a partial batch (m >= 1),
    and those left behind (k extra full-batch cycles)."""
    s_full = sb[-1]
    x, dx = _grid(0.0, s)
    m_max = weights.size - 1
    n_i = _poisson_top(lam * s)
    pmf = stats.poisson.pmf(np.arange(n_i)[:, None], lam * x)  # arrival i+1 at x: density lam * pmf[i]
    later = stats.poisson.sf(np.arange(-1, big)[:, None], lam * (s - x))  # later[j+1] = P(>= j+1 more by s)
    lat, mass = [], []
    full = np.zeros(x.size)
    for m in range(0, min(big, m_max + 1)):
        room = big - m  # new arrivals that fit; arrival i <= room is in a full batch iff >= room - i more come
        i = np.arange(1, min(room, n_i) + 1)
        full += weights[m] * (pmf[i - 1] * later[room - i]).sum(axis=0)
    lat.append(s - x + s_full)
    mass.append(lam * full * dx)
    part = np.zeros(big)  # m >= 1 and K < room new arrivals: batch m + K dispatched at the free epoch
    for m in range(1, min(big - 1, m_max) + 1):
        k = np.arange(1, big - m)
        part[m + k - 1] += weights[m] * lam * stats.poisson.pmf(k - 1, lam * s) * dx
    for b in np.flatnonzero(part):
        lat.append(s - x + sb[b])
        mass.append(np.full(x.size, part[b]))
    # Left behind: queue position j+1 = m + i; it goes k = j // B full cycles later (for j >= B).
    pos = np.zeros((m_max + n_i, x.size))
    for m in np.flatnonzero(weights):
        pos[m:m + n_i] += weights[m] * pmf
    if pos.shape[0] > big:
        starts = np.arange(big, pos.shape[0], big)
        slots = np.add.reduceat(pos[big:], starts - big, axis=0)
        k = starts // big
        lat.append((s - x[None, :] + (k[:, None] + 1) * s_full).ravel())
        mass.append((lam * slots * dx).ravel())
    return lat, mass


def _formation_parts(weight: float, s: float, lam: float, sb: np.ndarray, big: int, delay: float):
    """(latency, expected count) pairs when fewer than B arrived during a service of ``s`` s with nothing left queued:
    expired timeout (dispatch at s), timeout at u1 + D, or the batch filling at u_B before the timeout."""
    s_full = sb[-1]
    lat, mass = [], []
    k = np.arange(1, big)[:, None]
    late = math.exp(-lam * max(0.0, s - delay))  # P(first arrival after s - D)
    if delay < s:
        # Expired: first arrival before s - D. Given K, arrivals are uniform on [0, s]; after s - D, subtract the
        # paths whose first arrival is later (closed form of the conditional density).
        for lo, hi, keep in ((0.0, s - delay, 0.0), (s - delay, s, 1.0)):
            xs, dxs = _grid(lo, hi)
            dens = lam * (stats.poisson.pmf(k - 1, lam * s) - keep * late * stats.poisson.pmf(k - 1, lam * delay))
            lat.append((s - xs[None, :] + sb[k - 1]).ravel())
            mass.append(np.broadcast_to(weight * dens * dxs, (k.size, xs.size)).ravel())
    # Timeout: n < B-1 others within D of the first; the first waited D, the others uniform on (0, D).
    pn = weight * late * stats.poisson.pmf(np.arange(big - 1), lam * delay)
    lat.append(delay + sb[: big - 1])
    mass.append(pn)
    y, dy = _grid(0.0, delay)
    if y.size and big > 2:
        n = np.arange(1, big - 1)[:, None]
        lat.append((y[None, :] + sb[n]).ravel())
        mass.append(np.broadcast_to(pn[n] * n * dy / delay, (n.size, y.size)).ravel())
    # Filled at u_B within D: ages G (first), 0 (last), uniform on (0, G) for the B-2 between.
    g, w = _fill_weights(lam, s, big, delay)
    if g.size:
        w = weight * w
        lat += [g + s_full, np.array([s_full])] if big > 1 else [np.array([s_full])]
        mass += [w, np.array([w.sum()])] if big > 1 else [w]
        if big > 2:
            v = (np.arange(16) + 0.5) / 16
            lat.append((np.outer(g, v) + s_full).ravel())
            mass.append(np.repeat(w * (big - 2) / 16, 16))
    return lat, mass


def predict_batching(arrival_rate: float, service: BatchLatencyModel | BatchLatencyTable, max_batch: int,
                     max_delay_s: float) -> BatchingPrediction:
    """Mean and quantiles of latency [s] for a dynamic-batching server at ``arrival_rate`` requests/s.

    Raises ``UnstableSystemError`` when ``arrival_rate * s(B) / B >= 1`` (even full batches cannot keep up), and
    ValueError when the utilisation is so close to 1 (> ~0.995) that the backlog cannot be represented accurately.
    """
    lam = float(arrival_rate)
    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"arrival_rate must be a positive finite number of requests/s, got {arrival_rate}")
    big = int(max_batch)
    if big != max_batch or big < 1:
        raise ValueError(f"max_batch must be a positive integer, got {max_batch}")
    delay = float(max_delay_s)
    if not (delay >= 0 and math.isfinite(delay)):
        raise ValueError(f"max_delay_s must be >= 0 seconds, got {max_delay_s}")
    sb = np.asarray(service.predict(np.arange(1, big + 1)), dtype=float)
    rho = lam * sb[-1] / big
    if rho >= 1:
        raise UnstableSystemError(rho, f"batching server (B={big})")
    # Backlog beyond a full batch is a random walk with drift (1-rho)B and variance rho*B per cycle: its tail decays
    # like exp(-2(1-rho)m/rho), so this many states leaves < 1e-10 of probability out.
    n_left = int(math.ceil(12.0 * rho / (1.0 - rho)) + 2 * big + 20)
    if n_left > 3000:
        raise ValueError(f"utilisation {rho:.4f} is too close to 1 for the batching model (backlog too long)")
    p = _transition_matrix(lam, sb, big, delay, n_left)
    size = p.shape[0]
    a = p.T - np.eye(size)
    a[-1] = 1.0  # replace one balance equation by the normalisation
    rhs = np.zeros(size)
    rhs[-1] = 1.0
    pi = np.clip(np.linalg.solve(a, rhs), 0.0, None)
    pi /= pi.sum()
    pi[pi < 1e-13] = 0.0
    lats, masses = _window_parts(pi[big - 1:], sb[-1], lam, sb, big)
    for b in range(1, big + 1):
        if pi[b - 1] > 0:
            if b < big:
                lat, mass = _window_parts(pi[b - 1:b], sb[b - 1], lam, sb, big)
                lats += lat
                masses += mass
            lat, mass = _formation_parts(pi[b - 1], sb[b - 1], lam, sb, big, delay)
            lats += lat
            masses += mass
    lat = np.concatenate(lats)
    mass = np.concatenate(masses)
    keep = mass > 0
    lat, mass = lat[keep], mass[keep]
    order = np.argsort(lat, kind="stable")
    lat, mass = lat[order], mass[order]
    cdf = np.cumsum(mass)
    total = cdf[-1]
    batch = np.minimum(np.arange(1, size + 1), big)
    mean_batch = float(pi @ batch)
    return BatchingPrediction(arrival_rate=lam, max_batch=big, max_delay_s=delay, utilisation=rho,
                              busy_fraction=lam * float(pi @ sb[batch - 1]) / mean_batch, mean_batch_size=mean_batch,
                              mean_response_s=float(lat @ mass / total), requests_per_cycle=float(total),
                              _latency=lat, _cdf=(cdf - 0.5 * mass) / total)
