"""The load process against a real server: every request accounted for, open-loop timing from the schedule,
records readable after an interrupt, and errors recorded by kind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from gawm_lib import summary
from gawm_lib.backends import open_backend
from gawm_lib.config import BackendConfig, LoadConfig, WorkloadConfig
from gawm_lib.loadgen import COLUMNS, LoadSpec, run_load, write_bodies
from gawm_lib.workloads import build_workload

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = WorkloadConfig(name="distilbert", warmup_batches=1, max_batch_size=4, max_queue_delay_ms=1)
    with open_backend(cfg, BackendConfig(replicas=1), tmp_path_factory.mktemp("logs")) as backend:
        yield backend.replicas[0]


def spec_for(tmp_path, targets, **load):
    workload = build_workload(WorkloadConfig(name="distilbert"))
    bodies = write_bodies(tmp_path / "bodies.jsonl", [workload.request_body([t]) for t in workload.sample_items(8, 1)])
    return LoadSpec(
        workload="distilbert",
        model="distilbert",
        targets=targets,
        bodies_path=str(bodies),
        out_dir=str(tmp_path / "requests.parquet"),
        load=LoadConfig(**load).model_dump(),
    )


def test_closed_loop_steps_record_every_request(tmp_path, server):
    spec = spec_for(tmp_path, [server.url], levels=[1, 2], step_duration_s=1.0, warmup_s=0.3, min_requests_per_step=5)
    result = run_load(spec, tmp_path, progress=False)
    rows = pd.read_parquet(spec.out_dir)
    assert list(rows.columns) == list(COLUMNS)
    assert result["requests"] == len(rows) and not result["interrupted"]
    assert [p["phase"] for p in result["phases"]] == ["warmup", "step", "step"]
    assert (rows["error"] == "").all() and (rows["status"] == 200).all()
    steps = rows[rows["phase"] == "step"].groupby("step").size()
    assert steps.min() >= 5  # min_requests_per_step holds even if the duration ran out first
    assert (rows["done_ns"] > rows["sent_ns"]).all() and (rows["sent_ns"] >= rows["scheduled_ns"]).all()
    assert (rows["batch_size"] >= 1).all() and (rows["server_compute_ns"] > 0).all()
    assert (rows["server_decode_ns"] > 0).all()  # the server's own time before the batch: body, parsing, decoding
    for phase in result["phases"]:  # wall-clock phase bounds follow from the one anchor
        assert phase["end_unix_ns"] - phase["start_unix_ns"] == phase["end_ns"] - phase["start_ns"]
    table = summary.summarise(summary.read_requests(spec.out_dir))
    assert list(table["level"]) == [1.0, 2.0] and (table["sent"] == table["ok"] + table["errors"]).all()


def test_poisson_latency_counts_from_the_schedule(tmp_path, server):
    spec = spec_for(tmp_path, [server.url], scenario="poisson", levels=[40], step_duration_s=1.5, warmup_s=0)
    run_load(spec, tmp_path, progress=False)
    rows = pd.read_parquet(spec.out_dir).sort_values("scheduled_ns")
    gaps_s = np.diff(rows["scheduled_ns"].to_numpy()) / 1e9
    assert 20 <= len(rows) <= 120 and 0.01 < gaps_s.mean() < 0.05  # about 40 req/s offered, exponential gaps
    assert gaps_s.std() / gaps_s.mean() > 0.6  # a Poisson schedule, not a constant one
    # a server slower than 40 req/s builds a queue: lag from schedule to send is kept, not hidden
    lag_ms = (rows["sent_ns"] - rows["scheduled_ns"]) / 1e6
    assert (lag_ms >= 0).all()
    latency = summary.read_requests(spec.out_dir)["latency_ms"]
    service = (rows["done_ns"] - rows["sent_ns"]) / 1e6
    assert latency.sum() >= service.sum()


def test_unreachable_server_records_connect_errors(tmp_path):
    spec = spec_for(tmp_path, ["http://127.0.0.1:9"], levels=[2], step_duration_s=0.5, warmup_s=0, request_timeout_s=2)
    result = run_load(spec, tmp_path, progress=False)
    rows = pd.read_parquet(spec.out_dir)
    assert len(rows) == result["requests"] > 0
    assert set(rows["error"]) == {"connect"} and (rows["status"] == 0).all()
    assert summary.errors_by_kind(rows) == {"connect": len(rows)}


def test_interrupted_load_keeps_readable_records_and_accounts_for_in_flight(tmp_path, server):
    spec = spec_for(tmp_path, [server.url], levels=[3], step_duration_s=60, warmup_s=0)
    spec_path = tmp_path / "spec.json"
    spec.write(spec_path)
    result_path = tmp_path / "result.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gawm_lib.loadgen", str(spec_path), "--result", str(result_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert json.loads(proc.stdout.readline())["done"] >= 1
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    result = json.loads(result_path.read_text())
    rows = pd.read_parquet(spec.out_dir)
    assert result["interrupted"] and result["requests"] == len(rows) > 1
    assert set(rows["error"]) <= {"", "cancelled"}
    assert result["phases"][0]["end_ns"] - result["phases"][0]["start_ns"] < 30e9
