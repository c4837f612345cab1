"""One experiment: for each workload, start its replicas, drive the load sweep, record everything in the run directory.

Prometheus (when enabled) is started once for the experiment, scrapes every replica while it lives, and is queried for
each load phase at the end; if that fails the load records are kept and the error is written to the manifest. A
replica or Prometheus that exits before it is stopped is recorded in the manifest (``workloads.<name>.exits``,
``prometheus.exits``: time, exit code or signal), and the steps it touched get a verdict other than VALID
(:mod:`gawm_lib.verdicts`). SIGTERM and SIGHUP interrupt a run as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from gawm_lib import processes, runs, verdicts
from gawm_lib.backends import open_backend
from gawm_lib.config import ConfigError, ExperimentConfig, apply_override, preflight, validate_params
from gawm_lib.loadgen import LoadSpec, run_load, write_bodies
from gawm_lib.workloads import build_workload, sample_payloads

log = logging.getLogger("gawm.experiment")


def _prometheus(cfg: ExperimentConfig, run: runs.Run):
    if not cfg.prometheus.enabled:
        return contextlib.nullcontext(None)
    from gawm_lib import prom
    from gawm_lib.cluster.monitoring import run_scrape_configs  # kubernetes: the kubelets' cAdvisor

    return prom.LocalPrometheus(
        workdir=run.path / "prometheus",
        scrape_interval_s=cfg.prometheus.scrape_interval_s,
        binary=cfg.prometheus.binary,
        scrape_configs=run_scrape_configs(cfg.backend, cfg.prometheus.binary),
    )


def measure(cfg: ExperimentConfig, run: runs.Run, progress: bool = True) -> pd.DataFrame:
    """Run the load sweep of every workload into ``run``; return the per-step summary (also in ``summary.csv``)."""
    load_dir = run.path / "load"
    results: list[dict[str, Any]] = []
    with _prometheus(cfg, run) as prometheus:
        if prometheus is not None:
            run.update(
                prometheus={"url": prometheus.url, "version": prometheus.version, "config": prometheus.config_text}
            )
        try:
            _measure_workloads(cfg, run, prometheus, results, load_dir, progress)
        finally:
            if prometheus is not None and prometheus.exits():
                log.error("Prometheus exited during the run: %s", prometheus.exits())
                run.update(prometheus={"exits": prometheus.exits()})
        run.update(phases={r["workload"]: r["phases"] for r in results})
        if prometheus is not None:
            _save_metrics(prometheus, run, results, cfg)
    return summarise_run(run, slo_ms=cfg.load.slo_ms)


def _measure_workloads(cfg: ExperimentConfig, run: runs.Run, prometheus, results: list, load_dir: Path, progress):
    """Each workload in turn: its replicas, its load; replicas that exited before their stop are recorded."""
    for workload_cfg in cfg.workloads:
        workload = build_workload(workload_cfg)
        items = sample_payloads(workload, cfg.load)
        bodies = write_bodies(load_dir / f"{workload.name}-bodies.jsonl", [workload.request_body([i]) for i in items])
        with open_backend(workload_cfg, cfg.backend, run.logs_dir) as backend:
            replicas = backend.replicas
            external: dict[str, Any] = {}  # backend.kind external: servers gawm did not start
            if cfg.backend.kind == "external":
                from gawm_lib.backends.external import prepare

                bodies, external, record = prepare(backend, workload, items, load_dir)
            else:
                meta = httpx.get(f"{replicas[0].url}/v2/models/{workload.name}", timeout=10).json()
                record = {"replicas": [r.address for r in replicas], "weights": meta["parameters"]["weights"]}
            if getattr(backend, "placement", None):  # cores / GPU per local replica; pod, node, GPU on kubernetes
                record["placement"] = [p.to_dict() for p in backend.placement]
            if getattr(backend, "facts", None):
                record["cluster"] = backend.facts
            run.update(workloads={workload.name: record})
            try:
                if prometheus is not None and cfg.backend.kind == "external":  # what it can scrape; never fails the run
                    run.update(workloads={workload.name: {**record, "scrape": backend.watch(prometheus)}})
                elif prometheus is not None:
                    prometheus.set_targets(
                        [(r.address, {"workload": r.workload, "replica": str(r.index)}) for r in replicas]
                    )
                    prometheus.wait_for_targets(len(replicas))
                spec = LoadSpec(
                    workload=workload.name,
                    model=workload.name,
                    targets=[r.url for r in replicas],
                    bodies_path=str(bodies),
                    out_dir=str(run.requests_path),
                    load=cfg.load.model_dump(),
                    **external,
                )
                result = run_load(spec, load_dir, progress=progress)
                results.append(result)
                run.update(phases={workload.name: result["phases"]})  # kept should a later workload fail
                if prometheus is not None:  # let the last step be scraped before the replicas go
                    time.sleep(2 * cfg.prometheus.scrape_interval_s)
            finally:
                exits = backend.exits() if hasattr(backend, "exits") else []
                if exits:
                    log.error("%s: replica(s) exited during the run: %s", workload.name, exits)
                    run.update(workloads={workload.name: {**record, "exits": exits}})
        if result["interrupted"]:
            raise KeyboardInterrupt(f"load of {workload.name} was interrupted")


def _save_metrics(prometheus, run: runs.Run, results: list[dict[str, Any]], cfg: ExperimentConfig) -> None:
    from gawm_lib import prom

    on_gpu = any(w.device == "cuda" for w in cfg.workloads)
    names = [n for n in prom.RUN_QUERIES if on_gpu or prom.CATALOGUE[n].source != "nvml"]  # no GPU, no NVML series
    on_kubernetes = cfg.backend.kind == "kubernetes"
    if on_kubernetes:
        from gawm_lib.cluster import monitoring

        names += monitoring.CONTAINER_QUERIES
    try:
        with warnings.catch_warnings(record=True) as caught:  # counted in the manifest, not one warning per query
            warnings.simplefilter("always", prom.EmptyQueryWarning)
            frame = prom.query_run_phases(
                prometheus.url,
                results,
                step_s=cfg.prometheus.scrape_interval_s,
                query_names=[n for n in names if prom.CATALOGUE[n].source != "cadvisor"],
            )
            if on_kubernetes:  # per pod and container, from the kubelets' cAdvisor
                containers = monitoring.query_container_phases(
                    prometheus.url, results, cfg.backend.namespace, step_s=cfg.prometheus.scrape_interval_s
                )
                frame = pd.concat([frame, containers], ignore_index=True) if len(containers) else frame
        empty: dict[str, list[str]] = {}
        for item in caught:
            if isinstance(item.message, prom.EmptyQueryWarning):
                name = getattr(item.message, "query_name", str(item.message))
                empty.setdefault(name, []).extend(getattr(item.message, "phases", []))
            else:  # anything else is shown as it would have been
                warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
        prom.save_run_metrics(run.path, frame)
        run.update(
            metrics={
                "rows": len(frame),
                "queries": sorted(frame["query"].unique()) if len(frame) else [],
                "asked": len(names),
                "empty_queries": empty,
            }
        )
        log.info(metrics_note(run))
    except prom.PrometheusQueryError as exc:  # keep the load records whatever happens to the metrics
        log.error("metrics not saved: %s", exc)
        run.update(metrics={"error": str(exc)})


LEVEL_UNITS = {"closed_loop": "users", "offline": "requests queued", "poisson": "req/s", "constant_rate": "req/s"}


def settings_line(cfg: ExperimentConfig) -> str:
    """What a run of ``cfg`` will do, in one line: workloads (weights, device, threads, batching), replicas and where,
    the load (scenario, levels, step length, warm-up) and whether Prometheus records metrics. The full settings are
    in the run's manifest."""
    workloads = "; ".join(
        f"{w.name} ({w.weights} weights, {w.device}, {w.threads} thread{'s' if w.threads > 1 else ''}, "
        f"max batch {w.max_batch_size})"
        for w in cfg.workloads
    )
    backend = cfg.backend
    where = f"{backend.kind}" + (f", {backend.placement}" if backend.placement != "none" else "")
    if backend.kind == "external":  # servers gawm did not start: their settings are theirs, one replica per endpoint
        workloads = "; ".join(f"{w.name} payloads" for w in cfg.workloads)
        where = f"external: {', '.join(e.url for e in backend.endpoints)}"
        backend = backend.model_copy(update={"replicas": len(backend.endpoints)})
    load = cfg.load
    if load.scenario in ("stages", "trace"):
        levels = f"{len(load.stages)} stages" if load.scenario == "stages" else f"trace {load.trace_path}"
    elif load.scenario == "single_stream":
        levels = "one request at a time"
    else:
        unit = LEVEL_UNITS.get(load.scenario, "")
        levels = "levels " + ", ".join(f"{v:g}" for v in load.levels) + (f" {unit}" if unit else "")
    step = f"steps of at least {load.step_duration_s:g} s"
    if load.min_requests_per_step > 1:
        step += f" and {load.min_requests_per_step} requests"
    extra = f", {load.payload_audio_s:g} s clips" if load.payload_audio_s else ""
    return (
        f"{cfg.name}: {workloads}; {backend.replicas} replica{'s' if backend.replicas > 1 else ''} ({where}); "
        f"{load.scenario}, {levels}, {step} (at most {load.max_step_duration_s:g} s), warm-up "
        f"{load.warmup_s:g} s{extra}; Prometheus {'on' if cfg.prometheus.enabled else 'off'}"
    )


def metrics_note(run: runs.Run) -> str:
    """One line on the Prometheus metrics a run saved: how many queries, and how many returned no series in some
    phase (named, with the phases; the manifest's ``metrics.empty_queries``). Usually the warm-up: a rate needs two
    scrapes inside its window, and GPU or GC queries have no series on a CPU server."""
    metrics = run.manifest.get("metrics")
    if not metrics:
        return "Prometheus: not enabled for this run (prometheus.enabled), no metrics saved"
    if "error" in metrics:
        return f"Prometheus: metrics not saved: {metrics['error']}"
    empty = metrics.get("empty_queries") or {}
    asked = metrics.get("asked", len(metrics.get("queries", [])))
    line = f"Prometheus: {metrics['rows']} points of {len(metrics.get('queries', []))} queries saved"
    if not empty:
        return line + f"; all {asked} queries returned series in every phase"
    by_phases: dict[str, list[str]] = {}
    for name, phases in empty.items():
        by_phases.setdefault(", ".join(dict.fromkeys(phases)), []).append(name)
    where = "; ".join(f"{', '.join(names)} in {phases}" for phases, names in by_phases.items())
    return line + f"; {len(empty)} of {asked} queries returned no series in some phase ({where})"


def summarise_run(run: runs.Run, slo_ms: float | None = None) -> pd.DataFrame:
    """Per-step summary of a run's request records with each step's verdict (``verdict``, ``verdict_reasons``:
    :func:`gawm_lib.verdicts.judge_steps`); writes ``summary.csv`` and records totals in ``results.json``."""
    return verdicts.write_step_table(run, slo_ms)


def run_experiment(
    cfg: ExperimentConfig, requested: dict | None = None, run_dir: str | Path = "", progress: bool = True
) -> tuple[runs.Run, pd.DataFrame]:
    """Measure into ``run_dir`` (a run created by ``gawm run``, which finalises it) or into a new run of its own.

    First the preflight (:func:`gawm_lib.config.preflight`): what the settings need of this machine, before anything
    starts; a :class:`gawm_lib.config.ConfigError` lists what is missing."""
    preflight(cfg, source="settings")
    with processes.interruptible():  # SIGTERM, SIGHUP: stop as for Ctrl-C (records kept, replicas stopped)
        if run_dir:
            run = runs.load_run(run_dir)
            return run, measure(cfg, run, progress)
        with runs.started_run(cfg.name, requested or cfg.model_dump(mode="json"), cfg.model_dump(mode="json")) as run:
            return run, measure(cfg, run, progress)


def point_settings(
    params: dict, points: list[dict[str, Any]], source: str = "<params>"
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


def run_points(
    params: dict, points: list[dict[str, Any]], source: str = "<params>", progress: bool = True
) -> list[runs.Run]:
    """One run per point of a study (``points``: key path -> value applied to ``params``), in order; all are validated
    before the first starts (settings and preflight), and each run records its point in ``results.json``."""
    settings = point_settings(params, points, source)
    problems = []
    for point, (_, cfg) in zip(points, settings):
        try:
            preflight(cfg, source=f"{source} at {', '.join(f'{k}={v}' for k, v in point.items())}")
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    done = []
    for point, (tree, cfg) in zip(points, settings):
        run, _ = run_experiment(cfg, requested=tree, progress=progress)
        run.record(point=point)
        done.append(run)
    return done
