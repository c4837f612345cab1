"""Benchmark: do the workload models predict held-out runs? And how fast is the analysis of 10 million records?

For each workload, on the local CPU backend (one replica, one torch thread):

1. *fit runs*: closed-loop steps at 1, B and 2B users; the server reports each batch's size and compute time, which
   give the batch service-time model ``s(b) = max(floor, alpha*b + beta)`` (:func:`gawm_lib.models.fit_batch_latency`),
   and the client-side overhead (latency minus server queue and compute) at one user;
2. *held-out runs*: open-loop Poisson at 10 %, 30 %, 50 %, 70 % and 85 % of the fitted capacity ``B / s(B)``;
3. *prediction*: :func:`gawm_lib.models.predict_batching` at each held-out rate, plus the measured overhead;
   MAPE of throughput, p50 and p95 against the held-out records.

Then 10 million synthetic request records go through :func:`gawm_lib.summary.summarise` and
:func:`gawm_lib.plots.latency_cdf`, timed. Everything is written to ``data/benchmarks/models.json`` (and the
predicted-vs-measured figure next to it). Run it on a quiet machine::

    python -m gawm_lib.bench.models_bench                # all three workloads, about 15 minutes on 2 cores
    python -m gawm_lib.bench.models_bench --quick        # shorter steps, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gawm_lib import paths, plots, runs, summary
from gawm_lib.backends import open_backend
from gawm_lib.config import BackendConfig, LoadConfig, WorkloadConfig
from gawm_lib.loadgen import LoadSpec, run_load, write_bodies
from gawm_lib.models import fit_batch_latency, mape, predict_batching
from gawm_lib.workloads import build_workload

UTILISATIONS = (0.1, 0.3, 0.5, 0.7, 0.85)
# Batching settings per workload: what a user of the CPU backend would pick (a few items, a short delay).
SETTINGS = {
    "resnet50": {"max_batch_size": 4, "max_queue_delay_ms": 5},
    "distilbert": {"max_batch_size": 8, "max_queue_delay_ms": 5},
    "whisper": {"max_batch_size": 4, "max_queue_delay_ms": 5, "decode_tokens": 8},
}


def _load(workload: str, backend, bodies: Path, out: Path, work: Path, **load: Any) -> tuple[pd.DataFrame, dict]:
    spec = LoadSpec(workload=workload, model=workload, targets=[r.url for r in backend.replicas],
                    bodies_path=str(bodies), out_dir=str(out), load=LoadConfig(**load).model_dump())
    result = run_load(spec, work, progress=False)
    return summary.read_requests(out), result


def validate_workload(name: str, work: Path, quick: bool) -> dict[str, Any]:
    settings = SETTINGS[name]
    cfg = WorkloadConfig(name=name, threads=1, warmup_batches=2, **settings)
    workload = build_workload(cfg)
    items = workload.sample_items(32, seed=11)
    bodies = write_bodies(work / f"{name}-bodies.jsonl", [workload.request_body([i]) for i in items])
    big = cfg.max_batch_size
    delay_s = cfg.max_queue_delay_ms / 1e3
    fit_s = 4.0 if quick else 12.0
    with open_backend(cfg, BackendConfig(replicas=1), work / f"{name}-logs") as backend:
        fit_rows, _ = _load(name, backend, bodies, work / f"{name}-fit.parquet", work, scenario="closed_loop",
                            levels=[1, big, 2 * big], step_duration_s=fit_s, min_requests_per_step=8, warmup_s=2)
        fit_rows = fit_rows[(fit_rows["phase"] == "step") & (fit_rows["error"] == "")]
        service = fit_batch_latency(fit_rows["batch_size"], fit_rows["server_compute_ns"] / 1e9)
        single = fit_rows[fit_rows["level"] == 1]
        overhead_s = float(np.median((single["done_ns"] - single["sent_ns"] - single["server_queue_ns"]
                                      - single["server_compute_ns"]) / 1e9))
        capacity = big / service.predict(big)
        held_out = []
        for i, u in enumerate(UTILISATIONS):
            rate = u * capacity
            duration = max(10.0 if quick else 30.0, (40 if quick else 200) / rate)
            rows, _ = _load(name, backend, bodies, work / f"{name}-rate{i}.parquet", work, scenario="poisson",
                            levels=[rate], step_duration_s=min(duration, 40 if quick else 120), warmup_s=2,
                            min_requests_per_step=1, arrival_seed=100 + i, max_step_duration_s=180)
            step = summary.summarise(rows).iloc[0]
            predicted = predict_batching(rate, service, big, delay_s)
            held_out.append({
                "utilisation": u, "rate_rps": rate, "requests": int(step["sent"]), "errors": int(step["errors"]),
                "measured": {"throughput_rps": step["throughput_rps"], "p50_ms": step["p50_ms"],
                             "p95_ms": step["p95_ms"]},
                "predicted": {"throughput_rps": rate, "p50_ms": (predicted.p50_s + overhead_s) * 1e3,
                              "p95_ms": (predicted.p95_s + overhead_s) * 1e3},
                "mean_batch_size": {"measured": float(rows[rows["phase"] == "step"]["batch_size"].mean()),
                                    "predicted": predicted.mean_batch_size},
            })
    errors = {m: mape([h["measured"][m] for h in held_out], [h["predicted"][m] for h in held_out])
              for m in ("throughput_rps", "p50_ms", "p95_ms")}
    return {
        "workload": name, "settings": cfg.model_dump(), "weights": "random",
        "service_model": {"alpha_s": service.alpha, "beta_s": service.beta, "floor_s": service.floor,
                          "alpha_se_s": service.alpha_se, "beta_se_s": service.beta_se, "knee": service.knee,
                          "fit_points": int(len(fit_rows))},
        "client_overhead_ms": overhead_s * 1e3, "capacity_rps": capacity, "held_out": held_out,
        "mape_pct": errors,
    }


def analysis_speed(n: int = 10_000_000, seed: int = 0) -> dict[str, Any]:
    """Seconds to turn ``n`` request records into a percentile table and a latency CDF figure."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    scheduled = np.cumsum(rng.exponential(1e5, n)).astype(np.int64)
    records = pd.DataFrame({
        "workload": pd.Categorical(rng.choice(["resnet50", "distilbert", "whisper"], n)),
        "phase": "step", "step": rng.integers(0, 10, n), "level": 1.0, "error": "",
        "scheduled_ns": scheduled, "sent_ns": scheduled, "done_ns": scheduled + rng.lognormal(16, 0.5, n).astype(np.int64),
    })
    made = time.perf_counter() - start
    records["latency_ms"] = (records["done_ns"] - records["scheduled_ns"]) / 1e6
    start = time.perf_counter()
    table = summary.summarise(records)
    with tempfile.TemporaryDirectory() as tmp:
        plots.save_figure(plots.latency_cdf(records), "cdf_10m", ["synthetic"], "models_bench", out_dir=Path(tmp))
    elapsed = time.perf_counter() - start
    return {"records": n, "seconds": round(elapsed, 2), "goal_seconds": 10.0, "met": elapsed <= 10.0,
            "table_rows": len(table), "synthesis_seconds": round(made, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--quick", action="store_true", help="short steps: a smoke test, not a measurement")
    parser.add_argument("--out", type=Path, default=paths.benchmarks_dir() / "models.json")
    parser.add_argument("--records", type=int, default=10_000_000)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = runs.utc_now()
    with tempfile.TemporaryDirectory(prefix="gawm-models-bench-") as tmp:
        results = [validate_workload(name, Path(tmp), args.quick) for name in args.workloads]
    speed = analysis_speed(args.records)
    report = {
        "benchmark": "models", "schema_version": 1, "quick": args.quick, "started_utc": started.isoformat(),
        "finished_utc": runs.utc_now().isoformat(), "git": runs.git_info(), "host": runs.host_info(),
        "packages": runs.package_versions(), "threads": {"torch_per_server": 1, **runs.thread_settings()},
        "command": "python -m gawm_lib.bench.models_bench" + (" --quick" if args.quick else ""),
        "goal": "held-out p95 MAPE <= 10 % from 10 % to 85 % utilisation, per workload",
        "workloads": results, "analysis_speed": speed,
        "p95_goal_met": {r["workload"]: r["mape_pct"]["p95_ms"] <= 10.0 for r in results},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    rows = [{"workload": r["workload"], "metric": m.removesuffix("_ms").removesuffix("_rps").replace("throughput",
             "throughput"), "measured": h["measured"][m] / (1e3 if m.endswith("_ms") else 1),
             "predicted": h["predicted"][m] / (1e3 if m.endswith("_ms") else 1)}
            for r in results for h in r["held_out"] for m in ("throughput_rps", "p50_ms", "p95_ms")]
    fig = plots.predicted_vs_measured(pd.DataFrame(rows))
    plots.save_figure(fig, args.out.stem + "_predicted_vs_measured", [], "gawm_lib/bench/models_bench.py",
                      {"quick": args.quick}, out_dir=args.out.parent)
    for r in results:
        print(f"{r['workload']:>10}: capacity {r['capacity_rps']:.1f} req/s, MAPE p50 {r['mape_pct']['p50_ms']:.1f} %, "
              f"p95 {r['mape_pct']['p95_ms']:.1f} %")
    print(f"analysis of {speed['records']:,} records: {speed['seconds']} s (goal <= 10 s)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
