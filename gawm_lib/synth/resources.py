"""Resource-series generators: what the server's Prometheus series do at the scrape interval, given the configuration
and the load. Fitted on the ``resources`` table of :mod:`gawm_lib.synth.traces` (one unbroken segment per run,
workload and step; a gap in a series is filled from its neighbours in the segment) with ``fit(traces, condition)``;
``sample(condition, duration_s, seed)`` gives ``t_s`` [s] at the fitted scrape interval and one column per metric, in
the metric's base unit, never below 0 (and ratios never above 1).

- :class:`ARResources`: per metric an autoregressive model with the condition as exogenous input,
  ``y_t = c + a_1 y_{t-1} + ... + a_p y_{t-p} + b_1 level + b_2 replicas + e_t``, ``e_t ~ N(0, s^2)`` (an input that
  did not vary in the fitted runs is left out), fitted by ordinary least squares (``statsmodels``) on the lagged rows
  of every segment of the workload (a segment never lends lags to another); sampled from the condition's stationary
  mean after a burn-in, within the fitted range widened by its own width.
- :class:`LSTMResources`: one small LSTM (torch, CPU) for every workload of the traces: its input at each sample is the
  previous sample of all metrics (standardised per workload) and the condition (workload one-hot, level, log replicas,
  log max batch size); its output a Gaussian (mean, log variance) per metric; trained by maximum likelihood with teacher
  forcing and sampled autoregressively.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pandas as pd

from gawm_lib.synth.condition import Condition

KEYS = ("run_id", "workload", "step", "level", "t_s")


def metric_columns(resources: pd.DataFrame, workload: str | None = None) -> list[str]:
    """The metric columns of a resources table with finite, varying values (for ``workload``, if given)."""
    rows = resources if workload is None else resources[resources["workload"] == workload]
    out = []
    for column in rows.columns:
        if column in KEYS:
            continue
        values = pd.to_numeric(rows[column], errors="coerce")
        if values.notna().sum() >= 2 and values.nunique() > 1:
            out.append(column)
    return out


def segments(resources: pd.DataFrame, workload: str, metrics: list[str]) -> list[tuple[str, float, np.ndarray]]:
    """``[(run_id, level, values[T, metrics])]`` per (run, step) of ``workload``, gaps filled within the segment
    (then 0)."""
    rows = resources[resources["workload"] == workload].sort_values(["run_id", "t_s"])
    out = []
    for (run_id, _), g in rows.groupby(["run_id", "step"], sort=False):
        values = g[metrics].apply(pd.to_numeric, errors="coerce").ffill().bfill().fillna(0.0).to_numpy(float)
        out.append((run_id, float(g["level"].iloc[0]), values))
    return out


def scrape_interval_s(resources: pd.DataFrame) -> float:
    steps = resources.sort_values(["run_id", "workload", "step", "t_s"]).groupby(["run_id", "workload", "step"])["t_s"]
    gaps = steps.diff().dropna()
    return float(gaps.median()) if len(gaps) else 1.0


def _bounds(metric: str, values: np.ndarray) -> tuple[float, float]:
    upper = 1.0 if metric.startswith(("gpu_util", "error_rate", "gc_pause")) else np.inf
    return 0.0, upper


def _frame(t_s: np.ndarray, metrics: list[str], values: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(values, columns=metrics)
    for i, m in enumerate(metrics):
        low, high = _bounds(m, values[:, i])
        frame[m] = frame[m].clip(low, high)
    frame.insert(0, "t_s", t_s)
    return frame


class ARResources:
    """Per-metric AR(p) with the condition as exogenous input (see the module docstring)."""

    kind = "ar"

    def __init__(self, workload, metrics, coefs, sigmas, means, interval_s, lags, ranges, exog):
        self.workload, self.metrics, self.coefs, self.sigmas = workload, metrics, coefs, sigmas
        self.means, self.interval_s, self.lags = means, interval_s, lags
        self.ranges = ranges  # metric -> (lowest, highest) value fitted on
        self.exog = exog  # condition fields that varied in the fitted runs: 'level', 'replicas'

    @staticmethod
    def _exog(exog: list[str], level: float, replicas: float) -> list[float]:
        values = {"level": 0.0 if level is None or math.isnan(level) else float(level), "replicas": float(replicas)}
        return [values[name] for name in exog]

    @classmethod
    def fit(cls, traces, condition: Condition, lags: int = 2) -> ARResources:
        import statsmodels.api as sm

        metrics = metric_columns(traces.resources, condition.workload)
        if not metrics:
            raise ValueError(f"no resource series of workload {condition.workload!r} to fit")
        segs = segments(traces.resources, condition.workload, metrics)
        replicas = traces.conditions.set_index(["run_id", "workload"])["replicas"]
        rep = {run_id: float(replicas.get((run_id, condition.workload), 1)) for run_id, _, _ in segs}
        # only what varied can be learnt: a constant input is the intercept's twin (and would be extrapolated blindly)
        exog = [
            name
            for name, values in (("level", [lv for _, lv, _ in segs]), ("replicas", list(rep.values())))
            if len({v for v in values if not math.isnan(v)}) > 1
        ]
        coefs, sigmas, means, ranges = {}, {}, {}, {}
        for j, metric in enumerate(metrics):
            X, y = [], []
            for run_id, level, values in segs:
                series = values[:, j]
                inputs = cls._exog(exog, level, rep[run_id])
                for t in range(lags, len(series)):
                    X.append([1.0, *series[t - lags : t][::-1], *inputs])
                    y.append(series[t])
            if len(y) <= lags + 2 + len(exog):
                raise ValueError(f"{condition.workload}: too few samples of {metric} for an AR({lags})")
            with warnings.catch_warnings():  # a series flat within each run is collinear: pinv's least-norm fit is fine
                warnings.simplefilter("ignore")
                result = sm.OLS(np.asarray(y), np.asarray(X)).fit()
            coefs[metric] = np.asarray(result.params, dtype=float)
            sigmas[metric] = float(np.sqrt(max(result.mse_resid, 0.0)))
            means[metric] = float(np.mean(y))
            ranges[metric] = (float(np.min(y)), float(np.max(y)))
        interval = scrape_interval_s(traces.resources)
        return cls(condition.workload, metrics, coefs, sigmas, means, interval, lags, ranges, exog)

    def sample(self, condition: Condition, duration_s: float, seed: int = 0, burn_in: int = 30) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        n = max(1, int(round(duration_s / self.interval_s)))
        inputs = np.asarray(self._exog(self.exog, condition.level, condition.replicas or 1))
        out = np.empty((n, len(self.metrics)))
        for j, metric in enumerate(self.metrics):
            coefs = self.coefs[metric]
            c, a, b = coefs[0], coefs[1 : 1 + self.lags], coefs[1 + self.lags :]
            drive = c + float(np.dot(b, inputs))
            lowest, highest = self.ranges[metric]
            stable = a.sum() < 0.999
            start = drive / (1 - a.sum()) if stable else self.means[metric]
            if not lowest <= start <= highest:  # a near-unit root (or a condition far off) puts the mean anywhere
                start = self.means[metric]
            history = [start] * self.lags
            low, high = _bounds(metric, out[:, j])
            # an explosive fit must not run away: keep within the fitted range widened by its own width
            low, high = max(low, lowest - (highest - lowest)), min(high, highest + (highest - lowest))
            for t in range(burn_in + n):
                value = drive + float(np.dot(a, history[::-1][: self.lags]))
                value = min(max(value + rng.normal(0.0, self.sigmas[metric]), low), high)
                history = [*history[1:], value]
                if t >= burn_in:
                    out[t - burn_in, j] = value
        return _frame(np.arange(n) * self.interval_s, self.metrics, out)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "lags": self.lags,
            "exogenous": self.exog,
            "metrics": self.metrics,
            "interval_s": self.interval_s,
        }


class LSTMResources:
    """One conditional LSTM over all workloads of the traces (see the module docstring)."""

    kind = "lstm"

    def __init__(self, state, config):
        self.state, self.config = state, config
        self._net = None

    @staticmethod
    def _network(n_in: int, n_out: int, hidden: int):
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = torch.nn.LSTM(n_in, hidden, batch_first=True)
                self.head = torch.nn.Linear(hidden, 2 * n_out)

            def forward(self, x, state=None):
                h, state = self.lstm(x, state)
                mean, log_var = self.head(h).chunk(2, dim=-1)
                return mean, log_var.clamp(-8.0, 4.0), state

        return Net()

    @classmethod
    def fit(
        cls,
        traces,
        condition: Condition | None = None,
        hidden: int = 32,
        epochs: int = 300,
        max_train_s: float = 90.0,
        seed: int = 0,
    ) -> LSTMResources:
        """Train on every workload of ``traces`` (``condition`` only names the default workload); stops after
        ``epochs`` passes or ``max_train_s`` seconds, whichever comes first."""
        import torch

        torch.manual_seed(seed)
        workloads = traces.workloads
        metrics = metric_columns(traces.resources)
        if not metrics:
            raise ValueError("no resource series to fit")
        conds = traces.conditions.set_index(["run_id", "workload"])
        scale = {}
        sequences = []  # (inputs[T, n_in], targets[T, n_out])
        levels = traces.resources["level"].dropna()
        level_scale = float(levels.max()) if len(levels) and levels.max() > 0 else 1.0
        for workload in workloads:
            rows = traces.resources[traces.resources["workload"] == workload]
            values = rows[metrics].apply(pd.to_numeric, errors="coerce")
            mean, std = values.mean().fillna(0.0).to_numpy(), values.std().fillna(1.0).to_numpy()
            std = np.where(std > 0, std, 1.0)
            scale[workload] = (mean, std)
            for (run_id, _), g in rows.sort_values(["run_id", "t_s"]).groupby(["run_id", "step"], sort=False):
                y = g[metrics].apply(pd.to_numeric, errors="coerce").ffill().bfill()
                y = ((y.fillna(pd.Series(mean, index=metrics)).to_numpy(float)) - mean) / std
                if len(y) < 3:
                    continue
                c = conds.loc[(run_id, workload)]
                feats = cls._features(
                    workloads,
                    workload,
                    float(g["level"].iloc[0]),
                    int(c["replicas"]),
                    int(c["max_batch_size"]),
                    level_scale,
                )
                previous = np.vstack([np.zeros((1, len(metrics))), y[:-1]])
                x = np.hstack([previous, np.repeat(feats[None, :], len(y), axis=0)])
                sequences.append((x.astype(np.float32), y.astype(np.float32)))
        if not sequences:
            raise ValueError("no resource segment of three samples or more to train on")
        n_in = sequences[0][0].shape[1]
        net = cls._network(n_in, len(metrics), hidden)
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
        longest = max(len(x) for x, _ in sequences)
        X = torch.zeros(len(sequences), longest, n_in)
        Y = torch.zeros(len(sequences), longest, len(metrics))
        M = torch.zeros(len(sequences), longest, 1)
        for i, (x, y) in enumerate(sequences):
            X[i, : len(x)], Y[i, : len(y)], M[i, : len(y)] = torch.from_numpy(x), torch.from_numpy(y), 1.0
        started, losses = time.monotonic(), []
        for _ in range(epochs):
            mean, log_var, _ = net(X)
            nll = 0.5 * (log_var + (Y - mean) ** 2 / log_var.exp())
            loss = (nll * M).sum() / (M.sum() * len(metrics))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            if time.monotonic() - started > max_train_s:
                break
        config = {
            "workloads": workloads,
            "metrics": metrics,
            "hidden": hidden,
            "n_in": n_in,
            "scale": {w: (m.tolist(), s.tolist()) for w, (m, s) in scale.items()},
            "level_scale": level_scale,
            "interval_s": scrape_interval_s(traces.resources),
            "default_workload": condition.workload if condition else workloads[0],
            "defaults": {
                w: {
                    "replicas": int(conds.xs(w, level="workload")["replicas"].iloc[0]),
                    "max_batch_size": int(conds.xs(w, level="workload")["max_batch_size"].iloc[0]),
                    "level": float(traces.resources.loc[traces.resources["workload"] == w, "level"].mean()),
                }
                for w in workloads
            },
            "losses": losses,
            "train_s": time.monotonic() - started,
        }
        model = cls({k: v.detach().clone() for k, v in net.state_dict().items()}, config)
        model._net = net
        return model

    @staticmethod
    def _features(workloads, workload, level, replicas, max_batch, level_scale) -> np.ndarray:
        onehot = np.array([w == workload for w in workloads], dtype=float)
        level = 0.0 if math.isnan(level) else level / level_scale
        return np.concatenate([onehot, [level, math.log(max(replicas, 1)), math.log(max(max_batch, 1))]])

    def net(self):
        if self._net is None:
            self._net = self._network(self.config["n_in"], len(self.config["metrics"]), self.config["hidden"])
            self._net.load_state_dict(self.state)
        return self._net

    def __getstate__(self):
        return {"state": self.state, "config": self.config, "_net": None}

    @property
    def metrics(self) -> list[str]:
        return self.config["metrics"]

    def sample(self, condition: Condition, duration_s: float, seed: int = 0) -> pd.DataFrame:
        import torch

        cfg = self.config
        if condition.workload not in cfg["workloads"]:
            raise ValueError(f"workload {condition.workload!r} was not fitted (fitted: {cfg['workloads']})")
        defaults = cfg["defaults"][condition.workload]
        feats = self._features(
            cfg["workloads"],
            condition.workload,
            condition.level if condition.level is not None else defaults["level"],
            condition.replicas or defaults["replicas"],
            condition.max_batch_size or defaults["max_batch_size"],
            cfg["level_scale"],
        )
        mean_w, std_w = (np.asarray(v) for v in cfg["scale"][condition.workload])
        n = max(1, int(round(duration_s / cfg["interval_s"])))
        generator = torch.Generator().manual_seed(int(seed))
        net = self.net().eval()
        out = np.empty((n, len(self.metrics)))
        previous = torch.zeros(1, 1, len(self.metrics))
        cond = torch.tensor(feats, dtype=torch.float32).view(1, 1, -1)
        state = None
        with torch.no_grad():
            for t in range(n):
                mean, log_var, state = net(torch.cat([previous, cond], dim=-1), state)
                draw = mean + (0.5 * log_var).exp() * torch.randn(mean.shape, generator=generator)
                out[t] = draw.view(-1).numpy()
                previous = draw
        return _frame(np.arange(n) * cfg["interval_s"], self.metrics, out * std_w + mean_w)

    def describe(self) -> dict:
        losses = self.config["losses"]
        return {
            "kind": self.kind,
            "hidden": self.config["hidden"],
            "metrics": self.metrics,
            "epochs": len(losses),
            "final_nll": round(losses[-1], 4) if losses else None,
            "train_s": round(self.config["train_s"], 1),
        }


RESOURCES = {cls.kind: cls for cls in (ARResources, LSTMResources)}
