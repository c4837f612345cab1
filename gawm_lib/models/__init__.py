"""Workload models: the math core that turns measurements into predictions.

Units throughout: times in seconds, rates in requests/s (items/s for batch throughput). Modules:

* ``service``: batch latency ``max(floor, alpha*b + beta)`` fit with standard errors, or a table of measured ones;
* ``scaling``: Universal Scalability Law fit and exact Mean Value Analysis (closed loop);
* ``queueing``: open-loop M/M/1, M/D/1, M/G/1, M/M/c, M/G/c means and quantiles;
* ``batching``: dynamic-batching server latency (mean, p50, p95) from an embedded Markov chain;
* ``simulate``: seeded discrete-event simulation (the ground truth the models are tested against);
* ``tandem``: a GPU server's CPU stage (decode threads slowing down with load) in front of the batcher, simulated;
* ``tail``: a configuration's p95 against its open-loop load (Kingman's heavy-traffic form), fitted to one sweep;
* ``capacity``: fewest replicas meeting a p95 SLO, with an uncertainty range;
* ``validation``: MAPE and fit/holdout comparison tables;
* ``traces``: summary, autocorrelation and KS comparison of metric time series.

Importing has no side effects (no I/O, no global state).
"""

from .batching import BatchingPrediction, predict_batching
from .capacity import CapacityPlan, plan_capacity
from .queueing import QueuePrediction, UnstableSystemError, erlang_c, md1, mg1, mgc, mm1, mmc, sweep
from .scaling import MVAResult, USLModel, fit_usl, mva
from .service import BatchLatencyModel, BatchLatencyTable, fit_batch_latency
from .simulate import LatencySummary, replay_batching, simulate_batching, simulate_queue, summarize_latencies
from .tail import TailCurve, fit_tail_curve
from .tandem import TandemPlan, TandemServer, fit_slowdown, plan_tandem
from .traces import TraceComparison, TraceSummary, autocorrelation, compare_traces, summarize_trace
from .validation import ValidationReport, mape, validate

__all__ = [
    "BatchLatencyModel",
    "BatchLatencyTable",
    "fit_batch_latency",
    "USLModel",
    "fit_usl",
    "MVAResult",
    "mva",
    "UnstableSystemError",
    "QueuePrediction",
    "erlang_c",
    "mm1",
    "md1",
    "mg1",
    "mmc",
    "mgc",
    "sweep",
    "BatchingPrediction",
    "predict_batching",
    "LatencySummary",
    "simulate_queue",
    "simulate_batching",
    "replay_batching",
    "summarize_latencies",
    "TandemServer",
    "TandemPlan",
    "fit_slowdown",
    "plan_tandem",
    "TailCurve",
    "fit_tail_curve",
    "CapacityPlan",
    "plan_capacity",
    "ValidationReport",
    "mape",
    "validate",
    "TraceSummary",
    "summarize_trace",
    "autocorrelation",
    "TraceComparison",
    "compare_traces",
]
