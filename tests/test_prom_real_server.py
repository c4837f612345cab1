"""A real Prometheus scraping real model servers under real load, through the experiment's own path: its counts and
histograms agree with the load generator's raw records, phases line up with the load steps, and a Prometheus that dies
mid-run costs the metrics, never the request records."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest

from gawm_lib import experiment, prom, runs
from gawm_lib.cluster.monitoring import process_usage
from gawm_lib.config import ExperimentConfig
from gawm_lib.server import LATENCY_BUCKETS_S
from gawm_lib.synth.traces import resources_from_frame

pytestmark = pytest.mark.integration


def config(**load) -> ExperimentConfig:
    settings = {
        "name": "promtest",
        "workloads": [{"name": "distilbert", "max_batch_size": 4}],
        "load": {"levels": [1, 3], "step_duration_s": 3, "warmup_s": 0.5, **load},
        "prometheus": {"scrape_interval_s": 0.5},
    }
    return ExperimentConfig.model_validate(settings)


def bucket_index(seconds: float) -> int:
    return int(np.searchsorted(LATENCY_BUCKETS_S, seconds))


def test_prometheus_agrees_with_the_raw_records(raw_dir):
    cfg = config()
    with runs.started_run(cfg.name, {}, cfg.model_dump(mode="json"), raw_dir) as run:
        table = experiment.measure(cfg, run, progress=False)
    run = runs.load_run(run.path)
    requests = pd.read_parquet(run.requests_path)
    metrics = prom.load_run_metrics(run.path)
    assert run.manifest["metrics"]["rows"] == len(metrics) > 0 and "error" not in run.manifest["metrics"]

    # phases line up with the load steps: every sample lies inside its phase's bounds
    phases = {p["step"]: p for p in run.manifest["phases"]["distilbert"]}
    assert set(metrics["step"]) == set(phases) == {-1, 0, 1}
    for step, group in metrics.groupby("step"):
        start = pd.Timestamp(phases[step]["start_unix_ns"], unit="ns", tz="UTC").floor("s")
        end = pd.Timestamp(phases[step]["end_unix_ns"], unit="ns", tz="UTC").ceil("s")
        assert group["time"].between(start, end).all(), f"step {step} samples outside its phase"

    # counts: the counter as last scraped equals the records done by then, within the requests in flight at that
    # edge. A range query's value at time t comes from the newest scrape at or before t, up to one interval earlier.
    counted = metrics[metrics["query"] == "requests_total"].dropna(subset=["value"])
    last = counted.loc[counted["time"].idxmax()]
    result = json.loads((run.path / "load" / "distilbert-load-result.json").read_text())
    done_unix_ns = requests["done_ns"] - result["anchor_monotonic_ns"] + result["anchor_unix_ns"]
    in_flight = max(cfg.load.levels)
    earliest = int((done_unix_ns <= last["time"].value - cfg.prometheus.scrape_interval_s * 1e9).sum()) - in_flight
    latest = int((done_unix_ns <= last["time"].value).sum()) + in_flight
    assert (requests["error"] == "").all()
    assert earliest <= last["value"] <= latest, (last["value"], earliest, latest, len(requests))
    final = metrics[metrics["query"] == "throughput"]
    # achieved throughput per step: Prometheus' rate within 25 % of the rows' own count over the step
    for _, row in table.iterrows():
        samples = final[(final["step"] == row["step"])]["value"].dropna()
        assert len(samples) >= 2
        assert samples.median() == pytest.approx(row["throughput_rps"], rel=0.25), (row["step"], samples.tolist())

    # the histogram p95 (server side) agrees with the exact p95 of the records within one bucket
    for _, row in table.iterrows():
        p95 = metrics[(metrics["query"] == "latency_p95") & (metrics["step"] == row["step"])]["value"].dropna()
        assert len(p95) >= 1
        assert abs(bucket_index(p95.median()) - bucket_index(row["p95_ms"] / 1e3)) <= 1, (p95.median(), row["p95_ms"])

    # the server process's CPU and resident memory (prometheus_client's process collector), per replica, in the
    # catalogue's units, and in the trace tables as resource series
    for name, unit, low in (("process_cpu", "cores", 0.0), ("process_resident_memory", "bytes", 50 * 2**20)):
        rows = metrics[(metrics["query"] == name) & (metrics["step"] >= 0)].dropna(subset=["value"])
        assert len(rows) >= 2 and set(rows["unit"]) == {unit} == {prom.CATALOGUE[name].unit}, name
        assert {(lab["workload"], lab["replica"]) for lab in map(json.loads, rows["labels"])} == {("distilbert", "0")}
        assert rows["value"].max() > low and (rows["value"] >= 0).all(), (name, rows["value"].describe())
    # the step's mean CPU: one value per step, from the counter's increase over the step (what the usage table uses)
    step_cpu = metrics[(metrics["query"] == "process_cpu_step") & (metrics["step"] >= 0)].dropna(subset=["value"])
    assert sorted(step_cpu["step"]) == sorted(table["step"]) and (step_cpu["value"] > 0).all(), step_cpu
    usage = process_usage([run], table.assign(run_id=run.id))
    assert usage["cpu_cores"].tolist() == step_cpu.sort_values("step")["value"].tolist()
    assert (usage["cpu_source"] == "process_cpu_step").all() and (usage["memory_bytes"] > 50 * 2**20).all()
    resources = resources_from_frame(metrics, run.id)
    assert resources["process_cpu"].max() > 0 and resources["process_resident_memory"].min() > 50 * 2**20
    assert "process_cpu_step" not in resources  # one value per step, not a series


def test_prometheus_dying_mid_run_keeps_every_request_record(raw_dir, monkeypatch):
    cfg = config(levels=[2], step_duration_s=4)
    started = {}
    original = prom.LocalPrometheus.wait_for_targets

    def wait_then_schedule_kill(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        started["proc"] = self
        threading.Timer(1.5, lambda: self._proc.kill()).start()
        return result

    monkeypatch.setattr(prom.LocalPrometheus, "wait_for_targets", wait_then_schedule_kill)
    with runs.started_run(cfg.name, {}, cfg.model_dump(mode="json"), raw_dir) as run:
        table = experiment.measure(cfg, run, progress=False)
    manifest = runs.load_run(run.path).manifest
    assert manifest["status"] == "COMPLETED"
    assert "Prometheus" in manifest["metrics"]["error"] and "throughput" in manifest["metrics"]["error"]
    requests = pd.read_parquet(run.requests_path)
    result = json.loads((run.path / "load" / "distilbert-load-result.json").read_text())
    assert len(requests) == result["requests"] == table["sent"].sum() + (requests["phase"] == "warmup").sum()
    assert (requests["error"] == "").all()
