"""Aggregates derived only from the per-request rows of ``requests.parquet`` (``gawm_lib.loadgen.COLUMNS``).

Latency is ``done_ns - scheduled_ns``: from the schedule, so it includes any wait in the generator and open-loop runs
show queueing honestly (no coordinated omission). ``service`` latency is ``done_ns - sent_ns``, schedule ``lag`` is
``sent_ns - scheduled_ns``, time to first byte is ``first_byte_ns - sent_ns``. Percentiles are exact (from every row),
never from histograms. Every request is accounted for: ``sent = ok + errors + cancelled``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

PERCENTILES = (50, 90, 95, 99, 99.9)
ERROR_KINDS = ("timeout", "connect", "reset", "http_4xx", "http_5xx", "other")  # as gawm_lib.loadgen.ERROR_KINDS
EARLY_STOPPING = (90, 99)  # percentiles given an early-stopping bound
CONFIDENCE = 0.99


def read_requests(path: Path) -> pd.DataFrame:
    """All request rows of a run (every complete part file), with ``latency_ms`` (from the schedule), ``service_ms``
    (from the send) and ``lag_ms`` (send - schedule) added; the two latter are NaN for requests never sent."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no request records (did the load run?)")
    frame = pd.read_parquet(path)
    frame["latency_ms"] = (frame["done_ns"] - frame["scheduled_ns"]) / 1e6
    if "sent_ns" in frame:
        sent = frame["sent_ns"] > 0
        frame["service_ms"] = ((frame["done_ns"] - frame["sent_ns"]) / 1e6).where(sent)
        frame["lag_ms"] = ((frame["sent_ns"] - frame["scheduled_ns"]) / 1e6).where(sent)
    return frame


def early_stopping_discard(n: int, percentile: float, confidence: float = CONFIDENCE) -> int:
    """How many of the ``n`` highest latencies may be set aside, MLPerf LoadGen style, so that the next highest is an
    upper bound of the ``percentile`` with ``confidence``: one less than the largest ``t`` with
    ``P[Binomial(n, 1 - percentile/100) <= t] <= 1 - confidence``. -1 when ``n`` is too small for any bound (for p90 at
    99 % confidence that is 64 requests, as in MLPerf; for p99, 662)."""
    from scipy.stats import binom

    q = 1 - percentile / 100
    if n <= 0 or binom.cdf(0, n, q) > 1 - confidence:
        return -1
    t = max(int(binom.ppf(1 - confidence, n, q)), 0)
    while t > 0 and binom.cdf(t, n, q) > 1 - confidence:
        t -= 1
    while binom.cdf(t + 1, n, q) <= 1 - confidence:
        t += 1
    return t - 1


def early_stopping_bound(latency: np.ndarray, percentile: float, confidence: float = CONFIDENCE) -> float:
    """MLPerf's early-stopping estimate of a latency percentile from ``latency`` (one value per request): the
    ``discard + 1``-th highest value, an upper bound of the true percentile with ``confidence`` whatever the latency
    distribution (binomial counts of requests above it). NaN when there are too few requests."""
    n = len(latency)
    discard = early_stopping_discard(n, percentile, confidence)
    if discard < 0:
        return math.nan
    return float(np.partition(np.asarray(latency, dtype=float), n - 1 - discard)[n - 1 - discard])


def _rate(times_ns: pd.Series) -> float:
    """Events per second over their span: (count - 1) / (last - first)."""
    span_s = (times_ns.max() - times_ns.min()) / 1e9 if len(times_ns) > 1 else 0.0
    return (len(times_ns) - 1) / span_s if span_s > 0 else np.nan


def summarise(requests: pd.DataFrame, slo_ms: float | None = None) -> pd.DataFrame:
    """One row per (workload, step) of the measured steps (warm-up excluded); per (run_id, workload, step) when the
    rows carry a ``run_id`` column, so that steps of different runs are never pooled (a step of run A and the step of
    the same number in run B are two rows, each with its own duration and rates).

    Columns: ``level`` (at the step's start), ``duration_s`` (first scheduled to last done), ``sent`` (every request),
    ``ok``, ``errors`` (failed, by kind in ``errors_<kind>``), ``cancelled`` (in flight at a stop), ``offered_rps``
    (scheduled, over the schedule's span), ``achieved_rps`` (sent, over the sends' span), ``throughput_rps`` (ok /
    duration), ``goodput_rps`` (ok within ``slo_ms`` / duration; NaN without an SLO), ``mean_ms`` and exact ``p50`` ..
    ``p99.9_ms`` latency from the schedule, ``p90_bound_ms``/``p99_bound_ms`` (MLPerf early-stopping upper bounds at
    99 % confidence; NaN below 64 / 662 ok requests), ``service_p50_ms``/``service_p99_ms`` (from the send),
    ``ttfb_p50_ms`` (send to first byte), ``lag_p50_ms``/``lag_p99_ms``/``lag_max_ms`` (schedule lag); latencies over
    the ok requests. ``truncated``: items of the ok requests whose output was cut at a limit (Whisper's
    ``decode_tokens``; every clip with random weights, which never emit end-of-text), NaN where unknown (other
    workloads, records from before the column).
    """
    if "latency_ms" not in requests:
        requests = requests.assign(latency_ms=(requests["done_ns"] - requests["scheduled_ns"]) / 1e6)
    steps = requests[requests["phase"] == "step"]
    keys = ["run_id", "workload", "step"] if "run_id" in requests else ["workload", "step"]
    rows = []
    for key, group in steps.groupby(keys, sort=True):
        *run, workload, step = key
        ok = group[group["error"] == ""]
        cancelled = int((group["error"] == "cancelled").sum())
        failed = group["error"][(group["error"] != "") & (group["error"] != "cancelled")]
        duration_s = (group["done_ns"].max() - group["scheduled_ns"].min()) / 1e9
        latency = ok["latency_ms"].to_numpy()
        sent = group["sent_ns"] > 0 if "sent_ns" in group else pd.Series(True, index=group.index)
        row = {
            **({"run_id": run[0]} if run else {}),
            "workload": workload,
            "step": int(step),
            "level": float(group["level"].iloc[group["scheduled_ns"].argmin()]),
            "duration_s": duration_s,
            "sent": len(group),
            "ok": len(ok),
            "errors": len(failed),
            "cancelled": cancelled,
            **{f"errors_{kind}": int((failed == kind).sum()) for kind in ERROR_KINDS},
            "offered_rps": _rate(group["scheduled_ns"]),
            "achieved_rps": _rate(group["sent_ns"][sent]) if "sent_ns" in group else np.nan,
            "throughput_rps": len(ok) / duration_s if duration_s > 0 else np.nan,
            "goodput_rps": (
                float((latency <= slo_ms).sum() / duration_s) if slo_ms is not None and duration_s > 0 else np.nan
            ),
            "mean_ms": float(latency.mean()) if len(latency) else np.nan,
        }
        for q in PERCENTILES:
            row[f"p{q:g}_ms"] = float(np.percentile(latency, q)) if len(latency) else np.nan
        for q in EARLY_STOPPING:
            row[f"p{q:g}_bound_ms"] = early_stopping_bound(latency, q)
        if "sent_ns" in group:
            service = ((ok["done_ns"] - ok["sent_ns"]) / 1e6).to_numpy()
            lag = ((group["sent_ns"] - group["scheduled_ns"])[sent] / 1e6).to_numpy()
            ttfb = ((ok["first_byte_ns"] - ok["sent_ns"]) / 1e6).to_numpy() if "first_byte_ns" in ok else latency[:0]
            row["service_p50_ms"] = float(np.percentile(service, 50)) if len(service) else np.nan
            row["service_p99_ms"] = float(np.percentile(service, 99)) if len(service) else np.nan
            row["ttfb_p50_ms"] = float(np.percentile(ttfb, 50)) if len(ttfb) else np.nan
            row["lag_p50_ms"] = float(np.percentile(lag, 50)) if len(lag) else np.nan
            row["lag_p99_ms"] = float(np.percentile(lag, 99)) if len(lag) else np.nan
            row["lag_max_ms"] = float(lag.max()) if len(lag) else np.nan
        row["truncated"] = _truncated(ok)
        rows.append(row)
    return pd.DataFrame(rows)


def _truncated(ok: pd.DataFrame) -> float:
    """Items cut at a limit over the requests that report it (-1 or NaN: unknown); NaN when none does."""
    if "truncated" not in ok:
        return np.nan
    known = ok["truncated"][ok["truncated"] >= 0]
    return float(known.sum()) if len(known) else np.nan


def errors_by_kind(requests: pd.DataFrame) -> dict[str, int]:
    """Failed requests by kind (cancelled ones included, as ``cancelled``), over all phases."""
    failed = requests[requests["error"] != ""]
    return {str(k): int(v) for k, v in failed["error"].value_counts().items()}
