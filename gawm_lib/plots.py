"""Thesis figures: one style, figure functions that take tidy frames, and ``save_figure`` with provenance.

Every figure function returns a matplotlib figure that carries the data it plots (``fig.gawm_data``: one row per
plotted point with ``panel``, ``series``, ``run_id``, ``config``, ``x_name``, ``x``, ``y_name``, ``y``, ``n`` (the
requests behind the point) and ``few_requests``), and :func:`save_figure` writes that table beside the PDF and PNG
(``<figure>.csv``), so a thesis can re-plot a figure with another tool and a test can check every plotted value
against the run's ``summary.csv``.

One style everywhere: each workload has one colour and one marker in every figure type (:data:`WORKLOAD_STYLE`,
colour-blind-safe Okabe-Ito colours); configurations of one workload are told apart by marker and shade; throughput
axes start at zero; every axis names its unit in words; a percentile drawn from fewer than :data:`MIN_REQUESTS`
requests is drawn hollow and flagged in the CSV. Sizes follow A4 LaTeX columns (6.3 in text width, half for
side-by-side), PDF is vector and PNG is 300 dpi. In a notebook the figure also appears inline.
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
#: One colour and marker per workload, in every figure type.
WORKLOAD_STYLE = {"resnet50": ("#0072B2", "o"), "distilbert": ("#E69F00", "s"), "whisper": ("#009E73", "^")}
OTHER_STYLES = [("#D55E00", "D"), ("#CC79A7", "v"), ("#56B4E9", "P"), ("#000000", "X")]
CONFIG_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
#: A percentile from fewer requests than this is flagged (hollow marker on the figure, ``few_requests`` in the CSV).
MIN_REQUESTS = 20
DATA_COLUMNS = [
    "panel",
    "series",
    "run_id",
    "config",
    "x_name",
    "x",
    "y_name",
    "y",
    "n",
    "few_requests",
    "kind",
    "label",
    "verdict",
]
#: Steps that are not VALID (:mod:`gawm_lib.verdicts`) are drawn, marked with a black cross over their point, and named
#: in a note above the figure; the CSV's ``verdict`` column says which (empty for what is not a measured step).
NOT_VALID = ("INVALID", "DEGRADED")
#: Level axis words per load scenario: what the numbers at the points of a latency-throughput curve are.
LEVEL_WORDS = {
    "closed_loop": "concurrent users",
    "single_stream": "concurrent users",
    "offline": "concurrent users",
    "poisson": "offered rate [req/s]",
    "constant_rate": "offered rate [req/s]",
    "trace": "trace step",
    "stages": "stage level",
}


def thesis_style() -> None:
    """Apply the thesis look to matplotlib (fonts, sizes, palette, grid)."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "font.family": "serif",
            "font.size": 9,
            "axes.titlesize": 9,
            "axes.labelsize": 9,
            "legend.fontsize": 8,
            "xtick.labelsize": 8,
            "ytick.labelsize": 8,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": mpl.cycler(color=OKABE_ITO),
            "figure.dpi": 100,
            "savefig.dpi": 300,
            "savefig.bbox": "tight",
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "lines.linewidth": 1.4,
        }
    )


def figure(width: str = "single", aspect: float = 0.45, ncols: int = 1, nrows: int = 1):
    import matplotlib.pyplot as plt

    thesis_style()
    w = WIDTH_IN[width]
    return plt.subplots(nrows, ncols, figsize=(w, w * aspect * nrows), squeeze=False, layout="constrained")


def workload_style(workload: str) -> tuple[str, str]:
    """(colour, marker) of a workload: fixed for the three workloads, stable for any other name."""
    if workload in WORKLOAD_STYLE:
        return WORKLOAD_STYLE[workload]
    return OTHER_STYLES[sum(map(ord, str(workload))) % len(OTHER_STYLES)]


def shade(colour: str, i: int, n: int) -> tuple[float, float, float]:
    """The ``i``-th of ``n`` shades of ``colour``, from the colour itself to a lighter tint (mixed with up to 55 %
    white): configurations or load levels of one workload."""
    from matplotlib.colors import to_rgb

    t = 0.55 * i / (n - 1) if n > 1 else 0.0
    return tuple(c + (1 - c) * t for c in to_rgb(colour))


def workload_name(workload: str) -> str:
    return WORKLOAD_LABEL.get(workload, str(workload))


def attach_data(fig, rows: list[dict] | pd.DataFrame):
    """Attach the plotted points to ``fig`` (``fig.gawm_data``, columns :data:`DATA_COLUMNS`); returns ``fig``."""
    frame = pd.DataFrame(rows)
    for column in DATA_COLUMNS:
        if column not in frame:
            frame[column] = (
                "" if column in ("panel", "series", "run_id", "config", "kind", "label", "verdict") else np.nan
            )
    frame["few_requests"] = frame["few_requests"].eq(True)  # unknown (NaN) is not flagged
    extra = [c for c in frame.columns if c not in DATA_COLUMNS]
    fig.gawm_data = frame[DATA_COLUMNS + extra].reset_index(drop=True)
    return fig


def figure_data(fig) -> pd.DataFrame | None:
    """The points a figure function plotted (``None`` for a figure drawn by hand)."""
    return getattr(fig, "gawm_data", None)


def _ordered(workloads) -> list[str]:
    known = [w for w in WORKLOAD_LABEL if w in set(workloads)]
    return known + sorted(set(workloads) - set(known))


def _configs(frame: pd.DataFrame) -> list[str]:
    """The configuration labels of a frame in first-seen order (one empty label where the frame has none)."""
    if "config" not in frame:
        return [""]
    return list(dict.fromkeys(frame["config"].fillna("").astype(str)))


def _config_of(frame: pd.DataFrame) -> pd.Series:
    return frame["config"].fillna("").astype(str) if "config" in frame else pd.Series("", index=frame.index)


def _run_of(frame: pd.DataFrame) -> pd.Series:
    return frame["run_id"].astype(str) if "run_id" in frame else pd.Series("", index=frame.index)


def _n(frame: pd.DataFrame) -> pd.Series:
    """Requests behind each step's percentiles: its ok requests (``ok`` column of a summary)."""
    if "ok" in frame:
        return frame["ok"].astype(float)
    return pd.Series(np.nan, index=frame.index)


def _level_words(table: pd.DataFrame) -> str:
    if "scenario" not in table:
        return "load level (users, or req/s for open loop)"
    words = list(dict.fromkeys(LEVEL_WORDS.get(str(s), "load level") for s in table["scenario"]))
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


OPEN_LOOP = ("poisson", "constant_rate")


def _level_text(level: float, scenario: str | None) -> str:
    """The label at a point: users as a number, an open-loop rate with its unit."""
    return f"{level:g}/s" if scenario in OPEN_LOOP else f"{level:g}"


def _step_points(steps: pd.DataFrame, panel: str, series: str, config: str, x: str, y: str) -> list[dict]:
    """The data rows of one plotted line of load steps (a summary's rows): each point's run, step, level and the
    requests behind it, with ``x`` and ``y`` the columns drawn."""
    n = _n(steps)
    return [
        {
            "panel": panel,
            "series": series,
            "run_id": r,
            "config": config,
            "x_name": x,
            "x": xv,
            "y_name": y,
            "y": yv,
            "n": k,
            "few_requests": k < MIN_REQUESTS,
            "kind": "measured",
            "label": f"{lv:g}",
            "step": st,
            "verdict": v,
        }
        for r, xv, yv, k, lv, st, v in zip(
            _run_of(steps), steps[x], steps[y], n, steps["level"], steps["step"], _verdict_of(steps)
        )
    ]


def _verdict_of(frame: pd.DataFrame) -> pd.Series:
    """Each step's verdict (UNKNOWN for steps of runs recorded before verdicts)."""
    if "verdict" in frame:
        return frame["verdict"].fillna("UNKNOWN").replace("", "UNKNOWN").astype(str)
    return pd.Series("UNKNOWN", index=frame.index)


def _left_out_note(fig, count: int) -> None:
    """The note above a figure drawn from fits that left INVALID steps out."""
    if count:
        fig.text(0.0, 1.0, f"{count} INVALID step(s) left out", fontsize=7, color="0.35", ha="left", va="bottom")


def _curve_verdict(rows: pd.DataFrame) -> str:
    """The worst verdict of the steps behind a curve of request rows (UNKNOWN without a ``verdict`` column)."""
    from gawm_lib.verdicts import worst

    return worst(rows["verdict"].astype(str).unique()) if "verdict" in rows else "UNKNOWN"


def _mark_not_valid(ax, x, y, verdicts) -> None:
    """A black cross over the points of steps that are not VALID."""
    bad = np.isin(np.asarray(verdicts, dtype=object), NOT_VALID)
    if bad.any():
        ax.plot(np.asarray(x)[bad], np.asarray(y)[bad], linestyle="none", marker="x", markersize=7, color="k", zorder=6)


def _plain_log(ax, axis: str = "x") -> None:
    """A log axis with plain numbers (20, 50, 100) at 1-2-5 steps instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def _mark_few(ax, x, y, n, colour, marker) -> None:
    """Hollow markers over the points drawn from fewer than MIN_REQUESTS requests."""
    few = np.asarray(n, dtype=float) < MIN_REQUESTS
    if few.any():
        ax.plot(
            np.asarray(x)[few],
            np.asarray(y)[few],
            linestyle="none",
            marker=marker,
            markersize=7,
            markerfacecolor="white",
            markeredgecolor=colour,
            zorder=5,
        )


def _legend_below(fig, axes, title: str | None = None, ncols: int = 3) -> None:
    seen: dict[str, Any] = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(
            list(seen.values()),
            list(seen),
            loc="outside lower center",
            ncols=min(ncols, len(seen)),
            frameon=False,
            title=title,
            fontsize=7,
            title_fontsize=7,
        )


def _few_note(fig, data: pd.DataFrame, hollow: bool = True, step_keys=("run_id", "panel", "step")) -> None:
    """The note above a figure of steps: hollow points (few requests) and crossed ones (steps not VALID, counted once
    per ``step_keys``)."""
    notes = []
    if hollow and len(data) and data["few_requests"].any():
        notes.append(f"hollow: a percentile of fewer than {MIN_REQUESTS} requests")
    if len(data) and "verdict" in data and data["verdict"].isin(NOT_VALID).any():
        bad = data[data["verdict"].isin(NOT_VALID)]
        if "step" in bad:  # points of steps, crossed
            bad, marked, things = bad.drop_duplicates(list(step_keys)), "x", "step(s)"
        else:  # curves of requests, named in the legend
            bad, marked, things = bad.drop_duplicates(["panel", "series"]), "[verdict] in the legend", "curve(s)"
        what = ", ".join(sorted(set(bad["verdict"])))
        notes.append(f"{marked}: {len(bad)} {things} not VALID ({what}; see the data's verdict column)")
    if notes:
        fig.text(
            0.0,
            1.0,
            "; ".join(notes),
            fontsize=7,
            color="0.35",
            ha="left",
            va="bottom",
            transform=fig.transFigure,
        )


def latency_cdf(requests: pd.DataFrame, level: float | None = None, max_points: int = 2_000):
    """Empirical CDF of request latency [ms] (ok requests of the measured steps), one panel per workload; the latency
    axis is logarithmic where a panel's latencies span about a decade or more.

    One configuration of a workload: one curve per load level (darker = lower level), so the curves of different
    loads are never pooled. Several configurations (a ``config`` column, :func:`gawm_lib.analysis.load_requests`):
    one curve per configuration at ``level``, by default each configuration's highest level (named in the legend).
    Curves of more than ``max_points`` requests are drawn through that many exact quantiles."""
    measured = requests[(requests["phase"] == "step") & (requests["error"] == "")]
    if measured.empty:
        raise ValueError("latency_cdf: no successful requests in measured steps to draw")
    workloads = _ordered(measured["workload"].unique())
    fig, axes = figure(aspect=0.42 if len(workloads) > 1 else 0.5, ncols=len(workloads))
    rows = []
    for ax, workload in zip(axes[0], workloads):
        colour, _ = workload_style(workload)
        mine = measured[measured["workload"] == workload]
        configs = _configs(mine)
        curves = []
        if len(configs) == 1:
            levels = sorted(mine["level"].unique())
            for i, lv in enumerate(levels):
                curves.append((mine[mine["level"] == lv], f"{lv:g}", shade(colour, i, len(levels)), "-", lv))
            title = f"{workload_name(workload)}, by load level"
        else:
            for i, config in enumerate(configs):
                rows_c = mine[_config_of(mine) == config]
                lv = level if level is not None else rows_c["level"].max()
                chosen = rows_c[rows_c["level"] == lv]
                if chosen.empty:
                    continue
                curves.append(
                    (chosen, f"{config} @ {lv:g}", shade(colour, i, len(configs)), ["-", "--", ":", "-."][i % 4], lv)
                )
            title = f"{workload_name(workload)}, " + ("highest level of each" if level is None else f"level {level:g}")
        for group, label, line_colour, style, lv in curves:
            verdict = _curve_verdict(group)
            if verdict in NOT_VALID:
                label = f"{label} [{verdict}]"
            values = np.sort(group["latency_ms"].to_numpy())
            fraction = np.arange(1, len(values) + 1) / len(values)
            if len(values) > max_points:
                keep = np.unique(np.linspace(0, len(values) - 1, max_points).astype(int))
                values, fraction = values[keep], fraction[keep]
            ax.step(
                values, fraction, where="post", color=line_colour, linestyle=style, label=f"{label} (n={len(group)})"
            )
            run_id = ",".join(dict.fromkeys(_run_of(group)))
            config = ",".join(dict.fromkeys(_config_of(group)))
            rows += [
                {
                    "panel": workload,
                    "series": label,
                    "run_id": run_id,
                    "config": config,
                    "x_name": "latency_ms",
                    "x": x,
                    "y_name": "fraction",
                    "y": y,
                    "n": len(group),
                    "few_requests": len(group) < MIN_REQUESTS,
                    "kind": "measured",
                    "label": f"level={lv:g}",
                    "verdict": verdict,
                }
                for x, y in zip(values, fraction)
            ]
        shown = np.concatenate([group["latency_ms"].to_numpy() for group, *_ in curves]) if curves else []
        if len(shown) and shown.max() > 8 * max(
            shown.min(), 1e-9
        ):  # a log axis where the latencies span about a decade
            ax.set_xscale("log")
            _plain_log(ax, "x")
        ax.set_xlabel("latency [ms]")
        ax.set_ylim(0, 1.01)
        ax.set_title(title)
        legend_title = _level_words(mine) if len(configs) == 1 else "configuration @ level"
        if len(configs) == 1:
            ax.legend(loc="lower right", fontsize=6, title=legend_title, title_fontsize=6)
        else:  # long configuration labels: under the panel, where they cover no curve
            ax.legend(
                loc="upper center",
                bbox_to_anchor=(0.5, -0.3),
                fontsize=6,
                title=legend_title,
                title_fontsize=6,
                frameon=False,
            )
    axes[0, 0].set_ylabel("fraction of requests [-]")
    _few_note(fig, attach_data(fig, rows).gawm_data, hollow=False)
    return fig


def latency_vs_throughput(table: pd.DataFrame, slo_ms: dict[str, float] | None = None):
    """p95 (solid) and p50 (dashed) latency [ms] against throughput [req/s], one panel per workload, one series per
    configuration (``config`` column; one run's steps otherwise). Each point is one load step, labelled with its
    level (users, or req/s for open loop: the legend's title says which), joined in step order. Both axes from 0."""
    if table.empty:
        raise ValueError("latency_vs_throughput: the table has no steps")
    workloads = _ordered(table["workload"].unique())
    fig, axes = figure(aspect=0.42 if len(workloads) > 1 else 0.6, ncols=len(workloads))
    rows = []
    for ax, workload in zip(axes[0], workloads):
        colour, _ = workload_style(workload)
        mine = table[table["workload"] == workload]
        configs = _configs(mine)
        for i, config in enumerate(configs):
            steps = mine[_config_of(mine) == config].sort_values(["run_id", "step"] if "run_id" in mine else "step")
            line_colour, marker = shade(colour, i, len(configs)), CONFIG_MARKERS[i % len(CONFIG_MARKERS)]
            if len(configs) == 1:
                marker = workload_style(workload)[1]
            tag = f"{config}: " if config else (f"{workload_name(workload)}: " if len(workloads) > 1 else "")
            n = _n(steps)
            for name, style, size in (("p95", "-", 4), ("p50", "--", 3)):
                ax.plot(
                    steps["throughput_rps"],
                    steps[f"{name}_ms"],
                    linestyle=style,
                    marker=marker,
                    markersize=size,
                    color=line_colour,
                    label=f"{tag}{name}",
                )
                _mark_few(ax, steps["throughput_rps"], steps[f"{name}_ms"], n, line_colour, marker)
                _mark_not_valid(ax, steps["throughput_rps"], steps[f"{name}_ms"], _verdict_of(steps))
                rows += _step_points(steps, workload, f"{tag}{name}", config, "throughput_rps", f"{name}_ms")
            for _, step in steps.iterrows():
                ax.annotate(
                    _level_text(step["level"], step.get("scenario")),
                    (step["throughput_rps"], step["p95_ms"]),
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=6,
                    color="0.35",
                )
        if slo_ms and workload in slo_ms:
            ax.axhline(slo_ms[workload], color="k", linestyle=":", linewidth=0.8, label="SLO")
        ax.set_title(workload_name(workload))
        ax.set_xlabel("throughput [req/s]")
        ax.set_xlim(left=0, right=max(mine["throughput_rps"].max() * 1.15, 1e-9))
        ax.set_ylim(0, max(mine["p95_ms"].max(), (slo_ms or {}).get(workload, 0)) * 1.2 or 1)
    axes[0, 0].set_ylabel("latency [ms]")
    data = pd.DataFrame(rows)
    _legend_below(fig, axes, title=f"numbers at points: {_level_words(table)}", ncols=2)
    _few_note(fig, attach_data(fig, data).gawm_data)
    return fig


def tail_vs_throughput_by_replicas(table: pd.DataFrame, slo_ms: dict[str, float] | None = None):
    """p95 latency [ms, log] against throughput [req/s], one panel per workload, one line per run (replica count and
    load scenario: solid closed loop, dashed open loop), with the SLO where given: a replica study at a glance."""
    workloads = _ordered(table["workload"].unique())
    fig, axes = figure(aspect=0.36, ncols=len(workloads))
    counts = sorted(table["replicas"].unique())
    rows = []
    for ax, workload in zip(axes[0], workloads):
        colour, _ = workload_style(workload)
        mine = table[table["workload"] == workload]
        keys = ["replicas", "scenario"] + (["run_id"] if "run_id" in mine else [])
        for key, steps in mine.groupby(keys):
            replicas, scenario = key[0], key[1]
            steps = steps.sort_values("step")
            open_loop = scenario in ("poisson", "constant_rate")
            line_colour = shade(colour, counts.index(replicas), len(counts))
            marker = CONFIG_MARKERS[counts.index(replicas) % len(CONFIG_MARKERS)]
            label = f"{replicas} replica{'s' if replicas > 1 else ''}, {'open' if open_loop else 'closed'} loop"
            ax.plot(
                steps["throughput_rps"],
                steps["p95_ms"],
                marker=marker,
                markersize=3,
                linestyle="--" if open_loop else "-",
                color=line_colour,
                label=label,
            )
            _mark_not_valid(ax, steps["throughput_rps"], steps["p95_ms"], _verdict_of(steps))
            rows += _step_points(steps, workload, label, label, "throughput_rps", "p95_ms")
        if slo_ms and workload in slo_ms:
            ax.axhline(slo_ms[workload], color="k", linestyle=":", linewidth=0.8)
            ax.annotate(
                f"SLO {slo_ms[workload]:g} ms",
                (0.02, slo_ms[workload]),
                xycoords=("axes fraction", "data"),
                xytext=(0, 2),
                textcoords="offset points",
                fontsize=7,
            )
        ax.set_yscale("log")
        _plain_log(ax, "y")
        ax.set_xlim(left=0)
        ax.set_title(workload_name(workload))
        ax.set_xlabel("throughput [req/s]")
    axes[0, 0].set_ylabel("p95 latency [ms]")
    _legend_below(fig, axes, ncols=4)
    _few_note(fig, attach_data(fig, rows).gawm_data, hollow=False)
    return fig


def percentiles_vs_load(table: pd.DataFrame, percentiles=("p50", "p95", "p99"), slo_ms: dict | None = None):
    """Latency percentiles [ms, log] against offered load [req/s], one panel per workload, one line per percentile
    and configuration (open-loop sweeps). The offered-load axis starts at 0."""
    workloads = _ordered(table["workload"].unique())
    fig, axes = figure(aspect=0.42 if len(workloads) > 1 else 0.6, ncols=len(workloads))
    styles = {"p50": ":", "p90": "-.", "p95": "-", "p99": "--", "p99.9": (0, (1, 3))}
    rows = []
    for ax, workload in zip(axes[0], workloads):
        colour, _ = workload_style(workload)
        mine = table[table["workload"] == workload]
        configs = _configs(mine)
        for i, config in enumerate(configs):
            steps = mine[_config_of(mine) == config].sort_values("offered_rps")
            line_colour = shade(colour, i, len(configs))
            marker = workload_style(workload)[1] if len(configs) == 1 else CONFIG_MARKERS[i % len(CONFIG_MARKERS)]
            tag = f"{config}: " if config else (f"{workload_name(workload)}: " if len(workloads) > 1 else "")
            for name in percentiles:
                ax.plot(
                    steps["offered_rps"],
                    steps[f"{name}_ms"],
                    marker=marker,
                    markersize=3,
                    linestyle=styles.get(name, "-"),
                    color=line_colour,
                    label=f"{tag}{name}",
                )
                _mark_few(ax, steps["offered_rps"], steps[f"{name}_ms"], _n(steps), line_colour, marker)
                _mark_not_valid(ax, steps["offered_rps"], steps[f"{name}_ms"], _verdict_of(steps))
                rows += _step_points(steps, workload, f"{tag}{name}", config, "offered_rps", f"{name}_ms")
        if slo_ms and workload in slo_ms:
            ax.axhline(slo_ms[workload], color="k", linestyle=":", linewidth=0.8, label="SLO")
        ax.set_title(workload_name(workload))
        ax.set_xlabel("offered load [req/s]")
        ax.set_xlim(left=0, right=max(mine["offered_rps"].max() * 1.1, 1e-9))
        ax.set_yscale("log")
        _plain_log(ax, "y")
    axes[0, 0].set_ylabel("latency [ms]")
    _legend_below(fig, axes, ncols=3)
    _few_note(fig, attach_data(fig, rows).gawm_data)
    return fig


def throughput_vs_batch(points: pd.DataFrame, model=None, ax=None, workload: str | None = None):
    """Throughput [items/s] against batch size (points: ``batch_size``, ``throughput``, optionally ``n`` batches
    behind each) with the fitted curve ``model.throughput(b)`` of a :class:`gawm_lib.models.BatchLatencyModel`."""
    if ax is None:
        _, axes = figure(width="half", aspect=0.75)
        ax = axes[0, 0]
    colour, marker = workload_style(workload or "")
    ax.plot(points["batch_size"], points["throughput"], marker, color=colour, label="measured (median batch)")
    rows = [
        {
            "panel": workload or "",
            "series": "measured",
            "x_name": "batch_size",
            "x": b,
            "y_name": "throughput_items_per_s",
            "y": y,
            "n": points["n"].iloc[i] if "n" in points else np.nan,
            "kind": "measured",
        }
        for i, (b, y) in enumerate(zip(points["batch_size"], points["throughput"]))
    ]
    if model is not None:
        b = np.linspace(points["batch_size"].min(), points["batch_size"].max(), 200)
        fitted = [model.throughput(x) for x in b]
        ax.plot(b, fitted, "-", color=colour, alpha=0.6, label="fit")
        rows += [
            {
                "panel": workload or "",
                "series": "fit",
                "x_name": "batch_size",
                "x": x,
                "y_name": "throughput_items_per_s",
                "y": y,
                "kind": "model",
            }
            for x, y in zip(b, fitted)
        ]
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size [items]")
    ax.set_ylabel("throughput [items/s]")
    ax.set_ylim(bottom=0)
    if workload:
        ax.set_title(workload_name(workload))
    ax.legend()
    return attach_data(ax.figure, rows)


PLACEMENT_STYLE = {"exclusive": "-", "shared": "--", "none": "-"}
PREDICTION_STYLES = [":", "-.", (0, (1, 1))]


def scaling_vs_replicas(table: pd.DataFrame, predicted: pd.DataFrame | None = None):
    """Throughput [req/s] (top row) and mean latency [ms] (bottom row) against replicas, one column per workload (so
    that workloads of different scales keep readable axes): one measured line per placement and series (columns
    ``workload``, ``placement``, ``series`` (optional), ``replicas``, ``throughput_rps``, ``mean_ms``), and a model's
    ``predicted`` frame (same columns; a ``model`` column names several) as thin lines without markers, drawn only
    over the replica counts measured. ValueError for data with a single replica count: there is no scaling to draw.
    A note above says how many INVALID steps :func:`gawm_lib.analysis.replica_scaling` left out."""
    left_out = table.attrs.get("invalid_left_out", 0)
    table = table.assign(
        workload=table["workload"] if "workload" in table else "",
        placement=table["placement"] if "placement" in table else "none",
        series=table["series"].fillna("") if "series" in table else "",
    )
    counts = sorted(table["replicas"].unique())
    if len(counts) < 2:
        raise ValueError(
            f"scaling_vs_replicas: the runs have a single replica count ({counts}); measure at least two "
            "replica counts (backend.replicas) to draw scaling"
        )
    workloads = _ordered(table["workload"].unique())
    fig, axes = figure(
        aspect=0.32 if len(workloads) > 1 else 0.4,
        ncols=max(len(workloads), 2) if len(workloads) == 1 else len(workloads),
        nrows=1 if len(workloads) == 1 else 2,
    )
    if len(workloads) == 1:  # one workload: throughput and latency side by side
        panels = {workloads[0]: (axes[0, 0], axes[0, 1])}
    else:
        panels = {w: (axes[0, i], axes[1, i]) for i, w in enumerate(workloads)}
    show_placement = table["placement"].nunique() > 1 or table["placement"].iloc[0] not in ("none", "")
    rows = []
    for workload in workloads:
        top, bottom = panels[workload]
        colour, marker = workload_style(workload)
        groups = [
            (key, g)
            for key, g in table[table["workload"] == workload].groupby(["placement", "series"], sort=False)
            if g["replicas"].nunique() >= 2
        ]  # one point is no line; the other groups still draw
        for i, ((placement, series), mine) in enumerate(groups):
            line_colour = shade(colour, i, len(groups)) if series else colour
            line_marker = CONFIG_MARKERS[i % len(CONFIG_MARKERS)] if series and len(groups) > 1 else marker
            mine = mine.sort_values("replicas")
            style = PLACEMENT_STYLE.get(placement, "-.")
            tag = ", ".join(
                filter(
                    None,
                    [workload_name(workload) if workload else "", str(placement) if show_placement else "", series],
                )
            )
            for ax, column in ((top, "throughput_rps"), (bottom, "mean_ms")):
                ax.plot(
                    mine["replicas"],
                    mine[column],
                    linestyle=style,
                    marker=line_marker,
                    color=line_colour,
                    label=f"{tag}, measured",
                )
                rows += [
                    {
                        "panel": f"{workload}:{column}",
                        "series": f"{tag}, measured",
                        "run_id": r,
                        "config": c,
                        "x_name": "replicas",
                        "x": x,
                        "y_name": column,
                        "y": y,
                        "n": k,
                        "kind": "measured",
                    }
                    for r, c, x, y, k in zip(_run_of(mine), _config_of(mine), mine["replicas"], mine[column], _n(mine))
                ]
            if predicted is None or predicted.empty:
                continue
            model_rows = predicted
            for column, value in (("workload", workload), ("placement", placement), ("series", series)):
                if column in model_rows and value != "":
                    model_rows = model_rows[model_rows[column] == value]
            lo, hi = mine["replicas"].min(), mine["replicas"].max()
            model_rows = model_rows[(model_rows["replicas"] >= lo) & (model_rows["replicas"] <= hi)]
            models = model_rows.groupby("model", sort=False) if "model" in model_rows else [("model", model_rows)]
            models = list(models)
            placement_index = sorted(table["placement"].unique()).index(placement)
            for i_model, (name, lines) in enumerate(models):  # a style per model, or per placement with one model
                model_style = PREDICTION_STYLES[
                    (i_model if len(models) > 1 else placement_index) % len(PREDICTION_STYLES)
                ]
                lines = lines.sort_values("replicas")
                for ax, column in ((top, "throughput_rps"), (bottom, "mean_ms")):
                    ax.plot(
                        lines["replicas"],
                        lines[column],
                        linestyle=model_style,
                        linewidth=0.9,
                        color=line_colour,
                        alpha=0.8,
                        label=f"{tag}, {name} prediction",
                    )
                    rows += [
                        {
                            "panel": f"{workload}:{column}",
                            "series": f"{tag}, {name} prediction",
                            "x_name": "replicas",
                            "x": x,
                            "y_name": column,
                            "y": y,
                            "kind": "prediction",
                        }
                        for x, y in zip(lines["replicas"], lines[column])
                    ]
        top.set_ylabel("throughput [req/s]")
        bottom.set_ylabel("mean latency [ms]")
        if len(workloads) > 1:
            top.set_title(workload_name(workload))
    for ax in np.ravel(axes):
        ax.set_xlabel("replicas [count]")
        ax.set_ylim(bottom=0)
        ax.set_xticks(counts)
    _legend_below(fig, axes, title="measured: markers; predictions: thin lines, measured range only", ncols=2)
    _left_out_note(fig, left_out)
    return attach_data(fig, rows)


def rtf_vs_audio_duration(table: pd.DataFrame):
    """Whisper latency [ms] (p50, p95 and the server's compute) and real-time factor [-] (processing time / audio
    length; below the line at 1 is faster than real time) against clip length [s]; columns ``audio_s``, ``p50_ms``,
    ``p95_ms``, ``compute_ms``, ``rtf_p50``, ``rtf_p95``, ``rtf_server``, ``ok`` (:func:`gawm_lib.analysis.
    audio_duration`). A p95 of fewer than :data:`MIN_REQUESTS` requests is drawn hollow and flagged in the CSV."""
    fig, axes = figure(aspect=0.4, ncols=2)
    left, right = axes[0]
    rows_in = table.sort_values("audio_s")
    colour, _ = workload_style("whisper")
    n = _n(rows_in)
    rows = []
    for ax, panel, columns in (
        (left, "latency", (("p50_ms", "o", "p50"), ("p95_ms", "s", "p95"), ("compute_ms", "^", "server compute"))),
        (right, "rtf", (("rtf_p50", "o", "p50"), ("rtf_p95", "s", "p95"), ("rtf_server", "^", "server compute"))),
    ):
        for i, (column, marker, label) in enumerate(columns):
            line_colour = shade(colour, i, 3)
            ax.plot(rows_in["audio_s"], rows_in[column], marker=marker, color=line_colour, label=label)
            if label != "server compute":
                _mark_few(ax, rows_in["audio_s"], rows_in[column], n, line_colour, marker)
            _mark_not_valid(ax, rows_in["audio_s"], rows_in[column], _verdict_of(rows_in))
            rows += [
                {
                    "panel": panel,
                    "series": label,
                    "run_id": r,
                    "x_name": "audio_s",
                    "x": x,
                    "y_name": column,
                    "y": y,
                    "n": k,
                    "few_requests": label != "server compute" and k < MIN_REQUESTS,
                    "kind": "measured",
                    "step": i_step,
                    "verdict": v,
                }
                for r, x, y, k, i_step, v in zip(
                    _run_of(rows_in),
                    rows_in["audio_s"],
                    rows_in[column],
                    n,
                    rows_in["step"] if "step" in rows_in else range(len(rows_in)),
                    _verdict_of(rows_in),
                )
            ]
    right.axhline(1.0, color="k", linestyle="--", linewidth=0.8, label="real time")
    left.set_ylabel("latency [ms]")
    left.set_ylim(bottom=0)
    right.set_ylabel("real-time factor [-]")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xlabel("audio duration [s]")
        ax.set_xlim(left=0)
    _legend_below(fig, axes, ncols=4)
    _few_note(fig, attach_data(fig, rows).gawm_data)
    return fig


#: Axis words for the queries a timeline usually shows; any other query is named by its catalogue description.
QUERY_WORDS = {
    "throughput": "throughput",
    "latency_p50": "server p50 latency",
    "latency_p95": "server p95 latency",
    "latency_p99": "server p99 latency",
    "latency_mean": "server mean latency",
    "batch_size_mean": "mean batch size",
    "queue_wait_p95": "p95 wait for a batch",
    "compute_time_mean": "mean batch compute time",
    "inflight": "requests in flight",
    "items_per_second": "items processed",
    "gpu_util_nvml": "GPU utilisation",
    "gpu_util_dcgm": "GPU utilisation",
    "gpu_memory_used_nvml": "GPU memory used",
    "gpu_memory_used_dcgm": "GPU memory used",
    "gpu_power_nvml": "GPU power",
    "gpu_power_dcgm": "GPU power",
    "gpu_temp_dcgm": "GPU temperature",
    "container_cpu": "container CPU",
    "container_cpu_step": "container CPU (step mean)",
    "process_cpu": "server process CPU",
    "process_cpu_step": "server process CPU (step mean)",
    "process_resident_memory": "server process memory (RSS)",
    "container_memory_working_set": "container memory",
    "node_cpu_busy": "node CPU busy",
    "gc_pause_ratio": "GC pause share",
}
#: Catalogue unit -> (display unit, factor): latencies in ms, memory in GiB, ratios in percent.
DISPLAY_UNITS = {
    "seconds": ("ms", 1e3),
    "bytes": ("GiB", 1 / 2**30),
    "ratio": ("%", 100.0),
    "requests/s": ("req/s", 1.0),
    "celsius": ("°C", 1.0),
    "watts": ("W", 1.0),
    "joules": ("J", 1.0),
    "cores": ("cores", 1.0),
    "hertz": ("MHz", 1e-6),
    "joules/request": ("J/req", 1.0),
}


def query_axis_label(name: str, unit: str) -> tuple[str, float]:
    """The words and display unit for a query's axis (``"GPU power [W]"``) and the factor its values take."""
    words = QUERY_WORDS.get(name)
    if words is None:
        from gawm_lib.prom.catalogue import CATALOGUE

        query = CATALOGUE.get(name)
        words = query.description.split(" (")[0].rstrip(".") if query else name.replace("_", " ")
        words = words[:1].lower() + words[1:]
    shown, factor = DISPLAY_UNITS.get(unit, (unit or "-", 1.0))
    return f"{words} [{shown}]", factor


def metric_timeline(
    metrics: pd.DataFrame, queries: list[str], phases: list[dict] | None = None, units: dict[str, str] | None = None
):
    """Time series of Prometheus queries (tidy frame: ``time``, ``query``, ``value``, ``unit``), one panel per query
    with its name in words and a display unit (ms, GiB, %), with the load phases shaded (``phases``: dicts with
    ``start_unix_ns``, ``end_unix_ns``, ``level``; :func:`gawm_lib.verdicts.step_phases` gives a run's steps). Steps
    whose ``verdict`` is not VALID are hatched and counted in a note; each point's ``step`` and ``verdict`` in the
    figure's data are those of the phase it falls in. Each workload keeps its colour."""
    import matplotlib.pyplot as plt

    thesis_style()
    fig, axes = plt.subplots(
        len(queries),
        1,
        figsize=(WIDTH_IN["single"], 1.3 * len(queries) + 0.6),
        sharex=True,
        squeeze=False,
        layout="constrained",
    )
    rows = []
    spans = [
        (
            pd.Timestamp(phase["start_unix_ns"], unit="ns", tz="UTC"),
            pd.Timestamp(phase["end_unix_ns"], unit="ns", tz="UTC"),
            phase.get("step", np.nan),
            str(phase.get("verdict") or "UNKNOWN"),
        )
        for phase in phases or []
    ]

    def step_of(t) -> tuple[float, str]:
        return next(((step, verdict) for start, end, step, verdict in spans if start <= t <= end), (np.nan, ""))

    for ax, name in zip(axes[:, 0], queries):
        series = metrics[metrics["query"] == name].sort_values("time")
        unit = (units or {}).get(name) or (series["unit"].iloc[0] if len(series) else "")
        label, factor = query_axis_label(name, unit)
        for labels, group in series.groupby("labels", sort=True):
            tags = json.loads(labels) if labels else {}
            workload = tags.get("workload") or (group["workload"].iloc[0] if "workload" in group else "")
            legend = " ".join(
                [workload_name(workload) if workload else ""]
                + [f"{k}={v}" for k, v in sorted(tags.items()) if k not in ("workload", "job")]
            )
            colour = workload_style(workload)[0] if workload else "0.3"
            ax.plot(group["time"], group["value"] * factor, linewidth=1, color=colour, label=legend.strip() or None)
            rows += [
                {
                    "panel": name,
                    "series": legend.strip(),
                    "x_name": "time_utc",
                    "x": t,
                    "y_name": label,
                    "y": v * factor,
                    "kind": "measured",
                    "step": step,
                    "verdict": verdict,
                }
                for t, v, (step, verdict) in zip(group["time"], group["value"], map(step_of, group["time"]))
            ]
        ax.set_ylabel(label.replace(" [", "\n["), fontsize=7)
        for i, (start, end, _, verdict) in enumerate(spans):
            ax.axvspan(start, end, color=OKABE_ITO[i % 2 + 5], alpha=0.12, linewidth=0)
            if verdict in NOT_VALID:
                ax.axvspan(start, end, facecolor="none", edgecolor="0.3", hatch="x", linewidth=0, alpha=0.4)
    axes[-1, 0].set_xlabel("time [UTC]")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(4, len(labels)), frameon=False)
    if spans:
        bad = sorted({verdict for *_, verdict in spans if verdict in NOT_VALID})
        count = sum(verdict in NOT_VALID for *_, verdict in spans)
        note = "shaded: load steps" + (f"; hatched: {count} step(s) not VALID ({', '.join(bad)})" if bad else "")
        fig.text(0.0, 0.0, note, fontsize=7, color="0.35", ha="left", va="top")
    return attach_data(fig, rows)


def energy_per_inference(table: pd.DataFrame):
    """Energy per inference [J] per workload and configuration (columns ``workload``, ``config``, ``joules``)."""
    fig, axes = figure(width="half", aspect=0.8)
    ax = axes[0, 0]
    labels = [f"{workload_name(w)}\n{c}" for w, c in zip(table["workload"], table["config"])]
    ax.bar(labels, table["joules"], color=[workload_style(w)[0] for w in table["workload"]])
    ax.set_ylabel("energy per inference [J]")
    ax.tick_params(axis="x", labelrotation=30)
    return attach_data(
        fig,
        [
            {
                "panel": "energy",
                "series": w,
                "config": c,
                "x_name": "configuration",
                "x": label,
                "y_name": "joules_per_inference",
                "y": j,
                "kind": "measured",
            }
            for w, c, label, j in zip(table["workload"], table["config"], labels, table["joules"])
        ],
    )


def predicted_vs_measured(
    validation: pd.DataFrame, unit_scale: dict[str, float] | None = None, title: str | None = None
):
    """Predicted against measured per metric (a :class:`gawm_lib.models.ValidationReport` table: ``metric``,
    ``measured``, ``predicted``), with the identity line and the +/-10 % band. Latencies are shown in ms. Steps that
    are not VALID (a ``verdict`` column, as :func:`gawm_lib.analysis.validation_table` gives) are crossed and counted
    in a note above the figure."""
    metrics = list(dict.fromkeys(validation["metric"]))
    fig, axes = figure(aspect=0.36, ncols=len(metrics))
    scale = {"throughput": 1.0, **(unit_scale or {})}
    rows = []
    for ax, metric in zip(axes[0], metrics):
        mine = validation[validation["metric"] == metric]
        k = scale.get(metric, 1e3)  # seconds -> ms unless told otherwise
        unit = "req/s" if metric == "throughput" else "ms"
        lo = 0.0 if metric == "throughput" else min(mine["measured"].min(), mine["predicted"].min()) * k * 0.8
        hi = max(mine["measured"].max(), mine["predicted"].max()) * k * 1.2
        line = np.array([lo, hi])
        ax.fill_between(line, line * 0.9, line * 1.1, color="0.85", label="±10 %")
        ax.plot(line, line, "k-", linewidth=0.8)
        groups = mine.groupby("workload") if "workload" in mine else [("", mine)]
        for name, group in groups:
            colour, marker = workload_style(name)
            ax.plot(
                group["measured"] * k,
                group["predicted"] * k,
                marker,
                color=colour,
                label=workload_name(name) if name else None,
            )
            judged = _verdict_of(group)
            _mark_not_valid(ax, group["measured"] * k, group["predicted"] * k, judged)
            rows += [
                {
                    "panel": metric,
                    "series": name,
                    "run_id": r,
                    "x_name": f"measured_{metric}_{unit}",
                    "x": x * k,
                    "y_name": f"predicted_{metric}_{unit}",
                    "y": y * k,
                    "kind": "validation",
                    "label": f"{lv:g}" if lv == lv else "",
                    "step": st,
                    "verdict": v,
                }
                for r, x, y, lv, st, v in zip(
                    _run_of(group),
                    group["measured"],
                    group["predicted"],
                    group["level"] if "level" in group else [np.nan] * len(group),
                    group["step"] if "step" in group else [np.nan] * len(group),
                    judged,
                )
            ]
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
    _few_note(fig, pd.DataFrame(rows), hollow=False, step_keys=("run_id", "series", "step"))
    return attach_data(fig, rows)


def capacity_plan(plans: pd.DataFrame, slo_ms: float | None = None):
    """Replicas needed (with the model's uncertainty range) against offered load [req/s]; columns ``arrival_rate``,
    ``replicas``, ``replicas_low``, ``replicas_high`` and optionally ``workload``."""
    fig, axes = figure(width="half", aspect=0.8)
    ax = axes[0, 0]
    groups = plans.groupby("workload") if "workload" in plans else [("", plans)]
    rows = []
    for name, group in groups:
        colour, _ = workload_style(name)
        group = group.sort_values("arrival_rate")
        ax.step(
            group["arrival_rate"],
            group["replicas"],
            where="post",
            color=colour,
            label=workload_name(name) if name else None,
        )
        ax.plot(group["arrival_rate"], group["replicas"], "o", color=colour, markersize=3)  # the planned loads
        ax.fill_between(
            group["arrival_rate"], group["replicas_low"], group["replicas_high"], step="post", color=colour, alpha=0.2
        )
        rows += [
            {
                "panel": "plan",
                "series": name,
                "x_name": "arrival_rate_rps",
                "x": x,
                "y_name": "replicas",
                "y": y,
                "kind": "plan",
                "replicas_low": lo,
                "replicas_high": hi,
            }
            for x, y, lo, hi in zip(
                group["arrival_rate"], group["replicas"], group["replicas_low"], group["replicas_high"]
            )
        ]
    ax.set_xlabel("offered load [req/s]")
    ax.set_ylabel("replicas needed [count]")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    if slo_ms is not None:
        ax.set_title(f"p95 <= {slo_ms:g} ms (band: the fit's uncertainty)")
    if "workload" in plans:
        ax.legend()
    return attach_data(fig, rows)


def _in_notebook() -> bool:
    """True where figures are shown inline (an IPython kernel with the inline backend): leave them open there."""
    import matplotlib

    return "inline" in matplotlib.get_backend().lower()


def _free_id(out_dir: Path, fig_id: str, extensions: tuple[str, ...]) -> str:
    """``fig_id``, or ``fig_id-2``, ``-3``, ... : the first whose files do not exist yet."""
    candidate, k = fig_id, 1
    while any((out_dir / f"{candidate}.{ext}").exists() for ext in extensions):
        k += 1
        candidate = f"{fig_id}-{k}"
    return candidate


def save_figure(
    fig,
    fig_id: str,
    run_ids: list[str],
    notebook: str,
    parameters: dict[str, Any] | None = None,
    out_dir: Path | None = None,
    data: pd.DataFrame | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Path]:
    """Write ``<fig_id>.pdf``, ``.png`` (300 dpi), ``.csv`` (the plotted points: ``data``, or what the figure
    function attached) and ``.json`` (run ids, notebook, git sha, parameters, time, files).

    An existing figure of that id is never replaced silently: without ``overwrite`` the files get the first free
    name ``<fig_id>-2``, ``-3``, ..., and the message says so. Prints the files written (unless ``quiet``). In a
    notebook the figure stays open, so it is shown inline; elsewhere it is closed."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir or paths.figures_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else figure_data(fig)
    if data is None:
        raise ValueError(
            f"figure {fig_id!r}: no plotted data to write beside it; pass data= (one row per point) or "
            "draw it with a gawm_lib.plots function"
        )
    extensions = ("pdf", "png", "csv", "json")
    chosen = fig_id if overwrite else _free_id(out_dir, fig_id, extensions)
    written = {}
    for ext in ("pdf", "png"):
        written[ext] = out_dir / f"{chosen}.{ext}"
        fig.savefig(written[ext])
    written["csv"] = out_dir / f"{chosen}.csv"
    data.to_csv(written["csv"], index=False)
    sidecar = {
        "fig_id": chosen,
        "run_ids": list(run_ids),
        "notebook": notebook,
        "git": runs.git_info(),
        "parameters": parameters or {},
        "created_utc": dt.datetime.now(dt.UTC).isoformat(),
        "files": {k: v.name for k, v in written.items()},
        "data_rows": len(data),
    }
    written["json"] = out_dir / f"{chosen}.json"
    written["json"].write_text(json.dumps(sidecar, indent=2, default=str) + "\n")
    if not quiet:
        note = f" ({fig_id} exists: not replaced; overwrite=True replaces it)" if chosen != fig_id else ""
        print(f"figure {chosen}{note}: " + ", ".join(str(written[k]) for k in ("png", "pdf", "csv")))
    if not _in_notebook():
        plt.close(fig)
    return written


def figures_for_run(run_id: str, out_dir: Path | None = None) -> list[Path]:
    """Figure files (PDF, PNG and the plotted points' CSV) whose provenance names ``run_id``."""
    out_dir = Path(out_dir or paths.figures_dir())
    found = []
    for sidecar in sorted(out_dir.glob("*.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if run_id in meta.get("run_ids", []) and "fig_id" in meta:
            found += [
                sidecar.with_suffix(f".{ext}")
                for ext in ("pdf", "png", "csv")
                if sidecar.with_suffix(f".{ext}").exists()
            ]
    return found


def save_table(
    frame: pd.DataFrame,
    table_id: str,
    run_ids: list[str],
    notebook: str,
    parameters: dict[str, Any] | None = None,
    out_dir: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a result table as ``<table_id>.csv`` with the same provenance sidecar as figures (``.json``); an
    existing table is not replaced unless ``overwrite`` (a free name ``<table_id>-2``, ... instead)."""
    out_dir = Path(out_dir or paths.figures_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = table_id if overwrite else _free_id(out_dir, table_id, ("csv", "json"))
    written = {"csv": out_dir / f"{chosen}.csv", "json": out_dir / f"{chosen}.json"}
    frame.to_csv(written["csv"], index=False)
    sidecar = {
        "table_id": chosen,
        "run_ids": list(run_ids),
        "notebook": notebook,
        "git": runs.git_info(),
        "parameters": parameters or {},
        "created_utc": dt.datetime.now(dt.UTC).isoformat(),
        "files": {"csv": written["csv"].name},
        "rows": len(frame),
    }
    written["json"].write_text(json.dumps(sidecar, indent=2, default=str) + "\n")
    return written


def figure_prefix(run_ids: list[str], name: str = "") -> str:
    """What figure ids start with: ``name`` where given (a suite's or a report's), else the run id for one run, else
    ``report-<UTC time>``, so the figures of one run or report never take another's names."""
    if name:
        return name
    if len(run_ids) == 1:
        return str(run_ids[0])
    return "report-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
