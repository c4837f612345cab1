"""From recorded runs to models: fit the batch service time, predict each load step, compare with what was measured.

Everything here reads request records (``requests.parquet``) and run manifests; nothing touches a server or a cluster.
The service time comes from the server's own per-batch report (``batch_size``, ``server_compute_ns``), and the
client-side overhead (latency minus server queue and compute) from the quietest step. Predictions per step:

- open loop (``poisson``): the dynamic-batching queue model, :func:`gawm_lib.models.predict_batching`;
- closed loop, N users against a server with max batch B: every cycle the waiting users form batches of at most B, so
  one request takes ``ceil(N / B)`` batch times, the last of ``N mod B`` items (deterministic service, no think time).

Times are seconds in the models and milliseconds in the tables (``_ms`` columns).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from gawm_lib import runs, summary
from gawm_lib.models import BatchLatencyModel, UnstableSystemError, fit_batch_latency, predict_batching


def load_requests(run_ids: list[str | Path]) -> tuple[pd.DataFrame, list[runs.Run]]:
    """All request rows of the runs, with ``run_id`` and the run's batching settings per workload added."""
    loaded = [runs.load_run(r) for r in run_ids]
    frames = []
    for run in loaded:
        rows = summary.read_requests(run.requests_path).assign(run_id=run.id)
        effective = run.manifest["params"]["effective"]
        settings = {w["name"]: w for w in effective["workloads"]}
        rows["max_batch_size"] = rows["workload"].map(lambda w: settings[w]["max_batch_size"])
        rows["max_queue_delay_ms"] = rows["workload"].map(lambda w: settings[w]["max_queue_delay_ms"])
        rows["replicas"] = effective["backend"]["replicas"]
        rows["scenario"] = effective["load"]["scenario"]
        frames.append(rows)
    return pd.concat(frames, ignore_index=True), loaded


def fit_service(requests: pd.DataFrame) -> tuple[BatchLatencyModel, float]:
    """Batch service-time model from the server's per-batch reports, and the client overhead [s] (median over the
    lowest-load step of latency minus server queue and compute)."""
    ok = requests[(requests["error"] == "") & (requests["server_compute_ns"] > 0)]
    if ok.empty:
        raise ValueError("no successful requests with server-reported compute times: cannot fit a service model")
    compute_s = ok["server_compute_ns"].to_numpy() / 1e9
    if ok["batch_size"].nunique() < 2:
        # One batch size says nothing about the slope. Assume no batching gain, s(b) = b * s(b0) / b0, which is what
        # one CPU thread gives; runs with several batch sizes (more users, a longer max_queue_delay_ms) fit it instead.
        size = int(ok["batch_size"].iloc[0])
        per_item = float(np.median(compute_s)) / size
        warnings.warn(f"only batch size {size} was observed: assuming s(b) = b x {per_item * 1e3:.2f} ms "
                      "(no batching gain); measure with more users to fit the slope", stacklevel=2)
        model = BatchLatencyModel(alpha=per_item, beta=0.0, n_points=len(ok))
    else:
        model = fit_batch_latency(ok["batch_size"].to_numpy(), compute_s)
    quiet = ok[ok["level"] == ok["level"].min()]
    overhead = (quiet["done_ns"] - quiet["sent_ns"] - quiet["server_queue_ns"] - quiet["server_compute_ns"]) / 1e9
    return model, max(0.0, float(np.median(overhead)))


def closed_loop_latency_s(users: int, service: BatchLatencyModel, max_batch: int, overhead_s: float) -> float:
    """Latency of each of ``users`` closed-loop users with no think time against one batching replica [s]."""
    full, rest = divmod(users, max_batch)
    cycle = full * float(service.predict(max_batch)) + (float(service.predict(rest)) if rest else 0.0)
    return cycle + overhead_s


def predict_steps(requests: pd.DataFrame, service: BatchLatencyModel, overhead_s: float) -> pd.DataFrame:
    """Measured vs predicted throughput [req/s], p50 and p95 [s] for each measured step of each run."""
    rows = []
    table = summary.summarise(requests.drop(columns=["run_id"]).assign(workload=requests["run_id"] + "|"
                                                                       + requests["workload"]))
    for _, step in table.iterrows():
        run_id, workload = step["workload"].split("|")
        meta = requests[(requests["run_id"] == run_id) & (requests["workload"] == workload)].iloc[0]
        big, replicas = int(meta["max_batch_size"]), int(meta["replicas"])
        row = {"run_id": run_id, "workload": workload, "scenario": meta["scenario"], "level": step["level"],
               "replicas": replicas, "max_batch_size": big, "throughput": step["throughput_rps"],
               "p50": step["p50_ms"] / 1e3, "p95": step["p95_ms"] / 1e3}
        if meta["scenario"] == "poisson":
            try:
                pred = predict_batching(step["level"] / replicas, service, big, meta["max_queue_delay_ms"] / 1e3)
            except (UnstableSystemError, ValueError):
                continue  # past saturation: the queue model has no steady state to compare with
            row.update(predicted_throughput=step["level"], predicted_p50=pred.p50_s + overhead_s,
                       predicted_p95=pred.p95_s + overhead_s)
        else:
            users = math.ceil(step["level"] / replicas)
            latency = closed_loop_latency_s(users, service, big, overhead_s)
            row.update(predicted_throughput=step["level"] / latency, predicted_p50=latency, predicted_p95=latency)
        rows.append(row)
    return pd.DataFrame(rows)


def validation_table(predicted: pd.DataFrame, metrics=("throughput", "p50", "p95")) -> pd.DataFrame:
    """Tidy measured/predicted rows per metric with the absolute percentage error (for plots.predicted_vs_measured)."""
    parts = []
    for metric in metrics:
        part = predicted[["run_id", "workload", "scenario", "level"]].copy()
        part["metric"] = metric
        part["measured"] = predicted[metric]
        part["predicted"] = predicted[f"predicted_{metric}"]
        part["ape_pct"] = 100 * (part["predicted"] - part["measured"]).abs() / part["measured"]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def predict_runs(requests: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, tuple[BatchLatencyModel, float]]]:
    """:func:`fit_service` and :func:`predict_steps` per workload; returns the predictions and each workload's
    (service model, overhead [s])."""
    frames, services = [], {}
    for workload, rows in requests.groupby("workload", sort=True):
        services[workload] = fit_service(rows)
        frames.append(predict_steps(rows, *services[workload]))
    return pd.concat(frames, ignore_index=True), services
