"""Arrival generators: when requests come. Each is fitted with ``fit(traces, condition)`` on the ``arrivals`` table of
:mod:`gawm_lib.synth.traces` (measured steps of the condition's workload) and draws ``sample(condition, duration_s,
seed)``: a frame with ``arrival_s`` [s from the start, sorted, < duration_s].

- :class:`PoissonArrivals`: a homogeneous Poisson process; its rate is the maximum-likelihood rate of the fitted steps
  at the condition's level (``sum(n - 1) / sum(span)``), or, at a level never fitted, the level times the mean ratio of
  fitted rate to level (how much of the offered load arrived).
- :class:`EmpiricalArrivals`: a renewal process: inter-arrival times resampled (with replacement) from those measured
  at the level, or at an unfitted level the gaps of all levels, each scaled by its step's rate, over the new rate.
- :class:`MMPPArrivals`: a Markov-modulated Poisson process: a hidden Markov chain over ``bin_s`` bins whose state
  sets the Poisson count of each bin (``hmmlearn.hmm.PoissonHMM``, fitted by EM on the count series of each run,
  unbroken across its steps); arrivals fall uniformly within their bin. At a level set in the condition, the state
  rates are scaled so that the chain's stationary mean rate is the level's rate as :class:`PoissonArrivals` gives it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from gawm_lib.synth.condition import Condition


def _frame(times: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"arrival_s": np.sort(np.asarray(times, dtype=float))})


def _rows(traces, condition: Condition) -> pd.DataFrame:
    rows = traces.arrivals[traces.arrivals["workload"] == condition.workload]
    if rows.empty:
        raise ValueError(f"no measured arrivals of workload {condition.workload!r} to fit")
    return rows


class RateTable:
    """Maximum-likelihood Poisson rate [req/s] per fitted level, and how to get one for any level."""

    def __init__(self, rows: pd.DataFrame):
        per_step = rows.groupby(["run_id", "step", "level"]).agg(
            n=("arrival_s", "size"), span=("arrival_s", lambda t: float(t.max() - t.min()))
        )
        per_step = per_step[per_step["span"] > 0].reset_index()
        if per_step.empty:
            raise ValueError("no step with two arrivals or more: cannot estimate a rate")
        grouped = per_step.groupby("level")
        self.rates = {float(k): float((g["n"] - 1).sum() / g["span"].sum()) for k, g in grouped}
        self.pooled = float((per_step["n"] - 1).sum() / per_step["span"].sum())
        ratios = [rate / level for level, rate in self.rates.items() if level > 0]
        self.ratio = float(np.mean(ratios)) if ratios else 1.0

    def rate(self, level: float | None) -> float:
        if level is None:
            return self.pooled
        for fitted, rate in self.rates.items():
            if math.isclose(fitted, level, rel_tol=1e-9):
                return rate
        return float(level) * self.ratio

    def fitted(self, level: float | None) -> bool:
        return level is not None and any(math.isclose(f, level, rel_tol=1e-9) for f in self.rates)


class PoissonArrivals:
    """Homogeneous Poisson arrivals (see the module docstring)."""

    kind = "poisson"

    def __init__(self, workload: str, table: RateTable):
        self.workload, self.table = workload, table

    @classmethod
    def fit(cls, traces, condition: Condition) -> PoissonArrivals:
        return cls(condition.workload, RateTable(_rows(traces, condition)))

    def sample(self, condition: Condition, duration_s: float, seed: int = 0) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        rate = self.table.rate(condition.level)
        n = rng.poisson(rate * duration_s)
        return _frame(rng.uniform(0.0, duration_s, n))  # given the count, Poisson times are uniform order statistics

    def describe(self) -> dict:
        return {"kind": self.kind, "rates_rps": self.table.rates, "ratio_to_level": self.table.ratio}


class EmpiricalArrivals:
    """Renewal process with the measured inter-arrival distribution (see the module docstring)."""

    kind = "empirical"

    def __init__(self, workload: str, table: RateTable, gaps: dict[float, np.ndarray], scaled: np.ndarray):
        self.workload, self.table, self.gaps, self.scaled = workload, table, gaps, scaled

    @classmethod
    def fit(cls, traces, condition: Condition) -> EmpiricalArrivals:
        rows = _rows(traces, condition).dropna(subset=["interarrival_s"])
        table = RateTable(_rows(traces, condition))
        gaps = {float(level): g["interarrival_s"].to_numpy() for level, g in rows.groupby("level")}
        scaled = np.concatenate([g * table.rate(level) for level, g in gaps.items()])  # unit-rate gaps
        return cls(condition.workload, table, gaps, scaled)

    def sample(self, condition: Condition, duration_s: float, seed: int = 0) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        level = condition.level
        if self.table.fitted(level):
            pool = next(g for f, g in self.gaps.items() if math.isclose(f, level, rel_tol=1e-9))
        elif level is None:
            pool = np.concatenate(list(self.gaps.values()))
        else:
            pool = self.scaled / self.table.rate(level)
        mean = float(pool.mean())
        out, t = [], 0.0
        while t < duration_s:
            draw = rng.choice(pool, size=max(16, int((duration_s - t) / mean * 1.2) + 1))
            times = t + np.cumsum(draw)
            out.append(times)
            t = float(times[-1])
        times = np.concatenate(out)
        return _frame(times[times < duration_s])

    def describe(self) -> dict:
        return {"kind": self.kind, "gaps": {k: len(v) for k, v in self.gaps.items()}, "rates_rps": self.table.rates}


class MMPPArrivals:
    """Markov-modulated Poisson process over ``bin_s`` bins (see the module docstring)."""

    kind = "mmpp"

    def __init__(self, workload, table, lambdas, transmat, startprob, bin_s):
        self.workload, self.table = workload, table
        self.lambdas = np.asarray(lambdas, dtype=float)  # mean count per bin of each state
        self.transmat = np.asarray(transmat, dtype=float)
        self.startprob = np.asarray(startprob, dtype=float)
        self.bin_s = float(bin_s)

    @classmethod
    def fit(cls, traces, condition: Condition, n_states: int = 2, bin_s: float = 1.0, seed: int = 0) -> MMPPArrivals:
        from hmmlearn import hmm

        rows = _rows(traces, condition)
        table = RateTable(rows)
        if table.fitted(condition.level):
            rows = rows[np.isclose(rows["level"], condition.level)]
            time_column = "step_s"
            groups = ["run_id", "step"]
        else:
            time_column, groups = "arrival_s", ["run_id"]  # the whole load of a run, across its steps
        series = []
        for _, g in rows.groupby(groups):
            t = g[time_column].to_numpy()
            bins = max(1, int(math.ceil((t.max() + 1e-9) / bin_s)))
            series.append(np.bincount(np.minimum((t / bin_s).astype(int), bins - 1), minlength=bins))
        counts = np.concatenate(series).reshape(-1, 1)
        n_states = max(1, min(n_states, len(counts) // 8))
        model = hmm.PoissonHMM(n_components=n_states, n_iter=200, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EM's convergence chatter on short series
            model.fit(counts, lengths=[len(s) for s in series])
        order = np.argsort(model.lambdas_[:, 0])  # states by rate, so that a fitted model reads the same each time
        # A state EM saw only at the end of every series is absorbing; one pseudo-transition per series length to
        # every state keeps the chain ergodic, so a long sample still visits every state.
        eps = 1.0 / len(counts)
        transmat = (1 - eps) * model.transmat_[np.ix_(order, order)] + eps / n_states
        return cls(condition.workload, table, model.lambdas_[order, 0], transmat, model.startprob_[order], bin_s)

    def stationary(self) -> np.ndarray:
        values, vectors = np.linalg.eig(self.transmat.T)
        pi = np.real(vectors[:, np.argmin(np.abs(values - 1))])
        return pi / pi.sum()

    def mean_rate(self) -> float:
        """Stationary mean arrival rate [req/s]."""
        return float(self.stationary() @ self.lambdas) / self.bin_s

    def sample(self, condition: Condition, duration_s: float, seed: int = 0) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        lambdas = self.lambdas
        if condition.level is not None and self.mean_rate() > 0:
            lambdas = lambdas * self.table.rate(condition.level) / self.mean_rate()
        bins = int(math.ceil(duration_s / self.bin_s))
        # at a set level the step is in steady state; without one it starts as the fitted runs started
        state = rng.choice(len(lambdas), p=self.stationary() if condition.level is not None else self.startprob)
        times = []
        for b in range(bins):
            n = rng.poisson(lambdas[state])
            times.append(b * self.bin_s + rng.uniform(0.0, self.bin_s, n))
            state = rng.choice(len(lambdas), p=self.transmat[state])
        t = np.concatenate(times) if times else np.array([])
        return _frame(t[t < duration_s])

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "bin_s": self.bin_s,
            "state_rates_rps": (self.lambdas / self.bin_s).round(4).tolist(),
            "transmat": self.transmat.round(4).tolist(),
            "mean_rate_rps": round(self.mean_rate(), 4),
        }


ARRIVALS = {cls.kind: cls for cls in (PoissonArrivals, EmpiricalArrivals, MMPPArrivals)}
