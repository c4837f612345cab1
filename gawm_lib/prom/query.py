"""Range queries for a run's phases -> one tidy long DataFrame; saved next to the run.

Columns (:data:`FRAME_COLUMNS`): ``time`` (UTC datetime64), ``query`` (catalogue name),
``value`` (float, base unit; NaN where PromQL gives NaN, e.g. a quantile with no traffic),
``unit``, ``labels`` (JSON of the series labels without ``__name__``, sorted keys) and ``phase``.

Metrics are a bonus on top of the load generator's own data. A caller must not lose a run
because Prometheus is unreachable::

    try:
        frame = query_phases(prom_url, ["throughput", "latency_p95"], phases, params={"workload": "resnet50"})
    except PrometheusQueryError as exc:   # down, slow, or an error answer: keep the load data
        log.warning("run %s has no Prometheus metrics: %s", run_id, exc)
    else:
        save_run_metrics(run_dir, frame)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from .catalogue import get_query
from .common import EmptyQueryWarning, PrometheusQueryError, connect
from .promql import format_duration, parse_duration

FRAME_COLUMNS = ("time", "query", "value", "unit", "labels", "phase")
#: Prometheus refuses range queries of more than 11,000 points per series.
MAX_POINTS = 11_000


@dataclass(frozen=True)
class Phase:
    """A named part of a run, [start, end] in UTC."""

    name: str
    start: datetime
    end: datetime


def _utc(t: datetime) -> datetime:
    if not isinstance(t, datetime):
        raise TypeError(f"phase bounds must be datetimes, got {t!r}")
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def as_phase(p: Any) -> Phase:
    """A Phase from ``(name, start, end)`` or an object with ``name`` and ``start[_utc]``/``end[_utc]``.
    Naive datetimes are taken as UTC."""
    if isinstance(p, (tuple, list)):
        name, start, end = p
    else:
        name = p.name
        start = getattr(p, "start_utc", None) or p.start
        end = getattr(p, "end_utc", None) or p.end
    phase = Phase(str(name), _utc(start), _utc(end))
    if phase.end < phase.start:
        raise ValueError(f"phase {phase.name!r} ends before it starts: {phase.start} > {phase.end}")
    return phase


def empty_frame(extra: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A frame with no rows and the tidy columns (plus ``extra`` name -> dtype)."""
    cols = {
        "time": pd.Series([], dtype="datetime64[ns, UTC]"),
        "query": pd.Series([], dtype="str"),
        "value": pd.Series([], dtype="float64"),
        "unit": pd.Series([], dtype="str"),
        "labels": pd.Series([], dtype="str"),
        "phase": pd.Series([], dtype="str"),
    }
    cols.update({k: pd.Series([], dtype=v) for k, v in (extra or {}).items()})
    return pd.DataFrame(cols)


def labels_json(labels: Mapping[str, Any]) -> str:
    """The ``labels`` column encoding: JSON, sorted keys, no ``__name__``."""
    return json.dumps(
        {k: str(v) for k, v in labels.items() if k != "__name__"},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def fetch_scrape_interval_s(url: str, timeout_s: float = 10.0, job: str | None = None) -> float:
    """The scrape interval from Prometheus' running config (``job``'s if given, else global)."""
    import requests
    import yaml

    try:
        with requests.Session() as s:
            s.trust_env = False
            r = s.get(url.rstrip("/") + "/api/v1/status/config", timeout=timeout_s)
            r.raise_for_status()
            config = yaml.safe_load(r.json()["data"]["yaml"])
        interval = (config.get("global") or {}).get("scrape_interval", "1m")
        for sc in config.get("scrape_configs") or []:
            if job is not None and sc.get("job_name") == job and sc.get("scrape_interval"):
                interval = sc["scrape_interval"]
        return parse_duration(interval)
    except Exception as exc:
        raise PrometheusQueryError(url, "<scrape interval>", "GET /api/v1/status/config", exc) from exc


def _chunks(start: float, end: float, step: float, max_points: int) -> list[tuple[float, float]]:
    span = (max_points - 1) * step
    out, t = [], start
    while True:
        out.append((t, min(end, t + span)))
        t += max_points * step
        if t > end:
            return out


def _resolve_step(url: str, step_s, window, scrape_interval_s, timeout_s) -> tuple[float, str | float | None]:
    """step: given, else the scrape interval; window: given, else 4 x (scrape interval, else step).
    The scrape interval is read from Prometheus only when neither it nor step_s is given."""
    interval = scrape_interval_s
    if interval is None and step_s is None:
        interval = fetch_scrape_interval_s(url, timeout_s)
    step = parse_duration(step_s if step_s is not None else interval)
    if window is None:
        window = format_duration(4 * parse_duration(interval if interval is not None else step))
    return step, window


def _run(
    url: str,
    queries: list,
    phase_list: list[Phase],
    step_s: float,
    window,
    params: Mapping[str, Any],
    timeout_s: float,
    retries: int,
    max_points: int,
) -> pd.DataFrame:
    """Query every (phase, query); rows carry ``_phase_index`` (position in ``phase_list``)."""
    step = f"{step_s:g}"
    cols: dict[str, list] = {c: [] for c in (*FRAME_COLUMNS, "_phase_index")}
    empty: dict[str, tuple[list[str], str]] = {}
    chunked = False
    prom = connect(url, timeout_s=timeout_s, retries=retries)
    try:
        for index, ph in enumerate(phase_list):
            t0, t1 = math.floor(ph.start.timestamp()), math.ceil(ph.end.timestamp())
            for q in queries:
                if q.over_range:
                    # one instant query at the phase's exact end over its exact length (whole seconds would take
                    # in up to 2 s from around it: idle time that read a 2 s step's CPU 35 % low); at least two
                    # scrape intervals, so that a phase shorter than that (a warmup) still has two samples
                    spans = [(ph.start.timestamp(), ph.end.timestamp())]
                    promql = q.render(window=window, range=max(spans[0][1] - spans[0][0], 2 * step_s), **params)
                else:
                    promql = q.render(window=window, **params)
                    spans = _chunks(t0, t1, step_s, max_points)
                    chunked |= len(spans) > 1
                n_series = 0
                for cs, ce in spans:
                    start = datetime.fromtimestamp(cs, UTC)
                    end = datetime.fromtimestamp(ce, UTC)
                    try:
                        if q.over_range:
                            result = prom.custom_query(
                                promql, params={"time": f"{ce:.3f}", "timeout": f"{timeout_s:g}s"}
                            )
                            rows = [(labels_json(r.get("metric", {})), *map(float, r["value"])) for r in result]
                        else:
                            result = prom.custom_query_range(
                                promql, start_time=start, end_time=end, step=step, params={"timeout": f"{timeout_s:g}s"}
                            )
                            rows = [
                                (labels_json(r.get("metric", {})), float(ts), float(v))
                                for r in result
                                for ts, v in r.get("values", [])
                            ]
                    except Exception as exc:
                        raise PrometheusQueryError(
                            url, q.name, promql, exc, f"phase {ph.name!r} {start.isoformat()}..{end.isoformat()}"
                        ) from exc
                    n_series += len(result)
                    for lab, ts, val in rows:
                        cols["time"].append(ts)
                        cols["value"].append(val)
                        cols["query"].append(q.name)
                        cols["unit"].append(q.unit)
                        cols["labels"].append(lab)
                        cols["phase"].append(ph.name)
                        cols["_phase_index"].append(index)
                if n_series == 0:
                    empty.setdefault(q.name, ([], promql))[0].append(ph.name)
    finally:
        prom.close()
    for name, (phases, promql) in empty.items():
        shown = phases if len(phases) <= 5 else phases[:5] + [f"... {len(phases) - 5} more"]
        warning = EmptyQueryWarning(
            f"query {name!r} returned no series from {url} in {len(phases)} phase(s) {shown}; PromQL: {promql}"
        )
        warning.query_name, warning.phases, warning.promql = name, list(phases), promql  # for callers that count
        warnings.warn(warning, stacklevel=3)
    if not cols["time"]:
        frame = empty_frame()
        frame["_phase_index"] = pd.Series([], dtype="int64")
        return frame
    frame = pd.DataFrame(cols)
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True).astype("datetime64[ns, UTC]")
    if chunked:
        frame = frame.drop_duplicates(subset=["_phase_index", "query", "labels", "time"], ignore_index=True)
    return frame


def query_phases(
    url: str,
    query_names: Iterable[str],
    phases: Iterable[Any],
    step_s: float | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    scrape_interval_s: float | None = None,
    window: str | float | None = None,
    timeout_s: float = 30.0,
    retries: int = 1,
    max_points: int = MAX_POINTS,
) -> pd.DataFrame:
    """Run catalogue queries over every phase; return one tidy frame (see module doc).

    ``phases``: ``(name, start_utc, end_utc)`` tuples or objects with ``name``/``start``/``end``.
    ``params``: label matchers for :meth:`Query.render` (str exact, list = any of, Prefix).
    ``step_s`` defaults to the scrape interval (``scrape_interval_s``, else read from Prometheus's
    config); ``window`` (rate window) defaults to 4 scrape intervals (4 steps if only ``step_s``
    is given), so the first points of a phase still see the end of the previous one. Derived queries over a whole
    range (``Query.over_range``, e.g. energy per request) give one point per phase, at its exact end over its exact
    length (at least two steps). Ranges over
    ``max_points`` points are split into chunks. A query with no series emits :class:`EmptyQueryWarning` (once
    per query, naming the phases). Raises :class:`PrometheusQueryError` if Prometheus is down,
    slower than ``timeout_s``, or answers an error; KeyError/ValueError for bad names or params.
    """
    params = dict(params or {})
    queries = [get_query(n) for n in query_names]
    phase_list = [as_phase(p) for p in phases]
    for q in queries:  # fail fast on bad parameters, before any HTTP
        q.render(window=window, **params)
    step_s, window = _resolve_step(url, step_s, window, scrape_interval_s, timeout_s)
    frame = _run(url, queries, phase_list, step_s, window, params, timeout_s, retries, max_points)
    return frame.drop(columns="_phase_index")


#: Queries saved for every run: our server's metrics, the server processes' CPU and memory (also of external servers
#: that export prometheus_client's process_* series: KServe, MLServer) and NVML; DCGM/cAdvisor need a cluster.
RUN_QUERIES = (
    "throughput",
    "requests_total",
    "error_rate",
    "latency_mean",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "queue_wait_mean",
    "queue_wait_p95",
    "compute_time_mean",
    "batch_size_mean",
    "inflight",
    "items_per_second",
    "gc_pause_ratio",
    "process_cpu",
    "process_cpu_step",
    "process_resident_memory",
    "gpu_util_nvml",
    "gpu_memory_used_nvml",
    "gpu_power_nvml",
    "gpu_energy_nvml",
    "energy_per_request_nvml",
)


def query_run_phases(
    url: str,
    results: Iterable[Mapping[str, Any]],
    step_s: float | None = None,
    query_names: Iterable[str] = RUN_QUERIES,
    *,
    scrape_interval_s: float | None = None,
    window: str | float | None = None,
    timeout_s: float = 30.0,
    retries: int = 1,
    max_points: int = MAX_POINTS,
) -> pd.DataFrame:
    """:func:`query_phases` for load results (``gawm_lib.loadgen.run_load``): each result's
    ``phases`` (dicts with ``phase``, ``step``, ``level``, ``start_unix_ns``, ``end_unix_ns``) are
    queried with ``params={"workload": result["workload"]}``. The frame has the tidy columns plus
    ``workload``, ``step`` and ``level``, to join with the request records."""
    queries = [get_query(n) for n in query_names]
    extra = {"workload": "str", "step": "int64", "level": "float64"}
    results = list(results)
    if not any(r.get("phases") for r in results):
        return empty_frame(extra)
    step_s, window = _resolve_step(url, step_s, window, scrape_interval_s, timeout_s)
    frames = []
    for result in results:
        workload = str(result["workload"])
        raw = list(result.get("phases") or [])
        phase_list = [
            Phase(
                str(p["phase"]),
                datetime.fromtimestamp(p["start_unix_ns"] / 1e9, UTC),
                datetime.fromtimestamp(p["end_unix_ns"] / 1e9, UTC),
            )
            for p in raw
        ]
        if not phase_list:
            continue
        frame = _run(url, queries, phase_list, step_s, window, {"workload": workload}, timeout_s, retries, max_points)
        index = frame.pop("_phase_index")
        frame["workload"] = workload
        frame["step"] = [int(raw[i].get("step", -1)) for i in index]
        frame["level"] = [float(raw[i].get("level", float("nan"))) for i in index]
        frames.append(frame.astype(extra))
    if not frames:
        return empty_frame(extra)
    return pd.concat(frames, ignore_index=True)


def save_run_metrics(run_dir: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Write ``run_dir/metrics/metrics.parquet`` (atomically) and return its path."""
    missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"not a metrics frame: missing columns {missing}")
    path = Path(run_dir) / "metrics" / "metrics.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def load_run_metrics(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Read the frame written by :func:`save_run_metrics`."""
    return pd.read_parquet(Path(run_dir) / "metrics" / "metrics.parquet")


def phases_from_now(*names_and_seconds: tuple[str, float], end: datetime | None = None) -> list[Phase]:
    """Consecutive phases ending at ``end`` (default now), e.g. ``("warmup", 5), ("steady", 10)``."""
    t = _utc(end or datetime.now(UTC)) - timedelta(seconds=sum(s for _, s in names_and_seconds))
    out = []
    for name, seconds in names_and_seconds:
        out.append(Phase(name, t, t + timedelta(seconds=seconds)))
        t += timedelta(seconds=seconds)
    return out
