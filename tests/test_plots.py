"""Every figure function renders from a tidy frame, labels its axes in words with units, carries the data it plots,
keeps each workload's colour, and save_figure writes PDF, PNG, the plotted points (CSV) and the provenance sidecar,
never replacing an existing figure silently."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from gawm_lib import plots
from gawm_lib.models import fit_batch_latency


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def units_on_every_axis(fig):
    for ax in fig.axes:
        for label in (ax.get_xlabel(), ax.get_ylabel()):
            if label:
                assert "[" in label and "]" in label, f"axis label without a unit: {label!r}"


@pytest.fixture
def steps():
    rows = []
    for workload, base in (("resnet50", 120.0), ("distilbert", 30.0)):
        for step, level in enumerate((1, 2, 4)):
            rows.append(
                {
                    "workload": workload,
                    "step": step,
                    "level": level,
                    "offered_rps": 5.0 * level,
                    "throughput_rps": 4.8 * level,
                    "mean_ms": base * level,
                    "p50_ms": base * level,
                    "p95_ms": base * level * 1.3,
                    "p99_ms": base * level * 1.6,
                    "ok": 10 + 10 * step,
                }
            )
    return pd.DataFrame(rows)


def all_figures(steps):
    requests = pd.DataFrame(
        {
            "workload": ["resnet50"] * 50 + ["whisper"] * 50,
            "phase": "step",
            "error": "",
            "level": [1] * 25 + [2] * 25 + [1] * 50,
            "latency_ms": np.linspace(10, 500, 100),
        }
    )
    batch = pd.DataFrame({"batch_size": [1, 2, 4, 8, 16, 32], "latency_s": [0.01, 0.011, 0.013, 0.02, 0.036, 0.068]})
    batch["throughput"] = batch["batch_size"] / batch["latency_s"]
    model = fit_batch_latency(batch["batch_size"], batch["latency_s"])
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    metrics = pd.DataFrame(
        {
            "time": [t0 + pd.Timedelta(seconds=i) for i in range(20)] * 2,
            "query": ["throughput"] * 20 + ["gpu_power_nvml"] * 20,
            "value": np.arange(40.0),
            "unit": ["requests/s"] * 20 + ["watts"] * 20,
            "labels": "{}",
        }
    )
    phases = [{"start_unix_ns": t0.value, "end_unix_ns": t0.value + 10**10, "level": 1}]
    validation = pd.DataFrame(
        {
            "workload": "resnet50",
            "metric": ["throughput", "p95", "p95"],
            "measured": [10.0, 0.1, 0.2],
            "predicted": [10.5, 0.11, 0.19],
        }
    )
    plans = pd.DataFrame(
        {
            "workload": "resnet50",
            "arrival_rate": [10, 20, 40],
            "replicas": [1, 2, 3],
            "replicas_low": [1, 1, 3],
            "replicas_high": [1, 2, 4],
        }
    )
    return [
        plots.latency_cdf(requests),
        plots.latency_vs_throughput(steps, slo_ms={"resnet50": 300}),
        plots.percentiles_vs_load(steps),
        plots.throughput_vs_batch(batch, model, workload="resnet50"),
        plots.scaling_vs_replicas(steps.assign(replicas=steps["level"]).query("workload == 'resnet50'")),
        plots.metric_timeline(metrics, ["throughput", "gpu_power_nvml"], phases),
        plots.energy_per_inference(pd.DataFrame({"workload": ["resnet50"], "config": ["bf16"], "joules": [0.2]})),
        plots.predicted_vs_measured(validation),
        plots.capacity_plan(plans, slo_ms=15),
    ]


def test_each_figure_function_renders_with_units_and_carries_its_data(steps):
    figures = all_figures(steps)
    for fig in figures:
        units_on_every_axis(fig)
        data = plots.figure_data(fig)
        assert data is not None and len(data) > 0
        assert list(data.columns[: len(plots.DATA_COLUMNS)]) == plots.DATA_COLUMNS
    # axis labels in words with units, never raw query names
    assert figures[5].axes[0].get_ylabel() == "throughput\n[req/s]"
    assert figures[5].axes[1].get_ylabel() == "GPU power\n[W]"


def test_a_workload_keeps_its_colour_and_marker_in_every_figure_type(steps):
    colour, marker = plots.WORKLOAD_STYLE["resnet50"]
    lvt = plots.latency_vs_throughput(steps)
    cdf = plots.latency_cdf(
        pd.DataFrame(
            {"workload": "resnet50", "phase": "step", "error": "", "level": 1, "latency_ms": np.linspace(1, 9, 30)}
        )
    )
    scaling = plots.scaling_vs_replicas(steps.assign(replicas=steps["level"]).query("workload == 'resnet50'"))
    for line in (lvt.axes[0].lines[0], cdf.axes[0].lines[0], scaling.axes[0].lines[0]):
        assert to_hex(line.get_color()) == colour.lower()
    assert lvt.axes[0].lines[0].get_marker() == marker and scaling.axes[0].lines[0].get_marker() == marker
    assert plots.workload_style("distilbert") != plots.workload_style("resnet50")


def test_throughput_axes_start_at_zero_and_point_labels_are_explained(steps):
    fig = plots.latency_vs_throughput(steps.assign(scenario="closed_loop"))
    assert all(ax.get_xlim()[0] == 0 for ax in fig.axes)
    assert fig.legends[0].get_title().get_text() == "numbers at points: concurrent users"
    mixed = steps.assign(scenario=["closed_loop"] * 3 + ["poisson"] * 3)
    fig = plots.latency_vs_throughput(mixed)
    assert fig.legends[0].get_title().get_text() == ("numbers at points: concurrent users or offered rate [req/s]")
    assert [t.get_text() for t in fig.axes[1].texts] == ["1/s", "2/s", "4/s"]  # open-loop rates carry their unit
    data = plots.figure_data(fig)
    p95 = data[(data["panel"] == "resnet50") & (data["y_name"] == "p95_ms")]
    assert list(p95["x"]) == [4.8, 9.6, 19.2] and list(p95["y"]) == [156.0, 312.0, 624.0]
    assert list(p95["label"]) == ["1", "2", "4"] and list(p95["n"]) == [10, 20, 30]
    assert list(p95["few_requests"]) == [True, False, False]  # 10 requests behind the first point


def test_several_configurations_are_separate_series_never_pooled():
    rows = []
    for config, scale in (("replicas=1", 1.0), ("replicas=2", 2.0)):
        for step, level in enumerate((1, 2)):
            rows.append(
                {
                    "run_id": f"run-{config}",
                    "config": config,
                    "workload": "resnet50",
                    "step": step,
                    "level": level,
                    "throughput_rps": 10 * level * scale,
                    "p50_ms": 5.0 * level,
                    "p95_ms": 8.0 * level / scale,
                    "ok": 100,
                }
            )
    fig = plots.latency_vs_throughput(pd.DataFrame(rows))
    data = plots.figure_data(fig)
    assert set(data["series"]) == {"replicas=1: p95", "replicas=1: p50", "replicas=2: p95", "replicas=2: p50"}
    two = data[data["series"] == "replicas=2: p95"]
    assert list(two["x"]) == [20.0, 40.0] and list(two["run_id"]) == ["run-replicas=2"] * 2


def test_latency_cdf_draws_one_curve_per_level_not_a_pooled_one():
    requests = pd.DataFrame(
        {
            "workload": "resnet50",
            "phase": "step",
            "error": "",
            "level": [1] * 30 + [4] * 30,
            "latency_ms": np.r_[np.linspace(1, 2, 30), np.linspace(10, 20, 30)],
        }
    )
    fig = plots.latency_cdf(requests)
    assert [line.get_label() for line in fig.axes[0].lines] == ["1 (n=30)", "4 (n=30)"]
    assert fig.axes[0].lines[0].get_xdata().max() == 2.0  # the low level's curve holds only its requests
    several = requests.assign(config=["a"] * 15 + ["b"] * 15 + ["a"] * 15 + ["b"] * 15)
    fig = plots.latency_cdf(several)
    assert [line.get_label() for line in fig.axes[0].lines] == ["a @ 4 (n=15)", "b @ 4 (n=15)"]


def test_scaling_refuses_a_single_replica_count_and_predicts_only_the_measured_range():
    measured = pd.DataFrame(
        {
            "workload": "resnet50",
            "placement": ["exclusive", "exclusive", "shared", "shared"],
            "replicas": [1, 2, 1, 2],
            "throughput_rps": [10.0, 19.0, 10.0, 9.5],
            "mean_ms": [200.0, 105.0, 200.0, 210.0],
        }
    )
    predicted = pd.DataFrame(
        {
            "workload": "resnet50",
            "placement": ["exclusive"] * 6 + ["shared"] * 2,
            "replicas": [1, 2, 3, 1, 2, 3, 1, 2],
            "model": ["MVA"] * 3 + ["USL"] * 3 + ["MVA"] * 2,
            "throughput_rps": [10.0, 20.0, 30.0, 10.0, 18.0, 25.0, 10.0, 10.0],
            "mean_ms": [200.0, 100.0, 70.0, 200.0, 111.0, 80.0, 200.0, 200.0],
        }
    )
    fig = plots.scaling_vs_replicas(measured, predicted)
    units_on_every_axis(fig)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == [
        "ResNet50, exclusive, measured",
        "ResNet50, exclusive, MVA prediction",
        "ResNet50, exclusive, USL prediction",
        "ResNet50, shared, measured",
        "ResNet50, shared, MVA prediction",
    ]
    data = plots.figure_data(fig)
    assert data["x"].max() == 2  # the prediction at 3 replicas, never measured, is not drawn
    assert set(data[data["kind"] == "prediction"]["series"].str.endswith("prediction")) == {True}
    with pytest.raises(ValueError, match="single replica count"):
        plots.scaling_vs_replicas(measured[measured["replicas"] == 1])
    # several workloads: one line each, never joined into one
    two = pd.concat(
        [
            measured.query("placement == 'exclusive'"),
            measured.query("placement == 'exclusive'").assign(workload="distilbert"),
        ]
    )
    fig = plots.scaling_vs_replicas(two)  # a column of panels each: workloads of different scales stay readable
    assert [ax.get_title() for ax in fig.axes] == ["ResNet50", "DistilBERT", "", ""]
    assert [[list(line.get_xdata()) for line in ax.lines] for ax in fig.axes] == [[[1, 2]]] * 4


def test_audio_figure_flags_percentiles_of_few_requests():
    audio = pd.DataFrame(
        {
            "audio_s": [10.0, 2.0],
            "p50_ms": [500.0, 400.0],
            "p95_ms": [700.0, 600.0],
            "compute_ms": [450.0, 300.0],
            "rtf_p50": [0.05, 0.2],
            "rtf_p95": [0.07, 0.3],
            "rtf_server": [0.045, 0.15],
            "ok": [5, 50],
        }
    )
    fig = plots.rtf_vs_audio_duration(audio)
    units_on_every_axis(fig)
    assert [ax.get_xlabel() for ax in fig.axes] == ["audio duration [s]"] * 2
    rtf = fig.axes[1].lines[0]
    assert list(rtf.get_xdata()) == [2.0, 10.0] and list(rtf.get_ydata()) == [0.2, 0.05]  # sorted by duration
    data = plots.figure_data(fig)
    p95 = data[data["y_name"] == "p95_ms"]
    assert list(p95["few_requests"]) == [False, True]  # 10 s clips: 5 requests
    assert "fewer than 20" in fig.texts[0].get_text()


def test_save_figure_writes_pdf_png_csv_and_provenance_and_never_replaces_silently(tmp_path, steps, capsys):
    fig = plots.latency_vs_throughput(steps)
    written = plots.save_figure(fig, "t_fig", ["run-a", "run-b"], "notebooks/x.ipynb", {"k": 1}, out_dir=tmp_path)
    assert written["pdf"].read_bytes()[:5] == b"%PDF-" and written["png"].read_bytes()[:4] == b"\x89PNG"
    sidecar = json.loads(written["json"].read_text())
    assert sidecar["run_ids"] == ["run-a", "run-b"] and sidecar["parameters"] == {"k": 1}
    assert sidecar["notebook"] == "notebooks/x.ipynb" and "commit" in sidecar["git"]
    csv = pd.read_csv(written["csv"])
    assert len(csv) == 12 and set(csv["y_name"]) == {"p50_ms", "p95_ms"}
    assert "t_fig.png" in capsys.readouterr().out  # it says what it wrote
    assert plots.figures_for_run("run-b", tmp_path) == [tmp_path / f"t_fig.{ext}" for ext in ("pdf", "png", "csv")]
    assert plots.figures_for_run("run-c", tmp_path) == []
    before = written["png"].stat().st_mtime_ns
    again = plots.save_figure(plots.latency_vs_throughput(steps), "t_fig", ["run-a"], "x", out_dir=tmp_path)
    assert again["png"].name == "t_fig-2.png" and written["png"].stat().st_mtime_ns == before
    assert "not replaced" in capsys.readouterr().out
    forced = plots.save_figure(
        plots.latency_vs_throughput(steps), "t_fig", ["run-a"], "x", out_dir=tmp_path, overwrite=True
    )
    assert forced["png"] == written["png"]


def test_save_figure_refuses_a_figure_without_its_data(tmp_path):
    fig, _ = plots.figure()
    with pytest.raises(ValueError, match="no plotted data"):
        plots.save_figure(fig, "bare", [], "x", out_dir=tmp_path)
