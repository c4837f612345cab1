"""Service time of one batch as a function of batch size.

Model: ``latency(b) = max(floor, alpha * b + beta)`` seconds for a batch of ``b`` items. Below the knee
``b* = (floor - beta) / alpha`` the accelerator is under-used and a batch costs ``floor`` seconds whatever its size;
above it every extra item costs ``alpha`` seconds. Throughput is ``b / latency(b)`` items/s.

The fit is a continuous hinge (segmented) regression, profiled over the knee location, with an extra-sum-of-squares
F-test deciding whether the data support a floor at all; standard errors come from the Jacobian covariance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

__all__ = ["BatchLatencyModel", "BatchLatencyTable", "fit_batch_latency"]


def _items_per_s(model, batch_size):
    """``b / model.predict(b)`` [items/s], scalar in, scalar out."""
    b = np.asarray(batch_size, dtype=float)
    out = b / np.asarray(model.predict(b))
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class BatchLatencyModel:
    """``latency(b) = max(floor, alpha * b + beta)``: alpha [s/item], beta [s], floor [s].

    ``*_se`` are standard errors of the parameters (0 for a hand-written model); ``cov`` is the 3x3 covariance of
    (alpha, beta, floor) when fitted. ``n_points`` and ``rmse_s`` describe the fit (0 / nan when not fitted).
    """

    alpha: float
    beta: float
    floor: float = 0.0
    alpha_se: float = 0.0
    beta_se: float = 0.0
    floor_se: float = 0.0
    knee_se: float = 0.0
    n_points: int = 0
    rmse_s: float = math.nan
    cov: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        if not (self.alpha >= 0 and self.floor >= 0):
            raise ValueError(f"alpha and floor must be >= 0 (got alpha={self.alpha}, floor={self.floor})")
        if not self.alpha + self.beta > 0 and not self.floor > 0:
            raise ValueError(
                f"latency at batch 1 must be positive (alpha+beta={self.alpha + self.beta}, floor={self.floor})"
            )

    @property
    def knee(self) -> float:
        """Batch size [items] where the linear part meets the floor (may be < 1: the floor never binds)."""
        return (self.floor - self.beta) / self.alpha if self.alpha > 0 else math.inf

    def predict(self, batch_size):
        """Latency [s] of a batch of ``batch_size`` items (scalar or array, each > 0)."""
        b = np.asarray(batch_size, dtype=float)
        if np.any(~(b > 0)):
            raise ValueError(f"batch sizes must be > 0, got {batch_size!r}")
        out = np.maximum(self.floor, self.alpha * b + self.beta)
        return float(out) if out.ndim == 0 else out

    def throughput(self, batch_size):
        """Items/s when every batch has ``batch_size`` items: ``b / latency(b)``."""
        return _items_per_s(self, batch_size)

    @property
    def max_throughput(self) -> float:
        """Supremum of ``throughput(b)`` over b >= 1 [items/s].

        With beta >= 0 throughput keeps growing towards the asymptote ``1/alpha`` (never reached); with beta < 0 it
        peaks at the knee. ``inf`` only for alpha == 0 (latency independent of batch size).
        """
        if self.alpha == 0:
            return math.inf
        if self.beta >= 0:
            return 1.0 / self.alpha
        best = max(1.0, self.knee)
        return best / self.predict(best)

    def shifted(self, n_sigma: float) -> BatchLatencyModel:
        """The same model with every parameter moved by ``n_sigma`` standard errors (clipped to stay valid).

        Latency grows with each of alpha, beta and floor, so ``shifted(+1)`` / ``shifted(-1)`` bracket the predictions
        (conservatively: it ignores the usually negative alpha/beta correlation).
        """
        alpha = max(0.0, self.alpha + n_sigma * self.alpha_se)
        floor = max(0.0, self.floor + n_sigma * self.floor_se)
        beta = self.beta + n_sigma * self.beta_se
        if not (alpha + beta > 0 or floor > 0):
            beta = -alpha + 1e-12
        return BatchLatencyModel(
            alpha,
            beta,
            floor,
            self.alpha_se,
            self.beta_se,
            self.floor_se,
            self.knee_se,
            self.n_points,
            self.rmse_s,
            self.cov,
        )


@dataclass(frozen=True)
class BatchLatencyTable:
    """Measured latency [s] of a batch of each size 1..n (``seconds[b-1]``), e.g. means from a batch sweep.

    A drop-in for :class:`BatchLatencyModel` wherever only ``predict`` is needed (:func:`predict_batching`,
    :func:`simulate_batching`, :func:`replay_batching`), for hardware the hinge does not describe: ResNet50 on one CPU
    core takes 75, 153, 210 and 317 ms for 1-4 images, and the hinge fit through those points puts 2 images at 121 ms.
    It predicts only the measured sizes (whole numbers 1..n); no extrapolation.
    """

    seconds: tuple[float, ...]

    def __post_init__(self) -> None:
        values = np.asarray(self.seconds, dtype=float)
        if values.ndim != 1 or values.size < 1 or not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"seconds must be one positive finite latency per batch size 1..n, got {self.seconds!r}")

    @classmethod
    def from_measurements(
        cls, batch_sizes, latencies_s, max_batch: int, fallback: BatchLatencyModel | None = None
    ) -> BatchLatencyTable:
        """Mean measured latency per batch size 1..``max_batch``; a size never measured takes ``fallback.predict``
        (ValueError without a fallback)."""
        b = np.asarray(batch_sizes, dtype=float).ravel()
        y = np.asarray(latencies_s, dtype=float).ravel()
        if b.size != y.size:
            raise ValueError(f"batch_sizes and latencies_s have different lengths ({b.size} != {y.size})")
        out = []
        for size in range(1, int(max_batch) + 1):
            seen = y[b == size]
            if seen.size:
                out.append(float(seen.mean()))
            elif fallback is not None:
                out.append(float(fallback.predict(size)))
            else:
                raise ValueError(f"no measured batch of size {size} and no fallback model")
        return cls(tuple(out))

    def scaled(self, factor: float) -> BatchLatencyTable:
        """Every latency times ``factor`` (> 0)."""
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"factor must be a positive finite number, got {factor}")
        return BatchLatencyTable(tuple(v * factor for v in self.seconds))

    def predict(self, batch_size):
        """Latency [s] of a batch of ``batch_size`` items (scalar or array of whole numbers in 1..n)."""
        b = np.asarray(batch_size, dtype=float)
        n = len(self.seconds)
        if np.any(~((b >= 1) & (b <= n) & (b == np.round(b)))):
            raise ValueError(f"batch sizes must be whole numbers in 1..{n} (the measured sizes), got {batch_size!r}")
        out = np.asarray(self.seconds, dtype=float)[b.astype(int) - 1]
        return float(out) if out.ndim == 0 else out

    def throughput(self, batch_size):
        """Items/s when every batch has ``batch_size`` items."""
        return _items_per_s(self, batch_size)

    @property
    def max_throughput(self) -> float:
        """Best items/s over the measured sizes."""
        return float(np.max(self.throughput(np.arange(1, len(self.seconds) + 1))))


def _hinge_design(b: np.ndarray, knee: float) -> np.ndarray:
    # Hinge form floor + alpha * max(0, b - knee) is linear in (floor, alpha) for a fixed knee, so the knee can be
    # profiled out; nnls keeps floor >= 0 and alpha >= 0 (a latency that falls with batch size is not physical).
    return np.column_stack([np.ones_like(b), np.maximum(0.0, b - knee)])


def _profile(b: np.ndarray, y: np.ndarray, knee: float) -> tuple[float, np.ndarray]:
    coef, _ = optimize.nnls(_hinge_design(b, knee), y)
    resid = y - _hinge_design(b, knee) @ coef
    return float(resid @ resid), coef


def _check_inputs(batch_sizes, latencies_s) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(batch_sizes, dtype=float).ravel()
    y = np.asarray(latencies_s, dtype=float).ravel()
    if b.size != y.size:
        raise ValueError(f"batch_sizes and latencies_s have different lengths ({b.size} != {y.size})")
    if b.size < 3:
        raise ValueError(f"need at least 3 (batch size, latency) points to fit, got {b.size}")
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(y))):
        raise ValueError("batch_sizes and latencies_s must be finite numbers")
    if np.any(b <= 0):
        raise ValueError("batch sizes must be positive")
    if np.any(y <= 0):
        raise ValueError("latencies must be positive (seconds)")
    if np.unique(b).size < 2:
        raise ValueError("need at least 2 distinct batch sizes to fit a slope")
    order = np.argsort(b, kind="stable")
    return b[order], y[order]


def fit_batch_latency(batch_sizes, latencies_s, *, significance: float = 0.05) -> BatchLatencyModel:
    """Fit ``latency(b) = max(floor, alpha*b + beta)`` to measured batch latencies [s].

    Repeated batch sizes are welcome (they give the noise level). A floor (knee) is kept only when an F-test of the
    hinge against a straight line has p < ``significance`` and at least one residual degree of freedom remains;
    otherwise the line is fitted and ``floor`` is the fitted latency at the smallest measured batch (the model does
    not extrapolate below the measured range). Standard errors are from ``s^2 (J^T J)^-1`` (delta method for beta).

    Raises ValueError for fewer than 3 points, mismatched lengths, non-positive latencies or batch sizes, a single
    distinct batch size, or latencies that do not grow with batch size (alpha would be 0).
    """
    b, y = _check_inputs(batch_sizes, latencies_s)
    n = b.size
    levels = np.unique(b)
    sse_line, coef_line = _profile(b, y, levels[0])
    best = (sse_line, levels[0], coef_line)
    if n >= 4 and levels.size >= 3:
        # The profile SSE is smooth between consecutive distinct batch sizes, so minimise within each interval. The
        # knee stays below the second-largest level: two levels must remain on the slope for alpha to be identified.
        for lo, hi in zip(levels[:-2], levels[1:-1]):
            res = optimize.minimize_scalar(
                lambda k: _profile(b, y, k)[0], bounds=(lo, hi), method="bounded", options={"xatol": 1e-6 * (hi - lo)}
            )
            for knee in (lo, float(res.x)):
                sse, coef = _profile(b, y, knee)
                if sse < best[0] * (1 - 1e-12):
                    best = (sse, float(knee), coef)
    sse_hinge, knee, coef = best
    use_hinge = knee > levels[0]
    if use_hinge:
        if sse_hinge <= 0:
            use_hinge = sse_line > 0
        else:
            f_stat = (sse_line - sse_hinge) / (sse_hinge / (n - 3))
            use_hinge = stats.f.sf(f_stat, 1, n - 3) < significance
    if not use_hinge:
        sse, knee, coef = sse_line, float(levels[0]), coef_line
    else:
        sse = sse_hinge
    floor, alpha = (float(c) for c in coef)
    if alpha <= 0:
        raise ValueError(
            "latency does not increase with batch size over the measured range (fitted alpha = 0); "
            "measure larger batches to see the per-item cost"
        )

    # Jacobian of floor + alpha*max(0, b-knee) w.r.t. (floor, alpha[, knee]) and the map to (alpha, beta, floor):
    # beta = floor - alpha*knee, so d beta = d floor - knee d alpha - alpha d knee.
    above = (b > knee).astype(float)
    jac = [np.ones(n), np.maximum(0.0, b - knee)] + ([-alpha * above] if use_hinge else [])
    jac = np.column_stack(jac)
    dof = n - jac.shape[1]
    s2 = sse / dof
    cov_theta = s2 * np.linalg.pinv(jac.T @ jac)
    to_abf = np.array([[0.0, 1.0, 0.0], [1.0, -knee, -alpha], [1.0, 0.0, 0.0]])[:, : jac.shape[1]]
    cov = to_abf @ cov_theta @ to_abf.T
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    knee_se = float(np.sqrt(max(cov_theta[2, 2], 0.0))) if use_hinge else 0.0
    return BatchLatencyModel(
        alpha=alpha,
        beta=floor - alpha * knee,
        floor=floor,
        alpha_se=float(se[0]),
        beta_se=float(se[1]),
        floor_se=float(se[2]),
        knee_se=knee_se,
        n_points=n,
        rmse_s=math.sqrt(sse / n),
        cov=tuple(tuple(float(v) for v in row) for row in cov),
    )
