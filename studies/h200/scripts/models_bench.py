"""Benchmark: do the workload models predict held-out runs? And how fast is the analysis of 10 million records?

For each workload, on the local CPU backend (one replica, one torch thread):

1. *fit runs*, three kinds of measurement the model needs, none at a held-out rate:

   - a *batch sweep*: one user sending requests of b items, b = 1..B, so every batch size is measured back to back;
     the mean per size is the service table ``s(b)`` (:class:`gawm_lib.models.BatchLatencyTable`; the hinge
     ``max(floor, alpha*b + beta)`` of :func:`gawm_lib.models.fit_batch_latency` is fitted too, for reference: it
     does not describe ResNet50 on a CPU core), leaving out batches another process slowed down (:func:`interfered`);
     the client-side overhead (latency minus server queue and compute) comes from the b = 1 step;
   - a *calibration* step, open-loop Poisson at 60 % of the sweep's capacity: batches do not run as fast under
     open-loop arrivals as back to back (idle gaps between batches, requests decoded on the other core during a
     batch), and not every size alike (ResNet50: single images 8.7 % slower, batches of 2-4 2-7 % faster); each
     size it ran often enough takes its mean there, the others ``s(b)`` times the slowdown of the nearest size it ran
     often enough: the table under load; the spread of its batches around it is the service-time variability;
2. *held-out runs*: open-loop Poisson at 10 %, 30 %, 50 %, 70 % and 85 % of the fitted capacity ``B / s(B)``
   (``s`` the table under load), each step at least ``requests`` requests (:class:`Plan`), each between two *speed
   checks* (the calibration step again; the check after a step is the one before the next): the machine's speed
   drifts (the same model 20 % slower than three hours before, 20 % faster than the calibration ten minutes before),
   so each step's rate is from the table times the speed measured just before it (the capacity it has then), and its
   predictions from the table times the mean of the checks before and after it (the speed over the step: one 20 s
   check misjudged 600 s steps by up to 5 %, in both ResNet50's and DistilBERT's 70 % steps on the build machine,
   which put those p95 predictions 14-25 % high);
3. *predictions*, two per step, each plus the measured overhead:

   - *steady state*: :func:`gawm_lib.models.predict_batching` at the step's rate, with batch times varying as the
     calibration's did (the goal's number; without the variability DistilBERT's p95 at 50-85 % came 9-27 % short
     of the simulated server's, the bias its noise floor showed until the ninth session);
   - *same schedule*: :func:`gawm_lib.models.replay_batching` of the step's own planned arrival times (a pure function
     of the rate and the arrival seed, fixed before the step runs: no measurement of the held-out run is used) through
     the fitted server, with batch times scaled by factors drawn from the calibration's measured variability.

   A finite run's p95 scatters around the steady state, far more at high load (long busy periods): the *noise floor*
   of each step is the p95 error a perfect steady-state model would show for a step of that many requests, from
   simulated runs of the fitted model. Steady-state MAPE well above the noise floor is a modelling problem; MAPE within
   it is what the step length allows. The same-schedule comparison removes the arrival noise and isolates the model.

MAPE of throughput, p50 and p95 against the held-out records, per prediction, with per-step diagnostics: measured
batch times over the fitted ones (service drift), load average and the CPU other processes used during the step.

Then 10 million synthetic request records go through :func:`gawm_lib.summary.summarise` and
:func:`gawm_lib.plots.latency_cdf`, timed. Results are merged per workload into
``studies/h200/results/models_cpu/models.json``, an append-only record: every run's entries are appended to ``runs``
(each with its command, commit, host, times and the folder that keeps its request records, under ``data/raw/``), and
``workloads`` is the current view, each workload's newest entry; the predicted-vs-measured figures are drawn from it.
Run it on a quiet machine::

    python -m studies.h200.scripts.models_bench                   # all three, about an hour on 2 cores
    python -m studies.h200.scripts.models_bench --workloads whisper  # about 40 minutes (capacity ~2 clips/s)
    python -m studies.h200.scripts.models_bench --min-step-s 150  # longer held-out steps, a lower noise floor
    python -m studies.h200.scripts.models_bench --quick           # shorter steps, a smoke test
    python -m studies.h200.scripts.models_bench --merge other.json  # merge an earlier report's entries, run nothing
    python -m studies.h200.scripts.models_bench --plan-steps --max-noise-floor-pct 5 --min-step-s 300
                                                # run nothing: how long each step must be, from the recorded fits
    python -m studies.h200.scripts.models_bench --workloads resnet50 --max-noise-floor-pct 5 --min-step-s 300
    python -m studies.h200.scripts.models_bench --arrival-seed 200  # other arrival schedules than the recorded runs'

The entries in ``studies/h200/results/models_cpu/models.json`` ran with steps sized to a 6 % (ResNet50) and 5 %
(DistilBERT) noise floor, and 900 s steps (Whisper): with shorter steps a perfect steady-state model already misses the
p95 by about the goal (ResNet50 with 300 s steps: 8.7 % on average), so a shorter run cannot tell a good model from a
bad one. Each entry records its command. A fixed length gives the steps at high load far more noise than those at low
load; ``--max-noise-floor-pct`` makes each step as long as its own floor needs (from the fit, before the step runs), and
``--plan-steps`` says what that costs before anything runs: for a 5 % floor ResNet50 and DistilBERT need about 70
minutes of held-out steps, Whisper about 8 hours (at 10 % its p95 falls among the one clip in ten that arrives while
another runs and waits up to 0.5 s for it: the fitted server puts p90, p95 and p97 at 0.53, 0.78 and 0.89 s, so a few
such clips more or less move the p95).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gawm_lib import analysis, paths, plots, runs, summary
from gawm_lib.backends import open_backend
from gawm_lib.config import BackendConfig, LoadConfig, WorkloadConfig
from gawm_lib.loadgen import LoadSpec, run_load, write_bodies
from gawm_lib.models import BatchLatencyTable, fit_batch_latency, mape, predict_batching, replay_batching
from gawm_lib.workloads import build_workload, samples
from studies.h200.scripts import RESULTS

UTILISATIONS = (0.1, 0.3, 0.5, 0.7, 0.85)
WORKLOADS = ("resnet50", "distilbert", "whisper")
METRICS = ("throughput_rps", "p50_ms", "p95_ms")
GOAL_MAPE_PCT = 10.0
QUIET_OTHER_CORES = 0.25  # other processes using more than this (mean cores over a span): timings suspect
GPU_KEYS = ("gpu", "gpu_also", "gpu_superseded", "gpu_goal_met", "gpu_goal_met_by")  # written by study_report
# Batching settings per workload: what a user of the CPU backend would pick (a few items, a short delay). Whisper:
# random weights never emit end-of-text, so every clip decodes exactly decode_tokens tokens, and the server pads every
# clip to the 30 s window, so a clip costs the same (~0.5 s on one core) whatever its length; one temperature, so no
# fallback re-decodes.
SETTINGS: dict[str, dict[str, Any]] = {
    "resnet50": {"max_batch_size": 4, "max_queue_delay_ms": 5},
    "distilbert": {"max_batch_size": 8, "max_queue_delay_ms": 5},
    "whisper": {
        "max_batch_size": 4,
        "max_queue_delay_ms": 5,
        "decode_tokens": 8,
        "temperatures": [0.0],
        "timestamps": False,
        "model_size": "tiny",
    },
}


@dataclass(frozen=True)
class Plan:
    """How long to measure. A held-out step lasts at least ``min_step_s`` and ``requests`` requests. The sweep runs
    each batch size for at least ``fit_s`` and ``fit_batches`` batches; the calibration step (open loop at
    ``calibration_utilisation`` of the sweep's capacity) at least ``calibration_min_s`` and ``calibration_requests``.
    Before each held-out step and after the last a *speed check* (the calibration step again, at least
    ``speed_check_min_s`` and ``speed_check_requests``) says how fast the machine runs the model then; 0 requests:
    none.
    Held-out step i sends the Poisson schedule of seed ``arrival_seed + i`` (the same seed, the same schedule: run
    again with another seed to see another sample of the arrivals).
    ``max_noise_floor_pct`` (optional): each held-out step is made as long as its predicted noise floor needs to come
    under this, from ``min_step_s`` up to ``max_step_s`` (:func:`step_length_for_floor`).
    ``replays``: replications of the same-schedule replay; ``noise_runs``: simulated runs per step for the noise
    floor. A fit during which other processes used more than ``QUIET_OTHER_CORES`` is done again (``fit_attempts`` in
    all, ``busy_wait_s`` apart), and so is such a held-out step (``step_attempts``; not steps over 10 minutes: at low
    utilisation contention matters least); every busy attempt is recorded."""

    requests: int
    min_step_s: float
    fit_s: float = 3.0
    fit_batches: int = 20
    calibration_requests: int = 200
    calibration_min_s: float = 30.0
    calibration_utilisation: float = 0.6
    speed_check_requests: int = 100
    speed_check_min_s: float = 20.0
    utilisations: tuple[float, ...] = UTILISATIONS
    warmup_s: float = 2.0
    replays: int = 20
    noise_runs: int = 200
    fit_attempts: int = 3
    step_attempts: int = 2
    busy_wait_s: float = 30.0
    arrival_seed: int = 100
    max_noise_floor_pct: float | None = None
    max_step_s: float = 4 * 3600.0


PLANS = {
    "full": Plan(requests=200, min_step_s=30.0),
    # ~2 clips/s: 200 requests take 16 minutes at 10 % utilisation; steps at high load are cheap in time and their p95
    # is the noisiest: at least 150 s each
    "full-whisper": Plan(
        requests=200, min_step_s=150.0, fit_batches=10, calibration_requests=100, speed_check_requests=30
    ),
    "quick": Plan(
        requests=40,
        min_step_s=10.0,
        fit_s=2.0,
        fit_batches=8,
        calibration_requests=40,
        calibration_min_s=10.0,
        speed_check_requests=20,
        speed_check_min_s=5.0,
    ),
    "quick-whisper": Plan(
        requests=20,
        min_step_s=10.0,
        fit_s=2.0,
        fit_batches=4,
        calibration_requests=20,
        calibration_min_s=10.0,
        speed_check_requests=10,
        speed_check_min_s=5.0,
    ),
}


def plan_for(name: str, quick: bool) -> Plan:
    key = "quick" if quick else "full"
    return PLANS.get(f"{key}-{name}", PLANS[key])


def payload_items(workload, name: str, count: int = 32, seed: int = 11) -> list[Any]:
    """Sample inputs for the request bodies. Whisper: one sentence each (2-5 s of speech, ~100-150 kB WAV): the
    compute does not depend on the length (see SETTINGS), and short clips keep the request parsing, which shares the
    cores with the model, small."""
    if name == "whisper":
        return [clip for clip, _text in samples.speech(count, seed, max_sentences=1)]
    return workload.sample_items(count, seed=seed)


def _load(workload: str, backend, bodies: Path, out: Path, work: Path, **load: Any) -> tuple[pd.DataFrame, dict]:
    spec = LoadSpec(
        workload=workload,
        model=workload,
        targets=[r.url for r in backend.replicas],
        bodies_path=str(bodies),
        out_dir=str(out),
        load=LoadConfig(**load).model_dump(),
    )
    result = run_load(spec, work, progress=False)
    return summary.read_requests(out), result


class CpuMeter:
    """Load average and CPU use over a span: the machine's busy cores, and how many of them went to processes other
    than this benchmark, its model server and its load generators (other people's work, which slows the server)."""

    def __init__(self, server_pid: int | None):
        import psutil

        self._psutil = psutil
        self._server = psutil.Process(server_pid) if server_pid else None
        self._start = self._snapshot()

    def _snapshot(self) -> tuple[float, float, float, float]:
        times = self._psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        mine = self._psutil.Process().cpu_times()
        ours = mine.user + mine.system + mine.children_user + mine.children_system
        if self._server is not None:
            with_server = self._server.cpu_times()
            ours += with_server.user + with_server.system
        return time.monotonic(), busy, ours, os.getloadavg()[0]

    def read(self) -> dict[str, float]:
        wall0, busy0, ours0, load0 = self._start
        wall1, busy1, ours1, load1 = self._snapshot()
        span = max(wall1 - wall0, 1e-9)
        return {
            "seconds": round(span, 1),
            "busy_cores": round((busy1 - busy0) / span, 3),
            "other_processes_cores": round(max(0.0, (busy1 - busy0) - (ours1 - ours0)) / span, 3),
            "load_average_1m_start": load0,
            "load_average_1m_end": load1,
        }


def _batch_times(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each server batch's size and compute time [s] in ``rows``, and which of them another process slowed down."""
    batches = analysis.server_batches(rows)
    sizes, seconds = batches["batch_size"].to_numpy(), batches["server_compute_ns"].to_numpy() / 1e9
    return sizes, seconds, interfered(sizes, seconds)


INTERFERENCE_MADS = 6.0  # a batch this many robust standard deviations slower than its size's median: interfered


def interfered(sizes: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Batches slowed by something else on the machine: time over its batch size's median (sizes seen >= 3 times),
    pooled, more than ``INTERFERENCE_MADS`` robust standard deviations (1.4826 MAD) above 1. Other processes on a
    shared machine take the model's core now and then, which makes a batch 1.2-2.5x slower than its peers; a few such
    batches at the largest size tilt a least-squares slope (on this machine two of nine batches of 4 Whisper clips made
    the fitted capacity 18 % too low). Only slow outliers count (nothing makes a batch faster), and the spread is
    measured, so real variability (DistilBERT's text lengths) stays in."""
    ratio = np.full(seconds.shape, np.nan)
    for b in np.unique(sizes):
        same = sizes == b
        if same.sum() >= 3:
            ratio[same] = seconds[same] / np.median(seconds[same])
    known = np.isfinite(ratio)
    if known.sum() < 5:
        return np.zeros(seconds.shape, dtype=bool)
    spread = 1.4826 * np.median(np.abs(ratio[known] - 1.0))
    return known & (ratio > 1.0 + INTERFERENCE_MADS * max(spread, 1e-3))


def _overhead(rows: pd.DataFrame) -> float:
    """Median client-side time of one-at-a-time requests: latency minus server queue and compute [s]."""
    ok = rows[rows["error"] == ""]
    return float(np.median((ok["done_ns"] - ok["sent_ns"] - ok["server_queue_ns"] - ok["server_compute_ns"]) / 1e9))


def _per_size(sizes: np.ndarray, seconds: np.ndarray, slow: np.ndarray) -> dict[int, dict[str, Any]]:
    return {
        int(b): {
            "batches": int((sizes == b).sum()),
            "interfered": int((slow & (sizes == b)).sum()),
            "mean_s": float(seconds[(sizes == b) & ~slow].mean()) if ((sizes == b) & ~slow).any() else None,
            "cv": float(seconds[sizes == b].std(ddof=1) / seconds[sizes == b].mean())
            if (sizes == b).sum() > 1
            else None,
        }
        for b in np.unique(sizes)
    }


def _fit_sweep(sweep_rows: pd.DataFrame, max_batch: int) -> tuple[BatchLatencyTable, Any, dict[str, Any]]:
    """Service table (mean batch time per size) and the reference hinge fit, interfered batches left out."""
    sizes, seconds, slow = _batch_times(sweep_rows)
    hinge = fit_batch_latency(sizes[~slow], seconds[~slow]) if np.unique(sizes[~slow]).size >= 2 else None
    table = BatchLatencyTable.from_measurements(sizes[~slow], seconds[~slow], max_batch, fallback=hinge)
    info = {
        "batches": int(len(seconds)),
        "interfered": int(slow.sum()),
        "interfered_factors": [round(float(f), 3) for f in (seconds / table.predict(sizes))[slow]],
        "per_batch_size": _per_size(sizes, seconds, slow),
    }
    return table, hinge, info


CALIBRATION_SEED = 99  # the calibration step and every speed check send the same schedule

MIN_CALIBRATED_BATCHES = 3  # a batch size the calibration ran this often gets its own time under load (per-batch CV
# under load: ResNet50 3-4 %, Whisper 2-4 %, so three batches pin the mean to a few per cent)


def _calibrate(rows: pd.DataFrame, table: BatchLatencyTable) -> tuple[BatchLatencyTable, np.ndarray, dict[str, Any]]:
    """The service table under open-loop load, from the calibration step (interfered batches left out): each batch
    size the step ran at least ``MIN_CALIBRATED_BATCHES`` times takes its mean there, the others the sweep's time
    times the slowdown of the nearest size it calibrated (the larger of two as near; the *load factor*, the mean
    batch time over the sweep's of all sizes, where it calibrated none); and the variability factors (each batch's
    time over the table under load, interfered batches left out: mean ~1), which the steady-state prediction, the
    same-schedule replay and the noise floor all draw batch times from. Interfered batches are left out of them as out
    of the table: another process taking the core is what the quietness check judges, not the model's variability
    (Whisper's calibration once had two batches of ten 1.6-2.1x slower, which put its factor CV at 0.13, 0.03 without).

    Per size, because the load does not slow every size alike: on the build machine ResNet50's single-image batches
    ran 8.7 % slower under load than back to back and its batches of 2-4 2-7 % faster, so one factor for all (the
    earlier design) put the batches of 2-4 that fill the queue at 85 % utilisation 9-15 % too long and over-predicted
    that p95 by half. The nearest size's slowdown, not the load factor, for the sizes it did not calibrate, because
    the load factor is mostly single requests' (the most frequent batches at 60 %): in one DistilBERT run single texts
    ran 28 % slower under load than back to back and batches of 2-4 2-10 %, and the load factor, 1.22, put batches of
    5-8 about 20 % too long, so the p95 at 85 % utilisation (where the backlog forms such batches) came out at 585 ms
    against 314 measured."""
    sizes, seconds, slow = _batch_times(rows[rows["phase"] == "step"])
    ratio = seconds / table.predict(sizes)
    load_factor = float(ratio[~slow].mean())
    under_load = list(table.scaled(load_factor).seconds)
    calibrated = [b for b in range(1, len(under_load) + 1) if ((sizes == b) & ~slow).sum() >= MIN_CALIBRATED_BATCHES]
    for b in calibrated:
        under_load[b - 1] = float(seconds[(sizes == b) & ~slow].mean())
    nearest = {
        b: min(calibrated, key=lambda c: (abs(c - b), -c))
        for b in range(1, len(under_load) + 1)
        if calibrated and b not in calibrated
    }
    for b, c in nearest.items():
        under_load[b - 1] = table.seconds[b - 1] * under_load[c - 1] / table.seconds[c - 1]
    service = BatchLatencyTable(tuple(under_load))
    every = seconds / service.predict(sizes)
    factors = every[~slow]
    info = {
        "load_factor": load_factor,
        "load_factor_se": float(ratio[~slow].std(ddof=1) / np.sqrt((~slow).sum())),
        "sizes_calibrated": calibrated,
        "min_calibrated_batches": MIN_CALIBRATED_BATCHES,
        "uncalibrated_scaled_as": nearest,
        "batches": int(len(seconds)),
        "interfered": int(slow.sum()),
        "interfered_factors": [round(float(f), 3) for f in every[slow]],
        "factor_cv": float(every.std(ddof=1)),
        "factor_cv_without_interfered": float(factors.std(ddof=1)),
        "factor_p05": float(np.quantile(factors, 0.05)),
        "factor_p95": float(np.quantile(factors, 0.95)),
        "factors_used": "without interfered",
        "factors": [round(float(f), 4) for f in factors],
        "per_batch_size": _per_size(sizes, seconds, slow),
    }
    return service, factors, info


def _speed_check(rows: pd.DataFrame, service: BatchLatencyTable) -> dict[str, Any]:
    """How fast the machine ran the model in a speed check (the calibration step again, between held-out steps): the
    mean of its batch times over the table under load, interfered batches left out, with its standard error.

    The held-out step's rate (its share of the capacity the machine has then) is from the table under load times the
    factor of the check before it, its batch times from the table times the mean of the checks before and after it.
    On the 2-core build machine the same model ran 20 % slower than three hours before (ResNet50 79.6 against 65.8 ms
    an image back to back), and 5-7 % faster in the held-out steps than in the calibration step half an hour before
    them (in the next run 20 % faster than the calibration ten minutes before), which at 85 % utilisation is a p95 a
    third too long."""
    sizes, seconds, slow = _batch_times(rows[rows["phase"] == "step"])
    if not len(seconds):
        raise RuntimeError("the speed check ran no batch: is the server answering?")
    ratio = seconds / np.asarray(service.predict(sizes))
    kept = ratio[~slow] if (~slow).any() else ratio
    return {
        "factor": float(kept.mean()),
        "se": float(kept.std(ddof=1) / np.sqrt(kept.size)) if kept.size > 1 else None,
        "batches": int(len(seconds)),
        "interfered": int(slow.sum()),
        "requests": int((rows["phase"] == "step").sum()),
    }


def _step_stats(latency_s: np.ndarray, start_s: float, done_s: np.ndarray) -> dict[str, float]:
    """The measured numbers as :func:`gawm_lib.summary.summarise` computes them: ok / (last done - first due)."""
    return {
        "throughput_rps": len(latency_s) / (done_s.max() - start_s),
        "p50_ms": float(np.percentile(latency_s, 50)) * 1e3,
        "p95_ms": float(np.percentile(latency_s, 95)) * 1e3,
    }


def replay_step(
    rows: pd.DataFrame,
    service,
    factors: np.ndarray,
    max_batch: int,
    delay_s: float,
    overhead_s: float,
    replays: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Prediction of one held-out step for its own schedule: the due times of its requests (warm-up included, so the
    step starts from the same state) replayed through the fitted server, ``replays`` times with batch-time factors
    drawn from ``factors``; p50/p95 pooled over the replays, throughput and batch size (per batch, and per request)
    averaged."""
    due = rows["scheduled_ns"].to_numpy()
    order = np.argsort(due, kind="stable")
    arrivals = (due[order] - due[order[0]]) / 1e9
    in_step = (rows["phase"].to_numpy() == "step")[order]
    start = arrivals[in_step].min()
    latencies, throughput, per_batch, per_request = [], [], [], []
    for r in range(replays):
        lat, size = replay_batching(arrivals, service, max_batch, delay_s, service_factors=factors, seed=seed + r)
        lat = lat[in_step] + overhead_s
        latencies.append(lat)
        throughput.append(_step_stats(lat, start, arrivals[in_step] + lat)["throughput_rps"])
        per_batch.append(in_step.sum() / (1.0 / size[in_step]).sum())  # requests / batches that served them
        per_request.append(size[in_step].mean())
    pooled = np.concatenate(latencies)
    return {
        "throughput_rps": float(np.mean(throughput)),
        "p50_ms": float(np.percentile(pooled, 50)) * 1e3,
        "p95_ms": float(np.percentile(pooled, 95)) * 1e3,
        "mean_batch_size": float(np.mean(per_batch)),
        "mean_batch_size_per_request": float(np.mean(per_request)),
    }


def noise_floor(
    rate: float,
    n_requests: int,
    n_warmup: int,
    service,
    factors: np.ndarray,
    max_batch: int,
    delay_s: float,
    p95_s: float,
    runs_: int,
    seed: int = 1000,
) -> dict[str, float]:
    """Relative error of a step's measured p95 against the steady-state p95 ``p95_s`` when the model is exact: simulated
    Poisson runs of ``n_warmup`` + ``n_requests`` requests of the fitted server (with its service-time variability)."""
    rng = np.random.default_rng(seed)
    errors = np.empty(runs_)
    for r in range(runs_):
        arrivals = np.cumsum(rng.exponential(1.0 / rate, n_warmup + n_requests))
        lat, _ = replay_batching(arrivals, service, max_batch, delay_s, service_factors=factors, seed=seed + r)
        errors[r] = np.percentile(lat[n_warmup:], 95) / p95_s - 1.0
    return {
        "p95_mean_abs_error_pct": float(np.abs(errors).mean() * 100),
        "p95_sd_pct": float(errors.std() * 100),
        "p95_bias_pct": float(errors.mean() * 100),
    }


def step_length_for_floor(
    rate: float,
    service,
    factors: np.ndarray,
    max_batch: int,
    delay_s: float,
    *,
    target_pct: float,
    min_s: float,
    max_s: float,
    min_requests: int = 0,
    warmup_s: float = 0.0,
    runs_: int = 100,
    seed: int = 1000,
) -> dict[str, Any]:
    """The shortest held-out step at ``rate`` (seconds, from ``min_s`` to ``max_s``) whose noise floor (the p95 error a
    perfect steady-state model would show on average, :func:`noise_floor`) is at most ``target_pct``, for the fitted
    server ``service`` with batch-time factors ``factors``. A step of ``s`` seconds sends ``max(min_requests, rate *
    s)`` requests after ``rate * warmup_s`` of warm-up, as the load generator does.

    The floor falls about as one over the square root of the requests, so each try jumps to where that rule puts the
    target (10 % past it, at least 25 % longer than the last try) and checks it by simulation. Returns the length,
    its floor, whether the target was met (not where even ``max_s`` is too short: the floor at ``max_s`` is then what
    the step can do) and every length tried with its floor. Why: with 300 s steps a perfect model of ResNet50 on the
    build machine already scored 8.7 % against the 10 % goal, so a run could not tell a good model from a bad one."""
    if not target_pct > 0:
        raise ValueError(f"target_pct: expected a positive noise floor in per cent, got {target_pct}")
    if not 0 < min_s <= max_s:
        raise ValueError(f"step length: expected 0 < min_s <= max_s, got min_s={min_s}, max_s={max_s}")
    p95_s = predict_batching(rate, service, max_batch, delay_s, service_factors=factors).p95_s
    n_warmup = int(np.ceil(rate * warmup_s))
    seconds, tried = float(min_s), []
    while True:
        n = max(int(min_requests), int(np.ceil(rate * seconds)))
        floor = noise_floor(rate, n, n_warmup, service, factors, max_batch, delay_s, p95_s, runs_, seed)[
            "p95_mean_abs_error_pct"
        ]
        tried.append({"step_s": seconds, "requests": n, "noise_floor_pct": floor})
        if floor <= target_pct or seconds >= max_s:
            break
        seconds = min(float(max_s), max(1.25 * seconds, 1.1 * seconds * (floor / target_pct) ** 2))
    return {
        "step_s": seconds,
        "noise_floor_pct": floor,
        "target_pct": target_pct,
        "target_met": floor <= target_pct,
        "tried": tried,
    }


def plan_steps(
    entry: dict[str, Any], target_pct: float, min_s: float, max_s: float, runs_: int = 100, source: str = "the report"
) -> list[dict[str, Any]]:
    """Before a run: how long each held-out step must be for its noise floor to come under ``target_pct``, from a
    recorded entry's fitted server (its table under load, batch-time factors, batching settings and plan). The run
    itself sizes each step again from its own fit (``--max-noise-floor-pct``); this says what that will cost."""
    name = entry.get("workload", "?")
    try:
        service = BatchLatencyTable(tuple(entry["service_used_s"]))
        factors = np.asarray(entry["service_variability"]["factors"], dtype=float)
        big, delay_ms = entry["settings"]["max_batch_size"], entry["settings"]["max_queue_delay_ms"]
        plan = entry["plan"]
        utilisations, requests, warmup_s = plan["utilisations"], plan["requests"], plan["warmup_s"]
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{source}: the {name} entry lacks {err} (service_used_s, service_variability.factors, "
            "settings.max_batch_size / max_queue_delay_ms and plan are needed to plan steps)"
        ) from None
    capacity = big / float(service.predict(big))
    return [
        {
            "utilisation": u,
            "rate_rps": u * capacity,
            **step_length_for_floor(
                u * capacity,
                service,
                factors,
                big,
                delay_ms / 1e3,
                target_pct=target_pct,
                min_s=min_s,
                max_s=max_s,
                min_requests=requests,
                warmup_s=warmup_s,
                runs_=runs_,
            ),
        }
        for u in utilisations
    ]


def validate_workload(
    name: str, work: Path, quick: bool = False, plan: Plan | None = None, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Fit, run the held-out steps and compare (see the module docstring). ``plan`` and ``settings`` override the
    defaults (tests use tiny ones)."""
    plan = plan or plan_for(name, quick)
    cfg = WorkloadConfig(name=name, threads=1, warmup_batches=2, **(SETTINGS[name] | (settings or {})))
    workload = build_workload(cfg)
    bodies = write_bodies(
        work / f"{name}-bodies.jsonl", [workload.request_body([i]) for i in payload_items(workload, name)]
    )
    big = cfg.max_batch_size
    delay_s = cfg.max_queue_delay_ms / 1e3
    with open_backend(cfg, BackendConfig(replicas=1), work / f"{name}-logs") as backend:
        pid = backend.replicas[0].pid

        def open_loop(part: str, rate: float, min_s: float, requests: int, seed: int) -> pd.DataFrame:
            """One Poisson step at ``rate``: at least ``min_s`` and ``requests`` (60 s past the time they need)."""
            return _load(
                name,
                backend,
                bodies,
                work / f"{name}-{part}.parquet",
                work,
                scenario="poisson",
                levels=[rate],
                step_duration_s=min_s,
                min_requests_per_step=requests,
                max_step_duration_s=max(min_s, 3.0 * requests / rate) + 60.0,
                warmup_s=plan.warmup_s,
                arrival_seed=seed,
            )[0]

        busy_fits = []
        for attempt in range(plan.fit_attempts):
            meter = CpuMeter(pid)
            sweep = []
            for b in range(1, big + 1):
                rows, _ = _load(
                    name,
                    backend,
                    bodies,
                    work / f"{name}-sweep{b}.parquet",
                    work,
                    scenario="closed_loop",
                    levels=[1],
                    payloads_per_request=b,
                    step_duration_s=plan.fit_s,
                    min_requests_per_step=plan.fit_batches,
                    warmup_s=plan.warmup_s if b == 1 else 0.5,
                )
                sweep.append(rows[(rows["phase"] == "step") & (rows["error"] == "")])
            table, hinge, sweep_info = _fit_sweep(pd.concat(sweep), big)
            overhead_s = _overhead(sweep[0])
            calibration_rate = plan.calibration_utilisation * big / table.predict(big)
            rows = open_loop(
                "calibration",
                calibration_rate,
                plan.calibration_min_s,
                plan.calibration_requests,
                seed=CALIBRATION_SEED,
            )
            fit_cpu = meter.read()
            if fit_cpu["other_processes_cores"] <= QUIET_OTHER_CORES or attempt == plan.fit_attempts - 1:
                break
            busy_fits.append({**fit_cpu, "service_table_s": list(table.seconds)})
            time.sleep(plan.busy_wait_s)
        service, factors, variability = _calibrate(rows, table)
        variability["calibration"] = {
            "utilisation_of_sweep_capacity": plan.calibration_utilisation,
            "rate_rps": calibration_rate,
            "requests": int((rows["phase"] == "step").sum()),
        }
        capacity = big / service.predict(big)

        def speed_check(part: str) -> dict[str, Any]:
            if not plan.speed_check_requests:
                return {"factor": 1.0}
            return _speed_check(
                open_loop(
                    part, calibration_rate, plan.speed_check_min_s, plan.speed_check_requests, seed=CALIBRATION_SEED
                ),
                service,
            )

        held_out = []
        check = None  # the last speed check: the one after a step is the one before the next
        for i, u in enumerate(plan.utilisations):
            busy_steps = []
            for attempt in range(plan.step_attempts):
                meter = CpuMeter(pid)
                before = check if check is not None else speed_check(f"speed{i}")
                # the step's rate from the machine's speed now: u of the capacity it has now
                service_now = service.scaled(before["factor"])
                step_capacity = big / float(service_now.predict(big))
                rate = u * step_capacity
                sizing = None
                if plan.max_noise_floor_pct is not None:  # as long as a perfect model needs to score under it
                    sizing = step_length_for_floor(
                        rate,
                        service_now,
                        factors,
                        big,
                        delay_s,
                        target_pct=plan.max_noise_floor_pct,
                        min_s=plan.min_step_s,
                        max_s=plan.max_step_s,
                        min_requests=plan.requests,
                        warmup_s=plan.warmup_s,
                        runs_=max(1, plan.noise_runs // 2),
                    )
                rows = open_loop(
                    f"rate{i}",
                    rate,
                    sizing["step_s"] if sizing else plan.min_step_s,
                    plan.requests,
                    seed=plan.arrival_seed + i,
                )
                check = after = speed_check(f"speed{i}-after")
                cpu = meter.read()
                if (
                    cpu["other_processes_cores"] <= QUIET_OTHER_CORES
                    or cpu["seconds"] > 600
                    or attempt == plan.step_attempts - 1
                ):
                    break
                busy_steps.append(cpu)  # the same schedule (seed) again, on a quieter machine
                check = None  # and a fresh check before it, after the wait
                time.sleep(plan.busy_wait_s)
            # the prediction from the speed over the step: the mean of the checks just before and just after it
            speed_factor = (before["factor"] + after["factor"]) / 2
            step_service = service.scaled(speed_factor)
            step = summary.summarise(rows).iloc[0]
            in_step = rows[rows["phase"] == "step"]
            predicted = predict_batching(rate, step_service, big, delay_s, service_factors=factors)
            # for comparison, within the same run: the earlier design, from the check before the step alone
            before_only = predict_batching(rate, service_now, big, delay_s, service_factors=factors)
            same = replay_step(rows, step_service, factors, big, delay_s, overhead_s, plan.replays)
            step_batches = analysis.server_batches(in_step)
            drift = (
                step_batches["server_compute_ns"].to_numpy()
                / 1e9
                / np.asarray(step_service.predict(step_batches["batch_size"].to_numpy()))
            )
            held_out.append(
                {
                    "utilisation": u,
                    "rate_rps": rate,
                    "capacity_rps": step_capacity,
                    "requests": int(step["sent"]),
                    "errors": int(step["errors"]),
                    "duration_s": float(step["duration_s"]),
                    "measured": {m: float(step[m]) for m in METRICS},
                    "predicted": {
                        "throughput_rps": rate,
                        "p50_ms": (predicted.p50_s + overhead_s) * 1e3,
                        "p95_ms": (predicted.p95_s + overhead_s) * 1e3,
                    },
                    "predicted_same_schedule": {m: same[m] for m in METRICS},
                    "predicted_p95_ms_from_check_before": (before_only.p95_s + overhead_s) * 1e3,
                    # per batch (what predict_batching gives); per request is larger (E[b^2]/E[b]: a big batch holds
                    # more of the requests), which is what a mean over request records shows
                    "mean_batch_size": {
                        "measured": float(step_batches["batch_size"].mean()),
                        "predicted": predicted.mean_batch_size,
                        "predicted_same_schedule": same["mean_batch_size"],
                        "measured_per_request": float(in_step["batch_size"].mean()),
                        "predicted_same_schedule_per_request": same["mean_batch_size_per_request"],
                    },
                    "arrival_seed": plan.arrival_seed + i,
                    "step_sizing": sizing,
                    "speed_check": before,
                    "speed_check_after": after,
                    "speed_factor": speed_factor,
                    "service_drift": {
                        "batches": int(len(drift)),
                        "mean": float(drift.mean()),
                        "median": float(np.median(drift)),
                    },
                    "noise_floor": noise_floor(
                        rate,
                        int(step["sent"]),
                        int((rows["phase"] == "warmup").sum()),
                        step_service,
                        factors,
                        big,
                        delay_s,
                        predicted.p95_s,
                        plan.noise_runs,
                    ),
                    "cpu": cpu,
                    "busy_attempts": busy_steps,
                }
            )
    return summarise_workload(
        {
            "workload": name,
            "settings": cfg.model_dump(),
            "weights": cfg.weights,
            "plan": asdict(plan),
            "fit_design": "batch sweep (table); each size's time under load from an open-loop calibration step where "
            f"it ran {MIN_CALIBRATED_BATCHES}+ times, else the sweep's x the nearest such size's slowdown; each "
            "held-out "
            "step's rate from a speed check (the calibration step again) just before it, its predictions "
            "from the mean of that check and the one just after it",
            "service_table_s": list(table.seconds),
            "load_factor": variability["load_factor"],
            "service_used_s": list(service.seconds),
            "service_model": (
                {
                    "alpha_s": hinge.alpha,
                    "beta_s": hinge.beta,
                    "floor_s": hinge.floor,
                    "alpha_se_s": hinge.alpha_se,
                    "beta_se_s": hinge.beta_se,
                    "knee": hinge.knee,
                    "rmse_s": hinge.rmse_s,
                    "fit_points": int(hinge.n_points),
                    "fit_points_are": "batches",
                    "used": False,
                    "max_error_vs_table_pct": float(
                        100 * np.max(np.abs(hinge.predict(np.arange(1, big + 1)) / np.asarray(table.seconds) - 1))
                    ),
                }
                if hinge is not None
                else None
            ),
            "sweep": sweep_info,
            "service_variability": variability,
            "fit_cpu": fit_cpu,
            "busy_fits": busy_fits,
            "client_overhead_ms": overhead_s * 1e3,
            "capacity_rps": capacity,
            "held_out": held_out,
        }
    )


def summarise_workload(entry: dict[str, Any]) -> dict[str, Any]:
    """Add MAPE per metric (steady state and, where recorded, same schedule), the noise floor, the worst points, and
    whether the machine was quiet: other processes used at most ``QUIET_OTHER_CORES`` during the fit and each step
    (``machine_busy_spans`` names the others; None where the entry recorded no CPU use). On 2 cores, a job of
    another user taking ~1 core slows the server's forward passes by 10-30 % and moves a p95 at 85 % by 2-3x."""
    held = entry["held_out"]
    spans = [("fit", entry.get("fit_cpu"))] + [(f"utilisation {h['utilisation']:g}", h.get("cpu")) for h in held]
    if any(cpu for _, cpu in spans):
        entry["machine_busy_spans"] = {
            name: cpu["other_processes_cores"]
            for name, cpu in spans
            if cpu and cpu["other_processes_cores"] > QUIET_OTHER_CORES
        }
        entry["machine_quiet"] = not entry["machine_busy_spans"]
    else:
        entry["machine_quiet"] = None
    entry["mape_pct"] = {m: mape([h["measured"][m] for h in held], [h["predicted"][m] for h in held]) for m in METRICS}
    worst = max(held, key=lambda h: abs(h["predicted"]["p95_ms"] / h["measured"]["p95_ms"] - 1))
    entry["worst_p95_point"] = {
        "utilisation": worst["utilisation"],
        "measured_ms": worst["measured"]["p95_ms"],
        "predicted_ms": worst["predicted"]["p95_ms"],
        "error_pct": 100 * (worst["predicted"]["p95_ms"] / worst["measured"]["p95_ms"] - 1),
    }
    if all("predicted_same_schedule" in h for h in held):
        entry["mape_pct_same_schedule"] = {
            m: mape([h["measured"][m] for h in held], [h["predicted_same_schedule"][m] for h in held]) for m in METRICS
        }
        worst = max(held, key=lambda h: abs(h["predicted_same_schedule"]["p95_ms"] / h["measured"]["p95_ms"] - 1))
        entry["worst_p95_point_same_schedule"] = {
            "utilisation": worst["utilisation"],
            "measured_ms": worst["measured"]["p95_ms"],
            "predicted_ms": worst["predicted_same_schedule"]["p95_ms"],
            "error_pct": 100 * (worst["predicted_same_schedule"]["p95_ms"] / worst["measured"]["p95_ms"] - 1),
        }
    if all("predicted_p95_ms_from_check_before" in h for h in held):
        entry["p95_mape_pct_from_check_before"] = mape(
            [h["measured"]["p95_ms"] for h in held], [h["predicted_p95_ms_from_check_before"] for h in held]
        )
    if all("noise_floor" in h for h in held):
        entry["p95_noise_floor_mape_pct"] = float(np.mean([h["noise_floor"]["p95_mean_abs_error_pct"] for h in held]))
    return entry


def analysis_speed(n: int = 10_000_000, seed: int = 0) -> dict[str, Any]:
    """Seconds to turn ``n`` request records into a percentile table and a latency CDF figure."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    scheduled = np.cumsum(rng.exponential(1e5, n)).astype(np.int64)
    records = pd.DataFrame(
        {
            "workload": pd.Categorical(rng.choice(["resnet50", "distilbert", "whisper"], n)),
            "phase": "step",
            "step": rng.integers(0, 10, n),
            "level": 1.0,
            "error": "",
            "scheduled_ns": scheduled,
            "sent_ns": scheduled,
            "done_ns": scheduled + rng.lognormal(16, 0.5, n).astype(np.int64),
        }
    )
    made = time.perf_counter() - start
    records["latency_ms"] = (records["done_ns"] - records["scheduled_ns"]) / 1e6
    start = time.perf_counter()
    table = summary.summarise(records)
    with tempfile.TemporaryDirectory() as tmp:
        plots.save_figure(plots.latency_cdf(records), "cdf_10m", ["synthetic"], "models_bench", out_dir=Path(tmp))
    elapsed = time.perf_counter() - start
    return {
        "records": n,
        "seconds": round(elapsed, 2),
        "goal_seconds": 10.0,
        "met": elapsed <= 10.0,
        "table_rows": len(table),
        "synthesis_seconds": round(made, 2),
    }


# -- the report: one file, merged per workload ------------------------------------------------------------------------
_RUN_KEYS = ("command", "quick", "started_utc", "finished_utc", "git", "host", "packages", "threads")


def _entries(report: dict[str, Any]) -> list[dict[str, Any]]:
    """A report's workload entries, each carrying its ``run`` (schema 1 kept the run at the top: lift it)."""
    out = []
    for entry in report.get("workloads", []):
        entry = dict(entry)
        if "run" not in entry:
            entry["run"] = {
                **{k: report.get(k) for k in _RUN_KEYS},
                "command_note": "schema 1 recorded the command without its options",
            }
        out.append(summarise_workload(entry))
    return out


def _recorded(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every entry a report has recorded, oldest first: schema 3's ``runs``; before it, the ``superseded`` entries and
    then the current ones (schema 1's with their run lifted in)."""
    if "runs" in report:
        return [summarise_workload(dict(entry)) for entry in report["runs"]]
    return [*(summarise_workload(dict(entry)) for entry in report.get("superseded", [])), *_entries(report)]


def merge_report(existing: dict[str, Any] | None, new: dict[str, Any], replace_speed: bool = True) -> dict[str, Any]:
    """``existing`` with the workload entries of ``new`` appended to its ``runs`` (nothing recorded is rewritten or
    dropped; an entry of a run already recorded is not added twice), and ``workloads`` the newest entry of each
    workload. ``analysis_speed``: the new one when ``replace_speed`` (a fresh measurement), else the one over more
    records."""
    existing = existing or {}
    recorded = _recorded(existing)

    def identity(entry: dict[str, Any]) -> str:
        return entry["workload"] + json.dumps(entry["run"], sort_keys=True, default=str)

    seen = {identity(entry) for entry in recorded}
    for entry in _entries(new):
        if identity(entry) not in seen:
            recorded.append(entry)
            seen.add(identity(entry))
    current = {}
    for entry in recorded:  # the newest entry of each workload
        current[entry["workload"]] = entry
    speeds = [s for s in (existing.get("analysis_speed"), new.get("analysis_speed")) if s]
    if new.get("analysis_speed") and replace_speed:
        speed = new["analysis_speed"]
    else:
        speed = max(speeds, key=lambda s: s.get("records", 0)) if speeds else None
    ordered = [current[w] for w in WORKLOADS if w in current] + [e for w, e in current.items() if w not in WORKLOADS]
    return {
        "benchmark": "models",
        "schema_version": 3,
        "updated_utc": runs.utc_now().isoformat(),
        "goal": f"held-out p95 MAPE <= {GOAL_MAPE_PCT:g} % from 10 % to 85 % utilisation, per workload, on the local "
        "CPU backend",
        "commands": list(dict.fromkeys(e["run"]["command"] for e in ordered if e["run"].get("command"))),
        "mape_pct": {e["workload"]: e["mape_pct"] for e in ordered},
        "mape_pct_same_schedule": {
            e["workload"]: e["mape_pct_same_schedule"] for e in ordered if "mape_pct_same_schedule" in e
        },
        "p95_noise_floor_mape_pct": {
            e["workload"]: e["p95_noise_floor_mape_pct"] for e in ordered if "p95_noise_floor_mape_pct" in e
        },
        "machine_quiet": {e["workload"]: e["machine_quiet"] for e in ordered},
        "p95_goal_met": {e["workload"]: e["mape_pct"]["p95_ms"] <= GOAL_MAPE_PCT for e in ordered},
        "p95_goal_met_same_schedule": {
            e["workload"]: e["mape_pct_same_schedule"]["p95_ms"] <= GOAL_MAPE_PCT
            for e in ordered
            if "mape_pct_same_schedule" in e
        },
        "workloads": ordered,
        "analysis_speed": speed,
        "runs": recorded,
        **{key: existing[key] for key in GPU_KEYS if existing.get(key)},  # written by study_report
    }


def draw_figures(report: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Predicted (steady state; and same schedule where recorded) against measured, every current workload."""
    written = []
    titles = {"predicted": "steady-state prediction", "predicted_same_schedule": "prediction for each step's schedule"}
    for key, suffix in (("predicted", ""), ("predicted_same_schedule", "_same_schedule")):
        rows = [
            {
                "workload": e["workload"],
                "metric": m.removesuffix("_ms").removesuffix("_rps"),
                "measured": h["measured"][m] / (1e3 if m.endswith("_ms") else 1),
                "predicted": h[key][m] / (1e3 if m.endswith("_ms") else 1),
            }
            for e in report["workloads"]
            for h in e["held_out"]
            if key in h
            for m in METRICS
        ]
        if not rows:
            continue
        fig = plots.predicted_vs_measured(pd.DataFrame(rows), title=titles[key])
        files = plots.save_figure(
            fig,
            f"{stem}_predicted_vs_measured{suffix}",
            [],
            "studies/h200/scripts/models_bench.py",
            {"prediction": key, "commands": report["commands"]},
            out_dir=out_dir,
            overwrite=True,
        )  # the benchmark's own figure, redrawn from its report
        written.append(files["png"])
    return written


def plan_with(plan: Plan, args: argparse.Namespace) -> Plan:
    """``plan`` with the step options the command line gave."""
    given = {
        "min_step_s": args.min_step_s,
        "max_step_s": args.max_step_s,
        "arrival_seed": args.arrival_seed,
        "max_noise_floor_pct": args.max_noise_floor_pct,
    }
    return replace(plan, **{k: v for k, v in given.items() if v is not None})


def print_step_plan(report: dict[str, Any], args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--plan-steps``: per workload in the report (or those named), each held-out step's length for the floor asked
    for, and the held-out time in all."""
    entries = {e["workload"]: e for e in report.get("workloads", [])}
    names = args.workloads or list(entries)
    missing = [n for n in names if n not in entries]
    if missing:
        parser.error(f"--plan-steps: {args.out} has no entry for {', '.join(missing)} (it has {sorted(entries)})")
    for name in names:
        plan = plan_with(plan_for(name, args.quick), args)
        try:
            steps = plan_steps(
                entries[name], plan.max_noise_floor_pct, plan.min_step_s, plan.max_step_s, source=str(args.out)
            )
        except ValueError as err:
            parser.error(f"--plan-steps: {err}")
        print(
            f"{name}: held-out steps for a noise floor <= {plan.max_noise_floor_pct:g} % (from {plan.min_step_s:g} "
            f"to {plan.max_step_s:g} s a step)"
        )
        for s in steps:
            print(
                f"  {100 * s['utilisation']:3.0f} %  {s['rate_rps']:8.2f} req/s  {s['step_s']:7.0f} s  "
                f"{s['tried'][-1]['requests']:7d} requests  floor {s['noise_floor_pct']:4.1f} %"
                + ("" if s["target_met"] else "  (even the longest step is short of the target)")
            )
        total = sum(s["step_s"] + plan.warmup_s for s in steps)
        mean_floor = np.mean([s["noise_floor_pct"] for s in steps])
        print(f"  held-out steps in all: {total / 60:.0f} min; their mean floor {mean_floor:.1f} %")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads", nargs="+", choices=WORKLOADS, help="workloads to run (default: all three, or none with --merge)"
    )
    parser.add_argument("--quick", action="store_true", help="short steps: a smoke test, not a measurement")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "models_cpu" / "models.json",
        help="report to merge into (created if absent)",
    )
    parser.add_argument("--merge", type=Path, nargs="+", default=[], help="earlier reports whose entries to merge in")
    parser.add_argument("--figures", action="store_true", help="only redraw the figures from --out")
    parser.add_argument(
        "--min-step-s",
        type=float,
        default=None,
        help="held-out step length in seconds (default: the plan's; longer steps lower the p95 noise "
        "floor at high load, where a step's requests come fastest)",
    )
    parser.add_argument(
        "--arrival-seed",
        type=int,
        default=None,
        help="held-out step i sends the Poisson schedule of this seed + i (default: the plan's, 100)",
    )
    parser.add_argument(
        "--max-noise-floor-pct",
        type=float,
        default=None,
        help="make each held-out step as long as a perfect model needs to miss its p95 by at most this "
        "much on average (from --min-step-s up to --max-step-s)",
    )
    parser.add_argument(
        "--max-step-s",
        type=float,
        default=None,
        help="longest held-out step with --max-noise-floor-pct (default: the plan's, 4 hours)",
    )
    parser.add_argument(
        "--plan-steps",
        action="store_true",
        help="run nothing: print the step lengths --max-noise-floor-pct needs, from the fits in --out",
    )
    parser.add_argument(
        "--records",
        type=int,
        default=None,
        help="analysis-speed records (default: 10 million when the report has no measurement yet)",
    )
    args = parser.parse_args(argv)
    words = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m studies.h200.scripts.models_bench", *map(shlex.quote, words)])
    workloads = args.workloads if args.workloads is not None else ([] if args.merge else list(WORKLOADS))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report = json.loads(args.out.read_text()) if args.out.is_file() else None
    for flag, value in (
        ("--min-step-s", args.min_step_s),
        ("--max-step-s", args.max_step_s),
        ("--max-noise-floor-pct", args.max_noise_floor_pct),
    ):
        if value is not None and not value > 0:
            parser.error(f"{flag}: expected a positive number, got {value}")
    if args.max_noise_floor_pct is not None:
        # the step lengths each workload's plan will use, the defaults included: refused here, not after the fit
        for name in args.workloads or WORKLOADS:
            plan = plan_with(plan_for(name, args.quick), args)
            if plan.min_step_s > plan.max_step_s:
                parser.error(
                    f"{name}: --max-step-s {plan.max_step_s:g} is shorter than --min-step-s "
                    f"{plan.min_step_s:g} (a flag not given takes the plan's default)"
                )
    if args.plan_steps:
        if args.max_noise_floor_pct is None:
            parser.error("--plan-steps: give the noise floor to plan for with --max-noise-floor-pct")
        if report is None:
            parser.error(f"--plan-steps: no report at {args.out} to take the fitted servers from")
        return print_step_plan(report, args, parser)
    if args.figures:
        if report is None:
            parser.error(f"--figures: no report at {args.out}")
        draw_figures(merge_report(report, {"workloads": []}), args.out.parent, args.out.stem)
        return 0
    for other in args.merge:
        report = merge_report(report, json.loads(other.read_text()), replace_speed=False)
    if workloads and args.out.is_file():  # said at the start, so that a stale file can still be swapped for a new one
        held = sorted(e["workload"] for e in report.get("workloads", []))
        again = sorted(set(held) & set(workloads))
        print(
            f"{args.out} exists: this run's entries go into it (it has {', '.join(held) or 'no entries'})"
            + (f"; new entries for {', '.join(again)} are appended and become the current ones" if again else ""),
            file=sys.stderr,
        )
    # the code that runs is the code of now: commits made while a long run goes on must not be credited with it
    run_info = {"command": command, "quick": args.quick, "git": runs.git_info()}
    results = []
    for name in workloads:
        started = runs.utc_now()
        # the request records are kept (data/raw/ is git-ignored) and named in the entry, so the check can be redone
        records = paths.raw_dir() / f"models-bench-{started:%Y%m%dT%H%M%SZ}-{name}"
        for k in range(2, 1000):  # a run of the same second (tests) gets a folder of its own
            if not records.exists():
                break
            records = records.with_name(f"models-bench-{started:%Y%m%dT%H%M%SZ}-{name}-{k}")
        records.mkdir(parents=True)
        plan = plan_with(plan_for(name, args.quick), args)
        result = validate_workload(name, records, args.quick, plan=plan)
        result["run"] = {
            "records_dir": str(records),
            **run_info,
            "started_utc": started.isoformat(),
            "finished_utc": runs.utc_now().isoformat(),
            "host": runs.host_info(),
            "packages": runs.package_versions(),
            "threads": {"torch_per_server": 1, **runs.thread_settings()},
        }
        results.append(result)
        # written after each workload, so a long run that stops later keeps what it measured
        report = merge_report(report, {"workloads": [result]})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    speed = None
    if args.records is not None or not (report or {}).get("analysis_speed"):
        speed = {**analysis_speed(args.records or 10_000_000), "run": run_info}
    report = merge_report(report, {"workloads": [], "analysis_speed": speed})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    draw_figures(report, args.out.parent, args.out.stem)
    for r in report["workloads"]:
        same = r.get("mape_pct_same_schedule")
        print(
            f"{r['workload']:>10}: capacity {r['capacity_rps']:.1f} req/s, MAPE steady state: throughput "
            f"{r['mape_pct']['throughput_rps']:.1f} %, p50 {r['mape_pct']['p50_ms']:.1f} %, p95 "
            f"{r['mape_pct']['p95_ms']:.1f} %"
            + (f"; same schedule: p95 {same['p95_ms']:.1f} %" if same else "")
            + (f"; noise floor p95 {r['p95_noise_floor_mape_pct']:.1f} %" if "p95_noise_floor_mape_pct" in r else "")
            + (
                f"; MACHINE BUSY: other processes used {r['machine_busy_spans']} cores"
                if r["machine_quiet"] is False
                else ""
            )
        )
    if report.get("analysis_speed"):
        print(
            f"analysis of {report['analysis_speed']['records']:,} records: {report['analysis_speed']['seconds']} s "
            f"(goal <= 10 s)"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
