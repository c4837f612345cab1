"""From recorded runs to models: fit the batch service time, predict each load step, compare with what was measured.

Everything here reads request records (``requests.parquet``) and run manifests; nothing touches a server or a cluster.
The service time comes from the server's own per-batch report (``batch_size``, ``server_compute_ns``), and the
client-side overhead (latency minus server queue and compute) from the quietest step. Predictions per step:

- open loop (``poisson``): the dynamic-batching queue model, :func:`gawm_lib.models.predict_batching`;
- closed loop, N users against a server with max batch B: every cycle the waiting users form batches of at most B, so
  one request takes ``ceil(N / B)`` batch times, the last of ``N mod B`` items (deterministic service, no think time).

Across runs (one run per configuration, as the replica-scaling and audio-duration notebooks make them):
:func:`summarise_runs` gives each run's steps with its settings, :func:`replica_scaling` the throughput and latency per
placement and replica count with Mean Value Analysis predictions (and USL fits), :func:`audio_duration` Whisper's
latency and real-time factor per clip length.

Times are seconds in the models and milliseconds in the tables (``_ms`` columns).

Verdicts (:mod:`gawm_lib.verdicts`): every request row and step row carries its step's ``verdict`` (UNKNOWN for runs
recorded before verdicts). The fits and predictions here leave out the steps that are INVALID and say so
(:class:`InvalidStepsWarning`, naming them); tables and figures of steps keep every step, with its verdict.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning

from gawm_lib import paths, runs, summary, verdicts
from gawm_lib.models import (
    BatchLatencyModel,
    BatchLatencyTable,
    TailCurve,
    TandemServer,
    UnstableSystemError,
    fit_batch_latency,
    fit_slowdown,
    fit_tail_curve,
    fit_usl,
    mva,
    predict_batching,
)

# Settings that never set a configuration apart in a label: where the notebooks are, what the run is called, and
# the load levels (each step's level is on the figure already; capacity-share suites give every run its own rates).
LABEL_IGNORED = frozenset(
    {
        "description",
        "notebook",
        "figures_notebook",
        "levels",
        "stages",
        "trace_path",
        "startup_timeout_s",
        "teardown_timeout_s",
        "kubeconfig",
        "context",
        "process_cpus",
    }
)


def run_settings(run: runs.Run) -> dict[str, dict[str, object]]:
    """Per workload of the run, its effective settings flattened: the workload's own (``max_batch_size``, ...), the
    backend's (``backend.replicas``, ...), the load's (``load.scenario``, ...) and the experiment's ``name``."""
    effective = run.manifest["params"]["effective"]
    shared = {"name": effective.get("name")}
    for section in ("backend", "load"):
        for key, value in (effective.get(section) or {}).items():
            shared[f"{section}.{key}"] = value
    return {w["name"]: {**shared, **{k: v for k, v in w.items() if k != "name"}} for w in effective["workloads"]}


def _label_value(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_label_value(v) for v in value) + "]"
    return str(value)


def config_labels(loaded: list[runs.Run]) -> pd.DataFrame:
    """A short label per (run, workload) made of the settings that differ between the runs shown, e.g. ``replicas=2,
    max_batch_size=4``: one series per configuration in every figure of several runs. Settings named in
    :data:`LABEL_IGNORED` are left out. Runs of a workload that differ in nothing else (repeats) are told apart by
    their start time; a workload measured in one run only has the empty label (one series, nothing to tell apart).
    Columns ``run_id``, ``workload``, ``config``."""
    settings = {run.id: run_settings(run) for run in loaded}
    rows = []
    for workload in dict.fromkeys(w for per_run in settings.values() for w in per_run):
        having = {run_id: per_run[workload] for run_id, per_run in settings.items() if workload in per_run}
        keys = sorted(
            {k for flat in having.values() for k in flat}
            - {f"{s}.{k}" for s in ("backend", "load") for k in LABEL_IGNORED}
            - LABEL_IGNORED
        )
        differing = [k for k in keys if len({_label_value(flat.get(k)) for flat in having.values()}) > 1]
        short = {k: k.split(".")[-1] for k in differing}
        if len(set(short.values())) < len(short):  # the same name in two sections: keep the section
            short = {k: k for k in differing}
        # the backend and load settings first (replicas, scenario), then the workload's own, then the name
        differing.sort(
            key=lambda k: (
                0 if k.startswith("backend.") else 1 if k.startswith("load.") else 3 if k == "name" else 2,
                k,
            )
        )
        labels = {
            run_id: ", ".join(f"{short[k]}={_label_value(flat.get(k))}" for k in differing)
            for run_id, flat in having.items()
        }
        repeated = pd.Series(labels).duplicated(keep=False)
        for run_id, label in labels.items():
            if len(having) == 1:
                label = ""
            elif repeated[run_id]:  # repeats of one configuration: told apart by when they ran
                label = ", ".join(filter(None, [label, f"run {run_id.split('-')[0]}"]))
            rows.append({"run_id": run_id, "workload": workload, "config": label})
    return pd.DataFrame(rows, columns=["run_id", "workload", "config"])


def run_labels(loaded: list[runs.Run]) -> dict[str, str]:
    """Per run, the settings that differ between the runs given (whole runs: which workloads, the backend's and the
    load's settings, and each workload's own as ``<workload>.<key>``), e.g. ``scenario=poisson,
    workloads=[distilbert]``: what ``gawm runs`` shows to tell a suite's points apart."""
    flat = {}
    for run in loaded:
        per_workload = run_settings(run)
        shared = next(iter(per_workload.values()), {})
        mine = {k: v for k, v in shared.items() if k.startswith(("backend.", "load."))}
        mine["workloads"] = list(per_workload)
        for workload, settings in per_workload.items():
            mine.update(
                {
                    f"{workload}.{k}": v
                    for k, v in settings.items()
                    if not k.startswith(("backend.", "load.")) and k != "name"
                }
            )
        flat[run.id] = {k: v for k, v in mine.items() if k.split(".")[-1] not in LABEL_IGNORED}
    keys = sorted({k for settings in flat.values() for k in settings})
    # a workload's own key differs only between runs that served that workload (the others say workloads=[...])
    differing = [k for k in keys if len({_label_value(settings[k]) for settings in flat.values() if k in settings}) > 1]
    return {
        run_id: ", ".join(
            f"{k.removeprefix('backend.').removeprefix('load.')}={_label_value(settings[k])}"
            for k in differing
            if k in settings
        )
        for run_id, settings in flat.items()
    }


class InvalidStepsWarning(UserWarning):
    """Steps left out of a fit or prediction because their verdict is INVALID."""


def without_invalid(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    """``frame`` (request rows or step rows) less the rows of INVALID steps, with an :class:`InvalidStepsWarning`
    naming them and why, for ``what`` (the fit they are left out of)."""
    if "verdict" not in frame:
        return frame
    bad = frame["verdict"].astype(str) == verdicts.INVALID
    if not bad.any():
        return frame
    keys = [c for c in ("run_id", "workload", "step") if c in frame]
    left_out = frame[bad].drop_duplicates(keys)
    reasons = left_out["verdict_reasons"].astype(str) if "verdict_reasons" in left_out else [""] * len(left_out)
    named = "; ".join(
        f"{' '.join(str(v) for v in key)}" + (f" ({why})" if why else "")
        for key, why in zip(left_out[keys].itertuples(index=False), reasons)
    )
    warnings.warn(f"{what}: {len(left_out)} INVALID step(s) left out: {named}", InvalidStepsWarning, stacklevel=3)
    kept = frame[~bad]
    kept.attrs["invalid_left_out"] = len(left_out)  # for a figure's note
    return kept


def _step_verdicts(run: runs.Run) -> pd.DataFrame:
    return verdicts.step_verdicts(run.path / "summary.csv")


def load_requests(run_ids: list[str | Path]) -> tuple[pd.DataFrame, list[runs.Run]]:
    """All request rows of the runs, with ``run_id``, the run's configuration label per workload (``config``, see
    :func:`config_labels`), the run's batching settings per workload, and each row's step ``verdict`` and
    ``verdict_reasons`` (from the run's ``summary.csv``; UNKNOWN for the warm-up and for runs recorded before verdicts)
    added."""
    loaded = [runs.load_run(r) for r in run_ids]
    if len({run.id for run in loaded}) < len(loaded):
        raise ValueError(f"a run is named twice in {[run.id for run in loaded]}")
    labels = config_labels(loaded).set_index(["run_id", "workload"])["config"]
    frames = []
    for run in loaded:
        rows = summary.read_requests(run.requests_path).assign(run_id=run.id)
        rows["config"] = [labels.get((run.id, w), "") for w in rows["workload"]]
        effective = run.manifest["params"]["effective"]
        settings = {w["name"]: w for w in effective["workloads"]}

        def per_workload(key, default=None, settings=settings):
            return {w: s.get(key, default) for w, s in settings.items()}

        rows["max_batch_size"] = rows["workload"].map(per_workload("max_batch_size"))
        rows["max_queue_delay_ms"] = rows["workload"].map(per_workload("max_queue_delay_ms"))
        rows["decode_workers"] = rows["workload"].map(per_workload("decode_workers", 1))
        rows["gc_freeze"] = rows["workload"].map(per_workload("gc_freeze", False))  # unfrozen before
        rows["gc_thresholds"] = rows["workload"].map(  # unset (runs before the field): Python's own
            {w: ",".join(map(str, t or ())) or "python" for w, t in per_workload("gc_thresholds").items()}
        )
        rows["replicas"] = effective["backend"]["replicas"]
        rows["placement"] = effective["backend"].get("placement", "none")  # runs before placement were not pinned
        rows["scenario"] = effective["load"]["scenario"]
        rows["payloads_per_request"] = effective["load"].get("payloads_per_request", 1)  # items (texts, images)
        rows["payload_audio_s"] = effective["load"].get("payload_audio_s") or np.nan
        judged = _step_verdicts(run)
        rows = rows.merge(judged, on=["workload", "step"], how="left") if len(judged) else rows
        rows["verdict"] = rows.get("verdict", pd.Series(index=rows.index, dtype=object)).fillna(verdicts.UNKNOWN)
        rows["verdict_reasons"] = rows.get("verdict_reasons", pd.Series(index=rows.index, dtype=object)).fillna("")
        frames.append(rows)
    requests = pd.concat(frames, ignore_index=True)
    for column in ("verdict", "verdict_reasons"):  # a few distinct strings over many rows
        requests[column] = requests[column].astype("category")
    return requests, loaded


def fit_service(requests: pd.DataFrame) -> tuple[BatchLatencyModel, float]:
    """Batch service-time model from the server's per-batch reports, and the client overhead [s] (median over the
    lowest-load step of latency minus server queue and compute). INVALID steps are left out
    (:func:`without_invalid`)."""
    requests = without_invalid(requests, "fit_service")
    ok = requests[(requests["error"] == "") & (requests["server_compute_ns"] > 0)]
    if ok.empty:
        raise ValueError("no successful requests with server-reported compute times: cannot fit a service model")
    compute_s = ok["server_compute_ns"].to_numpy() / 1e9
    if ok["batch_size"].nunique() < 2:
        # One batch size says nothing about the slope. Assume no batching gain, s(b) = b * s(b0) / b0, which is what
        # one CPU thread gives; runs with several batch sizes (more users, a longer max_queue_delay_ms) fit it instead.
        size = int(ok["batch_size"].iloc[0])
        per_item = float(np.median(compute_s)) / size
        warnings.warn(
            f"only batch size {size} was observed: assuming s(b) = b x {per_item * 1e3:.2f} ms "
            "(no batching gain); measure with more users to fit the slope",
            stacklevel=2,
        )
        model = BatchLatencyModel(alpha=per_item, beta=0.0, n_points=len(ok))
    else:
        model = fit_batch_latency(ok["batch_size"].to_numpy(), compute_s)
    quiet = ok[ok["level"] == ok["level"].min()]
    overhead = (quiet["done_ns"] - quiet["sent_ns"] - quiet["server_queue_ns"] - quiet["server_compute_ns"]) / 1e9
    return model, max(0.0, float(np.median(overhead)))


def server_batches(requests: pd.DataFrame) -> pd.DataFrame:
    """One row per server batch: the successful requests of a batch share its replica, size and compute time. INVALID
    steps are left out (:func:`without_invalid`), as :func:`fit_service` leaves them out: a figure of these batches
    shows the points its fit was made from."""
    requests = without_invalid(requests, "server_batches")
    ok = requests[(requests["error"] == "") & (requests["batch_size"] > 0) & (requests["server_compute_ns"] > 0)]
    return ok.drop_duplicates([c for c in ("run_id", "replica", "batch_size", "server_compute_ns") if c in ok])


def batch_time_factors(requests: pd.DataFrame, service: BatchLatencyModel | BatchLatencyTable) -> np.ndarray:
    """Each server batch's compute time over the ``service`` model's for its size: the batch-time variability that
    :func:`gawm_lib.models.predict_batching` and :func:`gawm_lib.models.plan_capacity` take as ``service_factors``.
    One value per batch (its requests share the replica, size and compute time); INVALID steps left out."""
    batches = server_batches(requests)
    if batches.empty:
        raise ValueError("no successful requests with server-reported batch times: no batch-time variability")
    return (
        batches["server_compute_ns"].to_numpy()
        / 1e9
        / np.asarray(service.predict(batches["batch_size"].to_numpy()), dtype=float)
    )


BATCHER_BOUND = 0.85  # a step whose batcher computed this share of the time was limited by the model, not the CPU


def batcher_busy(step_requests: pd.DataFrame, replicas: int) -> float:
    """Share of a step's time each replica's batcher spent computing: every batch's compute time counted once (split
    over its requests by their items), over the step's duration."""
    ok = step_requests[step_requests["error"] == ""]
    duration_s = (step_requests["done_ns"].max() - step_requests["sent_ns"].min()) / 1e9
    items = ok["items"] if "items" in ok else 1
    compute_s = (ok["server_compute_ns"] * items / ok["batch_size"].clip(lower=1)).sum() / 1e9
    return float(compute_s / (duration_s * replicas)) if duration_s > 0 else float("nan")


def fit_tandem(requests: pd.DataFrame) -> TandemServer:
    """The CPU-then-GPU model (:class:`gawm_lib.models.TandemServer`) of one workload from closed-loop runs.

    From the quietest step of the 1-replica runs: each request's time on the decode threads (``server_decode_ns``),
    the rest outside the server's queue and compute (latency minus decode, queue and compute), and the dispatch
    time (median queue time less ``max_queue_delay_ms``). Batch times per batch size from the 1-replica runs (a
    measured table, the hinge fit where a size was not seen). The slowdowns from each run's busiest step (its
    saturation), with the run's replica count, over the runs whose batcher was computing less than
    ``BATCHER_BOUND`` of that step: where it was busier the model, not the CPU stage, set the pace (a CPU server),
    and ValueError if that leaves no 1-replica run. Needs records with ``server_decode_ns`` (gawm since 0547120)."""
    if requests["workload"].nunique() > 1:
        raise ValueError(f"fit_tandem: one workload at a time, got {sorted(requests['workload'].unique())}")
    requests = without_invalid(requests, "fit_tandem")
    closed = requests[
        requests["scenario"].isin(["closed_loop", "single_stream"])
        & (requests["error"] == "")
        & (requests["server_compute_ns"] > 0)
        & (requests["phase"] == "step")
    ]
    if "server_decode_ns" not in closed or closed["server_decode_ns"].isna().all():
        raise ValueError("fit_tandem: the records have no server_decode_ns (runs of gawm before 0547120)")
    one = closed[closed["replicas"] == 1]
    if one.empty:
        raise ValueError("fit_tandem needs a closed-loop run with one replica to fit on")
    steps = summarise_runs(closed)
    saturation, busy = [], {}
    for _, top in steps.loc[steps.groupby("run_id")["throughput_rps"].idxmax()].iterrows():
        at_top = closed[(closed["run_id"] == top["run_id"]) & (closed["step"] == top["step"])]
        busy[top["run_id"]] = batcher_busy(at_top, int(top["replicas"]))
        if busy[top["run_id"]] < BATCHER_BOUND:
            saturation.append((int(top["replicas"]), float(top["throughput_rps"])))
    single = [busy[r] for r in one["run_id"].unique()]
    if min(single) >= BATCHER_BOUND:
        raise ValueError(
            f"fit_tandem: the 1-replica run's batcher computed {min(single):.0%} of its busiest step: the "
            "model, not the CPU stage, was the bottleneck (a CPU server?)"
        )
    quiet = one[one["level"] == one["level"].min()]
    delay_s = float(quiet["max_queue_delay_ms"].iloc[0]) / 1e3
    cpu_in = quiet["server_decode_ns"].to_numpy() / 1e9
    cpu_out = (
        quiet["done_ns"]
        - quiet["sent_ns"]
        - quiet["server_decode_ns"]
        - quiet["server_queue_ns"]
        - quiet["server_compute_ns"]
    ).clip(lower=0).to_numpy() / 1e9
    dispatch = max(0.0, float(quiet["server_queue_ns"].median()) / 1e9 - delay_s)
    big = int(one["max_batch_size"].iloc[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        hinge = fit_batch_latency(one["batch_size"].to_numpy(), one["server_compute_ns"].to_numpy() / 1e9)
    table = BatchLatencyTable.from_measurements(one["batch_size"], one["server_compute_ns"] / 1e9, big, fallback=hinge)
    threads = max(1, int(one["decode_workers"].iloc[0]))  # 0: decoded on the event loop, one thread
    per_replica, host = fit_slowdown(threads, float(cpu_in.mean()), saturation)
    return TandemServer(
        cpu_in_s=tuple(cpu_in),
        cpu_out_s=tuple(cpu_out),
        threads=threads,
        batch=table,
        max_batch=big,
        max_delay_s=delay_s,
        dispatch_s=dispatch,
        per_replica_slowdown=per_replica,
        host_slowdown=host,
    )


def predict_tandem_steps(
    requests: pd.DataFrame, model: TandemServer, *, max_utilisation: float = 0.85, n_requests: int = 20_000
) -> pd.DataFrame:
    """Measured vs predicted p50 and p95 [s] of each open-loop (``poisson``) step, with the CPU stage's predicted
    utilisation; steps past ``max_utilisation`` are left out (near saturation the prediction says only "unstable")."""
    rows = []
    poisson = requests[requests["scenario"] == "poisson"]
    if poisson["workload"].nunique() > 1:
        raise ValueError(f"predict_tandem_steps: one workload at a time, got {sorted(poisson['workload'].unique())}")
    if poisson.empty:
        return pd.DataFrame()
    for _, step in summarise_runs(poisson).iterrows():
        replicas = int(step["replicas"])
        rate = float(step["level"]) / replicas
        rho = model.utilisation(rate, replicas)
        if rho > max_utilisation:
            continue
        latency = model.simulate(rate, replicas, n_requests=n_requests)
        rows.append(
            {
                "run_id": step["run_id"],
                "workload": step["workload"],
                "scenario": "poisson",
                "level": step["level"],
                "replicas": replicas,
                "utilisation": rho,
                "throughput": step["throughput_rps"],
                "predicted_throughput": step["level"],
                "p50": step["p50_ms"] / 1e3,
                "p95": step["p95_ms"] / 1e3,
                "predicted_p50": float(np.percentile(latency, 50)),
                "predicted_p95": float(np.percentile(latency, 95)),
            }
        )
    return pd.DataFrame(rows)


KEPT_UP = 0.9  # an open-loop step whose throughput fell below this share of its offered rate was past saturation


def fit_tail_curves(requests: pd.DataFrame) -> tuple[dict[tuple[str, int], TailCurve], dict[tuple[str, int], str]]:
    """A :class:`gawm_lib.models.TailCurve` per (workload, replicas) that has both a closed-loop run and a Poisson
    sweep (the steps it kept up with, below the :func:`measured_capacity`, are fitted); and for those whose sweep
    could not be fitted, why. INVALID steps are left out (:func:`without_invalid`)."""
    requests = without_invalid(requests, "fit_tail_curves")
    capacity = measured_capacity(requests)
    curves, not_fitted = {}, {}
    for (workload, replicas), sweep in _poisson_steps(requests).groupby(["workload", "replicas"]):
        key = (str(workload), int(replicas))
        if key not in capacity:
            continue
        kept = sweep[(sweep["throughput_rps"] >= KEPT_UP * sweep["level"]) & (sweep["level"] < capacity[key])]
        try:
            curves[key] = fit_tail_curve(kept["level"], kept["p95_ms"] / 1e3, float(capacity[key]))
        except ValueError as exc:
            not_fitted[key] = f"{workload} x{replicas}: {exc}"
    return curves, not_fitted


def measured_capacity(requests: pd.DataFrame) -> pd.Series:
    """The capacity [req/s] that open-loop rates are measured against, per (workload, replicas) with a closed-loop (or
    single-stream) run: the highest throughput of any of its steps, closed-loop or Poisson (empty where there is no
    closed-loop run).

    Poisson steps count too because a closed-loop run need not find the peak: on the H200 a replica's throughput fell
    as users were added (ResNet50 x1 554 / 520 / 516 req/s at 64 / 128 / 256 users) while Poisson steps of the same
    server carried 578, and a rate it kept up with cannot be past its capacity."""
    steps = requests[
        (requests["phase"] == "step") & requests["scenario"].isin(["closed_loop", "single_stream", "poisson"])
    ]
    if not (steps["scenario"] != "poisson").any():
        return pd.Series(dtype=float)
    table = summarise_runs(steps)
    by_config = table.groupby(["workload", "replicas"])
    return by_config["throughput_rps"].max()[by_config["scenario"].agg(lambda s: (s != "poisson").any())]


def _poisson_steps(requests: pd.DataFrame) -> pd.DataFrame:
    """:func:`summarise_runs` of the open-loop (Poisson) steps alone (an empty table with the key columns if none)."""
    poisson = requests[(requests["scenario"] == "poisson") & (requests["phase"] == "step")]
    return summarise_runs(poisson) if len(poisson) else pd.DataFrame(columns=["workload", "replicas", "level"])


def interpolate_sweeps(requests: pd.DataFrame, heldout: pd.DataFrame) -> pd.DataFrame:
    """Each Poisson step of ``heldout`` with the p95 [s] of the same (workload, replicas) sweep in ``requests``
    interpolated at its rate (log p95, linear in rate; only between the sweep's slowest and fastest steps): what the
    configuration's other run says, with no model at all, so the floor under any model's error on that step."""
    sweeps, rows = _poisson_steps(requests), []
    for _, step in _poisson_steps(heldout).iterrows():
        sweep = sweeps[
            (sweeps["workload"] == step["workload"])
            & (sweeps["replicas"] == step["replicas"])
            & (sweeps["throughput_rps"] >= KEPT_UP * sweeps["level"])
        ].sort_values("level")
        if len(sweep) < 2 or not sweep["level"].min() <= step["level"] <= sweep["level"].max():
            continue
        p95 = float(np.exp(np.interp(step["level"], sweep["level"], np.log(sweep["p95_ms"] / 1e3))))
        rows.append({"run_id": step["run_id"], "level": step["level"], "interpolated_p95": p95})
    return pd.DataFrame(rows, columns=["run_id", "level", "interpolated_p95"])


def predict_tail_steps(requests: pd.DataFrame, curves: dict[tuple[str, int], TailCurve]) -> pd.DataFrame:
    """Measured vs predicted p95 [s] of each Poisson step whose (workload, replicas) has a curve, with its
    utilisation (offered rate over the curve's :func:`measured_capacity`) and its failed requests (``errors``: a
    step over the capacity of the machine it ran on fills the servers' queues, which refuse requests with 503)."""
    rows = []
    for _, step in _poisson_steps(requests).iterrows():
        curve = curves.get((str(step["workload"]), int(step["replicas"])))
        if curve is None:
            continue
        rows.append(
            {
                "run_id": step["run_id"],
                "workload": step["workload"],
                "scenario": "poisson",
                "level": step["level"],
                "replicas": int(step["replicas"]),
                "utilisation": step["level"] / curve.capacity_rps,
                "p95": step["p95_ms"] / 1e3,
                "predicted_p95": float(curve.p95_s(step["level"])),
                "errors": int(step["errors"]),
            }
        )
    return pd.DataFrame(rows)


def tail_repeats(requests: pd.DataFrame) -> pd.DataFrame:
    """Every rate of a (workload, replicas) that more than one Poisson step visited (again in the same run, or in
    another run): how many visits and runs, their p95 [ms] (mean, lowest, highest), its coefficient of variation, and
    ``loo_mape_pct``: each visit's p95 predicted by the mean of the other visits, the error averaged. A model that
    knew the true mean p95 at that rate would still miss single steps by about that much: the floor under any model's
    error there. ``within_run_loo_mape_pct`` is the same error over the visits one run (one server process) made of
    the rate, each against the mean of that run's other visits (``within_run_visits`` of them; NaN where no run came
    back to the rate): far below ``loo_mape_pct``, the runs differ (each process's own state); about as high, the
    scatter comes with time whatever the process. ``utilisation`` is the rate over the configuration's
    :func:`measured_capacity` where there is one."""
    capacity = measured_capacity(requests)
    rows = []
    for (workload, replicas, level), visits in _poisson_steps(requests).groupby(["workload", "replicas", "level"]):
        p95 = visits["p95_ms"].to_numpy(dtype=float)
        if len(p95) < 2:
            continue
        within = np.concatenate(
            [_loo_errors(run["p95_ms"].to_numpy(dtype=float)) for _, run in visits.groupby("run_id")]
        )
        cap = capacity.get((workload, replicas), np.nan)
        rows.append(
            {
                "workload": workload,
                "replicas": int(replicas),
                "level": float(level),
                "utilisation": float(level) / cap if cap == cap else np.nan,
                "visits": len(p95),
                "runs": visits["run_id"].nunique(),
                "p95_mean_ms": p95.mean(),
                "p95_min_ms": p95.min(),
                "p95_max_ms": p95.max(),
                "p95_cv_pct": 100 * p95.std(ddof=1) / p95.mean(),
                "loo_mape_pct": 100 * float(np.mean(_loo_errors(p95))),
                "within_run_visits": within.size,
                "within_run_loo_mape_pct": 100 * float(within.mean()) if within.size else np.nan,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "workload",
            "replicas",
            "level",
            "utilisation",
            "visits",
            "runs",
            "p95_mean_ms",
            "p95_min_ms",
            "p95_max_ms",
            "p95_cv_pct",
            "loo_mape_pct",
            "within_run_visits",
            "within_run_loo_mape_pct",
        ],
    )


def _loo_errors(p95: np.ndarray) -> np.ndarray:
    """Each value's relative distance from the mean of the others (empty for fewer than two values)."""
    if p95.size < 2:
        return np.empty(0)
    return np.abs((p95.sum() - p95) / (p95.size - 1) - p95) / p95


def _step_length(t_s: pd.Series) -> float:
    """A step's length [s] from its requests' schedule offsets: the span to its last request and one mean gap more."""
    return float(t_s.max()) * len(t_s) / max(len(t_s) - 1, 1)


def tail_window_floor(requests: pd.DataFrame, windows_s=None) -> pd.DataFrame:
    """How the revisit floor of :func:`tail_repeats` depends on how long a visit lasts, per rate visited by two or
    more Poisson steps: each step is cut into consecutive windows of each length in ``windows_s`` (by schedule, from
    its first request; windows of fewer than 20 ok requests are dropped), and each window's p95 is set against the
    mean p95 of the *other* steps' windows of that length at the same rate; ``floor_pct`` is that error averaged.

    If the floor falls about as 1/sqrt(window), what scatters is the sampling noise of short steps, and longer steps
    lower it; if it stays flat, the steps differ from each other (the server's or the machine's state during each),
    and longer steps will not bring a single step closer to a model. ``windows_s`` defaults to the shortest step's
    length and its half, third and sixth (two significant digits). Returns rows (workload, replicas, level, utilisation,
    window_s, windows, steps, floor_pct); ``utilisation`` as in :func:`tail_repeats`."""
    columns = ["workload", "replicas", "level", "utilisation", "window_s", "windows", "steps", "floor_pct"]
    steps = requests[(requests["scenario"] == "poisson") & (requests["phase"] == "step")]
    if steps.empty:
        return pd.DataFrame(columns=columns)
    start = steps.groupby(["run_id", "workload", "step"])["scheduled_ns"].transform("min")
    steps = steps.assign(
        t_s=(steps["scheduled_ns"] - start) / 1e9, latency_ms=(steps["done_ns"] - steps["scheduled_ns"]) / 1e6
    )
    spans = steps.groupby(["run_id", "workload", "step"])["t_s"].agg(_step_length)
    if windows_s is None:  # a step of a single request has no length: nothing to cut
        windows_s = sorted({float(f"{spans.min() / k:.2g}") for k in (6, 3, 2, 1)} - {0.0})
        if not windows_s:
            return pd.DataFrame(columns=columns)
    windows_s = [float(w) for w in windows_s]
    if not windows_s or min(windows_s) <= 0:
        raise ValueError(f"windows_s must be window lengths > 0 seconds, got {windows_s}")
    capacity = measured_capacity(requests)
    ok = steps[steps["error"] == ""]
    rows = []
    for (workload, replicas, level), visits in ok.groupby(["workload", "replicas", "level"]):
        keys = visits.groupby(["run_id", "step"]).ngroup()
        if keys.nunique() < 2:
            continue
        cap = capacity.get((workload, replicas), np.nan)
        span = visits.assign(key=keys).groupby("key")["t_s"].agg(_step_length)
        for window in windows_s:
            index = (visits["t_s"] // window).astype(int)
            per_step_windows = (
                visits.assign(key=keys, index=index)
                .groupby(["key", "index"])["latency_ms"]
                .agg(p95=lambda x: np.quantile(x, 0.95), n="size")
                .reset_index()
            )
            full = per_step_windows["index"] < (per_step_windows["key"].map(span) / window + 0.01).astype(int)
            kept = per_step_windows[full & (per_step_windows["n"] >= 20)]
            if kept["key"].nunique() < 2:
                continue
            errors = [abs(kept.loc[kept["key"] != row.key, "p95"].mean() / row.p95 - 1) for row in kept.itertuples()]
            rows.append(
                {
                    "workload": workload,
                    "replicas": int(replicas),
                    "level": float(level),
                    "utilisation": float(level) / cap if cap == cap else np.nan,
                    "window_s": window,
                    "windows": len(kept),
                    "steps": kept["key"].nunique(),
                    "floor_pct": 100 * float(np.mean(errors)),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def cross_validate_tail_curves(requests: pd.DataFrame) -> pd.DataFrame:
    """Leave one run out: each Poisson run of a (workload, replicas) that has other Poisson runs is predicted by the
    tail curve fitted on those others (and the capacity they and the closed-loop runs measured), as
    :func:`predict_tail_steps` rows. A configuration whose other runs cannot be fitted is left out."""
    poisson = requests[requests["scenario"] == "poisson"]
    frames = []
    for (workload, replicas), rows in poisson.groupby(["workload", "replicas"]):
        run_ids = sorted(rows["run_id"].unique())
        if len(run_ids) < 2:
            continue
        mine = (requests["workload"] == workload) & (requests["replicas"] == replicas)
        for run_id in run_ids:
            curves, _ = fit_tail_curves(requests[mine & (requests["run_id"] != run_id)])
            if (workload, replicas) in curves:
                frames.append(predict_tail_steps(rows[rows["run_id"] == run_id], curves))
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(
            columns=["run_id", "workload", "scenario", "level", "replicas", "utilisation", "p95", "predicted_p95"]
        )
    )


def closed_loop_latency_s(users: int, service: BatchLatencyModel, max_batch: int, overhead_s: float) -> float:
    """Latency of each of ``users`` closed-loop users with no think time against one batching replica [s]."""
    full, rest = divmod(users, max_batch)
    cycle = full * float(service.predict(max_batch)) + (float(service.predict(rest)) if rest else 0.0)
    return cycle + overhead_s


#: Load scenarios whose steps :func:`predict_steps` predicts; steps of the others (constant_rate, offline, stages,
#: trace) are dropped with the reason, as a step past saturation is.
PREDICTED_SCENARIOS = ("closed_loop", "single_stream", "poisson")


def predict_steps(
    requests: pd.DataFrame,
    service: BatchLatencyModel,
    overhead_s: float,
    service_factors=None,
    return_dropped: bool = False,
):
    """Measured vs predicted throughput [req/s], p50 and p95 [s] for each measured step of each run; open-loop steps
    by :func:`gawm_lib.models.predict_batching`, with batch times varying by ``service_factors`` where given
    (:func:`batch_time_factors` of the fit runs).

    A step of a scenario without a model here (:data:`PREDICTED_SCENARIOS`), or an open-loop step past the model's
    saturation (its queue has no steady state), has no prediction and is left out;
    the steps left out, with the reason (``run_id``, ``workload``, ``scenario``, ``level``, ``replicas``,
    ``utilisation``, ``reason``), are returned as a second frame with ``return_dropped=True`` (and kept as records
    in the result's ``attrs["dropped"]``): a validation says which steps it used and why the others were dropped."""
    rows, dropped = [], []
    table = _with_verdicts(summary.summarise(requests), requests)
    for _, step in table.iterrows():
        run_id, workload = step["run_id"], step["workload"]
        meta = requests[(requests["run_id"] == run_id) & (requests["workload"] == workload)].iloc[0]
        big, replicas = int(meta["max_batch_size"]), int(meta["replicas"])
        row = {
            "run_id": run_id,
            "workload": workload,
            "scenario": meta["scenario"],
            "level": step["level"],
            "step": step["step"],
            "verdict": step["verdict"] if isinstance(step.get("verdict"), str) else verdicts.UNKNOWN,
            "replicas": replicas,
            "max_batch_size": big,
            "throughput": step["throughput_rps"],
            "p50": step["p50_ms"] / 1e3,
            "p95": step["p95_ms"] / 1e3,
        }
        if meta["scenario"] not in PREDICTED_SCENARIOS:  # its level is no user count, nor Poisson arrivals
            dropped.append(
                {
                    **{k: row[k] for k in ("run_id", "workload", "scenario", "level", "replicas")},
                    "utilisation": float("nan"),
                    "reason": f"no model for {meta['scenario']} steps: predictions cover closed_loop and single_stream "
                    "(the closed-loop cycle) and poisson (the batching queue)",
                }
            )
            continue
        if meta["scenario"] == "poisson":
            try:
                pred = predict_batching(
                    step["level"] / replicas,
                    service,
                    big,
                    meta["max_queue_delay_ms"] / 1e3,
                    service_factors=service_factors,
                )
            except (UnstableSystemError, ValueError) as exc:  # past saturation: no steady state to compare with
                rho = getattr(exc, "utilisation", float("nan"))
                reason = (
                    f"past saturation: the queue model's utilisation is {rho:.2f} >= 1 at "
                    f"{step['level'] / replicas:g} req/s per replica"
                    if isinstance(exc, UnstableSystemError)
                    else f"no steady state in the queue model ({exc})"
                )
                dropped.append(
                    {
                        **{k: row[k] for k in ("run_id", "workload", "scenario", "level", "replicas")},
                        "utilisation": rho,
                        "reason": reason,
                    }
                )
                continue
            row.update(
                predicted_throughput=step["level"],
                predicted_p50=pred.p50_s + overhead_s,
                predicted_p95=pred.p95_s + overhead_s,
            )
        else:
            users = math.ceil(step["level"] / replicas)
            latency = closed_loop_latency_s(users, service, big, overhead_s)
            row.update(predicted_throughput=step["level"] / latency, predicted_p50=latency, predicted_p95=latency)
        rows.append(row)
    predicted = pd.DataFrame(
        rows,
        columns=[
            "run_id",
            "workload",
            "scenario",
            "level",
            "step",
            "verdict",
            "replicas",
            "max_batch_size",
            "throughput",
            "p50",
            "p95",
            "predicted_throughput",
            "predicted_p50",
            "predicted_p95",
        ],
    )
    dropped_frame = pd.DataFrame(
        dropped, columns=["run_id", "workload", "scenario", "level", "replicas", "utilisation", "reason"]
    )
    predicted.attrs["dropped"] = dropped  # records, not a frame: pandas compares attrs when it concatenates
    return (predicted, dropped_frame) if return_dropped else predicted


def validation_table(predicted: pd.DataFrame, metrics=("throughput", "p50", "p95")) -> pd.DataFrame:
    """Tidy measured/predicted rows per metric with the absolute percentage error (for plots.predicted_vs_measured),
    with each step's ``step`` and ``verdict`` where the predictions carry them."""
    parts = []
    keys = [c for c in ("run_id", "workload", "scenario", "level", "step", "verdict") if c in predicted]
    for metric in metrics:
        part = predicted[keys].copy()
        part["metric"] = metric
        part["measured"] = predicted[metric]
        part["predicted"] = predicted[f"predicted_{metric}"]
        part["ape_pct"] = 100 * (part["predicted"] - part["measured"]).abs() / part["measured"]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def predict_runs(requests: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, tuple[BatchLatencyModel, float]]]:
    """:func:`fit_service` and :func:`predict_steps` per workload; returns the predictions and each workload's
    (service model, overhead [s])."""
    frames, dropped, services = [], [], {}
    requests = without_invalid(requests, "predict_runs")
    for workload, rows in requests.groupby("workload", sort=True):
        services[workload] = fit_service(rows)
        predicted, left_out = predict_steps(rows, *services[workload], return_dropped=True)
        frames.append(predicted)
        dropped += left_out.to_dict(orient="records")
    predicted = pd.concat(frames, ignore_index=True)
    predicted.attrs["dropped"] = dropped  # steps past saturation, with the reason (as in predict_steps)
    return predicted, services


def summarise_runs(requests: pd.DataFrame, slo_ms: float | None = None) -> pd.DataFrame:
    """:func:`gawm_lib.summary.summarise` per run: one row per (run, workload, step) with the run's ``replicas``,
    ``placement``, ``scenario``, ``payload_audio_s`` and ``max_batch_size``, and the server's own median ``compute_ms``
    per batch and per item (``compute_item_ms``) and mean ``batch_size_mean`` over the step's ok requests; and each
    step's ``verdict`` and ``verdict_reasons`` where the rows carry them (:func:`load_requests`)."""
    table = summary.summarise(requests, slo_ms=slo_ms)
    settings = [
        c for c in ("config", "replicas", "placement", "scenario", "payload_audio_s", "max_batch_size") if c in requests
    ]
    first = requests.groupby(["run_id", "workload"], as_index=False)[settings].first()
    ok = requests[(requests["phase"] == "step") & (requests["error"] == "") & (requests["server_compute_ns"] > 0)]
    server = ok.assign(
        compute_ms=ok["server_compute_ns"] / 1e6,
        compute_item_ms=ok["server_compute_ns"] / 1e6 / ok["batch_size"].clip(lower=1),
    )
    server = server.groupby(["run_id", "workload", "step"], as_index=False).agg(
        compute_ms=("compute_ms", "median"),
        compute_item_ms=("compute_item_ms", "median"),
        batch_size_mean=("batch_size", "mean"),
    )
    table = table.merge(first, on=["run_id", "workload"]).merge(server, on=["run_id", "workload", "step"], how="left")
    table = _with_verdicts(table, requests)
    return table.sort_values(["workload", "run_id", "step"], ignore_index=True)


def _with_verdicts(table: pd.DataFrame, requests: pd.DataFrame) -> pd.DataFrame:
    """``table`` (one row per run, workload and step) with each step's ``verdict`` and ``verdict_reasons`` as its run
    recorded them, where the request rows carry them (:func:`load_requests`); unchanged otherwise."""
    if "verdict" not in requests or not len(table):
        return table
    keys = ["run_id", "workload", "step"]
    judged = requests[requests["phase"] == "step"].drop_duplicates(keys)
    columns = [c for c in ("verdict", "verdict_reasons") if c in judged]
    return table.merge(judged[keys + columns].astype(dict.fromkeys(columns, str)), on=keys, how="left")


def _without_scaling_settings(config: str) -> str:
    """A configuration label less its replicas and placement: what one line of a scaling figure holds fixed."""
    parts = [part for part in str(config).split(", ") if part and not part.startswith(("replicas=", "placement="))]
    return ", ".join(parts)


def replica_scaling(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Throughput and latency per (workload, placement, series, replicas) and what the models predict for them.

    ``table``: :func:`summarise_runs` rows of closed-loop runs. Each run contributes its step with the most users.
    ``series`` is the run's configuration label less replicas and placement (runs that also differ in, say, batch
    size make one line each). One replica is placed the same way by every placement (alone on the first cores or
    GPU), so a placement without its own 1-replica run takes another's.

    The model (``model`` = ``MVA``) is exact Mean Value Analysis of N users with no think time against a station of
    ``c`` servers, each of demand ``S = 1 / X1`` [s], where X1 is the 1-replica throughput (one closed-loop replica is
    always busy, so X1 is its capacity, request decoding and HTTP included): ``exclusive`` has c = R servers (R
    replicas on their own devices), ``shared`` c = 1 (R replicas time-slicing one device's worth of compute: no gain,
    the bound without the switching cost). With three or more replica counts a placement also gets a Universal
    Scalability Law fit of its throughput (``model`` = ``USL``, its ``sigma`` and ``kappa`` in the columns).
    Returns (measured, predicted), both with ``workload``, ``placement``, ``series``, ``replicas``, ``level``,
    ``throughput_rps``, ``mean_ms``; ``predicted`` has one row per model and replica count measured.
    """
    closed = without_invalid(table[table["scenario"].isin(["closed_loop", "single_stream"])], "replica_scaling")
    if closed.empty:
        raise ValueError(
            "replica scaling needs closed-loop runs (load.scenario closed_loop or single_stream): the "
            "model counts users"
        )
    closed = closed.assign(series=closed["config"].map(_without_scaling_settings) if "config" in closed else "")
    keys = ["workload", "placement", "series"]
    best = closed.sort_values("level").groupby([*keys, "replicas"]).tail(1)
    measured = []
    for _, rows in best.groupby(["workload", "series"]):
        single = rows[rows["replicas"] == 1]
        for placement in rows["placement"].unique():
            mine = rows[rows["placement"] == placement]
            if 1 not in set(mine["replicas"]) and not single.empty:
                mine = pd.concat([single.iloc[[0]].assign(placement=placement), mine])
            measured.append(mine)
    measured_frame = pd.concat(measured, ignore_index=True).sort_values([*keys, "replicas"], ignore_index=True)
    predicted = []
    for (workload, placement, series), rows in measured_frame.groupby(keys):
        one = rows[rows["replicas"] == 1]
        if one.empty:
            continue  # no 1-replica run of this workload: no demand to predict from
        demand_s = 1.0 / float(one["throughput_rps"].iloc[0])
        levels = dict(zip(rows["replicas"], rows["level"]))
        base = {"workload": workload, "placement": placement, "series": series}
        for replicas in sorted(rows["replicas"].unique()):
            users = int(levels[replicas])
            servers = replicas if placement == "exclusive" else 1
            result = mva(demand_s, users, 0.0, servers=min(servers, users))
            predicted.append(
                {
                    **base,
                    "replicas": int(replicas),
                    "level": users,
                    "model": "MVA",
                    "throughput_rps": float(result.throughput[-1]),
                    "mean_ms": float(result.response_time[-1]) * 1e3,
                    "demand_ms": demand_s * 1e3,
                }
            )
        if rows["replicas"].nunique() >= 3:
            with warnings.catch_warnings():  # three counts fit USL's three parameters exactly: no standard errors
                warnings.simplefilter("ignore", OptimizeWarning)
                usl = fit_usl(rows["replicas"], rows["throughput_rps"])
            for replicas in range(int(rows["replicas"].min()), int(rows["replicas"].max()) + 1):
                users = int(levels.get(replicas, max(levels.values())))
                x = usl.predict(replicas)
                predicted.append(
                    {
                        **base,
                        "replicas": replicas,
                        "level": users,
                        "model": "USL",
                        "throughput_rps": x,
                        "mean_ms": users / x * 1e3,
                        "sigma": usl.sigma,
                        "kappa": usl.kappa,
                    }
                )
    measured_frame.attrs["invalid_left_out"] = closed.attrs.get("invalid_left_out", 0)  # the figure says so
    return measured_frame, pd.DataFrame(predicted)


def audio_duration(table: pd.DataFrame) -> pd.DataFrame:
    """Whisper's latency and real-time factor per clip length, from :func:`summarise_runs` rows of runs with
    ``load.payload_audio_s``: one row per (clip length, step) with ``audio_s`` [s], ``p50_ms``, ``p95_ms``,
    ``compute_ms`` (the server's median batch compute) and the real-time factors (processing time / audio length;
    below 1 is faster than real time): ``rtf_p50`` and ``rtf_p95`` from the latency, ``rtf_server`` = compute /
    audio length, the server's own ``rtf`` (the same as per clip with batches of one)."""
    rows = table[(table["workload"] == "whisper") & table["payload_audio_s"].notna()]
    if rows.empty:
        raise ValueError("no Whisper runs with load.payload_audio_s: the clip length of a run must be known")
    out = rows.assign(audio_s=rows["payload_audio_s"])[
        [
            "run_id",
            "audio_s",
            "level",
            "ok",
            "throughput_rps",
            "mean_ms",
            "p50_ms",
            "p95_ms",
            "compute_ms",
            "compute_item_ms",
            "batch_size_mean",
            *(["step", "verdict"] if "verdict" in rows else []),
        ]
    ].copy()
    out["rtf_p50"] = out["p50_ms"] / 1e3 / out["audio_s"]
    out["rtf_p95"] = out["p95_ms"] / 1e3 / out["audio_s"]
    out["rtf_server"] = out["compute_ms"] / 1e3 / out["audio_s"]
    return out.sort_values(["audio_s", "level"], ignore_index=True)


# --- What the analysis notebooks show: explicit inputs, a runs table, a compact result table, sentences ---------------


def select_runs(run_ids=(), suite_name: str = "", workload: str | None = None) -> tuple[list[str], str]:
    """The runs a notebook analyses, and a sentence saying which and why.

    ``run_ids`` are taken as given; else ``suite_name``'s completed runs; else the newest completed run with request
    records (``workload`` given: the newest that measured it). A named run that lacks ``workload`` is refused with the
    runs that have it."""
    from gawm_lib import suite

    if run_ids:
        ids, why = [runs.load_run(r).id for r in run_ids], "the runs named in run_ids"
    elif suite_name:
        ids, why = suite.suite_run_ids(suite_name), f"the completed runs of suite {suite_name!r}"
    else:
        candidates = [
            r
            for r in reversed(runs.list_runs())
            if r.status == "COMPLETED"
            and r.requests_path.exists()
            and (workload is None or workload in run_settings(r))
        ]
        if not candidates:
            what = f" that measured {workload}" if workload else ""
            raise runs.RunError(
                f"no completed run with request records{what} in {paths.raw_dir()}: run a "
                "measurement first (gawm demo) or name run_ids"
            )
        newest = candidates[0]
        ids = [newest.id]
        why = (
            f"no run_ids given: the newest completed run{f' that measured {workload}' if workload else ''} "
            f"({newest.manifest.get('start_utc', '')[:19]} UTC)"
        )
    if workload is not None:
        lacking = [r for r in ids if workload not in run_settings(runs.load_run(r))]
        if lacking:
            having = [r.id for r in runs.list_runs() if r.status == "COMPLETED" and workload in run_settings(r)]
            raise ValueError(
                f"run(s) {', '.join(lacking)} did not measure {workload}; runs that did: "
                f"{', '.join(having[-10:]) or 'none'}"
            )
    return ids, f"{len(ids)} run(s), {why}: {', '.join(ids)}"


def runs_table(loaded: list[runs.Run]) -> pd.DataFrame:
    """One row per (run, workload): status, verdict, experiment, configuration label, replicas, scenario, weights,
    requests."""
    labels = config_labels(loaded).set_index(["run_id", "workload"])["config"]
    rows = []
    for run in loaded:
        for workload, flat in run_settings(run).items():
            rows.append(
                {
                    "run_id": run.id,
                    "status": run.status,
                    "verdict": run.verdict,
                    "experiment": run.manifest.get("experiment", ""),
                    "workload": workload,
                    "config": labels.get((run.id, workload), ""),
                    "replicas": flat.get("backend.replicas"),
                    "scenario": flat.get("load.scenario"),
                    "device": flat.get("device"),
                    "weights": flat.get("weights"),
                    "requests": run.results().get("requests", ""),
                }
            )
    return pd.DataFrame(rows)


def run_configuration(run: runs.Run, workload: str) -> dict[str, object]:
    """How ``run`` served ``workload``: replicas, placement, threads per replica, device, the cores its replicas ran
    on (as the kernel reported them; else the backend's ``cpus``; else the host's) and the host's cores, batching."""
    flat = run_settings(run)[workload]
    placed = (run.manifest.get("workloads", {}).get(workload) or {}).get("placement") or []
    cores = sorted({c for p in placed for c in (p.get("cpus_actual") or p.get("cpus") or [])})
    host = run.manifest.get("host", {})
    host_cores = host.get("cpu_affinity") or host.get("cpu_count")
    if not cores and flat.get("backend.kind", "local") == "local":
        cores = list(flat.get("backend.cpus") or []) or (list(range(host_cores)) if host_cores else [])
    return {
        "run_id": run.id,
        "workload": workload,
        "backend": flat.get("backend.kind"),
        "replicas": flat.get("backend.replicas"),
        "placement": flat.get("backend.placement", "none"),
        "threads": flat.get("threads"),
        "device": flat.get("device"),
        "cores": len(cores) or None,
        "host_cores": host_cores,
        "max_batch_size": flat.get("max_batch_size"),
        "max_queue_delay_ms": flat.get("max_queue_delay_ms"),
        "scenario": flat.get("load.scenario"),
        "weights": flat.get("weights"),
    }


def service_time_caveats(run: runs.Run, workload: str, requests: pd.DataFrame | None = None) -> list[str]:
    """Why a run's service times might not be those of one replica with its own device: sentences, empty when
    none. Replicas (x threads) on fewer cores than they need (four replicas on one core time-slice it: each batch
    takes about four times as long), replicas sharing one GPU, a run that did not complete, failed requests, and
    (given its ``requests``) too few batches or a single batch size to fit the service time's slope."""
    conf = run_configuration(run, workload)
    notes = []
    replicas, threads, cores = conf["replicas"] or 1, conf["threads"] or 1, conf["cores"]
    if conf["backend"] == "local" and conf["device"] == "cpu" and cores and replicas * threads > cores:
        notes.append(
            f"{replicas} replica(s) x {threads} thread(s) ran on {cores} core(s): the replicas time-sliced "
            f"the cores, so each batch's time includes waiting for a core (about {replicas * threads / cores:.1f}"
            " x a replica's own); measure one replica, or as many replicas as cores, to plan from"
        )
    if conf["device"] == "cuda" and replicas > 1 and conf["placement"] in ("shared", "none"):
        gpus = {p.get("gpu") for p in (run.manifest.get("workloads", {}).get(workload) or {}).get("placement") or []}
        if len(gpus) < replicas:
            notes.append(f"{replicas} replicas shared {len(gpus) or 1} GPU(s): batch times include time-slicing")
    if run.status != "COMPLETED":
        notes.append(f"the run's status is {run.status}, not COMPLETED: it may be cut short")
    if requests is not None:
        mine = requests[requests["workload"] == workload] if "workload" in requests else requests
        failed = int((mine["error"] != "").sum())
        if failed:
            notes.append(f"{failed} of {len(mine)} requests failed: the batch times are of the ones that did not")
        if "verdict" in mine:  # the batches the fit will use (fit_service names the INVALID steps it leaves out)
            mine = mine[mine["verdict"].astype(str) != verdicts.INVALID]
        batches = server_batches(mine)
        if len(batches) < 20:
            notes.append(f"only {len(batches)} server batches: the service time and its variability rest on few points")
        if batches["batch_size"].nunique() < 2 and len(batches):
            notes.append(
                f"every batch had {int(batches['batch_size'].iloc[0])} item(s): the fit assumes no batching "
                "gain (measure with more users to fit the slope)"
            )
    return notes


RESULT_COLUMNS = {
    "workload": "workload",
    "config": "configuration",
    "level": "level",
    "sent": "requests",
    "errors": "errors",
    "throughput_rps": "throughput [req/s]",
    "p50_ms": "p50 [ms]",
    "p95_ms": "p95 [ms]",
    "p99_ms": "p99 [ms]",
}


def result_table(table: pd.DataFrame) -> pd.DataFrame:
    """The compact per-step table a notebook shows (workload, configuration, level, requests, errors, throughput, p50,
    p95, p99, and the step's verdict where known), rounded for reading; the full table stays in each run's
    ``summary.csv``."""
    shown = table.assign(config=table["config"] if "config" in table else "")
    columns = {**RESULT_COLUMNS, **({"verdict": "verdict"} if "verdict" in table else {})}
    out = shown[list(columns)].rename(columns=columns)
    return out.round({"throughput [req/s]": 2, "p50 [ms]": 1, "p95 [ms]": 1, "p99 [ms]": 1})


def describe_steps(table: pd.DataFrame, min_requests: int = 20) -> list[str]:
    """Two or three sentences per workload and configuration, made from the numbers: the peak throughput and at what
    level, where adding load stopped paying (throughput up less than 10 % while p95 rose by half or more), errors,
    and percentiles drawn from fewer than ``min_requests`` requests."""
    sentences = []
    configs = table.assign(config=table["config"] if "config" in table else "")
    for (workload, config), steps in configs.groupby(["workload", "config"], sort=False):
        steps = steps.sort_values("level")
        name = f"{workload}" + (f" ({config})" if config else "")
        peak = steps.loc[steps["throughput_rps"].idxmax()]
        text = (
            f"{name}: peak {peak['throughput_rps']:.3g} req/s at level {peak['level']:g}, p95 "
            f"{peak['p95_ms']:.3g} ms there (p95 {steps['p95_ms'].iloc[0]:.3g} ms at the lowest level, "
            f"{steps['level'].iloc[0]:g})."
        )
        for before, after in zip(steps.iloc[:-1].itertuples(), steps.iloc[1:].itertuples()):
            gain = after.throughput_rps / before.throughput_rps - 1 if before.throughput_rps > 0 else np.inf
            if gain < 0.10 and after.p95_ms >= 1.5 * before.p95_ms:
                text += (
                    f" It saturates by level {before.level:g}: going to {after.level:g} added "
                    f"{100 * gain:+.0f} % throughput and {100 * (after.p95_ms / before.p95_ms - 1):.0f} % p95."
                )
                break
        failed = int(steps["errors"].sum())
        if failed:
            text += f" {failed} request(s) failed."
        if "verdict" in steps:
            bad = steps[steps["verdict"].isin([verdicts.INVALID, verdicts.DEGRADED])]
            for row in bad.itertuples():
                text += f" Level {row.level:g} is {row.verdict}: {row.verdict_reasons}."
        few = steps[steps["ok"] < min_requests]
        if len(few):
            text += (
                f" Level(s) {', '.join(f'{v:g}' for v in few['level'])} have fewer than {min_requests} ok "
                "requests: their p95 and p99 are not reliable."
            )
        sentences.append(text)
    return sentences
