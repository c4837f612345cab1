"""Fidelity of generators on held-out runs: the real series of runs a generator never saw next to synthetic series
generated for the same conditions (each held-out step's workload, level and configuration) and lengths, scored with
every metric of :mod:`gawm_lib.synth.fidelity`.

Series compared, per workload (one segment per run and step):

- arrivals: ``interarrival_s`` [s] and ``count_per_s`` (arrivals in each second of the step);
- demands: ``payload_size`` (workload's unit), ``compute_s`` [s], ``batch_size``, in arrival order;
- resources: each metric the generator models, at the scrape interval.

A held-out step lasts from its first arrival to its last plus one mean gap (its Prometheus samples for resources);
synthetic demands are drawn for as many requests as the real step had, so that the two samples are the same size.

:func:`evaluate` scores one generator on one workload; :func:`fidelity_study` fits and scores every generator named;
:func:`repeat_baseline` scores a real run of a held-out configuration made again the same way (the yardstick: how
close two real runs come on this machine); :func:`check_study` checks a notebook's parameters.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from gawm_lib.synth import fidelity
from gawm_lib.synth.condition import step_conditions
from gawm_lib.synth.resources import segments as resource_segments

ARRIVAL_SERIES = ("interarrival_s", "count_per_s")
DEMAND_SERIES = ("payload_size", "compute_s", "batch_size")
UNITS = {"interarrival_s": "s", "count_per_s": "requests", "compute_s": "s", "batch_size": "items"}


def _seed(seed: int, *key) -> int:
    """A child seed per segment, stable across processes (``hash`` of a str is not)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(repr(key).encode())]).generate_state(1)[0])


def _counts(arrival_s: np.ndarray, duration_s: float) -> np.ndarray:
    bins = max(1, int(np.floor(duration_s)))
    return np.bincount(np.minimum(arrival_s.astype(int), bins - 1), minlength=bins)[:bins].astype(float)


def _step_duration(t: np.ndarray) -> float:
    if len(t) < 2:
        return 1.0
    return float(t.max() - t.min()) * len(t) / (len(t) - 1)


def arrival_series(traces, workload: str) -> dict[str, list[np.ndarray]]:
    """The real arrival series of ``workload`` (one array per run and step)."""
    out = {name: [] for name in ARRIVAL_SERIES}
    rows = traces.arrivals[traces.arrivals["workload"] == workload]
    for _, g in rows.groupby(["run_id", "step"], sort=False):
        t = g["step_s"].to_numpy()
        out["interarrival_s"].append(np.diff(t))
        out["count_per_s"].append(_counts(t, _step_duration(t)))
    return out


def synthetic_arrival_series(generator, traces, workload: str, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Arrival series drawn by ``generator`` for each step of ``workload`` in ``traces``."""
    out = {name: [] for name in ARRIVAL_SERIES}
    rows = traces.arrivals[traces.arrivals["workload"] == workload]
    for key, cond in step_conditions(traces.conditions, rows):
        step = rows[(rows["run_id"] == key[0]) & (rows["step"] == key[2])]
        duration = _step_duration(step["step_s"].to_numpy())
        t = generator.sample(cond, duration, _seed(seed, *key))["arrival_s"].to_numpy()
        out["interarrival_s"].append(np.diff(t))
        out["count_per_s"].append(_counts(t, duration))
    return out


def demand_series(traces, workload: str) -> dict[str, list[np.ndarray]]:
    rows = traces.demands[(traces.demands["workload"] == workload) & traces.demands["ok"]]
    return {
        name: [g[name].to_numpy(float) for _, g in rows.groupby(["run_id", "step"], sort=False)]
        for name in DEMAND_SERIES
    }


def synthetic_demand_series(generator, traces, workload: str, seed: int = 0) -> dict[str, list[np.ndarray]]:
    rows = traces.demands[(traces.demands["workload"] == workload) & traces.demands["ok"]]
    out = {name: [] for name in DEMAND_SERIES}
    for key, cond in step_conditions(traces.conditions, rows):
        n = int(((rows["run_id"] == key[0]) & (rows["step"] == key[2])).sum())
        drawn = generator.sample(cond, 0.0, _seed(seed, *key), count=n)
        for name in DEMAND_SERIES:
            out[name].append(drawn[name].to_numpy(float))
    return out


def resource_series(traces, workload: str, metrics: list[str]) -> dict[str, list[np.ndarray]]:
    segs = resource_segments(traces.resources, workload, metrics)
    return {m: [values[:, j] for _, _, values in segs] for j, m in enumerate(metrics)}


def synthetic_resource_series(generator, traces, workload: str, seed: int = 0) -> dict[str, list[np.ndarray]]:
    metrics = list(generator.metrics)
    rows = traces.resources[traces.resources["workload"] == workload]
    out = {m: [] for m in metrics}
    interval = getattr(generator, "interval_s", None) or generator.config["interval_s"]
    for key, cond in step_conditions(traces.conditions, rows):
        n = int(((rows["run_id"] == key[0]) & (rows["step"] == key[2])).sum())
        drawn = generator.sample(cond, n * interval, _seed(seed, *key))
        for m in metrics:
            out[m].append(drawn[m].to_numpy(float)[:n])
    return out


def evaluate(
    generator, family: str, train, heldout, workload: str, seed: int = 0, max_lag: int = 5, window: int = 5
) -> tuple[pd.DataFrame, dict]:
    """The fidelity table of one generator on one workload (one row per series) and the series behind it
    (``{series: {"real": [...], "synthetic": [...], "train": [...]}}``, for figures)."""
    if family == "arrivals":
        real, synthetic, train_series = (
            arrival_series(heldout, workload),
            synthetic_arrival_series(generator, heldout, workload, seed),
            arrival_series(train, workload),
        )
    elif family == "demands":
        real, synthetic, train_series = (
            demand_series(heldout, workload),
            synthetic_demand_series(generator, heldout, workload, seed),
            demand_series(train, workload),
        )
    elif family == "resources":
        metrics = [m for m in generator.metrics if m in heldout.resources.columns]
        real = resource_series(heldout, workload, metrics)
        synthetic = {
            m: v for m, v in synthetic_resource_series(generator, heldout, workload, seed).items() if m in metrics
        }
        train_series = resource_series(train, workload, metrics)
    else:
        raise ValueError(f"family {family!r}: expected arrivals, demands or resources")
    rows, series = [], {}
    heldout_ids = sorted(set(heldout.conditions.loc[heldout.conditions["workload"] == workload, "run_id"]))
    for name in real:
        r, s, t = real[name], synthetic[name], train_series[name]
        series[name] = {"real": r, "synthetic": s, "train": t}
        if not any(len(x[np.isfinite(x)]) for x in r) or not any(len(x[np.isfinite(x)]) for x in s):
            continue
        scores = fidelity.score_all(r, s, t, max_lag=max_lag, window=window, seed=seed)
        rows.append(
            {
                "family": family,
                "generator": generator.kind,
                "workload": workload,
                "series": name,
                "unit": UNITS.get(name, ""),
                **scores,
                "heldout_runs": ",".join(heldout_ids),
                "train_runs": ",".join(train.run_ids),
            }
        )
    return pd.DataFrame(rows), series


def fidelity_study(
    train,
    heldout,
    arrivals=("poisson", "mmpp", "empirical"),
    demands=("empirical", "parametric"),
    resources=("ar", "lstm"),
    workloads=None,
    seed: int = 0,
    max_lag: int = 5,
    window: int = 5,
    lstm_epochs: int = 300,
    lstm_max_train_s: float = 90.0,
) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Fit every generator named on ``train`` and score it on ``heldout``, per workload: the fidelity table (one row
    per family, generator, workload and series), the series behind each row (keyed by (generator, workload, series),
    for :func:`gawm_lib.synth.figures.fidelity_figure`) and the demand generators' goodness of fit."""
    from gawm_lib.synth.arrivals import ARRIVALS
    from gawm_lib.synth.condition import Condition
    from gawm_lib.synth.demands import DEMANDS
    from gawm_lib.synth.resources import RESOURCES

    shared = set(train.workloads) & set(heldout.workloads)
    workloads = [w for w in (workloads or train.workloads) if w in shared]
    if not workloads:
        raise ValueError(f"no workload in both the training runs {train.workloads} and the held-out runs")
    overlap = set(train.run_ids) & set(heldout.run_ids)
    if overlap:
        raise ValueError(f"run(s) {sorted(overlap)} are both training and held-out: held-out runs must be unseen")
    tables, all_series, fits = [], {}, []
    lstm = None
    for workload in workloads:
        cond = Condition(workload)
        families = [("arrivals", ARRIVALS[k]) for k in arrivals] + [("demands", DEMANDS[k]) for k in demands]
        has_resources = not train.resources[train.resources["workload"] == workload].empty
        families += [("resources", RESOURCES[k]) for k in resources if has_resources]
        for family, cls in families:
            if cls.kind == "lstm" and family == "resources":
                lstm = lstm or cls.fit(train, cond, epochs=lstm_epochs, max_train_s=lstm_max_train_s, seed=seed)
                generator = lstm
            else:
                generator = cls.fit(train, cond)
            if family == "demands":
                fits.append(generator.goodness_of_fit())
            table, series = evaluate(generator, family, train, heldout, workload, seed, max_lag, window)
            tables.append(table)
            all_series.update({(generator.kind, workload, name): s for name, s in series.items()})
    gof = pd.concat([f for f in fits if not f.empty], ignore_index=True) if any(not f.empty for f in fits) else None
    return pd.concat(tables, ignore_index=True), all_series, gof if gof is not None else pd.DataFrame()


def check_study(
    arrival_generators, demand_generators, resource_generators, max_lag, window, replay_duration_s, figure_series
) -> None:
    """Notebook parameters of a fidelity study, checked (papermill does not): ValueError naming the parameter."""
    from gawm_lib.synth.arrivals import ARRIVALS
    from gawm_lib.synth.demands import DEMANDS
    from gawm_lib.synth.resources import RESOURCES

    for name, value, known in (
        ("arrival_generators", arrival_generators, ARRIVALS),
        ("demand_generators", demand_generators, DEMANDS),
        ("resource_generators", resource_generators, RESOURCES),
    ):
        if not isinstance(value, list) or any(v not in known for v in value):
            raise ValueError(f"notebook parameter {name!r}: expected a list of {sorted(known)}, got {value!r}")
    for name, value, low in (("max_lag", max_lag, 1), ("window", window, 2)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"notebook parameter {name!r}: expected a whole number >= {low}, got {value!r}")
    if not isinstance(replay_duration_s, (int, float)) or not 0 < replay_duration_s <= 3600:
        raise ValueError(
            f"notebook parameter 'replay_duration_s': expected seconds in (0, 3600], got {replay_duration_s!r}"
        )
    if not isinstance(figure_series, list):
        raise ValueError(f"notebook parameter 'figure_series': expected a list of series names, got {figure_series!r}")


def repeat_baseline(train, heldout, repeat, workload: str, seed: int = 0, max_lag: int = 5, window: int = 5):
    """The yardstick: runs of the held-out configuration made again (``repeat``) scored against the held-out runs as
    if they were a generator (``generator`` = ``real repeat``): how close two real runs are, the best a generator can
    hope to be. One row per family and series, as :func:`evaluate` (``train_runs`` there names the repeat runs)."""
    families = {
        "arrivals": arrival_series,
        "demands": demand_series,
    }
    rows = []
    repeat_ids = ",".join(sorted(set(repeat.conditions.loc[repeat.conditions["workload"] == workload, "run_id"])))
    heldout_ids = ",".join(sorted(set(heldout.conditions.loc[heldout.conditions["workload"] == workload, "run_id"])))
    per_family = {
        family: (f(heldout, workload), f(repeat, workload), f(train, workload)) for family, f in families.items()
    }
    from gawm_lib.synth.resources import metric_columns

    metrics = [m for m in metric_columns(train.resources, workload) if m in repeat.resources and m in heldout.resources]
    if metrics:
        per_family["resources"] = tuple(resource_series(t, workload, metrics) for t in (heldout, repeat, train))
    for family, (real, again, train_series) in per_family.items():
        for name in real:
            if not any(len(x) for x in real[name]) or not any(len(x) for x in again[name]):
                continue
            scores = fidelity.score_all(real[name], again[name], train_series[name], max_lag, window, seed)
            rows.append(
                {
                    "family": family,
                    "generator": "real repeat",
                    "workload": workload,
                    "series": name,
                    "unit": UNITS.get(name, ""),
                    **scores,
                    "heldout_runs": heldout_ids,
                    "train_runs": repeat_ids,
                }
            )
    return pd.DataFrame(rows)
