"""Each scenario of the load generator against a real (null) OIP v2 server: what is sent, when, and that every
request becomes one row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gawm_lib import summary
from gawm_lib.bench import null_server
from gawm_lib.config import LoadConfig
from gawm_lib.loadgen import COLUMNS, LoadSpec, run_load, write_bodies

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server():
    with null_server.running() as (_, url):
        yield url


def body(i: int, size: int = 1) -> dict:
    return {"inputs": [{"name": "text", "shape": [size], "datatype": "BYTES", "data": [f"payload {i:04d}"] * size}]}


def run(tmp_path, url, model="null", bodies=None, **load):
    path = write_bodies(tmp_path / "bodies.jsonl", bodies or [body(i) for i in range(8)])
    spec = LoadSpec(
        "null", model, [url], str(path), str(tmp_path / "requests.parquet"), LoadConfig(**load).model_dump()
    )
    result = run_load(spec, tmp_path / "work", progress=False)
    rows = summary.read_requests(spec.out_dir)
    assert list(rows.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(rows) == result["requests"] and not result["interrupted"]
    return result, rows


def test_constant_rate_sends_on_schedule_and_records_times_in_order(tmp_path, server):
    result, rows = run(tmp_path, server, scenario="constant_rate", levels=[100], step_duration_s=1.0, warmup_s=0.2)
    step = rows[rows["phase"] == "step"].sort_values("scheduled_ns")
    assert len(step) == 100 and len(rows[rows["phase"] == "warmup"]) == 20
    assert np.allclose(np.diff(step["scheduled_ns"]) / 1e6, 10.0, atol=0.01)  # exactly every 10 ms
    ok = rows[rows["error"] == ""]
    assert len(ok) == len(rows)
    assert (
        (ok["scheduled_ns"] <= ok["sent_ns"])
        & (ok["sent_ns"] < ok["first_byte_ns"])
        & (ok["first_byte_ns"] <= ok["done_ns"])
    ).all()
    assert (ok["batch_size"] == 1).all() and (ok["server_queue_ns"] == 0).all() and (ok["bytes_in"] > 0).all()
    assert rows["replica"].iloc[0] == server.split("//")[1] and set(rows["process"]) == {0}
    assert step["lag_ms"].median() < 5  # loose: the build machine is shared
    phases = result["phases"]
    assert [(p["phase"], p["mode"]) for p in phases] == [("warmup", "open"), ("step", "open")]
    anchor = result["anchor_unix_ns"] - result["anchor_monotonic_ns"]
    assert phases[1]["start_unix_ns"] == phases[1]["start_ns"] + anchor


def test_a_step_lasts_for_its_minimum_count_and_stops_at_its_maximum(tmp_path, server):
    _, rows = run(
        tmp_path / "a",
        server,
        scenario="constant_rate",
        levels=[100],
        step_duration_s=0.1,
        min_requests_per_step=60,
        max_step_duration_s=5,
        warmup_s=0,
    )
    assert len(rows) == 60  # the count, not the 0.1 s, ended it
    _, rows = run(
        tmp_path / "b",
        server,
        scenario="constant_rate",
        levels=[50],
        step_duration_s=0.2,
        min_requests_per_step=1000,
        max_step_duration_s=0.5,
        warmup_s=0,
    )
    assert len(rows) == 25  # 0.5 s at 50/s: the maximum ended it


def test_closed_loop_users_think_between_requests(tmp_path, server):
    _, rows = run(
        tmp_path,
        server,
        levels=[2],
        think_time_s=0.02,
        think_time_distribution="constant",
        step_duration_s=1.0,
        warmup_s=0,
    )
    # two users, each one request per (20 ms think + a sub-ms answer): about 2 * 1 s / 20.x ms
    assert 60 <= len(rows) <= 100
    sorted_rows = rows.sort_values("scheduled_ns")
    assert (sorted_rows["sent_ns"] >= sorted_rows["scheduled_ns"]).all()


def test_single_stream_keeps_one_request_outstanding(tmp_path, server):
    _, rows = run(tmp_path, server, scenario="single_stream", step_duration_s=0.5, warmup_s=0)
    ordered = rows.sort_values("sent_ns")
    assert len(rows) > 20
    assert (ordered["sent_ns"].to_numpy()[1:] >= ordered["done_ns"].to_numpy()[:-1]).all()
    assert set(rows["level"]) == {1.0}


def test_offline_queues_batches_at_once_again_until_the_step_is_long_enough(tmp_path, server):
    _, rows = run(
        tmp_path,
        server,
        scenario="offline",
        levels=[40],
        payloads_per_request=8,
        step_duration_s=0.3,
        warmup_s=0,
        max_connections=4,
    )
    bursts = rows.groupby("scheduled_ns").size()
    assert (bursts == 40).all() and len(bursts) >= 2  # each burst queued at one instant, re-queued while short
    assert (rows["items"] == 8).all() and rows["bytes_out"].min() > 8 * len("payload 0000")
    lag = rows["lag_ms"]
    assert lag.max() > lag.min()  # four connections: the rest of a burst waits, and that is recorded


def test_stages_ramp_rates_and_users_in_one_continuous_load(tmp_path, server):
    result, rows = run(
        tmp_path,
        server,
        scenario="stages",
        warmup_s=0,
        stages=[
            {"duration_s": 1.0, "rate_rps": 50, "end_rate_rps": 150, "arrival": "constant"},
            {"duration_s": 0.6, "users": 1, "end_users": 3},
        ],
    )
    ramp = rows[rows["step"] == 0]
    assert len(ramp) == pytest.approx(100, abs=2)  # the integral of a 50 -> 150 req/s ramp over 1 s
    assert ramp.sort_values("scheduled_ns")["level"].is_monotonic_increasing
    users = rows[rows["step"] == 1]
    assert set(users["level"].round()) <= {1.0, 2.0, 3.0} and users["level"].max() > 2
    assert [p["step"] for p in result["phases"]] == [0, 1]


def test_trace_replay_follows_arrivals_and_payload_ids(tmp_path, server):
    bodies = [body(i, size=i + 1) for i in range(4)]
    arrivals = np.round(np.linspace(0, 0.5, 26), 6)
    trace = tmp_path / "trace.csv"
    pd.DataFrame({"arrival_s": arrivals, "payload_id": np.arange(26) % 4}).to_csv(trace, index=False)
    _, rows = run(
        tmp_path,
        server,
        bodies=bodies,
        scenario="trace",
        trace_path=str(trace),
        payload_count=4,
        trace_time_scale=2.0,
        warmup_s=0.2,
    )
    rows = rows.sort_values("scheduled_ns")
    offsets = (rows["scheduled_ns"] - rows["scheduled_ns"].iloc[0]) / 1e9
    assert np.allclose(offsets, arrivals * 2.0, atol=1e-6)  # twice as slow
    assert list(rows["items"]) == list(np.arange(26) % 4 + 1)
    assert list(rows["phase"]) == ["warmup"] * 5 + ["step"] * 21  # the trace's first 0.2 s (scaled) is warm-up


def test_two_processes_share_one_load(tmp_path, server):
    result, rows = run(tmp_path, server, scenario="poisson", levels=[200], step_duration_s=1.0, warmup_s=0, processes=2)
    assert result["processes"] == 2 and len(result["parts"]) == 2
    assert set(rows["process"]) == {0, 1}
    assert 140 <= len(rows) <= 260 and (rows["error"] == "").all()
    starts = [p["phases"][0]["start_ns"] for p in result["parts"]]
    assert abs(starts[0] - starts[1]) < 50e6  # one common start time


def test_arrival_and_payload_seeds_are_independent(tmp_path, server):
    bodies = [
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x" * (i + 1)]}]} for i in range(16)
    ]
    common = dict(bodies=bodies, scenario="poisson", levels=[100], step_duration_s=0.3, warmup_s=0)
    runs = {
        seeds: run(tmp_path / f"{seeds}", server, arrival_seed=seeds[0], payload_seed=seeds[1], **common)[1]
        for seeds in ((1, 1), (1, 2), (2, 1))
    }
    schedule = {k: np.diff(np.sort(r["scheduled_ns"].to_numpy())) for k, r in runs.items()}
    payloads = {k: r.sort_values("scheduled_ns")["bytes_out"].to_numpy() for k, r in runs.items()}
    assert np.array_equal(schedule[1, 1], schedule[1, 2]) and not np.array_equal(payloads[1, 1], payloads[1, 2])
    n = min(len(payloads[1, 1]), len(payloads[2, 1]))
    assert np.array_equal(payloads[1, 1][:n], payloads[2, 1][:n])  # the same payloads, in order, on another schedule
    assert len(schedule[1, 1]) != len(schedule[2, 1]) or not np.array_equal(schedule[1, 1], schedule[2, 1])


def test_a_low_rate_poisson_step_lasts_its_duration_not_until_its_last_arrival(tmp_path, server):
    """At 3 req/s a 1.5 s step has few arrivals and long gaps: the step (and the next one's start) follows the clock,
    so its phase spans the step's duration and the warm-up its own."""
    result, rows = run(tmp_path, server, scenario="poisson", levels=[3, 3], step_duration_s=1.5, warmup_s=0.5)
    phases = {(p["phase"], p["step"]): (p["end_ns"] - p["start_ns"]) / 1e9 for p in result["phases"]}
    assert phases[("warmup", -1)] >= 0.5 and phases[("step", 0)] >= 1.5 and phases[("step", 1)] >= 1.5, phases
    assert phases[("step", 0)] < 2.5, phases  # and not much longer: the answers drain quickly
