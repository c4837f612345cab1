"""Discrete-event simulation of open-loop servers, the ground truth the analytical models are checked against.

Arrivals are Poisson (rate in requests/s); times are seconds. Every function takes ``n_requests`` and ``seed`` and
returns the per-request latencies (arrival to completion, seconds) in arrival order, so runs are reproducible.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .service import BatchLatencyModel, BatchLatencyTable

__all__ = [
    "LatencySummary",
    "simulate_queue",
    "fcfs_completions",
    "simulate_batching",
    "replay_batching",
    "summarize_latencies",
]


def _check(arrival_rate: float, n_requests: int) -> None:
    if not arrival_rate > 0:
        raise ValueError(f"arrival_rate must be > 0 requests/s, got {arrival_rate}")
    if int(n_requests) < 1:
        raise ValueError(f"n_requests must be >= 1, got {n_requests}")


def _service_times(rng: np.random.Generator, mean_s: float, scv: float, n: int) -> np.ndarray:
    # Gamma with shape 1/scv matches the first two moments: scv=1 is exponential, scv=0 deterministic.
    if not mean_s > 0:
        raise ValueError(f"service_mean_s must be > 0 seconds, got {mean_s}")
    if not scv >= 0:
        raise ValueError(f"service_scv must be >= 0, got {scv}")
    if scv == 0:
        return np.full(n, float(mean_s))
    return rng.gamma(1.0 / scv, mean_s * scv, size=n)


def _lindley(service: np.ndarray, gaps: np.ndarray, block: int = 4096) -> np.ndarray:
    """Waiting times from W_k = max(0, W_{k-1} + S_{k-1} - T_k), T_k the gap before arrival k (W_0 = 0).

    Unrolled, ``W_k = max(W_start + P_k, P_k - min_{j<=k} P_j)`` with P the partial sums of S_{k-1} - T_k inside a
    block: vectorised, and re-based every ``block`` requests so the sums stay small and round-off stays ~1e-13 s.
    """
    n = service.size
    step = np.empty(n)
    step[0] = 0.0
    step[1:] = service[:-1] - gaps[1:]
    wait = np.empty(n)
    carry = 0.0
    for lo in range(0, n, block):
        walk = np.cumsum(step[lo : lo + block])
        wait[lo : lo + block] = np.maximum(carry + walk, walk - np.minimum.accumulate(walk))
        carry = wait[min(lo + block, n) - 1]
    return wait


def simulate_queue(
    arrival_rate: float,
    service_mean_s: float,
    *,
    service_scv: float = 1.0,
    servers: int = 1,
    n_requests: int = 100_000,
    seed: int = 0,
) -> np.ndarray:
    """Latencies [s] of a FCFS M/G/c queue with gamma service times (mean ``service_mean_s``, SCV ``service_scv``).

    One server uses the vectorised Lindley recursion; c servers a heap of server free-times (each arrival, in order,
    takes the server that frees first, which is FCFS). Unstable inputs are allowed here: the queue simply grows.
    """
    _check(arrival_rate, n_requests)
    if int(servers) < 1:
        raise ValueError(f"servers must be >= 1, got {servers}")
    rng = np.random.default_rng(seed)
    n = int(n_requests)
    arrivals = np.cumsum(rng.exponential(1.0 / arrival_rate, size=n))
    service = _service_times(rng, service_mean_s, service_scv, n)
    return fcfs_completions(arrivals, service, int(servers)) - arrivals


def fcfs_completions(arrivals: np.ndarray, service: np.ndarray, servers: int) -> np.ndarray:
    """Completion times [s] of requests arriving at ``arrivals`` (sorted) with ``service`` times at ``servers``
    identical FCFS servers sharing one queue: the Lindley recursion for one, else a heap of server free-times (each
    arrival, in order, takes the server that frees first)."""
    if servers == 1:
        return arrivals + _lindley(service, np.diff(arrivals, prepend=0.0)) + service
    free = [0.0] * servers
    done = np.empty(arrivals.size)
    for k in range(arrivals.size):
        done[k] = max(arrivals[k], heapq.heappop(free)) + service[k]
        heapq.heappush(free, done[k])
    return done


def simulate_batching(
    arrival_rate: float,
    service: BatchLatencyModel | BatchLatencyTable,
    max_batch: int,
    max_delay_s: float,
    *,
    n_requests: int = 100_000,
    seed: int = 0,
) -> np.ndarray:
    """Latencies [s] of one dynamic-batching server (Triton-style), deterministic batch time ``service.predict(b)``.

    When the server is free and requests wait, it dispatches at ``max(free, min(oldest + max_delay_s, arrival of the
    max_batch-th waiting request))`` the (up to ``max_batch``) requests queued by then, FIFO. The loop runs once per
    batch; arrivals are found with ``searchsorted``. Poisson arrivals; :func:`replay_batching` takes given ones.
    """
    _check(arrival_rate, n_requests)
    if int(max_batch) < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if not max_delay_s >= 0:
        raise ValueError(f"max_delay_s must be >= 0 seconds, got {max_delay_s}")
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / arrival_rate, size=int(n_requests)))
    return _batching(
        arrivals,
        np.asarray(service.predict(np.arange(1, int(max_batch) + 1)), dtype=float),
        int(max_batch),
        float(max_delay_s),
        None,
        rng,
    )[0]


def replay_batching(
    arrivals_s,
    service: BatchLatencyModel | BatchLatencyTable,
    max_batch: int,
    max_delay_s: float,
    *,
    service_factors=None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The same server as :func:`simulate_batching` driven by given arrival times [s] (sorted): a trace replay.

    ``service_factors`` (optional, positive): batch times are ``service.predict(b)`` times a factor drawn for each batch
    (with replacement, seeded) from these, e.g. the measured batch times divided by the fitted ones, so the replay
    carries the measured service-time variability; without them batch times are deterministic. Returns the latency
    [s] and the size of the batch that served it, per request, in arrival order.
    """
    arrivals = np.asarray(arrivals_s, dtype=float).ravel()
    if arrivals.size < 1 or not np.all(np.isfinite(arrivals)):
        raise ValueError("arrivals_s must be one or more finite arrival times [s]")
    if np.any(np.diff(arrivals) < 0):
        raise ValueError("arrivals_s must be sorted (arrival order)")
    if int(max_batch) < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if not max_delay_s >= 0:
        raise ValueError(f"max_delay_s must be >= 0 seconds, got {max_delay_s}")
    factors = None
    if service_factors is not None:
        factors = np.asarray(service_factors, dtype=float).ravel()
        if factors.size < 1 or not np.all(np.isfinite(factors) & (factors > 0)):
            raise ValueError("service_factors must be one or more positive finite numbers")
    return _batching(
        arrivals,
        np.asarray(service.predict(np.arange(1, int(max_batch) + 1)), dtype=float),
        int(max_batch),
        float(max_delay_s),
        factors,
        np.random.default_rng(seed),
    )


def _batching(
    arrivals: np.ndarray,
    batch_time: np.ndarray,
    big: int,
    max_delay_s: float,
    factors: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    n = arrivals.size
    done = np.empty(n)
    size = np.empty(n, dtype=np.int64)
    noise = rng.choice(factors, size=n) if factors is not None else None  # at most n batches
    free, i, k = 0.0, 0, 0
    while i < n:
        fill = arrivals[i + big - 1] if i + big - 1 < n else math.inf
        dispatch = max(free, min(arrivals[i] + max_delay_s, fill))
        j = min(i + big, int(np.searchsorted(arrivals, dispatch, side="right")))
        free = dispatch + batch_time[j - i - 1] * (noise[k] if noise is not None else 1.0)
        done[i:j] = free
        size[i:j] = j - i
        i, k = j, k + 1
    return done - arrivals, size


@dataclass(frozen=True)
class LatencySummary:
    """Mean, p50 and p95 latency [s] with confidence intervals (lo, hi) from batch means; ``n`` requests used."""

    mean: float
    p50: float
    p95: float
    mean_ci: tuple[float, float]
    p50_ci: tuple[float, float]
    p95_ci: tuple[float, float]
    n: int


def summarize_latencies(
    latencies, *, n_batches: int = 20, confidence: float = 0.95, warmup_fraction: float = 0.1
) -> LatencySummary:
    """Point estimates from all post-warm-up latencies [s]; CIs from ``n_batches`` contiguous batch statistics.

    Consecutive latencies are correlated, so the naive i.i.d. interval is far too narrow; means of long contiguous
    batches are nearly independent and a Student-t interval over them is the standard fix. The first
    ``warmup_fraction`` of requests (empty-system start) is dropped.
    """
    x = np.asarray(latencies, dtype=float).ravel()
    x = x[int(len(x) * warmup_fraction) :]
    if n_batches < 2 or len(x) < 10 * n_batches:
        raise ValueError(f"need at least {10 * max(n_batches, 2)} latencies after warm-up for {n_batches} batches")
    if not np.all(np.isfinite(x)):
        raise ValueError("latencies must be finite")
    chunks = np.array_split(x, n_batches)
    half = stats.t.ppf(0.5 + confidence / 2, n_batches - 1) / math.sqrt(n_batches)
    point = {"mean": float(x.mean()), "p50": float(np.quantile(x, 0.5)), "p95": float(np.quantile(x, 0.95))}
    per = {
        "mean": [c.mean() for c in chunks],
        "p50": [np.quantile(c, 0.5) for c in chunks],
        "p95": [np.quantile(c, 0.95) for c in chunks],
    }
    spread = {k: half * float(np.std(v, ddof=1)) for k, v in per.items()}
    ci = {k: (point[k] - spread[k], point[k] + spread[k]) for k in per}
    return LatencySummary(point["mean"], point["p50"], point["p95"], ci["mean"], ci["p50"], ci["p95"], len(x))
