"""A replica-scaling study's small, committable report, rebuilt from its run ids: what the H200 study keeps in git.

``python -m gawm_lib.bench.study_report --suite h200-scaling --out data/benchmarks/h200`` (or ``--run-ids A B ...``)
reads the runs under ``GAWM_RAW_DIR`` (raw request records and Prometheus frames stay there, out of git) and writes:

- ``steps.csv``: one row per (run, step): replicas, users, throughput, latency percentiles, the servers' median
  compute time and batch size, and per step from Prometheus: GPU utilisation, memory, power and energy per request;
- ``scaling.csv``: each run's highest-load step against Mean Value Analysis from the 1-replica throughput, twice:
  ``MVA-1`` (the replicas share one station: the GPU-bound case) and ``MVA-R`` (each replica is a station of its own:
  the bound when each replica's own CPU work, e.g. JPEG decoding, limits it);
- ``validation.csv``: the batch-service model fitted on the 1-replica run (``gawm_lib.analysis``) predicting every
  step of the other runs, with each point's error;
- figures (PDF + PNG + provenance JSON): latency vs throughput per replica count, and scaling with both MVA bounds;
- ``report.json``: run ids, each run's commit and machine, MAPE per metric, and the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gawm_lib import analysis, paths, plots, runs, suite

GPU_QUERIES = {"gpu_util_nvml": "gpu_util", "gpu_memory_used_nvml": "gpu_memory_bytes", "gpu_power_nvml": "gpu_power_w",
               "energy_per_request_nvml": "energy_per_request_j"}


def step_metrics(run: runs.Run) -> pd.DataFrame:
    """Mean of each GPU series per (workload, step) over the step's phase; empty without Prometheus frames."""
    path = run.path / "metrics" / "metrics.parquet"
    if not path.is_file():
        return pd.DataFrame(columns=["run_id", "workload", "step"])
    frame = pd.read_parquet(path)
    frame = frame[(frame["phase"] == "step") & frame["query"].isin(list(GPU_QUERIES))]
    wide = frame.groupby(["workload", "step", "query"])["value"].mean().unstack("query").rename(columns=GPU_QUERIES)
    return wide.reset_index().assign(run_id=run.id)


def scaling(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measured highest-load steps and both MVA bounds (``model`` MVA-1 and MVA-R)."""
    shared = analysis.replica_scaling(table.assign(placement="shared"))
    own = analysis.replica_scaling(table.assign(placement="exclusive"))
    measured = shared[0].drop(columns=["placement"])
    predicted = pd.concat([shared[1][shared[1]["model"] == "MVA"].assign(model="MVA-1"),
                           own[1][own[1]["model"] == "MVA"].assign(model="MVA-R")], ignore_index=True)
    return measured, predicted.drop(columns=["placement"])


def build(run_ids: list[str], out: Path, command: str) -> dict[str, Any]:
    requests, loaded = analysis.load_requests(run_ids)
    table = analysis.summarise_runs(requests)
    gpu = pd.concat([step_metrics(r) for r in loaded], ignore_index=True)
    steps = table.merge(gpu, on=["run_id", "workload", "step"], how="left") if len(gpu) else table
    out.mkdir(parents=True, exist_ok=True)
    keep = ["run_id", "workload", "replicas", "placement", "scenario", "step", "level", "ok", "errors",
            "throughput_rps", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "compute_ms", "batch_size_mean",
            *[c for c in GPU_QUERIES.values() if c in steps]]
    steps[keep].round(4).to_csv(out / "steps.csv", index=False)

    measured, predicted = scaling(table)
    joined = measured[["workload", "replicas", "level", "throughput_rps", "mean_ms"]].merge(
        predicted.pivot_table(index=["workload", "replicas"], columns="model", values=["throughput_rps", "mean_ms"])
        .pipe(lambda f: f.set_axis([f"{m}_{v}" for v, m in f.columns], axis=1)).reset_index(),
        on=["workload", "replicas"], how="left")
    joined.round(3).to_csv(out / "scaling.csv", index=False)

    single = table[table["replicas"] == 1]["run_id"].unique().tolist()
    validation, mape = pd.DataFrame(), {}
    if single:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            service, overhead = analysis.fit_service(requests[requests["run_id"].isin(single)])
        held = requests[~requests["run_id"].isin(single)]
        if len(held):
            validation = analysis.validation_table(analysis.predict_steps(held, service, overhead))
            validation.round(4).to_csv(out / "validation.csv", index=False)
            mape = validation.groupby("metric")["ape_pct"].mean().round(1).to_dict()

    figures = {}
    for fig_id, fig in (("latency_vs_throughput", plots.latency_vs_throughput(
                            table.assign(workload=table["workload"] + " x" + table["replicas"].astype(str)))),
                        ("scaling_vs_replicas", plots.scaling_vs_replicas(measured, predicted))):
        figures[fig_id] = [str(p) for p in plots.save_figure(fig, fig_id, run_ids, "gawm_lib/bench/study_report.py",
                                                             {"command": command}, out_dir=out).values()]
    report = {
        "command": command,
        "run_ids": run_ids,
        "runs": {r.id: {"git": r.manifest.get("git"), "host": r.manifest.get("host"), "gpu": r.manifest.get("gpu"),
                        "status": r.manifest.get("status"), "weights": r.manifest.get("workloads")} for r in loaded},
        "model_mape_pct": mape,
        "model": {"service": {"alpha_ms": round(service.alpha * 1e3, 4), "beta_ms": round(service.beta * 1e3, 4),
                              "overhead_ms": round(overhead * 1e3, 3), "fitted_on": single}} if single else None,
        "scaling": json.loads(joined.round(3).to_json(orient="records")),
        "figures": figures,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--suite", help="a suite's completed runs (gawm run params/suite_*.yaml)")
    which.add_argument("--run-ids", nargs="+", help="run ids under GAWM_RAW_DIR")
    parser.add_argument("--out", type=Path, required=True, help="folder for the report (e.g. data/benchmarks/h200)")
    args = parser.parse_args(argv)
    run_ids = args.run_ids or suite.suite_run_ids(args.suite)
    if not run_ids:
        raise SystemExit(f"suite {args.suite!r}: no completed runs under {paths.raw_dir()}")
    command = "python -m gawm_lib.bench.study_report " + " ".join(sys.argv[1:] if argv is None else argv)
    report = build(run_ids, args.out, command)
    print(json.dumps({"model_mape_pct": report["model_mape_pct"], "scaling": report["scaling"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
