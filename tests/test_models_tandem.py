"""The CPU-then-GPU tandem: each stage alone reduces to a queue with a closed form, the slowdown fit recovers known
values, the capacity solves its own equation, and impossible inputs say what is wrong."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gawm_lib import analysis
from gawm_lib.models import (
    BatchLatencyModel,
    BatchLatencyTable,
    TandemServer,
    UnstableSystemError,
    fit_slowdown,
    mmc,
    predict_batching,
)

TINY = 1e-9  # a stage that takes no time to speak of


def test_with_no_batching_the_cpu_stage_is_an_mmc_queue():
    rng = np.random.default_rng(1)
    service_s, threads, rate = 0.004, 4, 700.0  # utilisation 0.7
    model = TandemServer(
        cpu_in_s=tuple(rng.exponential(service_s, 200_000)),
        cpu_out_s=(0.0,),
        threads=threads,
        batch=BatchLatencyTable((TINY,)),
        max_batch=1,
        max_delay_s=0.0,
    )
    latency = model.simulate(rate, n_requests=200_000, seed=2)
    exact = mmc(rate, service_s, threads)
    assert latency.mean() == pytest.approx(exact.mean_response_s, rel=0.03)
    assert np.percentile(latency, 95) == pytest.approx(exact.p95_s, rel=0.03)
    assert model.capacity_rps() == pytest.approx(threads / np.mean(model.cpu_in_s))


def test_with_no_cpu_work_the_tandem_is_the_batching_server():
    service = BatchLatencyModel(alpha=0.0004, beta=0.002)
    model = TandemServer(cpu_in_s=(TINY,), cpu_out_s=(0.0,), threads=64, batch=service, max_batch=16, max_delay_s=0.002)
    rate = 0.6 * service.throughput(16)
    latency = model.simulate(rate, n_requests=100_000, seed=3)
    exact = predict_batching(rate, service, 16, 0.002)
    assert np.percentile(latency, 50) == pytest.approx(exact.p50_s, rel=0.03)
    assert np.percentile(latency, 95) == pytest.approx(exact.p95_s, rel=0.03)


def test_the_slowdown_stretches_cpu_work_and_sets_the_capacity():
    model = TandemServer(
        cpu_in_s=(0.004,),
        cpu_out_s=(0.001,),
        threads=4,
        batch=BatchLatencyTable((TINY,)),
        max_batch=1,
        max_delay_s=0.0,
        per_replica_slowdown=0.002,
        host_slowdown=0.0005,
    )
    for replicas in (1, 4):
        x = model.capacity_rps(replicas)
        assert model.threads / (0.004 * model.slowdown(x, replicas)) == pytest.approx(x)
    assert model.capacity_rps(4) < model.capacity_rps(1) < 1000  # more replicas on the host: each one slower
    # at low load (no queueing, deterministic work) a request takes its stretched CPU work in and out
    latency = model.simulate(1.0, n_requests=50, seed=0)
    assert latency.min() == pytest.approx(0.005 * model.slowdown(1.0), rel=1e-6)


def test_fit_slowdown_recovers_the_slowdowns_that_made_the_saturation_points():
    truth = TandemServer(
        cpu_in_s=(0.0037,),
        cpu_out_s=(0.001,),
        threads=4,
        batch=BatchLatencyTable((TINY,)),
        max_batch=1,
        max_delay_s=0.0,
        per_replica_slowdown=0.0015,
        host_slowdown=0.0004,
    )
    points = [(r, r * truth.capacity_rps(r)) for r in (1, 2, 4)]
    assert fit_slowdown(4, 0.0037, points) == pytest.approx((0.0015, 0.0004), rel=1e-6)
    only_one = fit_slowdown(4, 0.0037, [(1, 536.0)])  # one replica count: all of it per replica
    assert only_one[1] == 0 and 4 / (0.0037 * (1 + only_one[0] * 536)) == pytest.approx(536)


def test_bad_inputs_say_what_is_wrong():
    ok = dict(
        cpu_in_s=(0.004,),
        cpu_out_s=(0.001,),
        threads=4,
        batch=BatchLatencyTable((0.002,)),
        max_batch=1,
        max_delay_s=0.0,
    )
    with pytest.raises(UnstableSystemError, match="CPU stage"):
        TandemServer(**ok).simulate(1000.0)  # 4 threads x 4 ms: 1000 req/s is the capacity itself
    with pytest.raises(ValueError, match="cpu_in_s"):
        TandemServer(**{**ok, "cpu_in_s": (float("nan"),)})
    with pytest.raises(ValueError, match="threads"):
        TandemServer(**{**ok, "threads": 0})
    with pytest.raises(ValueError, match="host_slowdown"):
        TandemServer(**{**ok, "host_slowdown": -1.0})
    with pytest.raises(ValueError, match="not the bottleneck"):
        fit_slowdown(4, 0.004, [(1, 2000.0)])  # faster than 4 threads at 4 ms could ever be
    with pytest.raises(ValueError, match="at least one"):
        fit_slowdown(4, 0.004, [])


def test_fit_tandem_refuses_records_without_the_servers_decode_time():
    records = pd.DataFrame(
        {
            "workload": ["w"],
            "scenario": ["closed_loop"],
            "phase": ["step"],
            "error": [""],
            "server_compute_ns": [1e6],
            "replicas": [1],
            "level": [1.0],
        }
    )
    with pytest.raises(ValueError, match="server_decode_ns"):
        analysis.fit_tandem(records)


def _records(run_id, replicas, level, decode_ms, compute_ms, batch, n=50, gap_ms=1.0):
    """Closed-loop request records of one step: ``n`` requests, each ``gap_ms`` after the last, in batches of
    ``batch``."""
    sent = np.arange(n) * gap_ms * 1e6
    latency_ns = (decode_ms + 2.5 + compute_ms + 1.0) * 1e6
    return pd.DataFrame(
        {
            "run_id": run_id,
            "workload": "w",
            "phase": "step",
            "step": 0,
            "level": float(level),
            "scenario": "closed_loop",
            "error": "",
            "replicas": replicas,
            "max_batch_size": 8,
            "placement": "shared",
            "payload_audio_s": np.nan,
            "max_queue_delay_ms": 2.0,
            "decode_workers": 4,
            "items": 1,
            "batch_size": batch,
            "scheduled_ns": sent,
            "sent_ns": sent,
            "done_ns": sent + latency_ns,
            "server_decode_ns": decode_ms * 1e6,
            "server_queue_ns": 2.5e6,
            "server_compute_ns": compute_ms * 1e6,
        }
    )


def test_fit_tandem_reads_the_stages_from_the_quiet_step_and_skips_runs_the_batcher_limited():
    records = pd.concat(
        [
            # one user: 9.5 ms a request, every 10 ms; the batcher computes 2 ms of each 10 ms
            _records("one", 1, 1, decode_ms=4.0, compute_ms=2.0, batch=1, gap_ms=10.0),
            # saturated: a request every 1 ms, in batches of 4 taking 3 ms: the batcher busy 39 %, the CPU stage the
            # limit
            _records("one", 1, 64, decode_ms=40.0, compute_ms=3.0, batch=4, gap_ms=1.0).assign(step=1),
            # two replicas whose batchers were computing all the time (batches of 1 taking 7.9 ms, every 1 ms): left out
            _records("two", 2, 64, decode_ms=30.0, compute_ms=7.9, batch=1, gap_ms=1.0),
        ],
        ignore_index=True,
    )
    model = analysis.fit_tandem(records)
    assert np.mean(model.cpu_in_s) == pytest.approx(0.004) and np.mean(model.cpu_out_s) == pytest.approx(0.001)
    assert model.dispatch_s == pytest.approx(0.0005) and model.threads == 4 and model.max_batch == 8
    assert model.batch.predict(1) == pytest.approx(0.002) and model.batch.predict(4) == pytest.approx(0.003)
    assert model.host_slowdown == 0  # the 2-replica run was left out: one replica count, all of it per replica
    busiest = 50 / (0.049 + 0.0465)  # 50 requests: first scheduled to last done
    assert model.capacity_rps(1) == pytest.approx(busiest)
    with pytest.raises(ValueError, match="the model, not the CPU stage, was the bottleneck"):
        analysis.fit_tandem(records[records["run_id"] == "two"].assign(replicas=1))


def test_plan_tandem_takes_the_fewest_replicas_under_the_cap_and_within_the_slo():
    from gawm_lib.models import plan_tandem

    # 4 threads x 4 ms: 1,000 req/s a replica at most, 850 under the 85 % cap; no slowdown, no batching to speak of
    model = TandemServer(
        cpu_in_s=(0.004,), cpu_out_s=(0.001,), threads=4, batch=BatchLatencyTable((TINY,)), max_batch=1, max_delay_s=0.0
    )
    plan = plan_tandem(model, 2000.0, 0.050, max_replicas=4)  # 1 and 2 replicas are past the cap; 3 meet 50 ms
    assert plan.replicas == 3 and plan.p95_s[1] == plan.p95_s[2] == float("inf") and plan.p95_s[3] <= 0.050
    assert plan_tandem(model, 2000.0, 0.0049, max_replicas=4).replicas is None  # below the bare 5 ms: never
    tight = plan_tandem(model, 100.0, 0.0051, max_replicas=1)  # M/D/4 at 10 %: hardly any wait
    assert tight.replicas == 1 and 0.005 <= tight.p95_s[1] <= 0.0051
    with pytest.raises(ValueError, match="max_utilisation"):
        plan_tandem(model, 100.0, 0.01, 2, max_utilisation=1.0)
