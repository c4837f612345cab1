"""The schedule of a load: the steps it runs and, for open-loop steps, when each request is due. Pure functions of the
settings and the seeds, so a schedule can be inspected and tested without sending anything.

Open-loop arrivals are drawn as events of unit rate and mapped through the inverse of the cumulative rate
``Lambda(t) = r0 t + (r1 - r0) t^2 / (2 d)`` (a linear ramp from ``r0`` to ``r1`` over ``d`` seconds, then ``r1``), so
steps and ramps, Poisson and evenly spaced arrivals share one exact method. When ``k`` processes share a load,
process ``i`` draws a Poisson stream of rate ``r/k`` (the superposition is Poisson of rate ``r``), or takes every
``k``-th of the evenly spaced arrivals starting at the ``i``-th.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gawm_lib.config import LoadConfig

CHUNK = 4096  # arrivals (and payload ids, think times) drawn at once


@dataclass(frozen=True)
class Step:
    """One step of a load. ``level`` is users (mode ``closed``), arrival rate [req/s] (``open``), requests queued at
    once (``offline``) or the trace's mean rate [req/s] (``trace``), for the whole load (all processes together); it
    moves linearly to ``end_level`` over ``duration_s`` (a ramp) and stays there if the step runs longer."""

    phase: str  # 'warmup' or 'step'
    index: int  # -1 for the warm-up
    mode: str  # 'closed', 'open', 'offline' or 'trace'
    level: float
    end_level: float
    duration_s: float  # shortest (for a trace: its length)
    min_requests: int  # fewest requests (all processes together)
    max_duration_s: float
    arrival: str = "poisson"  # open loop: 'poisson' or 'constant'
    drain: bool = True  # wait for the answers before the next step starts

    def level_at(self, t_s: float) -> float:
        if self.end_level == self.level or t_s <= 0:
            return self.level
        return self.level + (self.end_level - self.level) * min(t_s / self.duration_s, 1.0)


def plan(load: LoadConfig, trace_span_s: float | None = None) -> list[Step]:
    """The steps of ``load`` in order, warm-up first. ``trace_span_s``: length of the (scaled) trace, for ``trace``."""
    sc = load.scenario
    longest = load.max_step_duration_s
    steps: list[Step] = []
    if sc == "stages":
        for i, stage in enumerate(load.stages):
            closed = stage.users is not None
            start = float(stage.users if closed else stage.rate_rps)
            end = stage.end_users if closed else stage.end_rate_rps
            steps.append(
                Step(
                    "step",
                    i,
                    "closed" if closed else "open",
                    start,
                    start if end is None else float(end),
                    stage.duration_s,
                    load.min_requests_per_step,
                    max(stage.duration_s, longest),
                    stage.arrival,
                    drain=False,
                )
            )
    elif sc == "trace":
        span = float(trace_span_s or 0.0)
        return [Step("step", 0, "trace", 0.0, 0.0, span, 0, max(span, longest), drain=True)]
    else:
        mode = {
            "single_stream": "closed",
            "closed_loop": "closed",
            "poisson": "open",
            "constant_rate": "open",
            "offline": "offline",
        }[sc]
        levels = [1.0] if sc == "single_stream" else load.levels
        arrival = "constant" if sc == "constant_rate" else "poisson"
        for i, level in enumerate(levels):
            steps.append(
                Step(
                    "step",
                    i,
                    mode,
                    level,
                    level,
                    load.step_duration_s,
                    load.min_requests_per_step,
                    max(load.step_duration_s, longest),
                    arrival,
                )
            )
    if load.warmup_s > 0:
        first = steps[0]
        steps.insert(
            0,
            Step(
                "warmup",
                -1,
                first.mode,
                first.level,
                first.level,
                load.warmup_s,
                0,
                load.warmup_s,
                first.arrival,
                drain=True,
            ),
        )
    return steps


def share(total: float, process: int, processes: int) -> int:
    """Process ``process``'s whole share of ``total`` users or requests (the shares add up to ``round(total)``)."""
    whole = int(round(total))
    return whole // processes + (1 if process < whole % processes else 0)


def _inverse_cumulative_rate(s: np.ndarray, r0: float, r1: float, d: float) -> np.ndarray:
    """Times [s] at which the cumulative rate reaches ``s`` (inf where it never does)."""
    a = (r1 - r0) / d
    at_d = (r0 + r1) * d / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        ramp = 2 * s / (r0 + np.sqrt(np.maximum(r0 * r0 + 2 * a * s, 0.0)))  # stable form of the quadratic's root
        after = d + (s - at_d) / r1 if r1 > 0 else np.full_like(s, np.inf)
    return np.where(s <= at_d, ramp, after)


def arrival_times_ns(
    step: Step, rng: np.random.Generator, start_ns: int, process: int = 0, processes: int = 1
) -> Iterator[int]:
    """Due times [monotonic ns] of this process's requests in an open-loop step, without end (the caller stops)."""
    r0, r1 = step.level, step.end_level
    if r0 <= 0:
        return
    d = step.duration_s
    base = 0.0 if step.arrival == "poisson" else float(process)
    while True:
        if step.arrival == "poisson":
            s = base + np.cumsum(rng.exponential(float(processes), CHUNK))
        else:
            s = base + processes * np.arange(CHUNK, dtype=np.float64)
        base = float(s[-1]) + (processes if step.arrival == "constant" else 0.0)
        times = _inverse_cumulative_rate(s, r0, r1, d) if r1 != r0 else s / r0
        finite = times[np.isfinite(times)]
        yield from (start_ns + np.round(finite * 1e9).astype(np.int64)).tolist()
        if len(finite) < len(times):
            return


def draws(rng: np.random.Generator, kind: str, scale: float, bound: int = 0) -> Iterator[float | int]:
    """An endless stream of draws, ``CHUNK`` at a time: ``integers`` below ``bound``, ``exponential`` or ``constant``
    values of mean ``scale``."""
    while True:
        if kind == "integers":
            chunk = rng.integers(bound, size=CHUNK).tolist()
        elif kind == "exponential":
            chunk = rng.exponential(scale, CHUNK).tolist()
        else:
            chunk = [scale] * CHUNK
        yield from chunk


def read_trace(path: str | Path, payload_count: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A trace's arrival times [s from its start], sorted, and payload ids (``None`` when it has none).

    The file is CSV or parquet with a column ``arrival_s`` (seconds, >= 0, in any order) and optionally ``payload_id``
    (whole numbers below ``payload_count``), at most ``MAX_TRACE_ROWS`` rows. Raises ValueError saying what is wrong.
    """
    from gawm_lib.config import MAX_TRACE_ROWS

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"no trace file at {str(path)!r}")
    import pandas as pd

    too_long = f"{path.name}: expected a trace of at most {MAX_TRACE_ROWS:,} arrivals, got more"
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path, nrows=MAX_TRACE_ROWS + 1)  # no more is read than can be refused
        elif path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            if pq.ParquetFile(path).metadata.num_rows > MAX_TRACE_ROWS:
                raise ValueError(too_long)
            frame = pd.read_parquet(path)
        else:
            raise ValueError(f"{path.name}: expected a .csv or .parquet trace")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path.name}: cannot read the trace ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own kinds for a bad parquet file
        if isinstance(exc, ValueError):
            raise
        raise ValueError(f"{path.name}: cannot read the trace ({type(exc).__name__}: {exc})") from None
    if len(frame) > MAX_TRACE_ROWS:
        raise ValueError(too_long)
    if "arrival_s" not in frame.columns:
        raise ValueError(f"{path.name}: no column arrival_s (columns: {', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise ValueError(f"{path.name}: the trace has no rows")
    arrivals = pd.to_numeric(frame["arrival_s"], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(arrivals).all() or (arrivals < 0).any():
        bad = int(np.flatnonzero(~np.isfinite(arrivals) | (arrivals < 0))[0])
        raise ValueError(f"{path.name}: arrival_s must be numbers >= 0 (row {bad}: {frame['arrival_s'].iloc[bad]!r})")
    order = np.argsort(arrivals, kind="stable")
    ids = None
    if "payload_id" in frame.columns:
        raw = pd.to_numeric(frame["payload_id"], errors="coerce").to_numpy(dtype=np.float64)
        wrong = ~np.isfinite(raw) | (raw != np.round(raw)) | (raw < 0) | (raw >= payload_count)
        if wrong.any():
            bad = int(np.flatnonzero(wrong)[0])
            raise ValueError(
                f"{path.name}: payload_id must be whole numbers from 0 to payload_count - 1 = "
                f"{payload_count - 1} (row {bad}: {frame['payload_id'].iloc[bad]!r})"
            )
        ids = raw.astype(np.int64)[order]
    return arrivals[order], ids


def seeds(seed: int, process: int, processes: int) -> np.random.Generator:
    """The generator of process ``process``: ``seed`` itself for one process, else an independent child of it."""
    if processes == 1:
        return np.random.default_rng(seed)
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(processes)[process])


def trace_mean_rate(arrivals_s: np.ndarray) -> float:
    span = float(arrivals_s[-1] - arrivals_s[0]) if len(arrivals_s) > 1 else 0.0
    return (len(arrivals_s) - 1) / span if span > 0 else math.nan
