"""Demand generators: what each request asks of the server. Fitted per workload on the ``demands`` table of
:mod:`gawm_lib.synth.traces` with ``fit(traces, condition)``; ``sample(condition, duration_s, seed, count=None)`` draws
``count`` requests (default: the condition's level times the duration) with ``payload_id``, ``payload_size`` (in the
workload's unit: :data:`gawm_lib.synth.traces.PAYLOAD_UNITS`), ``bytes_out`` [bytes], ``compute_s`` [s] and
``batch_size``.

- :class:`EmpiricalDemands`: whole request rows resampled with replacement (the joint distribution as measured), from
  the steps at the condition's level, or the nearest fitted level.
- :class:`ParametricDemands`: each continuous column (``payload_size``, ``compute_s``) given the best of
  :data:`CANDIDATES` by AIC (maximum likelihood, ``scipy.stats``; location fixed at 0 for the positive families), with
  its goodness of fit (one-sample Kolmogorov-Smirnov statistic and p-value against the data it was fitted to:
  optimistic, as the parameters came from the same data); ``batch_size`` from its measured frequencies. A drawn payload
  size becomes the payload whose size is nearest (the replay can only send payloads that exist), so ``payload_id`` and
  ``bytes_out`` are those of a real payload. ``compute_s`` and ``batch_size`` are per level (nearest fitted level).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from gawm_lib.synth.condition import Condition

CANDIDATES = ("lognorm", "gamma", "expon", "norm")
DEMAND_COLUMNS = ("payload_id", "payload_size", "bytes_out", "compute_s", "batch_size")


def _count(condition: Condition, duration_s: float, count: int | None, default_rate: float) -> int:
    if count is not None:
        return int(count)
    rate = condition.level if condition.level is not None else default_rate
    return int(round(rate * duration_s))


def _nearest_level(levels, level: float | None) -> float | None:
    levels = sorted(levels)
    if level is None or not levels:
        return None
    return min(levels, key=lambda f: abs(f - level))


def _rows(traces, condition: Condition) -> pd.DataFrame:
    rows = traces.demands[(traces.demands["workload"] == condition.workload) & traces.demands["ok"]]
    if rows.empty:
        raise ValueError(f"no successful requests of workload {condition.workload!r} to fit demands on")
    return rows


def _payloads(traces, workload: str) -> pd.DataFrame:
    """The payload catalogue of the first run with one: the ids a replay of that run's payload set can send."""
    table = traces.payloads[traces.payloads["workload"] == workload]
    if table.empty:
        return table
    return table[table["run_id"] == table["run_id"].iloc[0]].sort_values("payload_id").reset_index(drop=True)


def _mean_rate(rows: pd.DataFrame) -> float:
    spans = rows.groupby(["run_id", "step"])["arrival_s"].agg(lambda t: t.max() - t.min())
    return float(len(rows) / spans.sum()) if spans.sum() > 0 else 1.0


class EmpiricalDemands:
    """Measured request rows, resampled (see the module docstring)."""

    kind = "empirical"

    def __init__(self, workload: str, rows: pd.DataFrame, rate: float):
        self.workload, self.rows, self.rate = workload, rows, rate

    @classmethod
    def fit(cls, traces, condition: Condition) -> EmpiricalDemands:
        rows = _rows(traces, condition)
        keep = rows[["level", *DEMAND_COLUMNS]].reset_index(drop=True)
        return cls(condition.workload, keep, _mean_rate(rows))

    def sample(self, condition: Condition, duration_s: float, seed: int = 0, count: int | None = None) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        n = _count(condition, duration_s, count, self.rate)
        level = _nearest_level(self.rows["level"].unique(), condition.level)
        pool = self.rows if level is None else self.rows[self.rows["level"] == level]
        picked = pool.iloc[rng.integers(len(pool), size=n)]
        return picked[list(DEMAND_COLUMNS)].reset_index(drop=True)

    def goodness_of_fit(self) -> pd.DataFrame:
        return pd.DataFrame(columns=["workload", "column", "distribution", "params", "aic", "ks", "ks_p", "n"])

    def describe(self) -> dict:
        return {"kind": self.kind, "rows": len(self.rows)}


def fit_distribution(values: np.ndarray, candidates=CANDIDATES) -> list[dict]:
    """Every candidate family fitted to ``values`` by maximum likelihood: ``distribution``, ``params`` (scipy's
    order), ``aic`` (2k - 2 log L), ``ks`` (largest CDF gap to the data) and ``ks_p``; best (lowest AIC) first."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    out = []
    for name in candidates:
        family = getattr(stats, name)
        positive = name in ("lognorm", "gamma", "expon")
        if positive and (x <= 0).any():
            continue
        if np.ptp(x) == 0:  # one value: every family is degenerate; a point mass is the honest model
            out.append({"distribution": "constant", "params": (float(x[0]),), "aic": -np.inf, "ks": 0.0, "ks_p": 1.0})
            break
        try:
            params = family.fit(x, floc=0) if positive else family.fit(x)
        except Exception:  # noqa: BLE001 - a family that does not fit is left out
            continue
        loglik = float(np.sum(family.logpdf(x, *params)))
        k = len(params) - (1 if positive else 0)
        test = stats.kstest(x, name, args=params)
        out.append(
            {
                "distribution": name,
                "params": tuple(float(p) for p in params),
                "aic": 2 * k - 2 * loglik,
                "ks": float(test.statistic),
                "ks_p": float(test.pvalue),
            }
        )
    return sorted(out, key=lambda r: r["aic"])


def _draw(fit: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    if fit["distribution"] == "constant":
        return np.full(n, fit["params"][0])
    return getattr(stats, fit["distribution"]).rvs(*fit["params"], size=n, random_state=rng)


class ParametricDemands:
    """Fitted families per column (see the module docstring)."""

    kind = "parametric"

    def __init__(self, workload, payloads, size_fit, compute_fits, batch_pmf, rate, table):
        self.workload, self.payloads, self.size_fit = workload, payloads, size_fit
        self.compute_fits, self.batch_pmf, self.rate, self.table = compute_fits, batch_pmf, rate, table

    @classmethod
    def fit(cls, traces, condition: Condition) -> ParametricDemands:
        rows = _rows(traces, condition)
        payloads = _payloads(traces, condition.workload)
        if payloads.empty or rows["payload_size"].isna().all():
            raise ValueError(f"{condition.workload}: no payload sizes (the runs kept no load/*-bodies.jsonl)")
        table = []
        fits = fit_distribution(rows["payload_size"].dropna().to_numpy())
        table += [{"column": "payload_size", "level": np.nan, **f} for f in fits]
        size_fit = fits[0]
        compute_fits, batch_pmf = {}, {}
        for level, g in rows.groupby("level"):
            fits = fit_distribution(g["compute_s"].dropna().to_numpy())
            if fits:
                compute_fits[float(level)] = fits[0]
                table += [{"column": "compute_s", "level": float(level), **f} for f in fits]
            sizes = g["batch_size"].dropna().astype(int).value_counts(normalize=True).sort_index()
            batch_pmf[float(level)] = (sizes.index.to_numpy(), sizes.to_numpy())
        gof = pd.DataFrame(table)
        gof.insert(0, "workload", condition.workload)
        gof["n"] = [
            int(rows["payload_size"].notna().sum())
            if c == "payload_size"
            else int(rows.loc[rows["level"] == lv, "compute_s"].notna().sum())
            for c, lv in zip(gof["column"], gof["level"])
        ]
        gof["best"] = ~gof.duplicated(["column", "level"])
        return cls(condition.workload, payloads, size_fit, compute_fits, batch_pmf, _mean_rate(rows), gof)

    def sample(self, condition: Condition, duration_s: float, seed: int = 0, count: int | None = None) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        n = _count(condition, duration_s, count, self.rate)
        sizes = _draw(self.size_fit, n, rng)
        catalogue = self.payloads["payload_size"].to_numpy()
        nearest = np.abs(sizes[:, None] - catalogue[None, :]).argmin(axis=1) if n else np.array([], dtype=int)
        chosen = self.payloads.iloc[nearest]
        level = _nearest_level(self.compute_fits, condition.level)
        fits = list(self.compute_fits.values()) if level is None else [self.compute_fits[level]]
        compute = np.concatenate([_draw(f, n, rng) for f in fits])
        compute = rng.choice(compute, size=n, replace=False) if len(fits) > 1 else compute
        values, probs = self.batch_pmf[level if level is not None else next(iter(self.batch_pmf))]
        return pd.DataFrame(
            {
                "payload_id": chosen["payload_id"].to_numpy(),
                "payload_size": chosen["payload_size"].to_numpy(),
                "bytes_out": chosen["bytes_out"].to_numpy(),
                "compute_s": np.maximum(compute, 0.0),
                "batch_size": rng.choice(values, size=n, p=probs),
            }
        )

    def goodness_of_fit(self) -> pd.DataFrame:
        """One row per (column, level, candidate family): parameters, AIC, KS statistic and p-value; ``best`` marks
        the family used."""
        return self.table

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "payload_size": self.size_fit["distribution"],
            "compute_s": {k: v["distribution"] for k, v in self.compute_fits.items()},
        }


DEMANDS = {cls.kind: cls for cls in (EmpiricalDemands, ParametricDemands)}
