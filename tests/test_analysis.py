"""Analysis of recorded runs: the service fit from server-reported batches, the closed-loop cycle model, and the
validation table, on hand-made rows whose answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gawm_lib import analysis, runs
from gawm_lib.models import BatchLatencyModel, predict_batching


def rows(batch_sizes, alpha=0.01, beta=0.005, overhead=0.002, level=1):
    b = np.asarray(batch_sizes)
    compute = ((alpha * b + beta) * 1e9).astype(np.int64)
    sent = np.arange(len(b)) * 10**9
    return pd.DataFrame(
        {
            "workload": "w",
            "phase": "step",
            "step": 0,
            "level": float(level),
            "error": "",
            "batch_size": b,
            "server_compute_ns": compute,
            "server_queue_ns": 10**6,
            "scheduled_ns": sent,
            "sent_ns": sent,
            "done_ns": sent + compute + 10**6 + int(overhead * 1e9),
        }
    )


def test_fit_service_recovers_the_batch_model_and_overhead():
    model, overhead = analysis.fit_service(rows([1, 2, 4, 8, 1, 2, 4, 8]))
    assert model.predict(4) == pytest.approx(0.045, rel=1e-6)
    assert model.predict(8) == pytest.approx(0.085, rel=1e-6)
    assert overhead == pytest.approx(0.002, abs=1e-6)
    with pytest.raises(ValueError, match="no successful requests"):
        analysis.fit_service(rows([1, 2]).assign(error="timeout"))


def test_batch_time_factors_count_each_batch_once():
    # Batches of 2 (two requests each, one row per request) at 1.2x the model, one of 4 at 0.9x; two replicas ran a
    # batch of 4 that took the same time: two batches.
    service = BatchLatencyModel(alpha=0.01, beta=0.005)
    b = np.array([2, 2, 4, 4, 4, 4, 4, 4, 4, 4])
    compute = np.array([0.030, 0.030, 0.0405, 0.0405, 0.0405, 0.0405, 0.0405, 0.0405, 0.0405, 0.0405]) * 1e9
    replica = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    table = rows(b).assign(server_compute_ns=compute.astype(np.int64), replica=replica)
    np.testing.assert_allclose(np.sort(analysis.batch_time_factors(table, service)), [0.9, 0.9, 1.2])
    with pytest.raises(ValueError, match="no successful requests with server-reported batch times"):
        analysis.batch_time_factors(table.assign(error="timeout"), service)


def test_open_loop_steps_are_predicted_with_the_batch_time_variability():
    service = BatchLatencyModel(alpha=0.01, beta=0.005)
    step = rows([1, 2, 1, 3], level=20.0).assign(
        run_id="r", scenario="poisson", replicas=1, max_batch_size=4, max_queue_delay_ms=5.0
    )
    factors = [0.7, 1.0, 1.3]
    fixed = analysis.predict_steps(step, service, 0.002)
    varied = analysis.predict_steps(step, service, 0.002, service_factors=factors)
    expected = predict_batching(20.0, service, 4, 0.005, service_factors=factors)
    assert varied["predicted_p95"].iloc[0] == pytest.approx(expected.p95_s + 0.002)
    assert varied["predicted_p95"].iloc[0] > fixed["predicted_p95"].iloc[0]
    assert varied["predicted_throughput"].iloc[0] == 20.0


@pytest.mark.parametrize("scenario", ["trace", "constant_rate", "offline", "stages"])
def test_steps_of_scenarios_without_a_model_are_dropped_with_the_reason(scenario):
    """Before: every step that was not poisson went through the closed-loop cycle model, which read a trace replay's
    arrival rate (level 7.5 req/s) as 8 users and predicted 4 x its throughput."""
    service = BatchLatencyModel(alpha=0.01, beta=0.005)
    step = rows([1, 2, 1, 3], level=7.5).assign(
        run_id="r", scenario=scenario, replicas=1, max_batch_size=4, max_queue_delay_ms=5.0
    )
    predicted, dropped = analysis.predict_steps(step, service, 0.002, return_dropped=True)
    assert predicted.empty and len(dropped) == 1
    assert dropped["reason"].item().startswith(f"no model for {scenario} steps")
    validation = analysis.validation_table(predicted)
    assert validation.empty and {"metric", "measured", "predicted"} <= set(validation.columns)
    assert validation.groupby(["workload", "metric"])["ape_pct"].mean().unstack().empty  # what notebook 09 shows


def test_closed_loop_cycle_model_by_hand():
    service = BatchLatencyModel(alpha=0.01, beta=0.005)
    assert analysis.closed_loop_latency_s(3, service, 4, 0.0) == pytest.approx(0.035)  # one batch of 3
    assert analysis.closed_loop_latency_s(6, service, 4, 0.001) == pytest.approx(0.045 + 0.025 + 0.001)  # 4 then 2


def test_validation_table_has_one_row_per_metric_and_step():
    predicted = pd.DataFrame(
        {
            "run_id": "r",
            "workload": "w",
            "scenario": "closed_loop",
            "level": [1.0, 2.0],
            "throughput": [10.0, 20.0],
            "p50": [0.1, 0.1],
            "p95": [0.2, 0.2],
            "predicted_throughput": [11.0, 20.0],
            "predicted_p50": [0.1, 0.12],
            "predicted_p95": [0.2, 0.2],
        }
    )
    table = analysis.validation_table(predicted)
    assert len(table) == 6
    assert table.loc[table["metric"] == "throughput", "ape_pct"].tolist() == pytest.approx([10.0, 0.0])
    assert table.loc[table["metric"] == "p50", "ape_pct"].tolist() == pytest.approx([0.0, 20.0])


def test_one_batch_size_gives_a_stated_no_gain_model():
    with pytest.warns(UserWarning, match="only batch size 1 was observed"):
        model, _ = analysis.fit_service(rows([1, 1, 1]))
    assert model.predict(1) == pytest.approx(0.015) and model.predict(4) == pytest.approx(0.060)


def scaling_table(points):
    """summarise_runs-like rows: (placement, replicas, users, throughput [req/s], mean [ms])."""
    return pd.DataFrame(
        [
            {
                "run_id": f"run-{p}-{r}",
                "workload": "w",
                "step": 0,
                "scenario": "closed_loop",
                "placement": p,
                "replicas": r,
                "level": float(n),
                "throughput_rps": x,
                "mean_ms": m,
            }
            for p, r, n, x, m in points
        ]
    )


def test_replica_scaling_predicts_exclusive_and_shared_by_hand():
    # one replica at 10 req/s: demand 100 ms; with 2 users, 2 own replicas serve both at once, 2 sharing one core cannot
    table = scaling_table(
        [("exclusive", 1, 2, 10.0, 200.0), ("exclusive", 2, 2, 19.0, 105.0), ("shared", 2, 2, 9.5, 210.0)]
    )
    measured, predicted = analysis.replica_scaling(table)
    assert sorted(zip(measured["placement"], measured["replicas"])) == [
        ("exclusive", 1),
        ("exclusive", 2),
        ("shared", 1),
        ("shared", 2),
    ]
    shared_one = measured[(measured["placement"] == "shared") & (measured["replicas"] == 1)].iloc[0]
    assert shared_one["run_id"] == "run-exclusive-1"  # one replica is placed alike: measured once, used by both
    mva = predicted.set_index(["placement", "replicas"])
    assert set(predicted["model"]) == {"MVA"}  # two replica counts: no USL fit
    assert mva.loc[("exclusive", 2), "throughput_rps"] == pytest.approx(20.0)
    assert mva.loc[("exclusive", 2), "mean_ms"] == pytest.approx(100.0)
    assert mva.loc[("shared", 2), "throughput_rps"] == pytest.approx(10.0)
    assert mva.loc[("shared", 2), "mean_ms"] == pytest.approx(200.0)
    assert mva.loc[("exclusive", 1), "demand_ms"] == pytest.approx(100.0)


def test_replica_scaling_fits_the_usl_from_three_replica_counts_and_takes_the_busiest_step():
    points = [
        ("exclusive", r, n, x, n / x * 1e3) for r, n, x in [(1, 4, 10.0), (2, 4, 18.0), (4, 4, 30.0), (4, 1, 9.0)]
    ]  # the 1-user step of 4 replicas is ignored
    measured, predicted = analysis.replica_scaling(scaling_table(points))
    assert measured.set_index("replicas").loc[4, "throughput_rps"] == 30.0
    usl = predicted[predicted["model"] == "USL"].set_index("replicas")
    assert list(usl.index) == [1, 2, 3, 4]
    assert usl.loc[4, "throughput_rps"] == pytest.approx(30.0, rel=0.05) and usl["sigma"].iloc[0] > 0
    with pytest.raises(ValueError, match="needs closed-loop runs"):
        analysis.replica_scaling(scaling_table(points).assign(scenario="poisson"))


def test_audio_duration_gives_the_real_time_factor_per_clip_length():
    table = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "workload": "whisper",
            "payload_audio_s": [2.0, 10.0, np.nan],
            "level": 1.0,
            "ok": 5,
            "throughput_rps": 2.0,
            "mean_ms": 500.0,
            "p50_ms": [400.0, 500.0, 1.0],
            "p95_ms": [600.0, 700.0, 1.0],
            "compute_ms": [300.0, 450.0, 1.0],
            "compute_item_ms": 300.0,
            "batch_size_mean": 1.0,
        }
    )
    out = analysis.audio_duration(table)
    assert out["audio_s"].tolist() == [2.0, 10.0]  # the run without a clip length is not a point
    assert out["rtf_p50"].tolist() == pytest.approx([0.2, 0.05])
    assert out["rtf_p95"].tolist() == pytest.approx([0.3, 0.07])
    assert out["rtf_server"].tolist() == pytest.approx([0.15, 0.045])
    with pytest.raises(ValueError, match="no Whisper runs with load.payload_audio_s"):
        analysis.audio_duration(table.assign(payload_audio_s=np.nan))


def fake_run(run_id: str, replicas: int = 1, scenario: str = "closed_loop", **workloads) -> runs.Run:
    effective = {
        "name": "quick",
        "backend": {"replicas": replicas, "placement": "none"},
        "load": {"scenario": scenario, "levels": [1, 2], "arrival_seed": 1},
        "workloads": [{"name": name, **settings} for name, settings in (workloads or {"resnet50": {}}).items()],
    }
    return runs.Run(path=Path("/nonexistent") / run_id, manifest={"run_id": run_id, "params": {"effective": effective}})


def test_configuration_labels_name_what_differs_between_the_runs_shown():
    grid = [
        fake_run(f"r{i}", replicas=r, resnet50={"max_batch_size": b})
        for i, (r, b) in enumerate([(1, 1), (1, 4), (2, 1), (2, 4)])
    ]
    labels = analysis.config_labels(grid).set_index("run_id")["config"]
    assert list(labels) == [
        "replicas=1, max_batch_size=1",
        "replicas=1, max_batch_size=4",
        "replicas=2, max_batch_size=1",
        "replicas=2, max_batch_size=4",
    ]
    repeats = analysis.config_labels([fake_run("20260101T000000Z-a"), fake_run("20260102T000000Z-b")])
    assert list(repeats["config"]) == ["run 20260101T000000Z", "run 20260102T000000Z"]  # told apart by start
    alone = analysis.config_labels([fake_run("x")])
    assert list(alone["config"]) == [""]  # one run: nothing to tell apart
    mixed = [fake_run("a", resnet50={"max_batch_size": 1}), fake_run("b", scenario="poisson", distilbert={})]
    assert analysis.run_labels(mixed) == {
        "a": "scenario=closed_loop, workloads=[resnet50]",
        "b": "scenario=poisson, workloads=[distilbert]",
    }


def test_steps_past_saturation_are_dropped_with_the_reason():
    service = BatchLatencyModel(alpha=0.01, beta=0.005)  # at most 4 / 0.045 = 89 req/s with batches of 4
    steps = [rows([1, 2, 1, 3], level=level).assign(step=i) for i, level in enumerate([20.0, 200.0])]
    table = pd.concat(steps, ignore_index=True).assign(
        run_id="r", scenario="poisson", replicas=1, max_batch_size=4, max_queue_delay_ms=5.0
    )
    predicted, dropped = analysis.predict_steps(table, service, 0.002, return_dropped=True)
    assert list(predicted["level"]) == [20.0]
    assert list(dropped["level"]) == [200.0] and dropped["reason"].iloc[0].startswith("past saturation")
    assert dropped["utilisation"].iloc[0] == pytest.approx(200 * 0.045 / 4)
    plain = analysis.predict_steps(table, service, 0.002)  # the one-frame call of before still works
    assert plain.equals(predicted) and [d["level"] for d in plain.attrs["dropped"]] == [200.0]
    both = pd.concat([plain, plain], ignore_index=True)  # concatenating results must not trip over their attrs
    assert len(both) == 2
    nothing, dropped = analysis.predict_steps(table[table["level"] == 200.0], service, 0.002, return_dropped=True)
    assert nothing.empty and "predicted_p95" in nothing and len(dropped) == 1


def test_service_time_caveats_flag_replicas_that_time_sliced_one_core():
    run = fake_run("r", replicas=4, resnet50={"threads": 1, "device": "cpu", "max_batch_size": 8})
    run.manifest["params"]["effective"]["backend"]["kind"] = "local"
    run.manifest["status"] = "COMPLETED"
    run.manifest["host"] = {"cpu_count": 2, "cpu_affinity": 2}
    run.manifest["workloads"] = {"resnet50": {"placement": [{"replica": i, "cpus_actual": [0]} for i in range(4)]}}
    conf = analysis.run_configuration(run, "resnet50")
    assert (conf["replicas"], conf["cores"], conf["host_cores"], conf["threads"]) == (4, 1, 2, 1)
    (note,) = analysis.service_time_caveats(run, "resnet50")
    assert note.startswith("4 replica(s) x 1 thread(s) ran on 1 core(s)")
    run.manifest["workloads"]["resnet50"]["placement"] = [{"replica": i, "cpus_actual": [i]} for i in range(4)]
    assert analysis.service_time_caveats(run, "resnet50") == []
    few = rows([1, 1, 1]).assign(run_id="r", workload="resnet50", error=["", "", "timeout"], replica=0)
    notes = analysis.service_time_caveats(run, "resnet50", few)
    assert any("1 of 3 requests failed" in n for n in notes) and any("every batch had 1 item" in n for n in notes)
