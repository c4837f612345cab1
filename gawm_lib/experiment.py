"""One experiment: for each workload, start its replicas, drive the load sweep, record everything in the run directory.

Prometheus (when enabled) is started once for the experiment, scrapes every replica while it lives, and is queried for
each load phase at the end; if that fails the load records are kept and the error is written to the manifest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from gawm_lib import runs, summary
from gawm_lib.backends import open_backend
from gawm_lib.config import ExperimentConfig, apply_override, validate_params
from gawm_lib.loadgen import LoadSpec, run_load, write_bodies
from gawm_lib.workloads import build_workload, sample_payloads

log = logging.getLogger("gawm.experiment")


def _prometheus(cfg: ExperimentConfig, run: runs.Run):
    if not cfg.prometheus.enabled:
        return contextlib.nullcontext(None)
    from gawm_lib import prom

    return prom.LocalPrometheus(workdir=run.path / "prometheus", scrape_interval_s=cfg.prometheus.scrape_interval_s,
                                binary=cfg.prometheus.binary)


def measure(cfg: ExperimentConfig, run: runs.Run, progress: bool = True) -> pd.DataFrame:
    """Run the load sweep of every workload into ``run``; return the per-step summary (also in ``summary.csv``)."""
    load_dir = run.path / "load"
    results: list[dict[str, Any]] = []
    with _prometheus(cfg, run) as prometheus:
        if prometheus is not None:
            run.update(prometheus={"url": prometheus.url, "version": prometheus.version,
                                   "config": prometheus.config_text})
        for workload_cfg in cfg.workloads:
            workload = build_workload(workload_cfg)
            items = sample_payloads(workload, cfg.load)
            bodies = write_bodies(load_dir / f"{workload.name}-bodies.jsonl", [workload.request_body([i]) for i in items])
            with open_backend(workload_cfg, cfg.backend, run.logs_dir) as backend:
                replicas = backend.replicas
                meta = httpx.get(f"{replicas[0].url}/v2/models/{workload.name}", timeout=10).json()
                record = {"replicas": [r.address for r in replicas], "weights": meta["parameters"]["weights"]}
                if getattr(backend, "placement", None):  # cores / GPU per local replica; pod, node, GPU on kubernetes
                    record["placement"] = [p.to_dict() for p in backend.placement]
                if getattr(backend, "facts", None):
                    record["cluster"] = backend.facts
                run.update(workloads={workload.name: record})
                if prometheus is not None:
                    prometheus.set_targets([(r.address, {"workload": r.workload, "replica": str(r.index)})
                                            for r in replicas])
                    prometheus.wait_for_targets(len(replicas))
                spec = LoadSpec(workload=workload.name, model=workload.name, targets=[r.url for r in replicas],
                                bodies_path=str(bodies), out_dir=str(run.requests_path),
                                load=cfg.load.model_dump())
                result = run_load(spec, load_dir, progress=progress)
                results.append(result)
                if prometheus is not None:  # let the last step be scraped before the replicas go
                    time.sleep(2 * cfg.prometheus.scrape_interval_s)
            if result["interrupted"]:
                raise KeyboardInterrupt(f"load of {workload.name} was interrupted")
        run.update(phases={r["workload"]: r["phases"] for r in results})
        if prometheus is not None:
            _save_metrics(prometheus, run, results, cfg)
    return summarise_run(run, slo_ms=cfg.load.slo_ms)


def _save_metrics(prometheus, run: runs.Run, results: list[dict[str, Any]], cfg: ExperimentConfig) -> None:
    from gawm_lib import prom

    on_gpu = any(w.device == "cuda" for w in cfg.workloads)
    names = [n for n in prom.RUN_QUERIES if on_gpu or prom.CATALOGUE[n].source != "nvml"]  # no GPU, no NVML series
    try:
        frame = prom.query_run_phases(prometheus.url, results, step_s=cfg.prometheus.scrape_interval_s,
                                      query_names=names)
        prom.save_run_metrics(run.path, frame)
        run.update(metrics={"rows": len(frame), "queries": sorted(frame["query"].unique()) if len(frame) else []})
    except prom.PrometheusQueryError as exc:  # keep the load records whatever happens to the metrics
        log.error("metrics not saved: %s", exc)
        run.update(metrics={"error": str(exc)})


def summarise_run(run: runs.Run, slo_ms: float | None = None) -> pd.DataFrame:
    """Per-step summary of a run's request records; writes ``summary.csv`` and records totals in ``results.json``."""
    requests = summary.read_requests(run.requests_path)
    table = summary.summarise(requests, slo_ms=slo_ms)
    table.to_csv(run.path / "summary.csv", index=False)
    run.record(requests=len(requests), errors=summary.errors_by_kind(requests),
               steps=table.to_dict(orient="records"))
    return table


def run_experiment(cfg: ExperimentConfig, requested: dict | None = None, run_dir: str | Path = "",
                   progress: bool = True) -> tuple[runs.Run, pd.DataFrame]:
    """Measure into ``run_dir`` (a run created by ``gawm run``, which finalises it) or into a new run of its own."""
    if run_dir:
        run = runs.load_run(run_dir)
        return run, measure(cfg, run, progress)
    with runs.started_run(cfg.name, requested or cfg.model_dump(mode="json"), cfg.model_dump(mode="json")) as run:
        return run, measure(cfg, run, progress)


def point_settings(params: dict, points: list[dict[str, Any]], source: str = "<params>"
                   ) -> list[tuple[dict, ExperimentConfig]]:
    """``params`` with each point's settings (key path -> value, as ``-p`` overrides) applied, validated: every
    point's (requested tree, settings), or :class:`gawm_lib.config.ConfigError` naming the point."""
    out = []
    for point in points:
        tree = params
        for key, value in point.items():
            tree = apply_override(tree, f"{key}={json.dumps(value)}")
        described = ", ".join(f"{k}={v}" for k, v in point.items())
        out.append((tree, validate_params(tree, source=f"{source} at {described}")))
    return out


def run_points(params: dict, points: list[dict[str, Any]], source: str = "<params>",
               progress: bool = True) -> list[runs.Run]:
    """One run per point of a study (``points``: key path -> value applied to ``params``), in order; all are validated
    before the first starts, and each run records its point in ``results.json``."""
    settings = point_settings(params, points, source)
    done = []
    for point, (tree, cfg) in zip(points, settings):
        run, _ = run_experiment(cfg, requested=tree, progress=progress)
        run.record(point=point)
        done.append(run)
    return done
