"""Whether a run's numbers can be used: a verdict per measured step and per run, as MLPerf LoadGen marks a result
INVALID, with the reasons as short strings.

A step is

- ``INVALID`` when its numbers do not describe the system and load asked for: it ran shorter than its planned minimum
  (``load.step_duration_s``, a stage's ``duration_s``) or completed fewer requests than ``load.min_requests_per_step``
  (cancelled ones do not count); more than ``load.max_error_share`` of its completed requests failed; or a replica of
  its workload exited before the step ended (it ran on fewer replicas than configured);
- ``DEGRADED`` when the request numbers stand but the server-side view does not: Prometheus exited before the step
  ended, so its metrics are missing or partial;
- ``VALID`` otherwise.

A run's verdict is the worst of its steps' and of run-level events: ``INVALID`` when it did not complete (INTERRUPTED,
FAILED) or measured no step, ``DEGRADED`` when its Prometheus metrics were not saved (``metrics.error``) or Prometheus
exited. Runs and steps recorded before verdicts existed are ``UNKNOWN``: read, never guessed.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

VALID, DEGRADED, INVALID, UNKNOWN = "VALID", "DEGRADED", "INVALID", "UNKNOWN"
ORDER = {UNKNOWN: -1, VALID: 0, DEGRADED: 1, INVALID: 2}
SHORT_TOLERANCE = 0.99  # a step counts as long enough at 99 % of its planned minimum (clock and scheduling slack)
SEPARATOR = "; "  # between the reasons in a table cell


def worst(verdicts) -> str:
    """The worst of ``verdicts`` (INVALID > DEGRADED > VALID); UNKNOWN only when nothing else is known."""
    known = [v for v in verdicts if v in ORDER and v != UNKNOWN]
    return max(known, key=ORDER.__getitem__) if known else UNKNOWN


def _planned(load: dict[str, Any]) -> dict[int, Any]:
    """The planned measured steps of the effective load settings, by index (empty if the settings do not validate)."""
    from gawm_lib.config import LoadConfig
    from gawm_lib.loadgen import schedule

    try:
        cfg = LoadConfig.model_validate(load)
    except ValueError:
        return {}
    trace_span = None if cfg.scenario != "trace" else 0.0  # a trace's length is its own: not checked here
    return {s.index: s for s in schedule.plan(cfg, trace_span) if s.phase == "step"}


def _exit_words(record: dict[str, Any]) -> str:
    how = record.get("signal") or f"code {record.get('exit_code')}"
    return f"exited ({how}) at {str(record.get('at_utc', '?'))[11:23]}"


def judge_steps(table: pd.DataFrame, manifest: dict[str, Any]) -> pd.DataFrame:
    """``table`` (:func:`gawm_lib.summary.summarise` rows of one run) with ``verdict`` and ``verdict_reasons`` (short
    reasons joined by ``"; "``, empty when VALID) from the run's manifest: effective load settings, phases, and the
    exits of replicas (``workloads.<name>.exits``) and Prometheus (``prometheus.exits``)."""
    load = (manifest.get("params") or {}).get("effective", {}).get("load", {})
    planned = _planned(load)
    max_error_share = float(load.get("max_error_share", 0.01))
    phases = {
        (workload, p["step"]): p
        for workload, items in (manifest.get("phases") or {}).items()
        for p in items
        if p.get("phase") == "step"
    }
    prometheus_exits = (manifest.get("prometheus") or {}).get("exits") or []
    verdicts, reasons = [], []
    for row in table.itertuples(index=False):
        workload, step = row.workload, int(row.step)
        bad: list[str] = []
        degraded: list[str] = []
        phase = phases.get((workload, step))
        duration_s = (phase["end_ns"] - phase["start_ns"]) / 1e9 if phase else float(row.duration_s)
        plan = planned.get(step)
        if plan is not None and duration_s < SHORT_TOLERANCE * plan.duration_s:
            bad.append(f"short: {duration_s:.3g} of {plan.duration_s:g} s")
        completed = int(row.sent) - int(row.cancelled)
        if plan is not None and completed < plan.min_requests:
            bad.append(f"few requests: {completed} of {plan.min_requests}")
        if completed <= 0:
            bad.append("no request completed")
        elif row.errors / completed > max_error_share:
            bad.append(f"errors {100 * row.errors / completed:.3g} % > {100 * max_error_share:g} %")
        end_unix_ns = phase["end_unix_ns"] if phase else math.inf  # no phase (interrupted): any exit counts
        for record in (manifest.get("workloads", {}).get(workload) or {}).get("exits") or []:
            if record.get("at_unix_ns", 0) < end_unix_ns:
                bad.append(f"replica {record.get('replica', '?')} {_exit_words(record)}")
        for record in prometheus_exits:
            if record.get("at_unix_ns", 0) < end_unix_ns:
                degraded.append(f"prometheus {_exit_words(record)}")
        verdicts.append(INVALID if bad else DEGRADED if degraded else VALID)
        reasons.append(SEPARATOR.join(bad + degraded))
    return table.assign(verdict=verdicts, verdict_reasons=reasons)


def judge_run(manifest: dict[str, Any], steps: pd.DataFrame | None) -> tuple[str, list[str]]:
    """The run's verdict and reasons from its step ``steps`` (with ``verdict`` columns; None: no records) and its
    manifest (final status, metrics, Prometheus exits)."""
    verdict, reasons = VALID, []

    def add(level: str, why: str) -> None:
        nonlocal verdict
        verdict = worst([verdict, level])
        reasons.append(why)

    status = manifest.get("status")
    if status in ("INTERRUPTED", "FAILED"):
        add(INVALID, f"run {status}")
    if steps is None or steps.empty:
        add(INVALID, "no measured step")
    else:
        for row in steps.itertuples(index=False):
            if row.verdict not in (VALID, UNKNOWN):
                add(row.verdict, f"{row.workload} step {int(row.step)} {row.verdict}: {row.verdict_reasons}")
    metrics = manifest.get("metrics") or {}
    if "error" in metrics:
        add(DEGRADED, f"metrics not saved: {str(metrics['error']).splitlines()[0][:200]}")
    for record in (manifest.get("prometheus") or {}).get("exits") or []:
        if not any(r.startswith("prometheus") for r in reasons):
            add(DEGRADED, f"prometheus {_exit_words(record)}")
    return verdict, reasons


def step_verdicts(summary_csv) -> pd.DataFrame:
    """``workload``, ``step``, ``verdict``, ``verdict_reasons`` of a run's ``summary.csv`` (UNKNOWN for a run recorded
    before verdicts or without the file)."""
    columns = ["workload", "step", "verdict", "verdict_reasons"]
    try:
        table = pd.read_csv(summary_csv, keep_default_na=False)
    except (OSError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=columns)
    if "verdict" not in table:
        table = table.assign(verdict=UNKNOWN, verdict_reasons="recorded before verdicts")
    return table[columns].astype({"step": int})


def step_phases(run) -> list[dict[str, Any]]:
    """The load steps of ``run`` (its manifest's ``phases`` of kind ``step``), each with its ``workload`` and, from
    ``summary.csv``, its ``verdict`` (UNKNOWN where the table has none): what :func:`gawm_lib.plots.metric_timeline`
    shades."""
    judged = step_verdicts(run.path / "summary.csv")
    verdict = dict(zip(zip(judged["workload"], judged["step"]), judged["verdict"]))
    return [
        {**phase, "workload": workload, "verdict": verdict.get((workload, int(phase.get("step", -1))), UNKNOWN)}
        for workload, phases in (run.manifest.get("phases") or {}).items()
        for phase in phases
        if phase.get("phase") == "step"
    ]


def write_step_table(run, slo_ms: float | None = None) -> pd.DataFrame:
    """The per-step summary of ``run``'s request records with each step's verdict: written to ``summary.csv``
    (atomically) and to ``results.json`` (``steps``, with the request count and errors by kind)."""
    from gawm_lib import runs, summary

    requests = summary.read_requests(run.requests_path)
    table = judge_steps(summary.summarise(requests, slo_ms=slo_ms), run.refresh())
    runs.write_atomic(run.path / "summary.csv", table.to_csv(index=False))
    run.record(requests=len(requests), errors=summary.errors_by_kind(requests), steps=table.to_dict(orient="records"))
    return table


def finalise(run) -> tuple[str, list[str]]:
    """A finished run's verdict and reasons; its step table (``summary.csv``) is written again with the step verdicts
    where it has request records."""
    manifest = run.refresh()
    steps = None
    if run.requests_path.exists() and any(run.requests_path.glob("*.parquet")):
        slo_ms = (manifest.get("params") or {}).get("effective", {}).get("load", {}).get("slo_ms")
        steps = write_step_table(run, slo_ms)
    return judge_run(manifest, steps)
