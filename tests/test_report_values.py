"""A figure of several runs draws each configuration as its own series, and every value it plots is the value in
that run's own ``summary.csv``: the suite's report, notebook 09 and ``gawm report`` over real runs that differ in
replicas and batch size (the steps of different runs share step numbers, so pooling them would show)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_suite import gawm_in

from gawm_lib import runs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def check_against_summaries(csv: Path, raw: Path, x_name: str = "throughput_rps") -> int:
    """Every measured p50/p95 point of a latency figure equals its run's summary.csv; returns the points checked."""
    plotted = pd.read_csv(csv)
    measured = plotted[plotted["y_name"].isin(["p50_ms", "p95_ms"])]
    assert len(measured) and set(measured["x_name"]) == {x_name}
    for row in measured.itertuples():
        summary = pd.read_csv(raw / row.run_id / "summary.csv")
        step = summary[(summary["workload"] == row.panel) & (summary["step"] == row.step)]
        assert len(step) == 1, (row.run_id, row.panel, row.step)
        assert row.x == step[x_name].iloc[0], (csv.name, row)
        assert row.y == step[row.y_name].iloc[0], (csv.name, row)
        assert row.n == step["ok"].iloc[0]
    return len(measured)


def test_reports_over_runs_that_differ_in_replicas_and_batch_size_plot_each_runs_own_numbers(tmp_path):
    gawm = gawm_in(tmp_path)
    spec = tmp_path / "suite.yaml"
    spec.write_text(
        "suite: grid\nruns:\n  - params: params/quick.yaml\n"
        "    overrides: ['load.levels=[1,2]', 'load.step_duration_s=1', 'load.warmup_s=0', 'figures_notebook=null']\n"
        "    grid:\n      backend.replicas: [1, 2]\n      workloads.0.max_batch_size: [1, 4]\n"
        "report:\n  - notebooks/02_figures_load_sweep.ipynb\n  - notebooks/09_thesis_figures.ipynb\n"
    )
    out = gawm("run", str(spec))
    assert out.returncode == 0, out.stderr[-3000:]
    state = json.loads((tmp_path / "suites" / "grid.json").read_text())
    run_ids = [p["run_id"] for p in state["points"].values()]
    assert len(run_ids) == 4
    figures, raw = tmp_path / "figures", tmp_path / "raw"

    lvt = pd.read_csv(figures / "grid_latency_vs_throughput.csv")
    assert set(lvt["run_id"]) == set(run_ids)
    assert set(lvt["config"]) == {
        "replicas=1, max_batch_size=1",
        "replicas=1, max_batch_size=4",
        "replicas=2, max_batch_size=1",
        "replicas=2, max_batch_size=4",
    }
    assert lvt.groupby("config")["run_id"].nunique().eq(1).all()  # one run per series, never pooled
    assert check_against_summaries(figures / "grid_latency_vs_throughput.csv", raw) == 16  # 4 runs x 2 steps x 2
    assert check_against_summaries(figures / "grid_thesis_latency_vs_throughput.csv", raw) == 16
    scaling = pd.read_csv(figures / "grid_thesis_scaling_vs_replicas.csv")
    assert set(scaling[scaling["kind"] == "measured"]["x"]) == {1, 2}
    assert scaling["x"].max() == 2  # predictions only over the measured replica counts

    # gawm report over two of the runs: named after the report, the files it wrote listed
    report = gawm("report", run_ids[0], run_ids[3], "--name", "pair")
    assert report.returncode == 0, report.stderr[-3000:]
    assert str(figures / "pair_latency_vs_throughput.png") in report.stdout
    assert str(figures / "pair_latency_vs_throughput.csv") in report.stdout
    assert check_against_summaries(figures / "pair_latency_vs_throughput.csv", raw) == 8
    again = gawm("report", run_ids[0], run_ids[3], "--name", "pair")  # never replaced silently
    assert again.returncode == 0 and str(figures / "pair_latency_vs_throughput-2.png") in again.stdout
    one = gawm("report", run_ids[1])  # one run: its figures carry its id
    assert one.returncode == 0 and str(figures / f"{run_ids[1]}_latency_cdf.png") in one.stdout
    assert runs.load_run(run_ids[1], raw).status == "COMPLETED"
