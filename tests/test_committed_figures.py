"""No committed figure contradicts its tables: every figure committed under data/, docs/ or studies/ has the points it
plots beside it (``<figure>.csv``), and where the folder holds the study's step table (``steps.csv``), every plotted
throughput and latency equals that table's value for the same run, workload and step."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def committed_figures() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "data", "docs", "studies"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [ROOT / name for name in listed.stdout.split() if name.endswith(".png") and (ROOT / name).exists()]


FIGURES = committed_figures()


@pytest.mark.parametrize("png", FIGURES, ids=[str(p.relative_to(ROOT)) for p in FIGURES])
def test_a_committed_figure_has_its_data_and_agrees_with_its_steps_table(png):
    data_file = png.with_suffix(".csv")
    assert data_file.is_file(), f"{png.relative_to(ROOT)} has no {data_file.name}: redraw it with its data or remove it"
    data = pd.read_csv(data_file)
    assert len(data), f"{data_file.relative_to(ROOT)} is empty"
    steps_file = next(
        (folder / "steps.csv" for folder in (png.parent, png.parent.parent) if (folder / "steps.csv").is_file()), None
    )
    latency = (
        data[data["y_name"].isin(["p50_ms", "p95_ms", "p99_ms"]) & (data["kind"] == "measured")]
        if "y_name" in data
        else data.iloc[:0]
    )
    if steps_file is None or latency.empty:
        return
    assert "step" in latency, f"{data_file.name}: latency points without the step they come from"
    steps = pd.read_csv(steps_file)
    workload = latency["panel"].astype(str)
    merged = latency.assign(workload=workload).merge(
        steps, on=["run_id", "workload", "step"], how="left", suffixes=("", "_table"), indicator=True
    )
    assert (merged["_merge"] == "both").all(), f"{png.name}: points of steps not in {steps_file}"
    for row in merged.itertuples():
        assert row.y == getattr(row, row.y_name), (png.name, row.run_id, row.step, row.y_name)
        assert row.x == getattr(row, row.x_name), (png.name, row.run_id, row.step, row.x_name)
