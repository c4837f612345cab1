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
        fraction = np.arange(1, len(values) + 1) / len(values)
        if len(values) > 20_000:  # millions of points draw no better than 10,000 exact quantiles, only slower
            keep = np.unique(np.linspace(0, len(values) - 1, 10_000).astype(int))
            values, fraction = values[keep], fraction[keep]
        ax.step(values, fraction, where="post",
                label=f"{WORKLOAD_LABEL.get(workload, workload)} (n={len(group)})")
    ax.set_xscale("log")
    ax.set_xlabel("latency [ms]")
    ax.set_ylabel("fraction of requests [-]")
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


def tail_vs_throughput_by_replicas(table: pd.DataFrame, slo_ms: dict[str, float] | None = None):
    """p95 latency [ms, log] against achieved throughput [req/s], one panel per workload, one line per replica count
    and load scenario (solid: closed loop, dashed: open loop), with the SLO where given: a replica study at a glance."""
    workloads = _ordered(table["workload"].unique())
    fig, axes = figure(aspect=0.36, ncols=len(workloads))
    counts = sorted(table["replicas"].unique())
    colours = dict(zip(counts, [f"C{i}" for i in range(len(counts))]))
    for ax, workload in zip(axes[0], workloads):
        mine = table[table["workload"] == workload]
        for (replicas, scenario), steps in mine.groupby(["replicas", "scenario"]):
            steps = steps.sort_values("step")
            open_loop = scenario in ("poisson", "constant_rate")
            ax.plot(steps["throughput_rps"], steps["p95_ms"], marker="s" if open_loop else "o", markersize=3,
                    linestyle="--" if open_loop else "-", color=colours[replicas],
                    label=f"{replicas} replica{'s' if replicas > 1 else ''}, {'open' if open_loop else 'closed'} loop")
        if slo_ms and workload in slo_ms:
            ax.axhline(slo_ms[workload], color="k", linestyle=":", linewidth=0.8)
            ax.annotate(f"SLO {slo_ms[workload]:g} ms", (0.02, slo_ms[workload]), xycoords=("axes fraction", "data"),
                        xytext=(0, 2), textcoords="offset points", fontsize=7)
        ax.set_yscale("log")
        ax.set_title(WORKLOAD_LABEL.get(workload, workload))
        ax.set_xlabel("throughput [req/s]")
    axes[0, 0].set_ylabel("p95 latency [ms]")
    legend = {}  # one legend for all panels, under them, so it covers no data and no SLO label
    for ax in axes[0]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    order = sorted(legend, key=lambda label: (int(label.split()[0]), label))
    fig.legend([legend[label] for label in order], order, loc="outside lower center", ncols=min(4, len(order)),
               fontsize=7, frameon=False)
    return fig


def percentiles_vs_load(table: pd.DataFrame, percentiles=("p50", "p95", "p99"), slo_ms: dict | None = None):
    """Latency percentiles [ms] against offered load [req/s], one panel per workload (open-loop sweeps)."""
    workloads = _ordered(table["workload"].unique())
    fig, axes = figure(aspect=0.4, ncols=len(workloads))
    for ax, workload in zip(axes[0], workloads):
        steps = table[table["workload"] == workload].sort_values("offered_rps")
        for name, marker in zip(percentiles, "osD^"):
            ax.plot(steps["offered_rps"], steps[f"{name}_ms"], marker=marker, label=name)
        if slo_ms and workload in slo_ms:
            ax.axhline(slo_ms[workload], color="k", linestyle="--", linewidth=0.8, label="SLO")
        ax.set_title(WORKLOAD_LABEL.get(workload, workload))
        ax.set_xlabel("offered load [req/s]")
        ax.set_yscale("log")
    axes[0, 0].set_ylabel("latency [ms]")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), frameon=False)
    return fig


def throughput_vs_batch(points: pd.DataFrame, model=None, ax=None):
    """Throughput [items/s] against batch size (points: ``batch_size``, ``throughput``) with the fitted curve
    ``model.throughput(b)`` of a :class:`gawm_lib.models.BatchLatencyModel` where given."""
    if ax is None:
        _, axes = figure(width="half", aspect=0.75)
        ax = axes[0, 0]
    ax.plot(points["batch_size"], points["throughput"], "o", label="measured")
    if model is not None:
        b = np.linspace(points["batch_size"].min(), points["batch_size"].max(), 200)
        ax.plot(b, [model.throughput(x) for x in b], "-", label="fit")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size [items]")
    ax.set_ylabel("throughput [items/s]")
    ax.legend()
    return ax.figure


def scaling_vs_replicas(table: pd.DataFrame, predicted: pd.DataFrame | None = None, by: str | None = None):
    """Throughput [req/s] and mean latency [ms] against replicas (columns ``replicas``, ``throughput_rps``,
    ``mean_ms``), with a model's ``predicted`` frame (same columns; a ``model`` column names several) drawn as lines.
    ``by`` names a column (e.g. ``placement``) whose values get a colour each, in both frames."""
    fig, axes = figure(aspect=0.38, ncols=2)
    left, right = axes[0]
    groups = list(dict.fromkeys(table[by])) if by else [None]
    styles = ["-", "--", ":", "-."]
    for colour, group in zip(OKABE_ITO, groups):
        rows = table if group is None else table[table[by] == group]
        rows = rows.sort_values("replicas")
        tag = "" if group is None else f"{group}, "
        left.plot(rows["replicas"], rows["throughput_rps"], "o", color=colour, label=f"{tag}measured")
        right.plot(rows["replicas"], rows["mean_ms"], "o", color=colour)
        if predicted is None or predicted.empty:
            continue
        model_rows = predicted if group is None else predicted[predicted[by] == group]
        models = model_rows.groupby("model", sort=False) if "model" in model_rows else [("model", model_rows)]
        for style, (name, lines) in zip(styles, models):
            lines = lines.sort_values("replicas")
            left.plot(lines["replicas"], lines["throughput_rps"], style, color=colour, label=f"{tag}{name}")
            right.plot(lines["replicas"], lines["mean_ms"], style, color=colour)
    left.set_ylabel("throughput [req/s]")
    right.set_ylabel("mean latency [ms]")
    for ax in (left, right):
        ax.set_xlabel("replicas [count]")
        ax.set_ylim(bottom=0)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 3), frameon=False)
    return fig


def rtf_vs_audio_duration(table: pd.DataFrame):
    """Whisper latency [ms] (p50, p95 and the server's compute) and real-time factor [-] (processing time / audio
    length; below the line at 1 is faster than real time) against clip length [s]; columns ``audio_s``, ``p50_ms``,
    ``p95_ms``, ``compute_ms``, ``rtf_p50``, ``rtf_p95``, ``rtf_server`` (:func:`gawm_lib.analysis.audio_duration`)."""
    fig, axes = figure(aspect=0.38, ncols=2)
    left, right = axes[0]
    rows = table.sort_values("audio_s")
    for column, marker, label in (("p50_ms", "o", "p50"), ("p95_ms", "s", "p95"),
                                  ("compute_ms", "^", "server compute")):
        left.plot(rows["audio_s"], rows[column], marker=marker, label=label)
    for column, marker, label in (("rtf_p50", "o", "p50"), ("rtf_p95", "s", "p95"),
                                  ("rtf_server", "^", "server compute")):
        right.plot(rows["audio_s"], rows[column], marker=marker, label=label)
    right.axhline(1.0, color="k", linestyle="--", linewidth=0.8, label="real time")
    left.set_ylabel("latency [ms]")
    left.set_ylim(bottom=0)
    right.set_ylabel("real-time factor [-]")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xlabel("audio duration [s]")
    handles, labels = right.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), frameon=False)
    return fig


def metric_timeline(metrics: pd.DataFrame, queries: list[str], phases: list[dict] | None = None,
                    units: dict[str, str] | None = None):
    """Time series of Prometheus queries (tidy frame: ``time``, ``query``, ``value``, ``unit``), one panel per query,
    with the load phases shaded (``phases``: dicts with ``start_unix_ns``, ``end_unix_ns``, ``level``)."""
    import matplotlib.pyplot as plt

    thesis_style()
    fig, axes = plt.subplots(len(queries), 1, figsize=(WIDTH_IN["single"], 1.3 * len(queries) + 0.4), sharex=True,
                             squeeze=False, layout="constrained")
    for ax, name in zip(axes[:, 0], queries):
        series = metrics[metrics["query"] == name].sort_values("time")
        for labels, group in series.groupby("labels", sort=True):
            tags = json.loads(labels) if labels else {}
            workload = tags.get("workload") or (group["workload"].iloc[0] if "workload" in group else "")
            order = list(WORKLOAD_LABEL).index(workload) if workload in WORKLOAD_LABEL else 3
            legend = " ".join([WORKLOAD_LABEL.get(workload, workload)] + [f"{k}={v}" for k, v in sorted(tags.items())
                                                                           if k not in ("workload", "job")])
            ax.plot(group["time"], group["value"], linewidth=1, color=OKABE_ITO[order % len(OKABE_ITO)],
                    label=legend.strip() or None)
        unit = (units or {}).get(name) or (series["unit"].iloc[0] if len(series) else "")
        ax.set_ylabel(f"{name}\n[{unit}]")
        for i, phase in enumerate(phases or []):
            start = pd.Timestamp(phase["start_unix_ns"], unit="ns", tz="UTC")
            end = pd.Timestamp(phase["end_unix_ns"], unit="ns", tz="UTC")
            ax.axvspan(start, end, color=OKABE_ITO[i % 2 + 5], alpha=0.12, linewidth=0)
    axes[-1, 0].set_xlabel("time [UTC]")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(4, len(labels)), frameon=False)
    return fig


def energy_per_inference(table: pd.DataFrame):
    """Energy per inference [J] per workload and configuration (columns ``workload``, ``config``, ``joules``)."""
    fig, axes = figure(width="half", aspect=0.8)
    ax = axes[0, 0]
    labels = [f"{WORKLOAD_LABEL.get(w, w)}\n{c}" for w, c in zip(table["workload"], table["config"])]
    ax.bar(labels, table["joules"], color=[OKABE_ITO[i % len(OKABE_ITO)] for i in range(len(table))])
    ax.set_ylabel("energy per inference [J]")
    ax.tick_params(axis="x", labelrotation=30)
    return fig


def predicted_vs_measured(validation: pd.DataFrame, unit_scale: dict[str, float] | None = None,
                          title: str | None = None):
    """Predicted against measured per metric (a :class:`gawm_lib.models.ValidationReport` table: ``metric``,
    ``measured``, ``predicted``), with the identity line and the +/-10 % band. Latencies are shown in ms."""
    metrics = list(dict.fromkeys(validation["metric"]))
    fig, axes = figure(aspect=0.36, ncols=len(metrics))
    scale = {"throughput": 1.0, **(unit_scale or {})}
    for ax, metric in zip(axes[0], metrics):
        rows = validation[validation["metric"] == metric]
        k = scale.get(metric, 1e3)  # seconds -> ms unless told otherwise
        unit = "req/s" if metric == "throughput" else "ms"
        lo = min(rows["measured"].min(), rows["predicted"].min()) * k * 0.8
        hi = max(rows["measured"].max(), rows["predicted"].max()) * k * 1.2
        line = np.array([lo, hi])
        ax.fill_between(line, line * 0.9, line * 1.1, color="0.85", label="±10 %")
        ax.plot(line, line, "k-", linewidth=0.8)
        groups = rows.groupby("workload") if "workload" in rows else [("", rows)]
        for name, group in groups:
            ax.plot(group["measured"] * k, group["predicted"] * k, "o", label=WORKLOAD_LABEL.get(name, name) or None)
        if metric != "throughput" and hi / max(lo, 1e-9) > 20:  # latencies spanning decades read better on log axes
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"measured {metric} [{unit}]")
        ax.set_ylabel(f"predicted [{unit}]")
        ax.set_title(metric)
    handles, names = axes[0, -1].get_legend_handles_labels()  # under the panels: a legend inside one covered points
    fig.legend(handles, names, loc="outside lower center", ncol=len(names))
    if title:
        fig.suptitle(title)
    return fig


def capacity_plan(plans: pd.DataFrame, slo_ms: float | None = None):
    """Replicas needed (with the model's uncertainty range) against offered load [req/s]; columns ``arrival_rate``,
    ``replicas``, ``replicas_low``, ``replicas_high`` and optionally ``workload``."""
    fig, axes = figure(width="half", aspect=0.8)
    ax = axes[0, 0]
    groups = plans.groupby("workload") if "workload" in plans else [("", plans)]
    for name, group in groups:
        group = group.sort_values("arrival_rate")
        ax.step(group["arrival_rate"], group["replicas"], where="post", label=WORKLOAD_LABEL.get(name, name) or None)
        ax.fill_between(group["arrival_rate"], group["replicas_low"], group["replicas_high"], step="post", alpha=0.2)
    ax.set_xlabel("offered load [req/s]")
    ax.set_ylabel("replicas needed [count]")
    if slo_ms is not None:
        ax.set_title(f"p95 <= {slo_ms:g} ms")
    if "workload" in plans:
        ax.legend()
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


def save_table(frame: pd.DataFrame, table_id: str, run_ids: list[str], notebook: str,
               parameters: dict[str, Any] | None = None, out_dir: Path | None = None) -> dict[str, Path]:
    """Write a result table as ``<table_id>.csv`` with the same provenance sidecar as figures (``.json``)."""
    out_dir = Path(out_dir or paths.figures_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"csv": out_dir / f"{table_id}.csv", "json": out_dir / f"{table_id}.json"}
    frame.to_csv(written["csv"], index=False)
    sidecar = {"table_id": table_id, "run_ids": list(run_ids), "notebook": notebook, "git": runs.git_info(),
               "parameters": parameters or {}, "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
               "files": {"csv": written["csv"].name}, "rows": len(frame)}
    written["json"].write_text(json.dumps(sidecar, indent=2, default=str) + "\n")
    return written
