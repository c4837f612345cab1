"""What a workload trace is in gawm: tidy tables made from run directories, keyed by ``run_id`` and ``workload``.

:func:`load_traces` reads runs (by id or path) into a :class:`Traces`, four tables and the payload catalogue:

- ``arrivals``: one row per request of a measured step, in the order it was due: ``arrival_s`` (scheduled time from
  the start of the workload's load [s]), ``step_s`` (from the step's first arrival [s]), ``interarrival_s`` (from the
  previous arrival of the same step [s], NaN for the first), ``step``, ``level`` (offered load: users or req/s).
- ``demands``: one row per request (the same rows, same order): ``payload_id`` (which of the run's sample payloads it
  carried, matched by its body size; of payloads of equal size, the first), ``payload_size`` in the workload's own
  unit (:data:`PAYLOAD_UNITS`: image bytes, text tokens, audio seconds), ``bytes_out`` [bytes], ``items``,
  ``batch_size`` (the server's batch), ``compute_s`` (the batch's forward pass [s]), ``latency_s`` (from the schedule
  [s]), ``ok``.
- ``resources``: one row per Prometheus sample of a workload's measured steps (the scrape interval of the run): ``t_s``
  (from the workload's first sample [s]), ``step``, ``level`` and one column per catalogue query present, in its base
  unit (``latency_p95`` [s], ``throughput`` [req/s], ``gpu_util_nvml`` [ratio], ``container_cpu`` [cores],
  ``process_cpu`` [cores] and ``process_resident_memory`` [bytes] of the server processes, also of external servers,
  ...). Series of several replicas or GPUs are summed for rates, bytes, watts and cores, averaged otherwise.
- ``conditions``: one row per (run, workload): the configuration a generator is conditioned on (``replicas``,
  ``max_batch_size``, ``max_queue_delay_ms``, ``scenario``, ``levels``, ``payload_count``, ``payload_seed``,
  ``scrape_interval_s``).
- ``payloads``: one row per (run, workload, payload_id): ``bytes_out`` and ``payload_size`` of each sample payload,
  read from the run's ``load/<workload>-bodies.jsonl``; payload ids index that file, which is what the ``trace``
  scenario's ``payload_id`` column selects when a replay uses the run's ``payload_seed`` and ``payload_count``.

:func:`resources_from_frame` makes the ``resources`` table from any tidy metric frame (``gawm_lib.prom``'s columns),
so the seed study's CSV imports (:func:`gawm_lib.prom.import_seed_csv`: CPU, GPU utilisation, memory, power) are
traces too.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gawm_lib import runs, summary

PAYLOAD_UNITS = {"resnet50": "bytes", "distilbert": "tokens", "whisper": "seconds"}  # payload_size per workload
_SUMMED_UNITS = {"requests/s", "items/s", "watts", "bytes", "cores", "requests", "items", "joules"}
_NOT_SERIES = {"requests_total", "gpu_energy_nvml"}  # counters: their rates are in the catalogue already


@dataclass
class Traces:
    """The tidy tables of some runs (see the module docstring); ``run_ids`` in the order given."""

    run_ids: list[str]
    arrivals: pd.DataFrame
    demands: pd.DataFrame
    resources: pd.DataFrame
    conditions: pd.DataFrame
    payloads: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def select(self, run_ids=None, workload: str | None = None) -> Traces:
        """The same tables for some runs and/or one workload."""
        ids = list(run_ids) if run_ids is not None else self.run_ids

        def keep(frame: pd.DataFrame) -> pd.DataFrame:
            mask = frame["run_id"].isin(ids) if "run_id" in frame else pd.Series(True, index=frame.index)
            if workload is not None and "workload" in frame:
                mask &= frame["workload"] == workload
            return frame[mask].reset_index(drop=True)

        return Traces(
            [r for r in self.run_ids if r in ids],
            keep(self.arrivals),
            keep(self.demands),
            keep(self.resources),
            keep(self.conditions),
            keep(self.payloads),
            list(self.notes),
        )

    @property
    def workloads(self) -> list[str]:
        return list(dict.fromkeys(self.conditions["workload"]))


def payload_size(workload: str, body: dict) -> float:
    """The demand a request body carries, in :data:`PAYLOAD_UNITS`: JPEG bytes (ResNet50), WordPiece tokens with [CLS]
    and [SEP] (DistilBERT) or seconds of 16 kHz audio (Whisper), summed over the body's items; NaN for other
    workloads."""
    data = body["inputs"][0]["data"]
    if workload == "resnet50":
        return float(sum(len(base64.b64decode(item)) for item in data))
    if workload == "distilbert":
        return float(sum(len(ids) for ids in _tokenizer()(list(data))["input_ids"]))
    if workload == "whisper":
        from gawm_lib.workloads.whisper import SAMPLE_RATE, read_audio

        return float(sum(len(read_audio(base64.b64decode(item))) for item in data) / SAMPLE_RATE)
    return float("nan")


_TOKENIZER = None


def _tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from transformers import DistilBertTokenizer

        from gawm_lib.workloads.distilbert import VOCAB

        _TOKENIZER = DistilBertTokenizer(vocab=str(VOCAB))
    return _TOKENIZER


def payload_table(run: runs.Run, workload: str) -> pd.DataFrame:
    """``payload_id``, ``bytes_out`` (the body's size, as the load generator records it) and ``payload_size`` of each
    sample payload of ``workload`` in ``run`` (empty where the run kept no bodies file)."""
    path = run.path / "load" / f"{workload}-bodies.jsonl"
    columns = ["run_id", "workload", "payload_id", "bytes_out", "payload_size", "payload_unit"]
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    rows = []
    for i, line in enumerate(path.read_bytes().splitlines()):
        body = json.loads(line)
        rows.append((run.id, workload, i, len(line), payload_size(workload, body), PAYLOAD_UNITS.get(workload, "")))
    return pd.DataFrame(rows, columns=columns)


def conditions_of(run: runs.Run) -> pd.DataFrame:
    """One row per workload of ``run``: the configuration it ran under (see the module docstring)."""
    effective = run.manifest["params"]["effective"]
    load = effective["load"]
    rows = []
    for w in effective["workloads"]:
        rows.append(
            {
                "run_id": run.id,
                "workload": w["name"],
                "replicas": int(effective["backend"].get("replicas", 1)),
                "max_batch_size": int(w.get("max_batch_size", 1)),
                "max_queue_delay_ms": float(w.get("max_queue_delay_ms", np.nan) or np.nan),
                "scenario": load["scenario"],
                "levels": list(load.get("levels") or []),
                "payload_count": int(load.get("payload_count", 16)),
                "payload_seed": int(load.get("payload_seed", 2)),
                "scrape_interval_s": float((effective.get("prometheus") or {}).get("scrape_interval_s", np.nan)),
            }
        )
    return pd.DataFrame(rows)


def request_tables(requests: pd.DataFrame, payloads: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``arrivals`` and ``demands`` tables of request rows (``summary.read_requests`` columns plus ``run_id``);
    ``payloads`` maps body sizes to payload ids."""
    rows = requests[requests["phase"] == "step"].sort_values(["run_id", "workload", "scheduled_ns"], kind="stable")
    first = rows.groupby(["run_id", "workload"])["scheduled_ns"].transform("min")
    step_first = rows.groupby(["run_id", "workload", "step"])["scheduled_ns"].transform("min")
    arrivals = pd.DataFrame(
        {
            "run_id": rows["run_id"],
            "workload": rows["workload"],
            "step": rows["step"].astype(int),
            "level": rows["level"].astype(float),
            "arrival_s": (rows["scheduled_ns"] - first) / 1e9,
            "step_s": (rows["scheduled_ns"] - step_first) / 1e9,
        }
    ).reset_index(drop=True)
    arrivals["interarrival_s"] = arrivals.groupby(["run_id", "workload", "step"])["arrival_s"].diff()
    ok = (rows["error"] == "").to_numpy()
    demands = arrivals[["run_id", "workload", "step", "level", "arrival_s"]].copy()
    demands["bytes_out"] = rows["bytes_out"].to_numpy()
    demands["items"] = rows["items"].to_numpy()
    demands["batch_size"] = np.where(ok & (rows["batch_size"] > 0).to_numpy(), rows["batch_size"], np.nan)
    demands["compute_s"] = np.where(
        ok & (rows["server_compute_ns"] > 0).to_numpy(), rows["server_compute_ns"] / 1e9, np.nan
    )
    demands["latency_s"] = np.where(ok, (rows["done_ns"] - rows["scheduled_ns"]) / 1e9, np.nan)
    demands["ok"] = ok
    key = payloads.drop_duplicates(["run_id", "workload", "bytes_out"])[
        ["run_id", "workload", "bytes_out", "payload_id", "payload_size"]
    ]
    demands = demands.merge(key, on=["run_id", "workload", "bytes_out"], how="left")
    demands["payload_id"] = demands["payload_id"].astype("Int64")
    return arrivals, demands


def resources_from_frame(frame: pd.DataFrame, run_id: str, phase: str | None = "step") -> pd.DataFrame:
    """The ``resources`` table of one run from a tidy metric frame (``time``, ``query``, ``value``, ``unit``, ``phase``
    and, for gawm runs, ``workload``, ``step``, ``level``; a seed import's ``workload``): the rows of ``phase`` only
    (gawm's measured steps; None: every row), a frame without steps as one step 0 of level NaN; one column per query."""
    if frame.empty:
        return pd.DataFrame(columns=["run_id", "workload", "step", "level", "t_s"])
    from gawm_lib.prom.catalogue import CATALOGUE

    over_range = {name for name, query in CATALOGUE.items() if query.over_range}  # one value per phase, not a series
    frame = frame[~frame["query"].isin(_NOT_SERIES | over_range)].copy()
    if phase is not None:
        frame = frame[frame["phase"] == phase]
    if "step" not in frame:
        frame["step"] = 0
    if "level" not in frame:
        frame["level"] = np.nan
    if "workload" not in frame:
        frame["workload"] = ""
    frame["level"] = frame["level"].fillna(-1.0)  # groupby drops NaN keys; put back below
    units = frame.groupby("query")["unit"].first()
    pieces = []
    for query, rows in frame.groupby("query"):
        how = "sum" if units[query] in _SUMMED_UNITS else "mean"
        pieces.append(rows.groupby(["workload", "step", "level", "time"])["value"].agg(how).rename(query))
    wide = pd.concat(pieces, axis=1).reset_index().sort_values(["workload", "time"])
    wide["level"] = wide["level"].replace(-1.0, np.nan)
    start = wide.groupby("workload")["time"].transform("min")
    wide["t_s"] = (wide["time"] - start).dt.total_seconds()
    wide.insert(0, "run_id", run_id)
    metrics = [c for c in wide.columns if c not in ("run_id", "workload", "step", "level", "time", "t_s")]
    return wide[["run_id", "workload", "step", "level", "t_s", *sorted(metrics)]].reset_index(drop=True)


def load_traces(run_ids, workloads=None) -> Traces:
    """The trace tables of runs (ids or paths), for all their workloads or those named."""
    from gawm_lib import prom

    loaded = [runs.load_run(r) for r in run_ids]
    if len({run.id for run in loaded}) < len(loaded):
        raise ValueError(f"a run is named twice in {[run.id for run in loaded]}")
    requests, resources, conditions, payloads, notes = [], [], [], [], []
    for run in loaded:
        cond = conditions_of(run)
        if workloads is not None:
            cond = cond[cond["workload"].isin(list(workloads))]
        conditions.append(cond)
        for workload in cond["workload"]:
            payloads.append(payload_table(run, workload))
        if run.requests_path.exists():
            rows = summary.read_requests(run.requests_path)
            requests.append(rows[rows["workload"].isin(cond["workload"])].assign(run_id=run.id))
        else:
            notes.append(f"{run.id}: no request records")
        metrics_path = run.path / "metrics" / "metrics.parquet"
        if metrics_path.is_file():
            frame = prom.load_run_metrics(run.path)
            if "workload" in frame:
                frame = frame[frame["workload"].isin(cond["workload"])]
            resources.append(resources_from_frame(frame, run.id))
        else:
            notes.append(f"{run.id}: no Prometheus metrics (prometheus.enabled was false, or it failed)")
    payload_frame = pd.concat(payloads, ignore_index=True) if payloads else payload_table(loaded[0], "")
    if not requests:
        raise ValueError(f"no request records in {[run.id for run in loaded]}")
    arrivals, demands = request_tables(pd.concat(requests, ignore_index=True), payload_frame)
    resource_frame = (
        pd.concat(resources, ignore_index=True)
        if resources
        else pd.DataFrame(columns=["run_id", "workload", "step", "level", "t_s"])
    )
    return Traces(
        [run.id for run in loaded],
        arrivals,
        demands,
        resource_frame,
        pd.concat(conditions, ignore_index=True),
        payload_frame,
        notes,
    )


def traces_from_seed(frame: pd.DataFrame, phases=("load",)) -> Traces:
    """Resource traces of the seed study's CSV exports (:func:`gawm_lib.prom.import_seed_csv`): one run per
    (workload, replicas), ``run_id`` ``seed:<workload>_r<replicas>``, its ``phases`` in order as steps 0, 1, ...
    (level unknown: NaN). The seed kept no request records, so ``arrivals`` and ``demands`` are empty: resource
    generators can be fitted on them, arrival and demand generators cannot."""
    resources, conditions = [], []
    for (workload, replicas), rows in frame.groupby(["workload", "replicas"], sort=True):
        run_id = f"seed:{workload}_r{int(replicas)}"
        rows = rows[rows["phase"].isin(phases)].copy()
        rows["step"] = rows["phase"].map({p: i for i, p in enumerate(phases)}).astype(int)
        rows["level"] = np.nan
        resources.append(resources_from_frame(rows, run_id, phase=None))
        conditions.append(
            {
                "run_id": run_id,
                "workload": workload,
                "replicas": int(replicas),
                "max_batch_size": 1,  # not in the seed's exports
                "max_queue_delay_ms": np.nan,
                "scenario": "seed",
                "levels": [],
                "payload_count": 0,
                "payload_seed": 0,
                "scrape_interval_s": np.nan,
            }
        )
    empty = pd.DataFrame(columns=["run_id", "workload", "step", "level"])
    return Traces(
        [c["run_id"] for c in conditions],
        empty.assign(arrival_s=[], step_s=[], interarrival_s=[]),
        empty.assign(arrival_s=[]),
        pd.concat(resources, ignore_index=True),
        pd.DataFrame(conditions),
        pd.DataFrame(columns=["run_id", "workload", "payload_id", "bytes_out", "payload_size", "payload_unit"]),
    )
