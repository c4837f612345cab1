"""Figures of generator fidelity, drawn from the series :func:`gawm_lib.synth.evaluation.evaluate` returns: one figure
per generator, workload and series, three panels: the pooled CDFs (real held-out against synthetic: the KS and
Wasserstein distances read off it), the autocorrelations to the lag scored, and the first held-out step against its
synthetic counterpart; and :func:`fidelity_overview`, every score of the fidelity table in one figure. The plotted
points are attached (``gawm_lib.plots.attach_data``) for ``plots.save_figure``.
"""

from __future__ import annotations

import numpy as np

from gawm_lib import plots
from gawm_lib.synth import fidelity

COLOURS = {"real": "#000000", "synthetic": "#D55E00"}
LABELS = {
    "interarrival_s": "inter-arrival time [s]",
    "count_per_s": "arrivals per second",
    "payload_size": "payload size (workload's unit)",
    "compute_s": "batch compute time [s]",
    "batch_size": "batch size [items]",
}


def fidelity_figure(series: dict, name: str, workload: str, generator: str, heldout_runs: str, max_lag: int = 5):
    """The three-panel figure of one series (``series``: ``{"real": [...], "synthetic": [...]}``, one array per
    step); ``heldout_runs`` goes in the data rows' ``run_id``."""
    fig, axes = plots.figure(width="single", aspect=0.3, ncols=3)
    ax_cdf, ax_acf, ax_time = axes[0]
    rows = []
    for label in ("real", "synthetic"):
        segments = [np.asarray(s, float)[np.isfinite(s)] for s in series[label]]
        pooled = np.sort(np.concatenate(segments)) if segments else np.array([])
        if len(pooled):
            cdf = np.arange(1, len(pooled) + 1) / len(pooled)
            ax_cdf.step(pooled, cdf, where="post", color=COLOURS[label], label=label)
            keep = np.unique(np.linspace(0, len(pooled) - 1, min(len(pooled), 200)).astype(int))
            rows += [
                {"panel": "cdf", "series": label, "x_name": name, "x": pooled[i], "y_name": "cdf", "y": cdf[i]}
                for i in keep
            ]
            acf = fidelity.pooled_acf(segments, max_lag)
            ax_acf.plot(range(max_lag + 1), acf, marker="o", ms=3, color=COLOURS[label])
            rows += [
                {"panel": "acf", "series": label, "x_name": "lag", "x": k, "y_name": "acf", "y": v}
                for k, v in enumerate(acf)
            ]
        first = segments[0] if segments else np.array([])
        ax_time.plot(np.arange(len(first)), first, color=COLOURS[label], lw=1.0)
        rows += [
            {"panel": "first step", "series": label, "x_name": "index", "x": i, "y_name": name, "y": v}
            for i, v in enumerate(first)
        ]
    label = LABELS.get(name, name)
    ax_cdf.set(xlabel=label, ylabel="CDF")
    ax_cdf.legend(frameon=False)
    ax_acf.set(xlabel="lag [samples]", ylabel="autocorrelation")
    ax_time.set(xlabel="sample of the first held-out step", ylabel=label)
    fig.suptitle(f"{plots.workload_name(workload)}: {name}, {generator} generator against held-out runs")
    for row in rows:
        row["run_id"] = heldout_runs
        row["config"] = generator
    return plots.attach_data(fig, rows)


#: The scores of the overview (:func:`fidelity_overview`): table column, axis label, goal (drawn as a dashed line).
OVERVIEW_SCORES = [
    ("ks", "KS distance", 0.0),
    ("acf_error", "ACF error", 0.0),
    ("discriminative_accuracy", "classifier accuracy", 0.5),
    ("predictive", "predictive ratio (log)", 1.0),
]
#: Generators in drawing order, with (colour, marker); ``real repeat`` (the yardstick: a real run made again) in black.
GENERATOR_STYLE = {
    "poisson": ("#0072B2", "o"),
    "mmpp": ("#E69F00", "s"),
    "empirical": ("#009E73", "^"),
    "parametric": ("#CC79A7", "v"),
    "ar": ("#56B4E9", "D"),
    "lstm": ("#D55E00", "P"),
    "real repeat": ("#000000", "X"),
}
FAMILY_ORDER = ["arrivals", "demands", "resources"]


def fidelity_overview(table):
    """Every fidelity score of the table :func:`gawm_lib.synth.evaluation.fidelity_study` returns (with the ``real
    repeat`` yardstick rows where it has them) in one figure: one row of panels per score (KS, ACF error, classifier
    accuracy, predictive ratio), one column per workload; in each panel one line per series (grouped by family) and
    one marker per generator, the score's goal dashed. The held-out run ids are in the title and in every data row's
    ``run_id``; the data hold one row per table row and score (``value`` is the table's, NaN where it is not scored)."""
    import pandas as pd

    table = pd.DataFrame(table)
    workloads = plots._ordered(table["workload"].unique())
    families = [f for f in FAMILY_ORDER if f in set(table["family"])]
    families += sorted(set(table["family"]) - set(families))
    lines = []  # (family, series) from the top, in the table's order within a family
    for family in families:
        lines += [(family, s) for s in dict.fromkeys(table.loc[table["family"] == family, "series"])]
    position = {key: i for i, key in enumerate(lines)}
    generators = [g for g in GENERATOR_STYLE if g in set(table["generator"])]
    generators += sorted(set(table["generator"]) - set(generators))
    heldout = sorted({r for ids in table["heldout_runs"].dropna() for r in str(ids).split(",") if r})
    fig, axes = plots.figure(width="single", aspect=0.11 + 0.028 * len(lines), ncols=len(workloads), nrows=4)
    rows, hidden = [], 0
    offsets = np.linspace(-0.3, 0.3, len(generators)) if len(generators) > 1 else [0.0]
    for r, (score, label, goal) in enumerate(OVERVIEW_SCORES):
        for c, workload in enumerate(workloads):
            ax = axes[r][c]
            part = table[table["workload"] == workload]
            for g, generator in enumerate(generators):
                colour, marker = GENERATOR_STYLE.get(generator, plots.OTHER_STYLES[g % len(plots.OTHER_STYLES)])
                sub = part[part["generator"] == generator]
                if sub.empty:
                    continue
                y = np.array([position[(f, s)] for f, s in zip(sub["family"], sub["series"])]) + offsets[g]
                values = sub[score].to_numpy(float)
                if score == "predictive":  # a log axis: a ratio of 0 cannot be drawn (named in the data and a note)
                    hidden += int(np.sum(np.isfinite(values) & (values <= 0)))
                hidden += int(np.sum(~np.isfinite(values)))
                ax.scatter(values, y, s=12, color=colour, marker=marker, label=generator, zorder=3, lw=0.4)
                rows += [
                    {
                        "panel": f"{score} | {workload}",
                        "series": row.series,
                        "run_id": row.heldout_runs,
                        "config": generator,
                        "x_name": score,
                        "x": v,
                        "y_name": "line",
                        "y": yy,
                        "kind": row.family,
                        "label": (
                            "not scored"
                            if not np.isfinite(v)
                            else ("not drawn: 0 on a log axis" if score == "predictive" and v <= 0 else "")
                        ),
                        "family": row.family,
                        "generator": generator,
                        "workload": workload,
                        "score": score,
                        "value": v,
                        "train_runs": row.train_runs,
                    }
                    for row, v, yy in zip(sub.itertuples(), values, y)
                ]
            ax.axvline(goal, color="0.5", ls="--", lw=0.8, zorder=1)
            for boundary in [i - 0.5 for i in range(1, len(lines)) if lines[i][0] != lines[i - 1][0]]:
                ax.axhline(boundary, color="0.8", lw=0.6, zorder=0)
            ax.set_ylim(len(lines) - 0.5, -0.5)
            ax.set_yticks(range(len(lines)))
            ax.set_yticklabels([s for _, s in lines] if c == 0 else [], fontsize=5)
            ax.tick_params(axis="x", labelsize=6)
            ax.grid(axis="y", visible=False)
            if score == "predictive":
                ax.set_xscale("log")
                positive = table[score][table[score] > 0]
                if len(positive):
                    ax.set_xlim(min(positive.min(), goal) / 1.3, max(positive.max(), goal) * 1.3)
                plots._plain_log(ax)
            elif score == "discriminative_accuracy":
                ax.set_xlim(0.0, 1.02)
            else:  # one scale along the row, so workloads compare
                ax.set_xlim(0.0, max(float(np.nanmax(table[score].to_numpy(float), initial=0.0)), 0.1) * 1.05)
            ax.set_xlabel(label, fontsize=7)
            if r == 0:
                ax.set_title(plots.workload_name(workload), fontsize=8)
            if c == 0:
                for family in families:
                    ys = [position[k] for k in lines if k[0] == family]
                    ax.annotate(
                        family,
                        xy=(-0.62, (min(ys) + max(ys)) / 2),
                        xycoords=("axes fraction", "data"),
                        rotation=90,
                        va="center",
                        ha="center",
                        fontsize=6,
                    )
    plots._legend_below(fig, axes, title="generator (goal dashed; real repeat: a real run made again)", ncols=7)
    note = f"\n{hidden} score(s) not drawn (not scored, or a predictive ratio of 0): in the data" if hidden else ""
    fig.suptitle(f"Fidelity on held-out runs {', '.join(heldout)}{note}", fontsize=7)
    return plots.attach_data(fig, rows)
