"""A replica-scaling study's small, committable report, rebuilt from its run ids: what the H200 study keeps in git.

``python -m gawm_lib.bench.study_report --suite h200-scaling --out data/benchmarks/h200`` (or ``--run-ids A B ...``)
reads the runs under ``GAWM_RAW_DIR`` (raw request records and Prometheus frames stay there, out of git) and writes:

- ``steps.csv``: one row per (run, step): replicas, users, throughput, latency percentiles, the servers' median
  compute time and batch size, and per step from Prometheus: GPU utilisation, memory, power and energy per request;
- ``scaling.csv``: each run's highest-load step against Mean Value Analysis from the 1-replica throughput, twice:
  ``MVA-1`` (the replicas share one station: the GPU-bound case) and ``MVA-R`` (each replica is a station of its own:
  the bound when each replica's own CPU work, e.g. JPEG decoding, limits it);
- ``mva_steps.csv``: every step of every run against a closed-network model fitted on the 1-replica run alone: a pure
  delay ``Z`` (the 1-user latency less the bottleneck demand) and a bottleneck of demand ``D = 1 / X_max`` (its
  highest throughput) per replica, the users spread evenly over the replicas (exact MVA), with each point's error;
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
from gawm_lib.models.scaling import mva

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


def delay_bottleneck(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """Each closed-loop step predicted from the 1-replica run's lowest-load latency and highest throughput.

    One replica is a delay station ``Z`` plus a queueing station of demand ``D``: ``D = 1 / X_max`` and ``Z = L_1 - D``
    (``L_1``: mean latency of its lowest-load step). R replicas with N users: R x MVA throughput of N / R users (users
    between two integers: interpolated), latency N / X. What it leaves out shows up as error: a resource the replicas
    share (the GPU, the host's cores) once it saturates."""
    closed = table[table["scenario"].isin(["closed_loop", "single_stream"])]
    one = closed[closed["replicas"] == 1]
    if one.empty:
        raise ValueError("the delay-bottleneck model needs a closed-loop run with one replica to fit on")
    demand_s = 1.0 / float(one["throughput_rps"].max())
    lowest = one.sort_values("level").iloc[0]
    delay_s = max(0.0, float(lowest["mean_ms"]) / 1e3 / float(lowest["level"]) - demand_s)
    top = int(np.ceil(closed["level"].max() / closed["replicas"].min()))
    curve = mva(demand_s, max(1, top), delay_s).throughput  # throughput of 1 .. top users at one replica

    def per_replica(users: float) -> float:
        if users <= 1:
            return users * float(curve[0])
        low = int(np.floor(users))
        high = min(low + 1, len(curve))
        return float(curve[low - 1] + (users - low) * (curve[high - 1] - curve[low - 1]))

    rows = []
    for _, step in closed.iterrows():
        replicas, users = int(step["replicas"]), float(step["level"])
        busy = min(replicas, users)  # fewer users than replicas: the rest idle
        throughput = busy * per_replica(users / busy)
        rows.append({"run_id": step["run_id"], "workload": step["workload"], "replicas": replicas, "level": users,
                     "fitted_on": replicas == 1, "throughput_rps": step["throughput_rps"],
                     "predicted_throughput_rps": throughput, "mean_ms": step["mean_ms"],
                     "predicted_mean_ms": users / throughput * 1e3})
    frame = pd.DataFrame(rows)
    frame["throughput_ape_pct"] = 100 * (frame["predicted_throughput_rps"] / frame["throughput_rps"] - 1).abs()
    frame["mean_ape_pct"] = 100 * (frame["predicted_mean_ms"] / frame["mean_ms"] - 1).abs()
    return frame, {"demand_ms": demand_s * 1e3, "delay_ms": delay_s * 1e3}


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

    steps_model, fitted = delay_bottleneck(table)
    steps_model.round(4).to_csv(out / "mva_steps.csv", index=False)
    held_out = steps_model[~steps_model["fitted_on"]]
    mva_mape = {f"replicas_{r}": {"throughput": round(float(g["throughput_ape_pct"].mean()), 1),
                                  "mean_latency": round(float(g["mean_ape_pct"].mean()), 1)}
                for r, g in held_out.groupby("replicas")}

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
        "mva_delay_bottleneck": {**{k: round(v, 3) for k, v in fitted.items()}, "held_out_mape_pct": mva_mape},
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
    print(json.dumps({k: report[k] for k in ("model_mape_pct", "mva_delay_bottleneck", "scaling")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
