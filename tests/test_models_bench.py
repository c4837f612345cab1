"""The models benchmark: its report merging, the schedule replay of a step, the Whisper payloads and plan, and a tiny
real run of the Whisper path (fit, held-out steps, both predictions) against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gawm_lib.config import WorkloadConfig
from gawm_lib.models import BatchLatencyModel, BatchLatencyTable, predict_batching
from studies.h200.scripts import models_bench as mb


def _entry(workload: str, p95_measured: float, command: str = "python -m studies.h200.scripts.models_bench") -> dict:
    held = [
        {
            "utilisation": u,
            "measured": {"throughput_rps": 1.0, "p50_ms": 10.0, "p95_ms": p95_measured},
            "predicted": {"throughput_rps": 1.0, "p50_ms": 10.0, "p95_ms": 20.0},
        }
        for u in (0.1, 0.5)
    ]
    return {"workload": workload, "held_out": held, "capacity_rps": 2.0, "run": {"command": command}}


def test_merge_replaces_per_workload_keeps_the_rest_and_the_replaced_runs():
    schema1 = {
        "benchmark": "models",
        "schema_version": 1,
        "command": "python -m studies.h200.scripts.models_bench",
        "started_utc": "t0",
        "git": {"short": "abc"},
        "workloads": [{k: v for k, v in _entry("distilbert", 20.0).items() if k != "run"}],
        "analysis_speed": {"records": 10_000_000, "seconds": 5.3},
    }
    other = {
        "schema_version": 1,
        "command": "python -m studies.h200.scripts.models_bench",
        "workloads": [{k: v for k, v in _entry("resnet50", 25.0).items() if k != "run"}],
        "analysis_speed": {"records": 1000, "seconds": 0.8},
    }
    merged = mb.merge_report(schema1, other, replace_speed=False)
    assert [e["workload"] for e in merged["workloads"]] == ["resnet50", "distilbert"]
    assert merged["workloads"][1]["run"]["git"] == {"short": "abc"}  # schema 1's run lifted into the entry
    assert merged["analysis_speed"]["records"] == 10_000_000  # a dummy 1000-record measurement does not win
    assert merged["mape_pct"]["distilbert"]["p95_ms"] == pytest.approx(0.0)
    assert merged["mape_pct"]["resnet50"]["p95_ms"] == pytest.approx(20.0)
    assert merged["p95_goal_met"] == {"resnet50": False, "distilbert": True}
    again = mb.merge_report(
        merged, {"workloads": [_entry("whisper", 22.0, "cmd whisper"), _entry("distilbert", 19.0, "cmd distilbert")]}
    )
    assert [e["workload"] for e in again["workloads"]] == ["resnet50", "distilbert", "whisper"]
    assert again["workloads"][1]["run"]["command"] == "cmd distilbert"
    # append-only: every entry recorded stays in runs, oldest first; workloads is each one's newest
    assert [e["workload"] for e in again["runs"]] == ["distilbert", "resnet50", "whisper", "distilbert"]
    assert again["runs"][0]["held_out"][0]["measured"]["p95_ms"] == 20.0 and "superseded" not in again
    assert set(again["commands"]) == {"python -m studies.h200.scripts.models_bench", "cmd distilbert", "cmd whisper"}
    json.dumps(again)  # serialisable as written
    assert mb.merge_report(again, again)["runs"] == again["runs"]  # the same runs again: no duplicates
    schema2 = {**again, "schema_version": 2, "superseded": again["runs"][:1], "workloads": again["workloads"]}
    del schema2["runs"]  # a schema-2 file: its superseded entries come first, then its current ones
    assert [e["workload"] for e in mb.merge_report(schema2, {"workloads": []})["runs"]] == [
        "distilbert",
        "resnet50",
        "distilbert",
        "whisper",
    ]
    assert again["machine_quiet"] == {"resnet50": None, "distilbert": None, "whisper": None}  # no CPU recorded


def test_a_busy_machine_is_flagged():
    entry = _entry("whisper", 20.0)
    entry["fit_cpu"] = {"other_processes_cores": 0.01}
    for h, other in zip(entry["held_out"], (0.02, 0.9)):
        h["cpu"] = {"other_processes_cores": other}
    merged = mb.merge_report(None, {"workloads": [entry]})
    assert merged["machine_quiet"] == {"whisper": False}
    assert merged["workloads"][0]["machine_busy_spans"] == {"utilisation 0.5": 0.9}


def test_replay_step_predicts_a_quiet_schedule_and_counts_the_warmup():
    service = BatchLatencyModel(alpha=0.1, beta=0.0, floor=0.0)
    due = (np.arange(12) * 5.0 * 1e9).astype(np.int64)  # every 5 s: never queued, each alone after the max delay
    rows = pd.DataFrame({"scheduled_ns": due, "phase": ["warmup"] * 2 + ["step"] * 10})
    same = mb.replay_step(rows, service, np.array([1.0]), 4, 0.005, 0.002, replays=3)
    assert same["p50_ms"] == pytest.approx(107.0) and same["p95_ms"] == pytest.approx(107.0)
    assert same["mean_batch_size"] == 1.0
    assert same["throughput_rps"] == pytest.approx(10 / (45 + 0.107))
    # A burst of three and a single one: batches of 3 and 1, so 2 per batch but 2.5 per request (the burst's three
    # requests each see a batch of 3); predict_batching's mean batch size is the per-batch one.
    burst = pd.DataFrame({"scheduled_ns": np.array([0, 0, 0, 10 * 10**9]), "phase": "step"})
    same = mb.replay_step(burst, service, np.array([1.0]), 4, 0.005, 0.0, replays=1)
    assert same["mean_batch_size"] == pytest.approx(2.0)
    assert same["mean_batch_size_per_request"] == pytest.approx(2.5)


def test_noise_floor_is_small_for_a_long_quiet_step_and_large_for_a_short_busy_one():
    service = BatchLatencyModel(alpha=0.46, beta=0.03, floor=0.0)
    cap = 4 / service.predict(4)
    quiet = mb.noise_floor(
        0.1 * cap,
        2000,
        4,
        service,
        np.array([1.0]),
        4,
        0.005,
        predict_batching(0.1 * cap, service, 4, 0.005).p95_s,
        runs_=20,
    )
    busy = mb.noise_floor(
        0.85 * cap,
        200,
        4,
        service,
        np.array([1.0]),
        4,
        0.005,
        predict_batching(0.85 * cap, service, 4, 0.005).p95_s,
        runs_=20,
    )
    assert quiet["p95_mean_abs_error_pct"] < 8 < busy["p95_mean_abs_error_pct"]


def _whisper_like() -> tuple[BatchLatencyModel, float]:
    service = BatchLatencyModel(alpha=0.46, beta=0.03, floor=0.0)  # Whisper tiny on one core: ~0.5 s a clip
    return service, 4 / service.predict(4)


def test_step_length_for_floor_is_the_shortest_that_meets_the_target_or_says_it_cannot():
    service, cap = _whisper_like()
    rate, factors = 0.85 * cap, np.array([0.95, 1.0, 1.05])
    sized = mb.step_length_for_floor(
        rate,
        service,
        factors,
        4,
        0.005,
        target_pct=6.0,
        min_s=60.0,
        max_s=20_000.0,
        min_requests=50,
        warmup_s=2.0,
        runs_=40,
    )
    assert sized["target_met"] and sized["noise_floor_pct"] <= 6.0 < sized["tried"][0]["noise_floor_pct"]
    assert sized["tried"][0]["step_s"] == 60.0 and sized["tried"][-1]["step_s"] == sized["step_s"]
    assert sized["tried"][-1]["requests"] == int(np.ceil(rate * sized["step_s"]))
    # not far past the shortest: a step half as long misses the target (the same simulated runs, so no luck)
    p95 = predict_batching(rate, service, 4, 0.005, service_factors=factors).p95_s
    half = mb.noise_floor(
        rate, int(np.ceil(rate * sized["step_s"] / 2)), int(np.ceil(rate * 2.0)), service, factors, 4, 0.005, p95, 40
    )
    assert half["p95_mean_abs_error_pct"] > 6.0
    capped = mb.step_length_for_floor(
        rate, service, factors, 4, 0.005, target_pct=6.0, min_s=60.0, max_s=120.0, runs_=40
    )
    assert capped["step_s"] == 120.0 and not capped["target_met"] and capped["noise_floor_pct"] > 6.0
    short_enough = mb.step_length_for_floor(
        0.1 * cap, service, factors, 4, 0.005, target_pct=50.0, min_s=60.0, max_s=120.0, runs_=40
    )
    assert short_enough["step_s"] == 60.0 and len(short_enough["tried"]) == 1
    with pytest.raises(ValueError, match="target_pct"):
        mb.step_length_for_floor(rate, service, factors, 4, 0.005, target_pct=0.0, min_s=60.0, max_s=120.0)
    with pytest.raises(ValueError, match="min_s <= max_s"):
        mb.step_length_for_floor(rate, service, factors, 4, 0.005, target_pct=5.0, min_s=600.0, max_s=120.0)


def test_plan_steps_prints_each_steps_length_from_a_recorded_fit(tmp_path, capsys):
    service, cap = _whisper_like()
    entry = {
        "workload": "whisper",
        "service_used_s": [float(service.predict(b)) for b in range(1, 5)],
        "service_variability": {"factors": [0.97, 1.0, 1.03]},
        "settings": {"max_batch_size": 4, "max_queue_delay_ms": 5.0},
        "plan": {"utilisations": [0.1, 0.85], "requests": 20, "warmup_s": 2.0},
    }
    report = tmp_path / "models.json"
    report.write_text(json.dumps({"workloads": [entry]}))
    assert (
        mb.main(
            [
                "--out",
                str(report),
                "--plan-steps",
                "--max-noise-floor-pct",
                "15",
                "--min-step-s",
                "60",
                "--max-step-s",
                "5000",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    steps = mb.plan_steps(entry, 15.0, 60.0, 5000.0)
    assert [s["utilisation"] for s in steps] == [0.1, 0.85] and all(s["target_met"] for s in steps)
    assert steps[1]["rate_rps"] == pytest.approx(0.85 * cap)
    for s in steps:
        assert f"{s['step_s']:7.0f} s" in out and f"floor {s['noise_floor_pct']:4.1f} %" in out
    assert "whisper: held-out steps for a noise floor <= 15 %" in out
    # what is missing is named, with the file
    del entry["service_variability"]
    report.write_text(json.dumps({"workloads": [entry]}))
    with pytest.raises(SystemExit):
        mb.main(["--out", str(report), "--plan-steps", "--max-noise-floor-pct", "8"])
    err = capsys.readouterr().err
    assert str(report) in err and "service_variability" in err
    for argv, says in (
        (["--plan-steps"], "--max-noise-floor-pct"),
        (["--plan-steps", "--max-noise-floor-pct", "8", "--workloads", "resnet50"], "no entry for resnet50"),
        (["--plan-steps", "--max-noise-floor-pct", "-1"], "expected a positive number"),
        (
            ["--plan-steps", "--max-noise-floor-pct", "5", "--min-step-s", "900", "--max-step-s", "600"],
            "shorter than --min-step-s",
        ),
        # against the plan's default longest step (4 h), before any fit
        (
            ["--plan-steps", "--max-noise-floor-pct", "5", "--min-step-s", "20000"],
            "--max-step-s 14400 is shorter than --min-step-s 20000",
        ),
        # against the plan's default shortest step (Whisper's 150 s)
        (
            ["--plan-steps", "--max-noise-floor-pct", "5", "--max-step-s", "100"],
            "whisper: --max-step-s 100 is shorter than --min-step-s 150",
        ),
    ):
        with pytest.raises(SystemExit):
            mb.main(["--out", str(report), *argv])
        assert says in capsys.readouterr().err


def test_whisper_settings_payloads_and_plan():
    settings = mb.SETTINGS["whisper"]
    cfg = WorkloadConfig(name="whisper", **settings)
    assert cfg.temperatures == [0.0] and cfg.decode_tokens <= 16  # no fallback re-decodes: a fixed cost per clip
    from gawm_lib.workloads import build_workload
    from gawm_lib.workloads.whisper import SAMPLE_RATE

    workload = build_workload(cfg)
    clips = mb.payload_items(workload, "whisper", count=4)
    seconds = [workload.decode_item(c)[1] for c in clips]  # (log-Mel, audio seconds)
    assert all(1.0 < s < 8.0 for s in seconds), seconds  # one sentence each
    assert all(len(c) < 8.0 * SAMPLE_RATE * 2 + 1000 for c in clips)
    # The full plan, at ~2 clips/s of capacity, fits in ~36 minutes of held-out steps and sizes each by requests.
    plan = mb.plan_for("whisper", quick=False)
    assert plan.requests >= 150
    capacity, clip_s = 2.0, 0.5
    wall = sum(max(plan.min_step_s, plan.requests / (u * capacity)) + plan.warmup_s for u in plan.utilisations)
    wall += sum(max(plan.fit_s, plan.fit_batches * b * clip_s) for b in range(1, settings["max_batch_size"] + 1))
    wall += max(plan.calibration_min_s, plan.calibration_requests / (plan.calibration_utilisation * capacity))
    wall += (len(plan.utilisations) + 1) * max(
        plan.speed_check_min_s, plan.speed_check_requests / (plan.calibration_utilisation * capacity)
    )
    assert wall < 36 * 60


@pytest.mark.integration
@pytest.mark.slow
def test_whisper_path_runs_end_to_end(tmp_path, monkeypatch):
    plan = mb.Plan(
        requests=5,
        min_step_s=2.0,
        fit_s=0.5,
        fit_batches=3,
        calibration_requests=5,
        calibration_min_s=1.0,
        speed_check_requests=3,
        speed_check_min_s=1.0,
        utilisations=(0.3, 0.8),
        warmup_s=0.5,
        replays=2,
        noise_runs=5,
        busy_wait_s=0.0,
        arrival_seed=7,
        max_noise_floor_pct=0.1,
        max_step_s=3.0,
    )
    reads, loads = [], []
    real_load = mb._load

    def spied_load(workload, backend, bodies, out, work, **load):
        loads.append((out.name, load))
        return real_load(workload, backend, bodies, out, work, **load)

    monkeypatch.setattr(mb, "_load", spied_load)

    class BusyAtFirst(mb.CpuMeter):  # another user's job during the first fit and the first step's first attempt
        def read(self):
            reads.append(1)
            out = super().read()
            return {**out, "other_processes_cores": 1.0} if len(reads) in (1, 3) else out

    monkeypatch.setattr(mb, "CpuMeter", BusyAtFirst)
    entry = mb.validate_workload("whisper", tmp_path, plan=plan, settings={"max_batch_size": 2, "decode_tokens": 1})
    assert len(reads) == 5 and len(entry["busy_fits"]) == 1  # the fit and the first step were done again
    assert [len(h["busy_attempts"]) for h in entry["held_out"]] == [1, 0]
    assert entry["machine_quiet"] in (True, False)
    assert entry["settings"]["max_batch_size"] == 2 and entry["weights"] == "random"
    assert entry["service_model"]["alpha_s"] > 0 and entry["service_model"]["fit_points_are"] == "batches"
    assert entry["sweep"]["per_batch_size"].keys() == {1, 2}  # every batch size measured
    assert 0.2 < entry["service_table_s"][0] < entry["service_table_s"][1] < 5 and 0.5 < entry["load_factor"] < 2
    assert 0.2 < entry["capacity_rps"] < 50
    assert len(entry["held_out"]) == 2
    for step in entry["held_out"]:
        assert step["errors"] == 0 and step["requests"] >= 5
        for key in ("measured", "predicted", "predicted_same_schedule"):
            assert all(np.isfinite(v) and v > 0 for v in step[key].values()), (key, step[key])
        assert 0.3 < step["service_drift"]["median"] < 3
        assert 0.3 < step["speed_check"]["factor"] < 3 and step["speed_check"]["requests"] >= 3
        # the step's rate is its share of the capacity the speed check found just before it; its predictions are from
        # the mean of that check and the one just after it
        assert step["capacity_rps"] == pytest.approx(entry["capacity_rps"] / step["speed_check"]["factor"])
        assert step["rate_rps"] == pytest.approx(step["utilisation"] * step["capacity_rps"])
        assert step["speed_check_after"]["requests"] >= 3
        assert step["speed_factor"] == pytest.approx(
            (step["speed_check"]["factor"] + step["speed_check_after"]["factor"]) / 2
        )
        assert 1 <= step["mean_batch_size"]["measured"] <= step["mean_batch_size"]["measured_per_request"] <= 2
        assert step["cpu"]["busy_cores"] >= 0
        service = BatchLatencyTable(tuple(entry["service_used_s"])).scaled(step["speed_factor"])
        predicted = predict_batching(
            step["rate_rps"], service, 2, 0.005, service_factors=entry["service_variability"]["factors"]
        )
        assert step["predicted"]["p95_ms"] == pytest.approx(
            predicted.p95_s * 1e3 + entry["client_overhead_ms"], rel=2e-3
        )
    first, second = entry["held_out"]
    assert second["speed_check"] == first["speed_check_after"]  # one check between two steps, not two
    # each held-out step sent the schedule of its own seed, as long as its noise floor asked (capped: 5 requests
    # cannot come near a 0.1 % floor), and recorded both
    sent = [load for name, load in loads if name.startswith("whisper-rate")]
    assert [load["arrival_seed"] for load in sent] == [7, 7, 8]  # the first step twice: busy the first time
    assert [h["arrival_seed"] for h in entry["held_out"]] == [7, 8]
    for step, load in zip(entry["held_out"], sent[1:]):
        sizing = step["step_sizing"]
        assert sizing["step_s"] == load["step_duration_s"] == 3.0 and not sizing["target_met"]
        assert sizing["noise_floor_pct"] > 0.1 and sizing["tried"][0]["step_s"] == 2.0
    assert np.isfinite(entry["p95_mape_pct_from_check_before"])  # the earlier design's error, for comparison
    for key in ("mape_pct", "mape_pct_same_schedule"):
        assert set(entry[key]) == set(mb.METRICS) and all(np.isfinite(v) for v in entry[key].values())


def test_interfered_batches_are_left_out_of_the_fit_but_real_variability_is_not():
    rng = np.random.default_rng(3)
    sizes = np.repeat([1, 2, 3, 4], [30, 9, 9, 9])
    per_size = np.array([0.075, 0.153, 0.210, 0.317])  # ResNet50 on one core: not a hinge
    seconds = per_size[sizes - 1] * rng.normal(1.0, 0.02, sizes.size)
    seconds[-2:] *= [2.4, 1.8]  # another process took the core during two batches of 4 (as measured on this machine)
    slow = mb.interfered(sizes, seconds)
    assert slow[-2:].all() and slow.sum() == 2
    rows = pd.DataFrame(
        {
            "batch_size": sizes,
            "server_compute_ns": (seconds * 1e9).astype(np.int64),
            "error": "",
            "phase": "step",
            "sent_ns": 0,
            "server_queue_ns": 0,
        }
    )
    rows["done_ns"] = rows["server_compute_ns"] + 2_000_000  # 2 ms overhead
    table, hinge, info = mb._fit_sweep(rows, 4)
    np.testing.assert_allclose(table.seconds, per_size, rtol=0.02)  # the two do not bias the table
    assert info["interfered"] == 2 and hinge is not None and info["per_batch_size"][4]["interfered"] == 2
    assert mb._overhead(rows[rows["batch_size"] == 1]) == pytest.approx(0.002)
    # Calibration: the same batches 8 % slower under open-loop load -> load factor 1.08, variability around 1.
    slower = rows.assign(server_compute_ns=(rows["server_compute_ns"] * 1.08).astype(np.int64))
    under_load, factors, cal = mb._calibrate(slower, table)
    assert cal["load_factor"] == pytest.approx(1.08, rel=0.01) and cal["interfered"] == 2
    np.testing.assert_allclose(under_load.seconds, 1.08 * per_size, rtol=0.02)
    # the variability the predictions draw from is the model's, not the other process's
    assert np.median(factors) == pytest.approx(1.0, abs=0.01) and factors.max() < 1.2 and factors.size == len(rows) - 2
    assert (
        cal["factors"] == [round(float(f), 4) for f in factors]
        and cal["factor_cv"] > 5 * cal["factor_cv_without_interfered"]
    )
    # Load that slows single images by 9 % and speeds batches of 2 and 3 by 3 % (as ResNet50 on the build machine):
    # each size the step ran often enough gets its own time; a size it ran twice gets the sweep's x the slowdown of the
    # nearest size it ran often enough (3), not the load factor, which the single images pull up.
    calibration = rows.iloc[:-2].copy()  # 30 batches of 1, 9 of 2, 9 of 3, 7 of 4 (the interfered two dropped)
    calibration = calibration[(calibration["batch_size"] < 4) | (calibration.index < 50)]  # 2 batches of 4
    by_size = np.array([1.09, 0.97, 0.97, 1.0])[calibration["batch_size"].to_numpy() - 1]
    calibration["server_compute_ns"] = (calibration["server_compute_ns"] * by_size).astype(np.int64)
    under_load, factors, cal = mb._calibrate(calibration, table)
    assert cal["sizes_calibrated"] == [1, 2, 3] and (calibration["batch_size"] == 4).sum() == 2
    np.testing.assert_allclose(
        under_load.seconds[:3], [1.09 * per_size[0], 0.97 * per_size[1], 0.97 * per_size[2]], rtol=0.02
    )
    assert under_load.seconds[3] == pytest.approx(under_load.seconds[2] / table.seconds[2] * table.seconds[3])
    assert under_load.seconds[3] == pytest.approx(0.97 * per_size[3], rel=0.02)
    assert cal["uncalibrated_scaled_as"] == {4: 3}
    assert cal["load_factor"] == pytest.approx((30 * 1.09 + 18 * 0.97 + 2) / 50, rel=0.01)  # 1.04: 7 % too slow
    assert np.mean(factors) == pytest.approx(1.0, abs=0.02)
    # A speed check 5 % faster than the table under load (one batch interfered): the held-out step's factor.
    check = rows.assign(server_compute_ns=(rows["server_compute_ns"] * 1.08 * 0.95).astype(np.int64))
    speed = mb._speed_check(check, table.scaled(1.08))
    assert speed["factor"] == pytest.approx(0.95, rel=0.01) and speed["interfered"] == 2 and speed["se"] < 0.01
    assert speed["batches"] == len(rows) and speed["requests"] == len(rows)
    with pytest.raises(RuntimeError, match="ran no batch"):
        mb._speed_check(check.assign(error="timeout"), table)
    # Text-length variability (lognormal, CV ~30 %) is the service time itself: (almost) nothing is left out.
    wide = 0.04 * sizes * rng.lognormal(0.0, 0.3, sizes.size)
    assert mb.interfered(sizes, wide).sum() <= 1


def test_a_run_is_credited_to_the_commit_it_started_from_not_one_made_while_it_ran(tmp_path, monkeypatch, capsys):
    commits = iter([{"short": "started"}, {"short": "made-later"}, {"short": "made-later"}, {"short": "again"}])
    monkeypatch.setattr(mb.runs, "git_info", lambda: next(commits))
    step = {
        "utilisation": 0.5,
        "measured": {"throughput_rps": 1.0, "p50_ms": 10.0, "p95_ms": 20.0},
        "predicted": {"throughput_rps": 1.0, "p50_ms": 11.0, "p95_ms": 21.0},
    }
    monkeypatch.setattr(
        mb,
        "validate_workload",
        lambda name, tmp, quick, plan: mb.summarise_workload(
            {"workload": name, "capacity_rps": 2.0, "held_out": [step]}
        ),
    )
    monkeypatch.setattr(mb, "analysis_speed", lambda records: {"records": records, "seconds": 0.1})
    monkeypatch.setattr(mb, "draw_figures", lambda *a: None)
    monkeypatch.setenv("GAWM_RAW_DIR", str(tmp_path / "raw"))  # where the run keeps its request records
    out = tmp_path / "models.json"
    assert mb.main(["--workloads", "whisper", "--out", str(out), "--records", "10"]) == 0
    report = json.loads(out.read_text())
    assert report["workloads"][0]["run"]["git"] == {"short": "started"}
    assert report["analysis_speed"]["run"]["git"] == {"short": "started"}
    assert "exists" not in capsys.readouterr().err
    # a second run into the same file says so before it runs, and what it will replace there
    assert mb.main(["--workloads", "whisper", "--out", str(out)]) == 0
    assert (
        f"{out} exists: this run's entries go into it (it has whisper); new entries for whisper are appended and "
        "become the current ones" in capsys.readouterr().err
    )
    recorded = json.loads(out.read_text())["runs"]
    assert len(recorded) == 2 and recorded[0]["run"]["git"] == {"short": "started"}  # the first run stays recorded
    assert all(Path(e["run"]["records_dir"]).is_dir() for e in recorded)  # the request records are kept
    assert recorded[0]["run"]["records_dir"] != recorded[1]["run"]["records_dir"]
