"""What a generator is conditioned on: the workload, the offered load and the serving configuration."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import pandas as pd


@dataclass(frozen=True)
class Condition:
    """A configuration and load step to generate for. ``level``: offered load of the step (arrival rate [req/s] for
    open-loop runs; None: the mix of levels the generator was fitted on); ``replicas`` and ``max_batch_size``: the
    serving configuration (None: as fitted)."""

    workload: str
    level: float | None = None
    replicas: int | None = None
    max_batch_size: int | None = None

    def with_level(self, level: float | None) -> Condition:
        return replace(self, level=None if level is None or math.isnan(level) else float(level))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Condition:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown condition field(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


def step_conditions(conditions: pd.DataFrame, steps: pd.DataFrame) -> list[tuple[tuple[str, str, int], Condition]]:
    """The condition of each (run_id, workload, step) of ``steps`` (rows with those columns and ``level``), from the
    run's ``conditions`` row (:mod:`gawm_lib.synth.traces`)."""
    by_run = conditions.set_index(["run_id", "workload"])
    out = []
    for key, rows in steps.groupby(["run_id", "workload", "step"], sort=False):
        run_id, workload, step = key
        row = by_run.loc[(run_id, workload)]
        level = float(rows["level"].iloc[0])
        out.append(
            (
                (run_id, workload, int(step)),
                Condition(
                    workload,
                    None if math.isnan(level) else level,
                    int(row["replicas"]),
                    int(row["max_batch_size"]),
                ),
            )
        )
    return out
