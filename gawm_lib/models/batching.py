"""Latency of a dynamic-batching server (Triton-style) under Poisson arrivals.

Server: max batch ``B`` items, max queue delay ``D`` seconds, batch time ``s(b)`` (a
:class:`~gawm_lib.models.service.BatchLatencyModel` or a measured :class:`~gawm_lib.models.service.BatchLatencyTable`),
optionally times a random factor F drawn for each batch (the measured service-time variability, mean ~1). When it is
free it dispatches, FIFO, the requests queued at ``max(free, min(oldest arrival + D, arrival of the B-th queued
request))``, at most B of them.

Method (numerical, no simulation): an embedded Markov chain at dispatch epochs with state (requests left queued
``m``, size of the batch just dispatched ``b``); ``m > 0`` only after a full batch. From ``m = 0`` the next dispatch is
exactly ``max(s, min(u1 + D, uB))`` for the batch time s and the arrival times ``u`` after the dispatch, which splits
into four cases with closed-form probabilities (full batch during service; timeout already expired; timeout; batch
fills while waiting); with random batch times every case is mixed over the factor's values. Each request's latency
(age at dispatch + its batch's time) is integrated on a grid in the cycle where it arrives, giving the per-request
latency distribution, its mean and quantiles. Approximations (documented, checked against
:func:`~gawm_lib.models.simulate.simulate_batching` and :func:`~gawm_lib.models.simulate.replay_batching` in the tests):

* a request left behind by a full batch waits whole extra full-batch cycles ``s(B)`` and is itself served in a batch
  taking ``s(B)`` (its batch may really be smaller when the backlog is short); with random batch times the sum of
  those cycles keeps its mean and variance but takes the shape of one factor;
* with a backlog the next batch is dispatched as soon as the server frees (exact when ``D <= s(B)``, since the oldest
  request has then waited at least ``s(B)``).

With B = 1 the model is exactly M/D/1 (M/G/1 for the factors' distribution, in the mean). Measured against the
simulator it is within ~1 % for mean, p50 and p95 up to 85 % utilisation with deterministic batch times, and within
~3 % with DistilBERT's measured variability (CV 0.23) (see tests/test_models_batching.py). Ignoring that variability
under-predicts the p95 at 50-85 % utilisation by 9-27 %.
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

    ``utilisation`` is load relative to full-batch capacity, ``lambda * s(B) / B`` times the batch-time factors' mean
    (stability needs < 1);
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


def _factor_points(service_factors, points: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch-time factors as ``points`` weighted values: the sorted factors split into groups of (nearly) equal
    count, each group's mean weighted by its share. This keeps the mean exactly and the spread but for the within-group
    part. None: one factor 1 (deterministic batch times)."""
    if service_factors is None:
        return np.ones(1), np.ones(1)
    factors = np.sort(np.asarray(service_factors, dtype=float).ravel())
    if factors.size < 1 or not np.all(np.isfinite(factors) & (factors > 0)):
        raise ValueError("service_factors must be one or more positive finite numbers (batch time over its mean)")
    if int(points) != points or points < 1:
        raise ValueError(f"factor_points must be a positive integer, got {points}")
    groups = [g for g in np.array_split(factors, min(int(points), factors.size)) if g.size]
    return np.array([g.mean() for g in groups]), np.array([g.size for g in groups], dtype=float) / factors.size


def _idle_row(lam: float, s: float, big: int, delay: float, size: int) -> np.ndarray:
    """Transition probabilities from a dispatch of a batch taking ``s`` seconds with nothing left queued."""
    row = np.zeros(size)
    kb = np.arange(1, big)
    k = np.arange(big, size)
    row[k - 1] = stats.poisson.pmf(k, lam * s)  # >= B arrived during service: full batch, rest left
    row[size - 1] += stats.poisson.sf(size - 1, lam * s)
    if delay < s:  # timeout already expired at the free epoch: dispatch the K < B queued at once
        row[kb - 1] += stats.poisson.pmf(kb, lam * s) * (1.0 - (delay / s) ** kb)
    # timeout: first arrival after s - D and fewer than B by u1 + D
    row[kb - 1] += math.exp(-lam * max(0.0, s - delay)) * stats.poisson.pmf(kb - 1, lam * delay)
    row[big - 1] += _fill_weights(lam, s, big, delay)[1].sum()
    return row


def _transition_matrix(
    lam: float, sb: np.ndarray, big: int, delay: float, n_left: int, f: np.ndarray, w: np.ndarray
) -> np.ndarray:
    """Row-stochastic matrix over states: index b-1 is (m=0, batch b); index B-1+m is (m queued, batch B). A batch
    of b takes ``sb[b-1] * f[j]`` with probability ``w[j]``.

    With q requests queued at a dispatch the next state index is q-1 in both halves, which keeps the rows simple.
    The backlog is truncated at ``n_left``; the tail is folded into the last state.
    """
    size = big + n_left
    p = np.zeros((size, size))
    for b in range(1, big + 1):
        p[b - 1] = sum(wj * _idle_row(lam, sb[b - 1] * fj, big, delay, size) for fj, wj in zip(f, w))
    # Backlog m >= 1: dispatch at the free epoch; q = m + K queued -> index m - 1 + K.
    m = np.arange(1, n_left + 1)
    top = min(size, _poisson_top(lam * sb[-1] * f.max()))
    pmf = sum(wj * stats.poisson.pmf(np.arange(top), lam * sb[-1] * fj) for fj, wj in zip(f, w))
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


# A latency part: (wait, batch, expected count), arrays of one shape. A request's latency is its wait until its batch
# starts plus the time of its batch: ``batch`` is its size (1..B), or B + k for a request left behind k full cycles,
# whose own full batch starts k full-batch times after its wait (see :func:`_latency_distribution`).
Part = tuple[np.ndarray, np.ndarray, np.ndarray]


def _part(wait, batch, mass) -> Part:
    wait, batch, mass = np.broadcast_arrays(np.asarray(wait, float), np.asarray(batch), np.asarray(mass, float))
    return wait.ravel(), batch.ravel().astype(np.int64), mass.ravel()


def _window_parts(weights: np.ndarray, s: float, lam: float, sb: np.ndarray, big: int) -> list[Part]:
    """Latency parts of the requests arriving in a service window of ``s`` seconds that follows a dispatch leaving m
    queued, m ~ ``weights[m]``: those in the next full batch, those in a partial batch (m >= 1), and those left behind
    (k extra full-batch cycles)."""
    x, dx = _grid(0.0, s)
    m_max = weights.size - 1
    n_i = _poisson_top(lam * s)
    pmf = stats.poisson.pmf(np.arange(n_i)[:, None], lam * x)  # arrival i+1 at x: density lam * pmf[i]
    later = stats.poisson.sf(np.arange(-1, big)[:, None], lam * (s - x))  # later[j+1] = P(>= j+1 more by s)
    full = np.zeros(x.size)
    for m in range(0, min(big, m_max + 1)):
        room = big - m  # new arrivals that fit; arrival i <= room is in a full batch iff >= room - i more come
        i = np.arange(1, min(room, n_i) + 1)
        full += weights[m] * (pmf[i - 1] * later[room - i]).sum(axis=0)
    parts = [_part(s - x, big, lam * full * dx)]
    part = np.zeros(big)  # m >= 1 and K < room new arrivals: batch m + K dispatched at the free epoch
    for m in range(1, min(big - 1, m_max) + 1):
        k = np.arange(1, big - m)
        part[m + k - 1] += weights[m] * lam * stats.poisson.pmf(k - 1, lam * s) * dx
    parts += [_part(s - x, b + 1, part[b]) for b in np.flatnonzero(part)]
    # Left behind: queue position j+1 = m + i; it goes k = j // B full cycles later (for j >= B).
    pos = np.zeros((m_max + n_i, x.size))
    for m in np.flatnonzero(weights):
        pos[m : m + n_i] += weights[m] * pmf
    if pos.shape[0] > big:
        starts = np.arange(big, pos.shape[0], big)
        slots = np.add.reduceat(pos[big:], starts - big, axis=0)
        parts.append(_part(s - x[None, :], big + (starts // big)[:, None], lam * slots * dx))
    return parts


def _formation_parts(weight: float, s: float, lam: float, sb: np.ndarray, big: int, delay: float) -> list[Part]:
    """Latency parts when fewer than B arrived during a service of ``s`` s with nothing left queued: expired timeout
    (dispatch at s), timeout at u1 + D, or the batch filling at u_B before the timeout."""
    parts = []
    k = np.arange(1, big)[:, None]
    late = math.exp(-lam * max(0.0, s - delay))  # P(first arrival after s - D)
    if delay < s:
        # Expired: first arrival before s - D. Given K, arrivals are uniform on [0, s]; after s - D, subtract the
        # paths whose first arrival is later (closed form of the conditional density).
        for lo, hi, keep in ((0.0, s - delay, 0.0), (s - delay, s, 1.0)):
            xs, dxs = _grid(lo, hi)
            dens = lam * (stats.poisson.pmf(k - 1, lam * s) - keep * late * stats.poisson.pmf(k - 1, lam * delay))
            parts.append(_part(s - xs[None, :], k, weight * dens * dxs))
    # Timeout: n < B-1 others within D of the first; the first waited D, the others uniform on (0, D).
    pn = weight * late * stats.poisson.pmf(np.arange(big - 1), lam * delay)
    parts.append(_part(delay, np.arange(1, big), pn))
    y, dy = _grid(0.0, delay)
    if y.size and big > 2:
        n = np.arange(1, big - 1)[:, None]
        parts.append(_part(y[None, :], n + 1, pn[n] * n * dy / delay))
    # Filled at u_B within D: ages G (first), 0 (last), uniform on (0, G) for the B-2 between.
    g, w = _fill_weights(lam, s, big, delay)
    if g.size:
        w = weight * w
        parts += [_part(g, big, w), _part(0.0, big, w.sum())] if big > 1 else [_part(0.0, big, w)]
        if big > 2:
            v = (np.arange(16) + 0.5) / 16
            parts.append(_part(np.outer(g, v), big, np.repeat(w[:, None] * (big - 2) / 16, 16, axis=1)))
    return parts


_OWN_FACTOR_POINTS = 100  # a request's own batch time: the p95 at low load lies in the factors' top few per cent
_WAIT_BINS = 1024  # with random batch times the waits are binned (per batch) before the factors spread them


def _latency_distribution(
    parts: list[Part], sb: np.ndarray, f: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each latency [s] and its expected count: wait + the time of the request's batch, ``sb[b-1] * F`` for a batch
    of b, and ``k * s(B) * F_1 + ... + s(B) * F_k+1`` for one left behind k full cycles, whose sum is represented by
    its mean and variance, ``(k+1) s(B) E[F] + sqrt(k+1) s(B) (F - E[F])``. F takes the values ``f`` with weights
    ``w``; with one value (deterministic batch times) every latency is exact. With several, the waits of each batch
    are first summed into ``_WAIT_BINS`` bins (each at its mass-weighted mean wait), so the factors multiply a few
    thousand values per batch rather than every grid point."""
    wait, batch, mass = (np.concatenate(a) for a in zip(*parts))
    keep = mass > 0
    wait, batch, mass = wait[keep], batch[keep], mass[keep]
    big = sb.size
    cycles = np.maximum(np.arange(batch.max() + 1) - big + 1, 1)  # per batch code
    own = np.where(cycles > 1, cycles * sb[-1], sb[np.minimum(np.arange(batch.max() + 1), big) - 1])
    if f.size == 1:
        return wait + own[batch] * f[0], mass
    spread = np.where(cycles > 1, np.sqrt(cycles) * sb[-1], own)
    bins = np.minimum((wait / max(wait.max(), 1e-300) * _WAIT_BINS).astype(np.int64), _WAIT_BINS - 1)
    key = batch * _WAIT_BINS + bins
    cell_mass = np.bincount(key, weights=mass)
    cells = np.flatnonzero(cell_mass)
    cell_mass = cell_mass[cells]
    cell_wait = np.bincount(key, weights=mass * wait)[cells] / cell_mass
    code = cells // _WAIT_BINS
    mean = float(f @ w)
    lat = cell_wait[None, :] + own[code][None, :] * mean + spread[code][None, :] * (f[:, None] - mean)
    return lat.ravel(), (w[:, None] * cell_mass[None, :]).ravel()


def predict_batching(
    arrival_rate: float,
    service: BatchLatencyModel | BatchLatencyTable,
    max_batch: int,
    max_delay_s: float,
    *,
    service_factors=None,
    factor_points: int = 12,
) -> BatchingPrediction:
    """Mean and quantiles of latency [s] for a dynamic-batching server at ``arrival_rate`` requests/s.

    ``service_factors`` (optional, positive): the batch-time variability, as in
    :func:`~gawm_lib.models.simulate.replay_batching`: a batch of b takes ``service.predict(b)`` times a factor drawn
    independently from these (e.g. measured batch times over the fitted ones), represented by ``factor_points``
    group means (:func:`_factor_points`). Without them batch times are deterministic. Variability lengthens the tail:
    DistilBERT's batch times on a CPU core vary by 23 % (CV, text lengths) and the p95 at 85 % utilisation by a quarter.

    Raises ``UnstableSystemError`` when ``arrival_rate * s(B) * mean factor / B >= 1`` (even full batches cannot keep
    up), and ValueError when the utilisation is so close to 1 (> ~0.995) that the backlog cannot be represented
    accurately.
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
    f, w = _factor_points(service_factors, factor_points)
    mean_f = float(f @ w)
    scv = float(w @ (f - mean_f) ** 2) / mean_f**2
    sb = np.asarray(service.predict(np.arange(1, big + 1)), dtype=float)
    rho = lam * sb[-1] * mean_f / big
    if rho >= 1:
        raise UnstableSystemError(rho, f"batching server (B={big})")
    # Backlog beyond a full batch is a random walk with drift (1-rho)B and variance rho*B (1 + rho*B*scv) per cycle:
    # its tail decays like exp(-2(1-rho)m / (rho (1 + rho*B*scv))), so this many states leaves < 1e-10 out.
    n_left = int(math.ceil(12.0 * rho * (1.0 + rho * big * scv) / (1.0 - rho)) + 2 * big + 20)
    if n_left > 3000:
        raise ValueError(f"utilisation {rho:.4f} is too close to 1 for the batching model (backlog too long)")
    p = _transition_matrix(lam, sb, big, delay, n_left, f, w)
    size = p.shape[0]
    a = p.T - np.eye(size)
    a[-1] = 1.0  # replace one balance equation by the normalisation
    rhs = np.zeros(size)
    rhs[-1] = 1.0
    pi = np.clip(np.linalg.solve(a, rhs), 0.0, None)
    pi /= pi.sum()
    pi[pi < 1e-13] = 0.0
    parts = []
    for fj, wj in zip(f, w):  # the batch in service when a request arrives takes sb * fj
        parts += _window_parts(wj * pi[big - 1 :], sb[-1] * fj, lam, sb, big)
        for b in range(1, big + 1):
            if pi[b - 1] > 0:
                if b < big:
                    parts += _window_parts(wj * pi[b - 1 : b], sb[b - 1] * fj, lam, sb, big)
                parts += _formation_parts(wj * pi[b - 1], sb[b - 1] * fj, lam, sb, big, delay)
    lat, mass = _latency_distribution(parts, sb, *_factor_points(service_factors, _OWN_FACTOR_POINTS))
    order = np.argsort(lat, kind="stable")
    lat, mass = lat[order], mass[order]
    cdf = np.cumsum(mass)
    total = cdf[-1]
    batch = np.minimum(np.arange(1, size + 1), big)
    mean_batch = float(pi @ batch)
    return BatchingPrediction(
        arrival_rate=lam,
        max_batch=big,
        max_delay_s=delay,
        utilisation=rho,
        busy_fraction=lam * mean_f * float(pi @ sb[batch - 1]) / mean_batch,
        mean_batch_size=mean_batch,
        mean_response_s=float(lat @ mass / total),
        requests_per_cycle=float(total),
        _latency=lat,
        _cdf=(cdf - 0.5 * mass) / total,
    )
