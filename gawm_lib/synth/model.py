"""A workload model: arrival, demand and resource generators per workload, fitted on runs, saved as one file, sampled
into a synthetic trace that the load generator's ``trace`` scenario replays.

``WorkloadModel.fit(traces, arrivals="mmpp", demands="empirical", resources="ar")`` fits one generator of each kind per
workload (``resources=None``: none); ``sample(condition, duration_s, seed)`` gives a :class:`SyntheticTrace`: its
``requests`` (``arrival_s`` [s], ``payload_id``, ``payload_size``, ``bytes_out`` [bytes], ``compute_s`` [s],
``batch_size``) and ``resources`` (``t_s`` [s] and one column per metric). Arrivals, payloads and resources draw from
three independent child seeds of ``seed`` (as the load generator keeps arrival and payload seeds apart).
:meth:`SyntheticTrace.write` writes the CSV the ``trace`` scenario reads (``arrival_s``, ``payload_id``, then the
other columns, which the replay ignores). A replay sends the payloads of the source run's set: use its
``payload_count`` and ``payload_seed`` (:meth:`WorkloadModel.replay_load`).

The file written by :meth:`WorkloadModel.save` is a pickle (with a JSON card beside it, ``<file>.json``): read only
model files you made.
"""

from __future__ import annotations

import datetime as dt
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gawm_lib import runs
from gawm_lib.synth.arrivals import ARRIVALS
from gawm_lib.synth.condition import Condition
from gawm_lib.synth.demands import DEMANDS
from gawm_lib.synth.resources import RESOURCES

MODEL_SCHEMA = 1


@dataclass
class SyntheticTrace:
    """A generated trace: per-request rows and resource series (see the module docstring)."""

    condition: Condition
    duration_s: float
    seed: int
    requests: pd.DataFrame
    resources: pd.DataFrame | None = None

    def write(self, path: str | Path) -> Path:
        """The trace as CSV (or parquet for a ``.parquet`` name), ``arrival_s`` and ``payload_id`` first."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = self.requests.copy()
        frame["arrival_s"] = frame["arrival_s"].round(9)
        columns = ["arrival_s", "payload_id", *[c for c in frame.columns if c not in ("arrival_s", "payload_id")]]
        frame = frame[columns]
        if path.suffix.lower() in (".parquet", ".pq"):
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        return path


@dataclass
class WorkloadModel:
    """Generators per workload, and what they were fitted on."""

    generators: dict[str, dict[str, object]]  # workload -> {"arrivals": ..., "demands": ..., "resources": ...}
    kinds: dict[str, str | None]
    run_ids: list[str]
    payload_settings: dict[str, dict[str, int]]  # workload -> payload_count, payload_seed of the source run
    created_utc: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    git: dict = field(default_factory=runs.git_info)
    schema: int = MODEL_SCHEMA

    @classmethod
    def fit(
        cls,
        traces,
        condition: Condition | None = None,
        arrivals: str = "mmpp",
        demands: str = "empirical",
        resources: str | None = "ar",
    ) -> WorkloadModel:
        """Fit on ``traces`` (:func:`gawm_lib.synth.traces.load_traces`), every workload or the condition's."""
        for name, table, kind in (("arrivals", ARRIVALS, arrivals), ("demands", DEMANDS, demands)):
            if kind not in table:
                raise ValueError(f"{name}={kind!r}: expected one of {sorted(table)}")
        if resources is not None and resources not in RESOURCES:
            raise ValueError(f"resources={resources!r}: expected one of {sorted(RESOURCES)} or None")
        workloads = [condition.workload] if condition else traces.workloads
        generators: dict[str, dict[str, object]] = {}
        shared = None
        for workload in workloads:
            cond = condition or Condition(workload)
            parts = {
                "arrivals": ARRIVALS[arrivals].fit(traces, cond),
                "demands": DEMANDS[demands].fit(traces, cond),
            }
            if resources == "lstm":  # one network for all workloads
                shared = shared or RESOURCES["lstm"].fit(traces, cond)
                parts["resources"] = shared
            elif resources is not None and not traces.resources[traces.resources["workload"] == workload].empty:
                parts["resources"] = RESOURCES[resources].fit(traces, cond)
            generators[workload] = parts
        first = traces.conditions.drop_duplicates("workload").set_index("workload")
        settings = {
            w: {"payload_count": int(first.loc[w, "payload_count"]), "payload_seed": int(first.loc[w, "payload_seed"])}
            for w in workloads
        }
        return cls(
            generators, {"arrivals": arrivals, "demands": demands, "resources": resources}, traces.run_ids, settings
        )

    def _parts(self, workload: str) -> dict[str, object]:
        if workload not in self.generators:
            raise ValueError(f"workload {workload!r} is not in this model (it has {sorted(self.generators)})")
        return self.generators[workload]

    def sample(self, condition: Condition, duration_s: float, seed: int = 0) -> SyntheticTrace:
        parts = self._parts(condition.workload)
        arrival_seed, payload_seed, resource_seed = (
            int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(3)
        )
        arrivals = parts["arrivals"].sample(condition, duration_s, arrival_seed)
        demands = parts["demands"].sample(condition, duration_s, payload_seed, count=len(arrivals))
        requests = pd.concat([arrivals.reset_index(drop=True), demands.reset_index(drop=True)], axis=1)
        resources = parts["resources"].sample(condition, duration_s, resource_seed) if "resources" in parts else None
        return SyntheticTrace(condition, float(duration_s), int(seed), requests, resources)

    def sample_schedule(self, condition: Condition, steps: list[tuple[float, float]], seed: int = 0) -> SyntheticTrace:
        """One trace of consecutive steps, ``steps`` = ``[(level, duration_s)]`` (e.g. a source run's load profile),
        each sampled at its level with its own child seed and shifted to start where the previous ended; ``step``
        and ``level`` columns say which step a request belongs to."""
        pieces, resources, start = [], [], 0.0
        for i, (seed_i, (level, duration_s)) in enumerate(zip(np.random.SeedSequence(seed).spawn(len(steps)), steps)):
            part = self.sample(condition.with_level(level), duration_s, int(seed_i.generate_state(1)[0]))
            pieces.append(part.requests.assign(arrival_s=part.requests["arrival_s"] + start, step=i, level=level))
            if part.resources is not None:
                resources.append(part.resources.assign(t_s=part.resources["t_s"] + start, step=i, level=level))
            start += duration_s
        return SyntheticTrace(
            condition,
            start,
            int(seed),
            pd.concat(pieces, ignore_index=True),
            pd.concat(resources, ignore_index=True) if resources else None,
        )

    def replay_load(self, workload: str, trace_path: str | Path, warmup_s: float = 0.0) -> dict:
        """The ``load`` settings that replay a trace of ``workload`` with the source run's payload set."""
        return {
            "scenario": "trace",
            "trace_path": str(trace_path),
            "warmup_s": warmup_s,
            **self.payload_settings[workload],
        }

    def card(self) -> dict:
        """What the model is, as JSON: kinds, runs, each generator's description."""
        return {
            "schema": self.schema,
            "kinds": self.kinds,
            "run_ids": self.run_ids,
            "created_utc": self.created_utc,
            "git": self.git,
            "payload_settings": self.payload_settings,
            "generators": {w: {k: g.describe() for k, g in parts.items()} for w, parts in self.generators.items()},
        }

    def save(self, path: str | Path) -> Path:
        """Write the model (pickle) and its card (``<path>.json``); refuses to replace an existing file."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} exists: choose another name (models are never overwritten)")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as f:
            pickle.dump(self, f)
        Path(f"{path}.json").write_text(json.dumps(self.card(), indent=2, default=_jsonable) + "\n")
        return path

    @staticmethod
    def load(path: str | Path) -> WorkloadModel:
        with open(path, "rb") as f:
            model = pickle.load(f)
        if not isinstance(model, WorkloadModel) or getattr(model, "schema", None) != MODEL_SCHEMA:
            raise ValueError(f"{path}: not a gawm workload model of schema {MODEL_SCHEMA}")
        return model


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
