"""Capacity planning: the fewest replicas that meet a p95 latency SLO at a given arrival rate.

Load is split evenly over ``c`` identical replicas (each sees Poisson arrivals at ``lambda / c`` requests/s, the
thinning of a Poisson stream by random or round-robin-like routing treated as Poisson). A replica is one of:

* ``"mg1"``: one server, service time ``s(1)`` with SCV ``service_scv`` (queueing.mg1);
* ``"mgc"``: ``servers_per_replica`` servers sharing one queue (queueing.mgc, Allen-Cunneen);
* ``"batching"``: a dynamic-batching server with ``max_batch`` and ``max_delay_s`` (batching.predict_batching), its
  batch times varying by ``service_factors`` where given (measured batch times over the fitted ones).

Uncertainty: the service model's parameters are moved by -1 and +1 standard errors together (latency grows with every
parameter, so this brackets the prediction, conservatively as it ignores their correlation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .batching import predict_batching
from .queueing import UnstableSystemError, mg1, mgc
from .service import BatchLatencyModel

__all__ = ["CapacityPlan", "plan_capacity"]

_SERVERS = ("mg1", "mgc", "batching")


@dataclass(frozen=True)
class CapacityPlan:
    """Result of :func:`plan_capacity`. Rates in requests/s, times in seconds.

    ``p95_range_s`` is the p95 at the chosen replica count with the service parameters at -1 / +1 standard error
    (``inf`` as the upper end means the +1 sigma service model would be unstable there). ``replicas_range`` is the
    replica count the -1 / +1 sigma service models would need (``None`` when that model cannot meet the SLO).
    """

    replicas: int
    server: str
    arrival_rate: float
    per_replica_rate: float
    utilisation: float
    p95_s: float
    slo_p95_s: float
    p95_range_s: tuple[float, float]
    replicas_range: tuple[int | None, int | None]


def _capacity_cost(server: str, service: BatchLatencyModel, servers: int, max_batch: int, factors) -> float:
    """Server-seconds of work per request [s]: utilisation of one replica = rate * cost."""
    if server == "batching":
        return service.predict(max_batch) / max_batch * (float(np.mean(factors)) if factors is not None else 1.0)
    return service.predict(1) / (servers if server == "mgc" else 1)


def _p95(
    server: str,
    rate: float,
    service: BatchLatencyModel,
    scv: float,
    servers: int,
    max_batch: int,
    max_delay_s: float,
    factors,
) -> float:
    if server == "mg1":
        return mg1(rate, service.predict(1), scv).p95_s
    if server == "mgc":
        return mgc(rate, service.predict(1), scv, servers).p95_s
    return predict_batching(rate, service, max_batch, max_delay_s, service_factors=factors).p95_s


def _search(arrival_rate, slo, service, server, scv, servers, max_batch, max_delay_s, factors, cap, max_replicas):
    cost = _capacity_cost(server, service, servers, max_batch, factors)
    c = max(1, math.ceil(arrival_rate * cost / cap - 1e-12))
    best = (math.inf, c)
    while c <= max_replicas:
        p95 = _p95(server, arrival_rate / c, service, scv, servers, max_batch, max_delay_s, factors)
        if p95 <= slo:
            return c, p95, arrival_rate * cost / c
        if p95 >= best[0] and server == "batching":
            # Past the U-shape's minimum (or on the low-load plateau D + s(1)): fewer requests per replica now means
            # as much or more waiting for batches to fill, so more replicas cannot help.
            raise ValueError(
                f"no replica count meets p95 <= {slo:.4g} s: best p95 is {best[0]:.4g} s at "
                f"{best[1]} replicas (batches wait for max_delay_s at low load; lower it)"
            )
        best = min(best, (p95, c))
        c += 1
    raise ValueError(
        f"no replica count up to max_replicas={max_replicas} meets p95 <= {slo:.4g} s "
        f"(best {best[0]:.4g} s at {best[1]} replicas)"
    )


def plan_capacity(
    arrival_rate: float,
    slo_p95_s: float,
    service: BatchLatencyModel,
    *,
    server: str = "mg1",
    service_scv: float = 1.0,
    servers_per_replica: int = 1,
    max_batch: int = 1,
    max_delay_s: float = 0.0,
    service_factors=None,
    utilisation_cap: float = 0.85,
    max_replicas: int = 1000,
) -> CapacityPlan:
    """Fewest replicas ``c`` with predicted p95 <= ``slo_p95_s`` at ``arrival_rate`` and utilisation <= cap.

    Utilisation is ``rate * s(1)`` (mg1), ``rate * s(1) / servers`` (mgc) or ``rate * s(B) / B`` (batching, times
    the mean of ``service_factors``) per replica. ``service_scv`` (mg1/mgc only) defaults to 1, exponential service:
    conservative for GPU inference, whose service times usually vary far less (pass the measured SCV).
    ``service_factors`` (batching only): the batch-time variability, as in :func:`predict_batching`; without it batch
    times are deterministic, which under-states the p95 of a model whose batch times vary (DistilBERT on a CPU core:
    by 9-27 % at 50-85 % utilisation). Raises ValueError for a non-positive load or SLO, an SLO below the service
    time at batch size 1 (or, for mg1/mgc, below the service time's own p95), factors given to mg1/mgc, or when no
    replica count up to ``max_replicas`` meets it.
    """
    if not (arrival_rate > 0 and math.isfinite(arrival_rate)):
        raise ValueError(f"arrival_rate must be a positive load in requests/s, got {arrival_rate}")
    if not (slo_p95_s > 0 and math.isfinite(slo_p95_s)):
        raise ValueError(f"slo_p95_s must be a positive number of seconds, got {slo_p95_s}")
    if server not in _SERVERS:
        raise ValueError(f"server must be one of {_SERVERS}, got {server!r}")
    if not 0 < utilisation_cap < 1:
        raise ValueError(f"utilisation_cap must be in (0, 1), got {utilisation_cap}")
    if service_factors is not None and server != "batching":
        raise ValueError(f"service_factors are for server='batching'; {server} takes the variability as service_scv")
    s1 = service.predict(1)
    if slo_p95_s < s1:
        raise ValueError(
            f"impossible SLO: p95 <= {slo_p95_s:.4g} s is below the service time at batch size 1 "
            f"({s1:.4g} s); no number of replicas can meet it"
        )
    if server != "batching" and service_scv > 0:
        floor_p95 = float(stats.gamma(1.0 / service_scv, scale=s1 * service_scv).ppf(0.95))
        if slo_p95_s < floor_p95:
            raise ValueError(
                f"impossible SLO: p95 <= {slo_p95_s:.4g} s is below the p95 of the service time "
                f"itself ({floor_p95:.4g} s with SCV {service_scv}); no number of replicas can meet it"
            )
    args = (
        server,
        service_scv,
        int(servers_per_replica),
        int(max_batch),
        float(max_delay_s),
        service_factors,
        utilisation_cap,
        int(max_replicas),
    )
    c, p95, util = _search(arrival_rate, slo_p95_s, service, *args)

    def at_c(model: BatchLatencyModel) -> float:
        try:
            return _p95(
                server,
                arrival_rate / c,
                model,
                service_scv,
                int(servers_per_replica),
                int(max_batch),
                float(max_delay_s),
                service_factors,
            )
        except UnstableSystemError:
            return math.inf

    def needed(model: BatchLatencyModel) -> int | None:
        try:
            return _search(arrival_rate, slo_p95_s, model, *args)[0]
        except ValueError:
            return None

    low, high = service.shifted(-1.0), service.shifted(+1.0)
    return CapacityPlan(
        replicas=c,
        server=server,
        arrival_rate=float(arrival_rate),
        per_replica_rate=arrival_rate / c,
        utilisation=util,
        p95_s=p95,
        slo_p95_s=float(slo_p95_s),
        p95_range_s=(at_c(low), at_c(high)),
        replicas_range=(needed(low), needed(high)),
    )
