"""Aggregates derived only from the per-request rows of ``requests.parquet``.

Latency is ``done_ns - scheduled_ns`` (from the schedule: includes any client-side lag, so open-loop runs show queueing
honestly); ``service`` latency is ``done_ns - sent_ns``. Percentiles are exact (from every row), never from histograms.
Every request is accounted for: ``sent = ok + errors`` where errors include requests cancelled at stop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PERCENTILES = (50, 90, 95, 99, 99.9)


def read_requests(path: Path) -> pd.DataFrame:
    """All request rows of a run (every complete part file), with ``latency_ms`` added."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no request records (did the load run?)")
    frame = pd.read_parquet(path)
    frame["latency_ms"] = (frame["done_ns"] - frame["scheduled_ns"]) / 1e6
    return frame


def summarise(requests: pd.DataFrame, slo_ms: float | None = None) -> pd.DataFrame:
    """One row per (workload, step) of the measured steps (warm-up excluded).

    Columns: level, duration_s, sent, ok, errors, offered_rps (sent/duration), throughput_rps (ok/duration),
    goodput_rps (ok within ``slo_ms``), mean_ms and p50..p99.9 latency [ms] of the ok requests.
    """
    steps = requests[requests["phase"] == "step"]
    rows = []
    for (workload, step), group in steps.groupby(["workload", "step"], sort=True):
        ok = group[group["error"] == ""]
        duration_s = (group["done_ns"].max() - group["scheduled_ns"].min()) / 1e9
        latency = ok["latency_ms"].to_numpy()
        row = {
            "workload": workload, "step": int(step), "level": float(group["level"].iloc[0]), "duration_s": duration_s,
            "sent": len(group), "ok": len(ok), "errors": int((group["error"] != "").sum()),
            "offered_rps": len(group) / duration_s if duration_s > 0 else np.nan,
            "throughput_rps": len(ok) / duration_s if duration_s > 0 else np.nan,
            "mean_ms": float(latency.mean()) if len(latency) else np.nan,
        }
        if slo_ms is not None:
            row["goodput_rps"] = float((latency <= slo_ms).sum() / duration_s) if duration_s > 0 else np.nan
        for q in PERCENTILES:
            row[f"p{q:g}_ms"] = float(np.percentile(latency, q)) if len(latency) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def errors_by_kind(requests: pd.DataFrame) -> dict[str, int]:
    failed = requests[requests["error"] != ""]
    return {str(k): int(v) for k, v in failed["error"].value_counts().items()}
