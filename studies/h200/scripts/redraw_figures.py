"""Redraw the H200 study's committed latency and scaling figures from the committed step tables.

The figures were first drawn by ``studies.h200.scripts.study_report`` from the run directories (not committed). Each
folder's ``steps.csv`` holds every step of its runs (one row per run, workload and step), which is all these two
figures plot, so they can be redrawn anywhere, with their data (``<figure>.csv``) beside them:

    .venv/bin/python -m studies.h200.scripts.redraw_figures      # from the project root: every folder under
                                                                 # studies/h200/results

The redrawn sidecar keeps the original command and says it was redrawn from ``steps.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from pathlib import Path

import pandas as pd

from gawm_lib import analysis, plots
from studies.h200.scripts import RESULTS, study_report


def slo_from_command(command: str) -> dict[str, float]:
    """``--slo-ms resnet50=15 distilbert=130`` of the original study_report command."""
    words, slo, taking = shlex.split(command or ""), {}, False
    for word in words:
        if word.startswith("--"):
            taking = word == "--slo-ms"
        elif taking and re.fullmatch(r"[^=]+=[0-9.]+", word):
            name, value = word.rsplit("=", 1)
            slo[name] = float(value)
    return slo


def save(drawn: list, meta: dict, parameters: dict, folder: Path) -> list[Path]:
    """Write each (figure id, figure) of ``drawn`` over the committed one in ``folder``, with the original run ids
    and notebook (``meta``); returns the PNGs."""
    return [
        plots.save_figure(
            fig,
            fig_id,
            meta["run_ids"],
            meta.get("notebook", ""),
            parameters,
            out_dir=folder,
            overwrite=True,
            quiet=True,
        )["png"]
        for fig_id, fig in drawn
    ]


def redraw(folder: Path) -> list[Path]:
    sidecar = folder / "latency_vs_throughput.json"
    meta = json.loads(sidecar.read_text())
    steps = pd.read_csv(folder / "steps.csv")
    table = steps[steps["run_id"].isin(meta["run_ids"])]
    missing = set(meta["run_ids"]) - set(table["run_id"])
    if missing:
        raise SystemExit(f"{folder / 'steps.csv'}: no steps of run(s) {sorted(missing)} named in {sidecar}")
    parameters = {
        **meta.get("parameters", {}),
        "redrawn_from": "steps.csv",
        "redrawn_by": "studies/h200/scripts/redraw_figures.py",
    }
    command = parameters.get("command", "")
    slo = {w: v for w, v in slo_from_command(command).items() if w in set(table["workload"])}
    drawn = [("latency_vs_throughput", plots.tail_vs_throughput_by_replicas(table, slo))]
    if (folder / "scaling_vs_replicas.json").exists():
        closed = table[table["scenario"].isin(["closed_loop", "single_stream"])]
        counts = closed.groupby("workload")["replicas"].nunique()
        if len(counts) and counts.max() >= 2:
            measured, predicted = study_report.scaling(closed[closed["workload"].map(counts) >= 2])
            drawn.append(("scaling_vs_replicas", plots.scaling_vs_replicas(measured, predicted)))
        else:  # drawn once from a single replica count: a figure of no scaling at all, removed
            for ext in ("pdf", "png", "json", "csv"):
                (folder / f"scaling_vs_replicas.{ext}").unlink(missing_ok=True)
            print(f"removed {folder / 'scaling_vs_replicas.png'}: its runs have no two replica counts in closed loop")
    return save(drawn, meta, parameters, folder)


def redraw_thesis(sidecar: Path, results: Path = RESULTS) -> list[Path]:
    """A suite's latency-throughput and scaling figures of ``thesis/`` (notebook 09 on each suite, which pooled the
    steps of its runs), redrawn from the study's ``steps.csv``: one series per replica count."""
    meta = json.loads(sidecar.read_text())
    steps = pd.read_csv(results / "steps.csv")
    table = steps[steps["run_id"].isin(meta["run_ids"])]
    table = table.assign(config="replicas=" + table["replicas"].astype(str))
    parameters = {
        **meta.get("parameters", {}),
        "redrawn_from": "studies/h200/results/steps.csv",
        "redrawn_by": "studies/h200/scripts/redraw_figures.py",
    }
    prefix = sidecar.name.removesuffix("_latency_vs_throughput.json")
    drawn = [(f"{prefix}_latency_vs_throughput", plots.latency_vs_throughput(table, meta["parameters"]["slo_ms"]))]
    measured, predicted = analysis.replica_scaling(table)
    drawn.append((f"{prefix}_scaling_vs_replicas", plots.scaling_vs_replicas(measured, predicted)))
    return save(drawn, meta, parameters, sidecar.parent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="the study's results folder to redraw in place (default: studies/h200/results)",
    )
    results = parser.parse_args(argv).results.resolve()
    for sidecar in sorted(results.rglob("latency_vs_throughput.json")):
        if (sidecar.parent / "steps.csv").exists():
            for png in redraw(sidecar.parent):
                print(os.path.relpath(png))
    thesis = results / "thesis"
    for sidecar in sorted(thesis.glob("*_latency_vs_throughput.json")):
        for png in redraw_thesis(sidecar, results):
            print(os.path.relpath(png))
    # the thesis figures that need the runs' request records (not committed) cannot be redrawn: their latency CDFs
    # pooled every load level, so they go; the per-run timelines, batch fits and model checks go with them
    redrawn = {p.stem for p in thesis.glob("*.csv")}
    for old in sorted(thesis.glob("*.json")):
        if old.stem not in redrawn:
            for ext in ("pdf", "png", "json"):
                (thesis / f"{old.stem}.{ext}").unlink(missing_ok=True)
            print(f"removed thesis/{old.stem}: needs the runs' request records, which are not committed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
