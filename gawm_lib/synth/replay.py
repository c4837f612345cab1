"""Closing the loop: a synthetic trace replayed with the load generator's ``trace`` scenario against the real server,
configured as the source run was (same workload settings, backend and payload set), and its latency set beside the
source run's, a held-out run's and a repeat of the real configuration (how far two real runs differ is the yardstick
for how far a replay may).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gawm_lib import runs, summary


def replay_params(
    source: runs.Run, workload: str, trace_path: str | Path, name: str = "synth-replay", prometheus: bool = False
) -> dict:
    """Settings (a params tree, as in ``params/*.yaml``) that replay ``trace_path`` against ``workload`` served as in
    ``source``: its workload settings and backend, its payload set (``payload_count``, ``payload_seed``: the ids the
    trace names), no warm-up (the trace is all measured), Prometheus as asked."""
    effective = source.manifest["params"]["effective"]
    served = [w for w in effective["workloads"] if w["name"] == workload]
    if not served:
        raise ValueError(f"run {source.id} did not serve {workload!r}")
    load = effective["load"]
    tree = {
        "name": name,
        "description": f"replay of a synthetic {workload} trace; configuration of {source.id}",
        "figures_notebook": None,
        "workloads": served,
        "backend": effective["backend"],
        "load": {
            "scenario": "trace",
            "trace_path": str(trace_path),
            "warmup_s": 0.0,
            "payload_count": load["payload_count"],
            "payload_seed": load["payload_seed"],
            "request_timeout_s": load.get("request_timeout_s", 60.0),
        },
        "prometheus": {**(effective.get("prometheus") or {}), "enabled": bool(prometheus)},
    }
    return tree


def step_schedule(traces, run_id: str, workload: str) -> list[tuple[float, float]]:
    """``[(level, duration_s)]`` of a run's measured steps of ``workload`` (from its ``arrivals`` table: first arrival
    to last, plus one mean gap): the load profile a synthetic trace copies to be compared with that run."""
    rows = traces.arrivals[(traces.arrivals["run_id"] == run_id) & (traces.arrivals["workload"] == workload)]
    out = []
    for _, g in rows.groupby("step", sort=True):
        t = g["step_s"].to_numpy()
        duration = float(t.max() - t.min()) * len(t) / (len(t) - 1) if len(t) > 1 else 1.0
        out.append((float(g["level"].iloc[0]), duration))
    return out


def replay(
    source: runs.Run | str, workload: str, trace_path: str | Path, prometheus: bool = False, progress: bool = False
) -> runs.Run:
    """Replay a trace file in a new run (``gawm_lib.experiment.run_experiment``) and return the run."""
    from gawm_lib import config, experiment

    source = runs.load_run(source) if not isinstance(source, runs.Run) else source
    tree = replay_params(source, workload, trace_path, prometheus=prometheus)
    cfg = config.validate_params(tree, source=f"replay of {trace_path}")
    run, _ = experiment.run_experiment(cfg, requested=tree, progress=progress)
    run.record(replay={"source_run": source.id, "workload": workload, "trace_path": str(trace_path)})
    return run


def latency_table(roles: dict[str, str], workload: str) -> pd.DataFrame:
    """One row per run (``roles``: run id -> role such as source, held-out, repeat, replay): measured requests,
    offered rate [req/s] (requests over the span of their schedule), ok share, p50 and p95 latency [ms] from the
    schedule, pooled over the measured steps, and how far each p50 and p95 lies from the source run's [%]."""
    rows = []
    for run_id, role in roles.items():
        run = runs.load_run(run_id)
        frame = summary.read_requests(run.requests_path)
        frame = frame[(frame["phase"] == "step") & (frame["workload"] == workload)]
        ok = frame[frame["error"] == ""]
        span_s = (frame["scheduled_ns"].max() - frame["scheduled_ns"].min()) / 1e9 if len(frame) > 1 else np.nan
        rows.append(
            {
                "role": role,
                "run_id": run.id,
                "workload": workload,
                "requests": len(frame),
                "offered_rps": (len(frame) - 1) / span_s if span_s and span_s > 0 else np.nan,
                "ok_share": len(ok) / len(frame) if len(frame) else np.nan,
                "p50_ms": float(np.percentile(ok["latency_ms"], 50)) if len(ok) else np.nan,
                "p95_ms": float(np.percentile(ok["latency_ms"], 95)) if len(ok) else np.nan,
            }
        )
    table = pd.DataFrame(rows)
    source = table[table["role"] == "source"]
    for q in ("p50", "p95"):
        base = float(source[f"{q}_ms"].iloc[0]) if len(source) else np.nan
        table[f"{q}_vs_source_pct"] = 100 * (table[f"{q}_ms"] / base - 1)
    return table
