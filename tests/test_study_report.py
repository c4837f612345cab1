"""The study report rebuilt from real runs: two small local runs (1 and 2 replicas), then every file it promises."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gawm_lib import analysis, config, experiment
from studies.h200.scripts import study_report

pytestmark = pytest.mark.integration


def test_a_report_from_one_and_two_replica_runs_has_steps_scaling_validation_and_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("GAWM_RAW_DIR", str(tmp_path / "raw"))
    monkeypatch.setenv("GAWM_FIGURES_DIR", str(tmp_path / "figures"))
    ids = []
    for replicas, load in ((1, {}), (2, {}), (1, {"scenario": "poisson", "levels": [2, 6]})):
        cfg = config.validate_params(
            {
                "name": "report-test",
                "workloads": [{"name": "distilbert", "max_batch_size": 4, "max_seq_len": 16}],
                "backend": {"replicas": replicas},
                "prometheus": {"enabled": False},
                "load": {"levels": [1, 4], "step_duration_s": 1.0, "warmup_s": 0.2, **load},
            },
            source="test",
        )
        run, _ = experiment.run_experiment(cfg, progress=False)
        ids.append(run.id)
    out = tmp_path / "report"
    report = study_report.build(
        ids, out, "test", slo_ms={"distilbert": 10_000}, loads={"distilbert": [1, 1e6]}, heldout_ids=[ids[2]]
    )

    assert analysis.load_requests(ids)[0]["gc_thresholds"].unique().tolist() == ["10000,10,10"]  # the server default
    assert report["payloads_per_request"] == {"distilbert": 1}  # one text a request: the load's default
    steps = pd.read_csv(out / "steps.csv")
    assert sorted(steps["replicas"].unique()) == [1, 2] and len(steps) == 6 and (steps["throughput_rps"] > 0).all()
    scaling = pd.read_csv(out / "scaling.csv").set_index("replicas")
    one = scaling.loc[1, "throughput_rps"]
    assert scaling.loc[2, "MVA-1_throughput_rps"] == pytest.approx(one)  # one shared station: no gain
    assert scaling.loc[2, "MVA-R_throughput_rps"] == pytest.approx(2 * one, rel=0.05)  # 4 users, 2 stations
    validation = pd.read_csv(out / "validation.csv")
    # fitted on the 1-replica closed-loop run, predicting the 2-replica one and the open-loop (Poisson) one
    assert set(validation["run_id"]) == {ids[1], ids[2]}
    assert set(validation["metric"]) == {"throughput", "p50", "p95"} and validation["ape_pct"].notna().all()
    assert set(report["model_mape_pct"]["distilbert"]) == {"closed_loop", "poisson"}
    assert set(report["model_mape_pct"]["distilbert"]["poisson"]) == {"throughput", "p50", "p95"}
    assert report["model"]["service"]["distilbert"]["fitted_on"] == [ids[0]]
    steps_model = pd.read_csv(out / "mva_steps.csv")
    first = steps_model[(steps_model["replicas"] == 1) & (steps_model["level"] == 1)].iloc[0]
    assert first["fitted_on"] and first["predicted_mean_ms"] == pytest.approx(first["mean_ms"])  # Z + D = L1
    busiest = steps_model[steps_model["replicas"] == 1]["throughput_rps"].max()
    assert steps_model[steps_model["replicas"] == 1]["predicted_throughput_rps"].max() <= busiest * 1.0001  # <= 1/D
    assert set(report["mva_delay_bottleneck"]["distilbert"]["held_out_mape_pct"]) == {"replicas_2"}
    # the tandem model needs the servers' decode times, which these records have; on one CPU thread the model is the
    # bottleneck, not the decode stage, and the fit says so rather than predict from a wrong premise
    tandem = report["tandem_model"]["distilbert"]
    assert tandem["fitted_on"] == [ids[0], ids[1]]
    assert "the model, not the CPU stage, was the bottleneck" in tandem["not_fitted"]
    assert not (out / "tandem_validation.csv").exists()
    plan = pd.read_csv(out / "capacity.csv")  # a loose SLO: 1 req/s needs one replica, a million none measured
    assert plan["replicas"].tolist()[0] == 1 and pd.isna(plan["replicas"].tolist()[1])
    assert plan["model_replicas"].isna().all()  # no tandem model on a CPU server: no model answer beside the measured
    # a two-step sweep is too short for the tail curve's three parameters: said, not fitted, nothing predicted
    assert "needs at least 4 steps" in report["tail_curve"]["distilbert"]["replicas_1"]["not_fitted"]
    assert not (out / "tail_validation.csv").exists()
    assert report["run_ids"] == ids and all(report["runs"][i]["status"] == "COMPLETED" for i in ids)
    for fig_id in ("latency_vs_throughput", "scaling_vs_replicas"):
        assert (out / f"{fig_id}.png").read_bytes()[:4] == b"\x89PNG" and (out / f"{fig_id}.pdf").stat().st_size > 1000
        assert json.loads((out / f"{fig_id}.json").read_text())["run_ids"] == ids

    # a service fit that fails (closed-loop batches all about one size, as at 64 and 256 users on an H200) is said in
    # the report; the rest of it is still built
    def no_fit(requests):
        raise ValueError("latency does not increase with batch size over the measured range")

    monkeypatch.setattr(study_report.analysis, "fit_service", no_fit)
    again = study_report.build(ids, tmp_path / "again", "test")
    assert again["model"]["service"]["distilbert"] == {
        "not_fitted": "latency does not increase with batch size over the measured range",
        "fitted_on": [ids[0]],
    }
    assert "distilbert" not in again["model_mape_pct"] and (tmp_path / "again" / "steps.csv").is_file()


def test_the_capacity_plan_takes_the_fewest_measured_replicas_within_the_slo():
    steps = pd.DataFrame(
        {
            "workload": ["a"] * 5 + ["b"],
            "replicas": [1, 1, 2, 2, 4, 1],
            "throughput_rps": [100, 200, 300, 390, 800, 50],
            "p95_ms": [10, 20, 12, 14, 15, 1],
            "errors": [0, 0, 0, 5, 0, 0],
        }
    )
    plan = study_report.capacity_plan(steps, {"a": 15}, {"a": [50, 150, 300, 350, 800, 801]})
    # SLO capacities: 1 replica 100 (200 is over the SLO), 2 replicas 300 (390 had errors), 4 replicas 800
    assert plan["replicas"].tolist()[:5] == [1, 2, 2, 4, 4] and pd.isna(plan["replicas"].iloc[5])
    assert plan["measured_slo_capacity_rps"].iloc[0] == "100,300,800"
    with pytest.raises(SystemExit, match="WORKLOAD=VALUE"):
        study_report.main(["--run-ids", "x", "--out", "/tmp/unused", "--slo-ms", "15"])


def test_repeatability_pairs_the_same_configurations_and_leaves_out_steps_with_errors():
    first = pd.DataFrame(
        {
            "workload": ["a", "a", "a", "b"],
            "replicas": [1, 1, 2, 1],
            "scenario": ["closed_loop"] * 4,
            "level": [1.0, 4.0, 4.0, 1.0],
            "throughput_rps": [100.0, 300.0, 500.0, 10.0],
            "mean_ms": [10.0, 13.0, 8.0, 100.0],
            "p95_ms": [12.0, 20.0, 10.0, 150.0],
            "errors": [0, 0, 0, 0],
        }
    )
    again = first.assign(
        throughput_rps=[110.0, 270.0, 500.0, 10.0], p95_ms=[12.0, 25.0, 11.0, 150.0], errors=[0, 0, 3, 0]
    )
    again = pd.concat([again, first.iloc[[0]].assign(replicas=8)], ignore_index=True)  # only in the repeat
    pairs = study_report.repeatability(first, again)
    assert pairs[["workload", "replicas", "level"]].values.tolist() == [["a", 1, 1.0], ["a", 1, 4.0], ["b", 1, 1.0]]
    assert pairs["throughput_rps_diff_pct"].tolist() == pytest.approx([10.0, 10.0, 0.0])
    assert pairs["p95_ms_diff_pct"].tolist() == pytest.approx([0.0, 25.0, 0.0])
    summary = study_report._repeat_summary(pairs)
    assert summary["a"]["steps"] == 2 and summary["a"]["p95"] == {"mean_diff_pct": 12.5, "max_diff_pct": 25.0}
    with pytest.raises(ValueError, match=r"repeated runs' step table lacks \['p95_ms'\]"):
        study_report.repeatability(first, again.drop(columns=["p95_ms"]))


def test_the_gpu_goal_goes_into_the_models_report_and_survives_its_next_merge(tmp_path):
    from studies.h200.scripts import models_bench

    report = {
        "command": "python -m studies.h200.scripts.study_report --suite s",
        "runs": {"r1": {"gpu": {"devices": [{"name": "NVIDIA H200"}]}}, "r2": {"gpu": None}},
        "tandem_model": {
            "resnet50": {
                "held_out_mape_pct": {"replicas_1": {"p50": 10.1, "p95": 7.8}, "replicas_4": {"p50": 7.2, "p95": 5.5}}
            },
            "distilbert": {"held_out_mape_pct": {"replicas_1": {"p50": 24.1, "p95": 15.2}}},
            "whisper": {"not_fitted": "the model, not the CPU stage, was the bottleneck"},
        },
        "repeatability": {"by_workload": {"resnet50": {"p95": {"mean_diff_pct": 6.2}}}},
        "tail_curve": {
            "resnet50": {
                "replicas_1": {"t0_ms": 13.5, "held_out_p95_mape_pct": 8.8, "held_out_utilisation": [0.1, 0.84]},
                "replicas_4": {"t0_ms": 11.5, "held_out_p95_mape_pct": 9.9, "held_out_utilisation": [0.12, 0.8]},
            },
            "distilbert": {
                "replicas_1": {
                    "t0_ms": 5.7,
                    "held_out_p95_mape_pct": 117.4,
                    "held_out_utilisation": [0.1, 0.85],
                    "cross_run_p95_mape_pct": 6.0,  # within the goal, but its
                    "cross_run_utilisation": [0.4, 0.6],  # steps stop at 60 %
                    "revisit_floor_p95_mape_pct": 5.5,
                    "revisit_floor_within_run_p95_mape_pct": 4.5,
                    "window_floor_p95_mape_pct": {"3": 7.0, "18": 5.5},
                }
            },
            "whisper": {
                "replicas_1": {"t0_ms": 900.0, "cross_run_p95_mape_pct": 9.0, "cross_run_utilisation": [0.2, 0.8]}
            },
        },
    }
    section = study_report.gpu_goal(report, 10.0, "studies/h200/results/report.json")
    assert section["p95_goal_met"] == {"resnet50": True, "distilbert": False, "whisper": False}
    assert section["tail_curve"]["p95_mape_pct"] == {
        "resnet50": {"replicas_1": 8.8, "replicas_4": 9.9},
        "distilbert": {"replicas_1": 117.4},
    }
    assert section["tail_curve"]["p95_goal_met"] == {"resnet50": True, "distilbert": False}
    assert section["tail_curve"]["cross_run_p95_goal_met"] == {"distilbert": False, "whisper": True}
    assert section["tail_curve"]["floor_revisit_p95_mape_pct"] == {"distilbert": {"replicas_1": 5.5}}
    assert section["tail_curve"]["floor_revisit_within_run_p95_mape_pct"] == {"distilbert": {"replicas_1": 4.5}}
    assert section["tail_curve"]["floor_by_window_s_p95_mape_pct"] == {
        "distilbert": {"replicas_1": {"3": 7.0, "18": 5.5}}
    }
    assert section["goal_met"] == {"distilbert": False, "resnet50": True, "whisper": True}
    assert section["p95_mape_pct"]["resnet50"] == {"replicas_1": 7.8, "replicas_4": 5.5}
    assert section["devices"] == ["NVIDIA H200"] and "whisper" in section["not_fitted"]
    # Sweeps that agree with each other but not with another lease's (held out): the held-out check decides.
    leases = {
        "command": "c",
        "runs": {},
        "tandem_model": {},
        "tail_curve": {
            "resnet50": {
                "replicas_4": {
                    "held_out_p95_mape_pct": 12.0,
                    "held_out_utilisation": [0.15, 0.83],
                    "cross_run_p95_mape_pct": 5.6,
                    "cross_run_utilisation": [0.15, 0.83],
                }
            }
        },
    }
    assert study_report.gpu_goal(leases, 10.0, "x")["goal_met"] == {"resnet50": False}
    levelled = {
        **leases["tail_curve"]["resnet50"]["replicas_4"],
        "held_out_levelled_p95_mape_pct": 9.0,
        "held_out_levelled_utilisation": [0.35, 0.83],
    }  # told each lease's level, the curve meets it
    told = {**leases, "tail_curve": {"resnet50": {"replicas_4": levelled}}}
    section_levelled = study_report.gpu_goal(told, 10.0, "x")
    assert section_levelled["goal_met"] == {"resnet50": True}
    assert section_levelled["tail_curve"]["p95_goal_met"] == {"resnet50": False}  # the unlevelled check stays
    assert section_levelled["tail_curve"]["levelled_p95_goal_met"] == {"resnet50": True}
    levelled["held_out_levelled_p95_mape_pct"] = 10.5
    assert study_report.gpu_goal(told, 10.0, "x")["goal_met"] == {"resnet50": False}
    del leases["tail_curve"]["resnet50"]["replicas_4"]["held_out_p95_mape_pct"]  # one lease only: the sweeps decide
    assert study_report.gpu_goal(leases, 10.0, "x")["goal_met"] == {"resnet50": True}
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"benchmark": "models", "workloads": [], "superseded": []}))
    study_report.write_gpu_goal(path, section)
    study_report.write_gpu_goal(path, section)  # the same report again replaces itself
    assert json.loads(path.read_text())["gpu"] == section and "gpu_superseded" not in json.loads(path.read_text())
    assert json.loads(path.read_text())["gpu_goal_met"] == {"distilbert": False, "resnet50": True, "whisper": True}
    newer = {**section, "source": "studies/h200/results/tail/report.json", "goal_met": {"resnet50": False}}
    study_report.write_gpu_goal(path, newer)  # another report over the same configurations: the earlier superseded
    written = json.loads(path.read_text())
    assert written["gpu_superseded"] == [section] and "gpu_also" not in written
    assert written["gpu_goal_met"] == {"resnet50": False} and written["gpu_goal_met_by"] == {"resnet50": []}
    # a report on another configuration (ResNet50 with 8 replicas) leaves the earlier one standing beside it, and
    # the goal is met for a workload where any standing report's configuration meets it
    other = {
        "source": "studies/h200/results/x8/report.json",
        "command": "study_report --suite x8",
        "goal_met": {"resnet50": True},
        "p95_mape_pct": {},
        "tail_curve": {"cross_run_p95_mape_pct": {"resnet50": {"replicas_8": 5.0}}},
    }
    assert study_report.checked_configurations(other) == {("resnet50", "replicas_8", 1)}
    study_report.write_gpu_goal(path, other)
    written = json.loads(path.read_text())
    assert written["gpu"] == other and written["gpu_also"] == [newer] and written["gpu_superseded"] == [section]
    assert written["gpu_goal_met"] == {"resnet50": True}
    assert written["gpu_goal_met_by"] == {"resnet50": ["studies/h200/results/x8/report.json"]}
    # the same workload and replicas with eight images a request is another configuration: it stands beside them
    bigger = {
        **other,
        "source": "studies/h200/results/x8_images8/report.json",
        "goal_met": {"resnet50": False},
        "payloads_per_request": {"resnet50": 8},
    }
    assert study_report.checked_configurations(bigger) == {("resnet50", "replicas_8", 8)}
    study_report.write_gpu_goal(path, bigger)
    written = json.loads(path.read_text())
    assert written["gpu"] == bigger and written["gpu_also"] == [other, newer]
    assert written["gpu_superseded"] == [section] and written["gpu_goal_met"] == {"resnet50": True}
    merged = models_bench.merge_report(written, {"workloads": []})  # the CPU benchmark's write keeps all of it
    assert {k: merged[k] for k in models_bench.GPU_KEYS} == {k: written[k] for k in models_bench.GPU_KEYS}


def test_levelling_scales_each_runs_curve_by_its_lowest_rate_step_and_scores_the_others():
    validation = pd.DataFrame(
        {
            "run_id": ["a", "a", "a", "b", "b", "c"],
            "level": [200.0, 500.0, 900.0, 200.0, 900.0, 500.0],
            "measured": [0.011, 0.0165, 0.03, 0.010, 0.024, 0.02],
            "predicted": [0.010, 0.015, 0.025, 0.010, 0.025, 0.02],
        }
    )
    out = study_report.levelled(validation)
    assert out["level_factor"].tolist()[:5] == pytest.approx([1.1, 1.1, 1.1, 1.0, 1.0])
    assert np.isnan(out["level_factor"].iloc[5])  # one rate: nothing left to score
    assert out["levelled_predicted"].tolist()[1:3] == pytest.approx([0.0165, 0.0275])
    assert out["levelled_ape_pct"].tolist()[1:3] == pytest.approx([0.0, 100 * (1 - 0.0275 / 0.03)])
    assert out["levelled_ape_pct"].tolist()[4] == pytest.approx(100 * (0.025 / 0.024 - 1))
    assert out["levelled_ape_pct"].iloc[[0, 3, 5]].isna().all()  # the level steps are not scored
    assert out[["measured", "predicted"]].equals(validation[["measured", "predicted"]])


def test_a_level_read_from_three_visits_is_their_median_so_one_stalled_visit_does_not_set_it():
    validation = pd.DataFrame(
        {
            "run_id": ["a"] * 5,
            "level": [200.0, 500.0, 200.0, 900.0, 200.0],
            "measured": [0.011, 0.0165, 0.020, 0.03, 0.0105],
            "predicted": [0.010, 0.015, 0.010, 0.025, 0.010],
        }
    )
    out = study_report.levelled(validation)  # the middle visit stalled (2x); the mean would say 1.38
    assert out["level_factor"].tolist() == pytest.approx([1.1] * 5)
    assert out["levelled_ape_pct"].iloc[[0, 2, 4]].isna().all()
    assert out["levelled_predicted"].iloc[[1, 3]].tolist() == pytest.approx([0.0165, 0.0275])


def test_the_model_plan_sits_beside_the_measured_one_up_to_the_fitted_replica_counts():
    from gawm_lib.models import BatchLatencyTable, TandemServer

    model = TandemServer(
        cpu_in_s=(0.004,), cpu_out_s=(0.001,), threads=4, batch=BatchLatencyTable((1e-9,)), max_batch=1, max_delay_s=0.0
    )  # at most 850 req/s a replica under the 85 % cap
    plan = pd.DataFrame(
        {"workload": ["a", "a", "b"], "slo_p95_ms": [50.0, 50.0, 50.0], "load_rps": [2000.0, 4000.0, 1]}
    )
    out = study_report.model_plan(plan, {"a": model}, {"a": 4})
    assert out["model_replicas"].tolist()[0] == 3 and pd.isna(out["model_replicas"].tolist()[1])  # 4,000: not with 4
    assert out["model_p95_ms"].tolist()[1] == float("inf") and pd.isna(out["model_replicas"].tolist()[2])
    assert 5.0 <= out["model_p95_ms"].tolist()[0] <= 50.0 and pd.isna(out["model_p95_ms"].tolist()[2])


def test_an_unknown_suite_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GAWM_RAW_DIR", str(tmp_path / "raw"))
    with pytest.raises(SystemExit, match="suite 'no-such-suite' has no runs recorded"):
        study_report.main(["--suite", "no-such-suite", "--out", str(tmp_path / "out")])


def test_a_workload_run_with_several_values_of_a_setting_is_one_configuration_per_value():
    rows = pd.DataFrame(
        {
            "workload": ["distilbert", "distilbert", "resnet50", "distilbert", "resnet50"],
            "decode_workers": [4, 0, 4, 4, 4],
            "gc_freeze": [True, True, True, True, False],
        }
    )
    labelled = study_report.configurations(rows)
    assert labelled["workload"].tolist() == [
        "distilbert decode_workers=4",
        "distilbert decode_workers=0",
        "resnet50 gc_freeze=True",
        "distilbert decode_workers=4",
        "resnet50 gc_freeze=False",
    ]
    same = rows.iloc[[0, 2, 3]]
    assert study_report.configurations(same)["workload"].tolist() == ["distilbert", "resnet50", "distilbert"]
    collector = pd.DataFrame({"workload": ["distilbert"] * 3, "gc_thresholds": ["python", "10000,10,10", "python"]})
    assert study_report.configurations(collector)["workload"].tolist() == [
        "distilbert gc_thresholds=python",
        "distilbert gc_thresholds=10000,10,10",
        "distilbert gc_thresholds=python",
    ]
    texts = pd.DataFrame({"workload": ["distilbert"] * 2, "payloads_per_request": [1, 8]})  # texts a request
    assert study_report.configurations(texts)["workload"].tolist() == [
        "distilbert payloads_per_request=1",
        "distilbert payloads_per_request=8",
    ]


def test_the_probe_summary_ranks_each_revisits_p95_against_its_probe_time():
    timings = pd.DataFrame({"seconds": [0.003, 0.004, 0.007]})
    # at each rate the slower-probed visit had the higher p95, except at 300 req/s (tied probes)
    steps = pd.DataFrame(
        {
            "workload": "w",
            "replicas": 1,
            "scenario": "poisson",
            "level": [100.0, 100.0, 200.0, 200.0, 300.0, 400.0],
            "p95_ms": [10.0, 30.0, 20.0, 25.0, 40.0, 50.0],
            "probe_ms": [3.0, 7.0, 4.0, 6.5, 5.0, np.nan],
        }
    )
    summary = study_report.probe_summary(timings, steps, ["probe.jsonl"])
    assert summary["timings"] == 3 and summary["probe_ms"]["median"] == 4.0
    assert summary["revisit_correlation"] == {"w": {"replicas_1": {"visits": 4, "spearman_rho": 1.0}}}
    one_visit = study_report.probe_summary(timings, steps.iloc[4:], ["probe.jsonl"])
    assert one_visit["revisit_correlation"] == {}
