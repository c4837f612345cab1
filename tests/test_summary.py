"""The summary is derived only from request rows: every request accounted for, exact percentiles from the schedule,
goodput under an SLO, errors by kind, schedule lag, and MLPerf's early-stopping bounds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gawm_lib import summary
from gawm_lib.loadgen import COLUMNS


def rows(latency_ms, errors=None, step=0, phase="step", lag_ms=0.0, start_ns=0, gap_ms=10.0) -> pd.DataFrame:
    n = len(latency_ms)
    scheduled = start_ns + (np.arange(n) * gap_ms * 1e6).astype(np.int64)
    sent = scheduled + int(lag_ms * 1e6)
    done = scheduled + (np.asarray(latency_ms) * 1e6).astype(np.int64)
    frame = pd.DataFrame({c: 0 for c in COLUMNS}, index=range(n))
    frame = frame.assign(
        workload="w",
        phase=phase,
        step=step,
        level=5.0,
        scheduled_ns=scheduled,
        sent_ns=sent,
        first_byte_ns=sent + 1000,
        done_ns=done,
        status=200,
        error=errors or [""] * n,
        replica="r",
    )
    return frame


def test_every_request_is_accounted_for_and_percentiles_are_exact():
    rng = np.random.default_rng(0)
    latency = rng.lognormal(1, 0.5, 1000)
    errors = [""] * 900 + ["http_5xx"] * 50 + ["timeout"] * 30 + ["reset"] * 10 + ["cancelled"] * 10
    frame = pd.concat([rows(np.ones(20), step=-1, phase="warmup", start_ns=-(10**9)), rows(latency, errors)])
    table = summary.summarise(frame, slo_ms=3.0)
    assert len(table) == 1  # the warm-up is left out
    row = table.iloc[0]
    assert row["sent"] == 1000 and row["ok"] == 900 and row["errors"] == 90 and row["cancelled"] == 10
    assert row["sent"] == row["ok"] + row["errors"] + row["cancelled"]
    kinds = ("http_5xx", "timeout", "reset", "connect")
    assert tuple(row[f"errors_{kind}"] for kind in kinds) == (50, 30, 10, 0)
    ok = latency[:900]
    for q in summary.PERCENTILES:
        assert row[f"p{q:g}_ms"] == pytest.approx(np.percentile(ok, q), abs=1e-5)
    duration_s = (frame["done_ns"].max() - 0) / 1e9
    assert row["duration_s"] == pytest.approx(duration_s)
    assert row["throughput_rps"] == pytest.approx(900 / duration_s)
    assert row["goodput_rps"] == pytest.approx((ok <= 3.0).sum() / duration_s, rel=1e-3)
    assert row["offered_rps"] == pytest.approx(100.0)  # one every 10 ms
    assert summary.errors_by_kind(frame) == {"http_5xx": 50, "timeout": 30, "reset": 10, "cancelled": 10}


def test_latency_counts_from_the_schedule_and_lag_is_kept(tmp_path):
    frame = rows(np.full(100, 5.0), lag_ms=2.0)
    frame.to_parquet(tmp_path / "requests.parquet")
    read = summary.read_requests(tmp_path / "requests.parquet")
    assert (read["latency_ms"] == 5.0).all() and (read["service_ms"] == 3.0).all() and (read["lag_ms"] == 2.0).all()
    row = summary.summarise(read).iloc[0]
    assert row["p50_ms"] == 5.0 and row["service_p50_ms"] == 3.0 and row["lag_p99_ms"] == 2.0
    assert row["ttfb_p50_ms"] == pytest.approx(0.001) and math.isnan(row["goodput_rps"])


def test_requests_never_sent_have_no_lag_or_service_time():
    frame = rows(np.ones(4), errors=["", "", "cancelled", "cancelled"])
    frame.loc[3, "sent_ns"] = 0
    row = summary.summarise(frame).iloc[0]
    assert row["cancelled"] == 2 and row["lag_max_ms"] == 0.0 and row["achieved_rps"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("n", "percentile", "discard"),
    [
        (2048, 90, 172),
        (2116, 90, 178),
        (2145, 90, 181),
        (4776846, 90, 476158),
        (64, 90, 0),
        (63, 90, -1),
        (661, 99, -1),
        (662, 99, 0),
    ],
)
def test_early_stopping_matches_mlperf(n, percentile, discard):
    # (n, discard) pairs from MLPerf LoadGen summaries: "Processed at least 64 queries (2048). Would discard 172
    # highest latency queries."
    assert summary.early_stopping_discard(n, percentile) == discard


def test_early_stopping_bound_is_an_upper_bound_of_the_percentile():
    latency = np.arange(1, 2049, dtype=float)  # 1..2048
    assert summary.early_stopping_bound(latency, 90) == 2048 - 172
    assert summary.early_stopping_bound(latency, 90) >= np.percentile(latency, 90)
    assert math.isnan(summary.early_stopping_bound(latency[:10], 90))
    rng = np.random.default_rng(5)
    misses = 0
    for _ in range(200):  # at 99 % confidence the bound is below the true p90 rarely
        misses += summary.early_stopping_bound(rng.exponential(1.0, 500), 90) < -np.log(0.1)
    assert misses <= 8
    table = summary.summarise(rows(latency))
    assert table.iloc[0]["p90_bound_ms"] == 2048 - 172 and table.iloc[0]["p99_bound_ms"] >= table.iloc[0]["p99_ms"]


def test_truncated_items_are_counted_and_unknown_is_nan(tmp_path):
    frame = rows(np.ones(6), errors=[""] * 5 + ["http_5xx"]).assign(truncated=[2, 0, 1, -1, 3, 7])
    assert summary.summarise(frame).iloc[0]["truncated"] == 6  # ok requests that report it; failed ones never do
    assert math.isnan(summary.summarise(frame.assign(truncated=-1)).iloc[0]["truncated"])  # no server reported it
    # records written before the column existed: still readable, truncated unknown
    old = tmp_path / "old.parquet"
    old.mkdir()
    rows(np.ones(4)).drop(columns=["truncated"]).to_parquet(old / "w-part-00000.parquet")
    table = summary.summarise(summary.read_requests(old))
    assert table.iloc[0]["ok"] == 4 and math.isnan(table.iloc[0]["truncated"])
