"""Every figure function renders from a tidy frame, labels its axes with units, and save_figure writes PDF, PNG and
the provenance sidecar."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gawm_lib import plots
from gawm_lib.models import fit_batch_latency


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
            rows.append({"workload": workload, "step": step, "level": level, "offered_rps": 5.0 * level,
                         "throughput_rps": 4.8 * level, "mean_ms": base * level, "p50_ms": base * level,
                         "p95_ms": base * level * 1.3, "p99_ms": base * level * 1.6})
    return pd.DataFrame(rows)


def test_each_figure_function_renders_with_units(steps):
    requests = pd.DataFrame({"workload": ["resnet50"] * 50 + ["whisper"] * 50, "phase": "step", "error": "",
                             "latency_ms": np.linspace(10, 500, 100)})
    batch = pd.DataFrame({"batch_size": [1, 2, 4, 8, 16, 32], "latency_s": [0.01, 0.011, 0.013, 0.02, 0.036, 0.068]})
    batch["throughput"] = batch["batch_size"] / batch["latency_s"]
    model = fit_batch_latency(batch["batch_size"], batch["latency_s"])
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    metrics = pd.DataFrame({"time": [t0 + pd.Timedelta(seconds=i) for i in range(20)] * 2,
                            "query": ["throughput"] * 20 + ["gpu_power_nvml"] * 20, "value": np.arange(40.0),
                            "unit": ["requests/s"] * 20 + ["watts"] * 20, "labels": "{}"})
    phases = [{"start_unix_ns": t0.value, "end_unix_ns": t0.value + 10**10, "level": 1}]
    validation = pd.DataFrame({"workload": "resnet50", "metric": ["throughput", "p95", "p95"],
                               "measured": [10.0, 0.1, 0.2], "predicted": [10.5, 0.11, 0.19]})
    plans = pd.DataFrame({"workload": "resnet50", "arrival_rate": [10, 20, 40], "replicas": [1, 2, 3],
                          "replicas_low": [1, 1, 3], "replicas_high": [1, 2, 4]})
    figures = [
        plots.latency_cdf(requests), plots.latency_vs_throughput(steps, slo_ms={"resnet50": 300}),
        plots.percentiles_vs_load(steps), plots.throughput_vs_batch(batch, model),
        plots.scaling_vs_replicas(steps.assign(replicas=steps["level"]).query("workload == 'resnet50'")),
        plots.metric_timeline(metrics, ["throughput", "gpu_power_nvml"], phases),
        plots.energy_per_inference(pd.DataFrame({"workload": ["resnet50"], "config": ["bf16"], "joules": [0.2]})),
        plots.predicted_vs_measured(validation), plots.capacity_plan(plans, slo_ms=15),
    ]
    for fig in figures:
        units_on_every_axis(fig)
    assert figures[5].axes[1].get_ylabel() == "gpu_power_nvml\n[watts]"


def test_save_figure_writes_pdf_png_and_provenance(tmp_path, steps):
    fig = plots.latency_vs_throughput(steps)
    written = plots.save_figure(fig, "t_fig", ["run-a", "run-b"], "notebooks/x.ipynb", {"k": 1}, out_dir=tmp_path)
    assert written["pdf"].read_bytes()[:5] == b"%PDF-" and written["png"].read_bytes()[:4] == b"\x89PNG"
    sidecar = json.loads(written["json"].read_text())
    assert sidecar["run_ids"] == ["run-a", "run-b"] and sidecar["parameters"] == {"k": 1}
    assert sidecar["notebook"] == "notebooks/x.ipynb" and "commit" in sidecar["git"]
    assert plots.figures_for_run("run-b", tmp_path) == [tmp_path / "t_fig.pdf", tmp_path / "t_fig.png"]
    assert plots.figures_for_run("run-c", tmp_path) == []


def test_replica_and_audio_figures_draw_each_group_and_model_with_units():
    measured = pd.DataFrame({"placement": ["exclusive", "exclusive", "shared", "shared"], "replicas": [1, 2, 1, 2],
                             "throughput_rps": [10.0, 19.0, 10.0, 9.5], "mean_ms": [200.0, 105.0, 200.0, 210.0]})
    predicted = pd.DataFrame({"placement": ["exclusive"] * 4 + ["shared"] * 2, "replicas": [1, 2, 1, 2, 1, 2],
                              "model": ["MVA", "MVA", "USL", "USL", "MVA", "MVA"],
                              "throughput_rps": [10.0, 20.0, 10.0, 18.0, 10.0, 10.0],
                              "mean_ms": [200.0, 100.0, 200.0, 111.0, 200.0, 200.0]})
    fig = plots.scaling_vs_replicas(measured, predicted, by="placement")
    units_on_every_axis(fig)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["exclusive, measured", "exclusive, MVA", "exclusive, USL", "shared, measured", "shared, MVA"]
    assert len(fig.axes[1].lines) == 5  # the latency panel draws the same series
    audio = pd.DataFrame({"audio_s": [10.0, 2.0], "p50_ms": [500.0, 400.0], "p95_ms": [700.0, 600.0],
                          "compute_ms": [450.0, 300.0], "rtf_p50": [0.05, 0.2], "rtf_p95": [0.07, 0.3],
                          "rtf_server": [0.045, 0.15]})
    fig = plots.rtf_vs_audio_duration(audio)
    units_on_every_axis(fig)
    assert [ax.get_xlabel() for ax in fig.axes] == ["audio duration [s]"] * 2
    rtf = fig.axes[1].lines[0]
    assert list(rtf.get_xdata()) == [2.0, 10.0] and list(rtf.get_ydata()) == [0.2, 0.05]  # sorted by duration
