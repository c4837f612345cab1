"""A GPU server as the H200 runs showed it: a CPU stage on a few threads, then the dynamic batcher on the GPU.

On a GPU the batch is quick and the server's CPU work sets the pace: reading the body, parsing and decoding the
request (JPEG decoding and resizing, tokenisation) on ``threads`` decode threads, and outside them the event loop's
HTTP handling and the answer's way back. A model of the GPU alone (:func:`~gawm_lib.models.batching.predict_batching`)
misses that stage; this one puts it in front:

1. **CPU stage**: an M/G/c queue, ``c = threads``, service times drawn from ``cpu_in_s`` (measured at low load)
   stretched by the *slowdown* ``1 + per_replica_slowdown x replica_rate + host_slowdown x host_rate``: threads of one
   process contend for its GIL, processes for the host's cores, so each request's CPU work takes longer the busier
   they are (on the H200, ResNet50's decode took 3.7 ms a request at one user and the equivalent of 7.5 ms at
   saturation);
2. **batcher**: the requests, in the order the CPU stage finishes them, go through the dynamic batcher
   (:func:`~gawm_lib.models.simulate.replay_batching`: ``max_batch``, ``max_delay_s``, measured batch times), plus a
   constant ``dispatch_s`` (collating and copying a batch at low load);
3. **the rest**: ``cpu_out_s`` (measured at low load, the same slowdown): the answer's way back and the client.

:func:`plan_tandem` answers the capacity question with it: the fewest replicas (load split evenly) whose predicted
p95 meets an SLO with the CPU stage under a utilisation cap.

The slowdowns are fitted from closed-loop runs at saturation (:func:`fit_slowdown`): there the CPU stage is the
bottleneck, so ``threads / (mean(cpu_in_s) x slowdown) = replica_rate``, one linear equation in the two slowdowns per
run. The prediction is a seeded simulation (no closed form for the tandem with load-dependent service), with the
simulator's usual warm-up cut; past the CPU stage's capacity (:meth:`TandemServer.capacity_rps`) it raises
:class:`~gawm_lib.models.queueing.UnstableSystemError` rather than report a queue that grows without end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from .queueing import UnstableSystemError
from .service import BatchLatencyModel, BatchLatencyTable
from .simulate import fcfs_completions, replay_batching

__all__ = ["TandemServer", "TandemPlan", "fit_slowdown", "plan_tandem"]


def _samples(name: str, values) -> np.ndarray:
    out = np.asarray(values, dtype=float).ravel()
    if out.size < 1 or not np.all(np.isfinite(out) & (out >= 0)):
        raise ValueError(f"{name} must be one or more finite times >= 0 [s]")
    return out


@dataclass(frozen=True)
class TandemServer:
    """One replica (of ``replicas`` on the host): CPU stage, batcher, the rest. Times in seconds, rates in req/s."""

    cpu_in_s: tuple[float, ...]
    cpu_out_s: tuple[float, ...]
    threads: int
    batch: BatchLatencyModel | BatchLatencyTable
    max_batch: int
    max_delay_s: float
    dispatch_s: float = 0.0
    per_replica_slowdown: float = 0.0
    host_slowdown: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cpu_in_s", tuple(_samples("cpu_in_s", self.cpu_in_s)))
        object.__setattr__(self, "cpu_out_s", tuple(_samples("cpu_out_s", self.cpu_out_s)))
        if int(self.threads) < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if int(self.max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        for name in ("max_delay_s", "dispatch_s", "per_replica_slowdown", "host_slowdown"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not np.mean(self.cpu_in_s) > 0:
            raise ValueError("cpu_in_s must not be all zero: the CPU stage needs some work to model")

    def slowdown(self, replica_rate: float, replicas: int = 1) -> float:
        """How much longer each request's CPU work takes at this load than at low load (>= 1)."""
        return 1.0 + self.per_replica_slowdown * replica_rate + self.host_slowdown * replica_rate * replicas

    def capacity_rps(self, replicas: int = 1) -> float:
        """Per-replica rate at which the CPU stage saturates: ``threads / (mean(cpu_in) x slowdown(rate)) = rate``."""
        mean_in = float(np.mean(self.cpu_in_s))
        k = self.per_replica_slowdown + self.host_slowdown * replicas
        if k == 0:
            return self.threads / mean_in
        # k x^2 + x - threads / mean_in = 0, the positive root
        return (-1.0 + np.sqrt(1.0 + 4.0 * k * self.threads / mean_in)) / (2.0 * k)

    def utilisation(self, replica_rate: float, replicas: int = 1) -> float:
        """The CPU stage's utilisation at ``replica_rate`` req/s per replica."""
        return replica_rate / self.capacity_rps(replicas)

    def simulate(
        self, replica_rate: float, replicas: int = 1, *, n_requests: int = 20_000, warmup: float = 0.1, seed: int = 0
    ) -> np.ndarray:
        """Latencies [s] of ``n_requests`` Poisson arrivals at ``replica_rate`` per replica (the first ``warmup``
        share dropped). :class:`UnstableSystemError` at or past the CPU stage's capacity."""
        if not replica_rate > 0:
            raise ValueError(f"replica_rate must be > 0 requests/s, got {replica_rate}")
        if int(replicas) < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        if int(n_requests) < 10:
            raise ValueError(f"n_requests must be >= 10, got {n_requests}")
        if not 0 <= warmup < 1:
            raise ValueError(f"warmup must be a share in [0, 1), got {warmup}")
        rho = self.utilisation(replica_rate, replicas)
        if rho >= 1:
            raise UnstableSystemError(rho, "CPU stage")
        rng = np.random.default_rng(seed)
        n = int(n_requests)
        factor = self.slowdown(replica_rate, replicas)
        arrivals = np.cumsum(rng.exponential(1.0 / replica_rate, size=n))
        work = rng.choice(np.asarray(self.cpu_in_s), size=n) * factor
        ready = fcfs_completions(arrivals, work, int(self.threads))  # FCFS on the first free decode thread
        order = np.argsort(ready, kind="stable")
        batched, _ = replay_batching(ready[order], self.batch, int(self.max_batch), self.max_delay_s, seed=seed)
        done = np.empty(n)
        done[order] = ready[order] + batched
        latency = done - arrivals + self.dispatch_s + rng.choice(np.asarray(self.cpu_out_s), size=n) * factor
        return latency[int(warmup * n) :]


def fit_slowdown(threads: int, cpu_in_mean_s: float, saturation: list[tuple[int, float]]) -> tuple[float, float]:
    """``(per_replica_slowdown, host_slowdown)`` from closed-loop runs at saturation, ``(replicas, host throughput
    [req/s])`` each, where the CPU stage is the bottleneck: ``threads / (cpu_in_mean_s x slowdown) = X / replicas``.

    Least squares with both >= 0. With one replica count only the two cannot be told apart: all of it is then taken
    as per-replica contention (``host_slowdown = 0``). A run faster than the stage could be with no slowdown at all
    (``X / replicas > threads / cpu_in_mean_s``) says the stage was not its bottleneck: ValueError."""
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if not cpu_in_mean_s > 0:
        raise ValueError(f"cpu_in_mean_s must be > 0 s, got {cpu_in_mean_s}")
    if not saturation:
        raise ValueError("fit_slowdown needs at least one (replicas, throughput) at saturation")
    rows, rhs = [], []
    for replicas, throughput in saturation:
        if int(replicas) < 1 or not throughput > 0:
            raise ValueError(f"saturation point {(replicas, throughput)}: expected replicas >= 1 and throughput > 0")
        per = throughput / replicas
        stretch = threads / (cpu_in_mean_s * per) - 1.0
        if stretch < 0:
            raise ValueError(
                f"{replicas} replica(s) carried {per:.1f} req/s each, more than {threads} threads at "
                f"{cpu_in_mean_s * 1e3:.3g} ms a request allow: the CPU stage was not the bottleneck"
            )
        rows.append([per, throughput])
        rhs.append(stretch)
    design = np.asarray(rows)
    if len({int(r) for r, _ in saturation}) < 2:
        per_replica = float(np.dot(design[:, 0], rhs) / np.dot(design[:, 0], design[:, 0]))
        return per_replica, 0.0
    solution, _ = optimize.nnls(design, np.asarray(rhs))
    return float(solution[0]), float(solution[1])


@dataclass(frozen=True)
class TandemPlan:
    """Result of :func:`plan_tandem`: ``replicas`` is the fewest count meeting the SLO (None: none up to
    ``max_replicas``); ``p95_s`` the predicted p95 per count tried (``inf`` past the utilisation cap)."""

    replicas: int | None
    load_rps: float
    slo_p95_s: float
    p95_s: dict[int, float]


def plan_tandem(
    model: TandemServer,
    load_rps: float,
    slo_p95_s: float,
    max_replicas: int,
    *,
    max_utilisation: float = 0.85,
    n_requests: int = 20_000,
    seed: int = 0,
) -> TandemPlan:
    """The fewest of 1..``max_replicas`` replicas that keep the predicted p95 within ``slo_p95_s`` at ``load_rps``
    split evenly, each replica's CPU stage at most ``max_utilisation`` busy. Keep ``max_replicas`` to the counts the
    model was fitted on: past them the host's other limits (a shared GPU, the cores) are not in it."""
    if not load_rps > 0:
        raise ValueError(f"load_rps must be > 0 requests/s, got {load_rps}")
    if not slo_p95_s > 0:
        raise ValueError(f"slo_p95_s must be > 0 s, got {slo_p95_s}")
    if int(max_replicas) < 1:
        raise ValueError(f"max_replicas must be >= 1, got {max_replicas}")
    if not 0 < max_utilisation < 1:
        raise ValueError(f"max_utilisation must be in (0, 1), got {max_utilisation}")
    p95 = {}
    for replicas in range(1, int(max_replicas) + 1):
        rate = load_rps / replicas
        if model.utilisation(rate, replicas) > max_utilisation:
            p95[replicas] = float("inf")
            continue
        p95[replicas] = float(np.percentile(model.simulate(rate, replicas, n_requests=n_requests, seed=seed), 95))
        if p95[replicas] <= slo_p95_s:
            return TandemPlan(replicas, load_rps, slo_p95_s, p95)
    return TandemPlan(None, load_rps, slo_p95_s, p95)
