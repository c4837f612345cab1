"""Thesis figures: one style, figure functions that take tidy frames, and ``save_figure`` with provenance.

Sizes follow A4 LaTeX columns (single column 6.3 in text width, half for side-by-side), the palette is the
colour-blind-safe Okabe-Ito set, PDF is vector and PNG is 300 dpi. Every axis names its unit.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gawm_lib import paths, runs

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
WIDTH_IN = {"single": 6.3, "half": 3.1}
WORKLOAD_LABEL = {"resnet50": "ResNet50", "distilbert": "DistilBERT", "whisper": "Whisper"}


def thesis_style() -> None:
    """Apply the thesis look to matplotlib (fonts, sizes, palette, grid)."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "font.family": "serif", "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
        "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
        "axes.spines.right": False, "axes.prop_cycle": mpl.cycler(color=OKABE_ITO), "figure.dpi": 100,
        "savefig.dpi": 300, "savefig.bbox": "tight", "pdf.fonttype": 42, "ps.fonttype": 42, "lines.linewidth": 1.4,
    })


def figure(width: str = "single", aspect: float = 0.45, ncols: int = 1):
    import matplotlib.pyplot as plt

    thesis_style()
    w = WIDTH_IN[width]
    return plt.subplots(1, ncols, figsize=(w, w * aspect), squeeze=False, layout="constrained")


def latency_cdf(requests: pd.DataFrame, ax=None):
    """Empirical CDF of request latency [ms] per workload (ok requests of the measured steps), log x."""
    if ax is None:
        _, axes = figure()
        ax = axes[0, 0]
    measured = requests[(requests["phase"] == "step") & (requests["error"] == "")]
    for workload in _ordered(measured["workload"].unique()):
        group = measured[measured["workload"] == workload]
        values = np.sort(group["latency_ms"].to_numpy())
        ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                label=f"{WORKLOAD_LABEL.get(workload, workload)} (n={len(values)})")
    ax.set_xscale("log")
    ax.set_xlabel("latency [ms]")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right")
    return ax.figure


def _ordered(workloads) -> list[str]:
    known = [w for w in WORKLOAD_LABEL if w in set(workloads)]
    return known + sorted(set(workloads) - set(known))


def latency_vs_throughput(table: pd.DataFrame, slo_ms: dict[str, float] | None = None):
    """p50 and p95 latency [ms] against achieved throughput [req/s], one panel per workload; each point is one load
    step, labelled with its level (users or req/s), joined in step order."""
    workloads = _ordered(table["workload"].unique())
    fig, axes = figure(aspect=0.4, ncols=len(workloads))
    for ax, workload in zip(axes[0], workloads):
        steps = table[table["workload"] == workload].sort_values("step")
        ax.plot(steps["throughput_rps"], steps["p50_ms"], marker="o", label="p50")
        ax.plot(steps["throughput_rps"], steps["p95_ms"], marker="s", label="p95")
        for _, step in steps.iterrows():
            ax.annotate(f"{step['level']:g}", (step["throughput_rps"], step["p95_ms"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color="0.35")
        if slo_ms and workload in slo_ms:
            ax.axhline(slo_ms[workload], color="k", linestyle="--", linewidth=0.8, label="SLO")
        ax.set_title(WORKLOAD_LABEL.get(workload, workload))
        ax.set_xlabel("throughput [req/s]")
        ax.set_ylim(0, steps["p95_ms"].max() * 1.2)
    axes[0, 0].set_ylabel("latency [ms]")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), frameon=False)
    return fig


def save_figure(fig, fig_id: str, run_ids: list[str], notebook: str, parameters: dict[str, Any] | None = None,
                out_dir: Path | None = None) -> dict[str, Path]:
    """Write ``<fig_id>.pdf``, ``.png`` (300 dpi) and ``.json`` (run ids, notebook, git sha, parameters, time)."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir or paths.figures_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for ext in ("pdf", "png"):
        written[ext] = out_dir / f"{fig_id}.{ext}"
        fig.savefig(written[ext])
    sidecar = {
        "fig_id": fig_id, "run_ids": list(run_ids), "notebook": notebook, "git": runs.git_info(),
        "parameters": parameters or {}, "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
        "files": {k: v.name for k, v in written.items()},
    }
    written["json"] = out_dir / f"{fig_id}.json"
    written["json"].write_text(json.dumps(sidecar, indent=2, default=str) + "\n")
    plt.close(fig)
    return written


def figures_for_run(run_id: str, out_dir: Path | None = None) -> list[Path]:
    """Figure files (PDF and PNG) whose provenance names ``run_id``."""
    out_dir = Path(out_dir or paths.figures_dir())
    found = []
    for sidecar in sorted(out_dir.glob("*.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if run_id in meta.get("run_ids", []):
            found += [sidecar.with_suffix(f".{ext}") for ext in ("pdf", "png")]
    return found
