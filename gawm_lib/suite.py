"""Suites: several experiments and parameter grids run as one, resumable.

A suite file (``params/suite_*.yaml``) names params files and, for each, a grid of overrides whose cartesian product
gives one run per point::

    suite: cpu-quick
    runs:
      - params: params/quick.yaml
        grid:
          backend.replicas: [1, 2]
          workloads.0.max_batch_size: [1, 4]
      - params: params/demo.yaml
        overrides: ["load.levels=[1]"]
    report:                                   # executed once at the end on all the suite's runs
      - notebooks/02_figures_load_sweep.ipynb

Every point is validated before anything starts (:func:`validate_points`: the settings alone, on any machine), then
checked against this machine (:func:`preflight_points`: cores, files, kubeconfig, binaries). Progress is kept in
``data/suites/<suite>.json`` (point -> run id): running the suite again skips the points whose run COMPLETED and redoes
the others.

Open-loop rates as shares of a capacity measured in the same suite (a lent machine's capacity moves 15-25 % between
leases, so fixed rates land at different utilisations): an entry with ``capacity_shares`` runs Poisson steps at those
shares of the capacity that the suite's earlier runs without shares measured for its workload and replica count
(:func:`gawm_lib.analysis.measured_capacity`), worked out when its turn comes::

    runs:
      - params: params/gpu_scaling.yaml                # the capacity: closed loop
        overrides: ["backend.replicas=4", "load.levels=[64,128,256]"]
      - params: params/gpu_scaling.yaml                # three sweeps at 15-83 % of it
        overrides: ["backend.replicas=4", "load.scenario=poisson"]
        capacity_shares: [0.15, 0.35, 0.55, 0.70, 0.78, 0.83]
        grid:
          load.arrival_seed: [1, 2, 3]

Every sweep of the entry takes the same rates (Poisson runs do not count towards the capacity); each run records
them in its params, and the point keeps its key across resumes.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gawm_lib import paths, runs
from gawm_lib.config import (
    MAX_PROBLEMS,
    MAX_QUOTE_CHARS,
    ConfigError,
    ExperimentConfig,
    clip,
    load_params,
    preflight,
    read_params_file,
)


def _sets_levels(overrides: list[str]) -> bool:
    return any(o.split("=", 1)[0].strip() == "load.levels" for o in overrides)


class SuiteEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    params: str = Field(description="params file, from the project root")
    overrides: list[str] = Field(default_factory=list, description="-p style overrides for every point")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="key path -> values; one run per combination")
    capacity_shares: list[float] = Field(
        default_factory=list,
        description="load.levels as these shares of the capacity the suite's earlier runs "
        "measured for the same workload and replicas (open loop; see the module)",
    )

    @field_validator("capacity_shares")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        bad = [share for share in value if not 0 < share < 1]
        if bad:
            raise ValueError(f"each share must be between 0 and 1 (a share of the capacity), got {bad}")
        return value

    @model_validator(mode="after")
    def _levels_set_once(self) -> SuiteEntry:
        if self.capacity_shares and ("load.levels" in self.grid or _sets_levels(self.overrides)):
            raise ValueError("capacity_shares sets load.levels: drop the load.levels override or grid")
        return self


class Point(NamedTuple):
    """One run of a suite: its key (params file and overrides, stable across resumes), params file, overrides, and
    the capacity shares its ``load.levels`` are (empty: the overrides say it all)."""

    key: str
    params: str
    overrides: list[str]
    shares: tuple[float, ...] = ()


class SuiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    description: str = ""
    runs: list[SuiteEntry] = Field(min_length=1)
    report: list[str] = Field(default_factory=list, description="notebooks executed on all the suite's runs")


def is_suite_file(path: str | Path) -> bool:
    """Whether ``path`` holds a suite; False also for a file that cannot be read, whose reading as a params file then
    says what is wrong with it."""
    try:
        return "suite" in read_params_file(path)
    except ConfigError:
        return False


def load_suite(path: str | Path) -> SuiteConfig:
    """The suite in ``path``, read as strictly as a params file (:func:`gawm_lib.config.read_params_file`)."""
    loaded = read_params_file(path, "suite file")
    try:
        return SuiteConfig.model_validate(loaded)
    except ValidationError as exc:
        problems = [
            f"  {path}: {clip('.'.join(str(p) for p in e['loc']))}: {clip(e['msg'], 4 * MAX_QUOTE_CHARS)}"
            for e in exc.errors()[:MAX_PROBLEMS]
        ]
        more = [f"  ... and {exc.error_count() - MAX_PROBLEMS} more"] if exc.error_count() > MAX_PROBLEMS else []
        raise ConfigError("invalid suite:\n" + "\n".join(problems + more)) from None


def _literal(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


MAX_POINTS = 10_000  # runs of one suite (a grid's product is counted before it is expanded)


def expand(suite: SuiteConfig, extra: list[str] = ()) -> list[Point]:
    """Every point, in order; the key identifies the point across resumes. ConfigError if the suite has more than
    ``MAX_POINTS``."""
    total = sum(math.prod(len(values) for values in entry.grid.values()) for entry in suite.runs)
    if total > MAX_POINTS:
        raise ConfigError(f"suite {suite.suite}: {total:,} runs: expected at most {MAX_POINTS:,} (runs x grid values)")
    points = []
    for entry in suite.runs:
        keys = list(entry.grid)
        shares = tuple(entry.capacity_shares)
        for values in itertools.product(*(entry.grid[k] for k in keys)) if keys else [()]:
            overrides = [*entry.overrides, *(f"{k}={_literal(v)}" for k, v in zip(keys, values)), *extra]
            key = " ".join([entry.params, *overrides, *([f"load.levels=capacity x {list(shares)}"] if shares else [])])
            points.append(Point(key, entry.params, overrides, shares))
    return points


_CAPACITY_SCENARIOS = ("closed_loop", "single_stream")  # what measures a capacity (analysis.measured_capacity)


def _configuration(cfg: ExperimentConfig) -> tuple[str, int]:
    return cfg.workloads[0].name, cfg.backend.replicas


def validate_points(points: list[Point]) -> list[ExperimentConfig]:
    """Validate every point before any runs; one ConfigError lists all the bad ones. A point with capacity shares
    (validated with a placeholder rate) must be open loop, for one workload, after a run without shares that measures
    the capacity of the same workload and replica count."""
    configs, problems = [], []
    measures: list[set[tuple[str, int]]] = []  # per point: the capacities its run measures (workload, replicas)
    root = paths.project_root()
    for number, point in enumerate(points):
        try:
            cfg, _ = load_params(
                root / point.params, [*point.overrides, *(["load.levels=[1.0]"] if point.shares else [])]
            )
        except ConfigError as exc:
            problems.append(str(exc))
            measures.append(set())
            continue
        configs.append(cfg)
        measures.append(
            {(w.name, cfg.backend.replicas) for w in cfg.workloads}
            if not point.shares and cfg.load.scenario in _CAPACITY_SCENARIOS
            else set()
        )
        if not point.shares:
            continue
        where = f"{point.params} {' '.join(point.overrides)}: capacity_shares"
        if _sets_levels(point.overrides):  # e.g. from `gawm run -p`
            problems.append(
                f"{where}: the entry's rates come from its capacity shares; an override of load.levels "
                f"would be ignored: leave it out"
            )
        if cfg.load.scenario != "poisson":
            problems.append(
                f"{where}: the rates are for an open-loop run (load.scenario=poisson), got "
                f"load.scenario={cfg.load.scenario}"
            )
        elif len(cfg.workloads) != 1:
            problems.append(
                f"{where}: one workload per run (each has its own capacity), got {[w.name for w in cfg.workloads]}"
            )
        elif not any(_configuration(cfg) in earlier for earlier in measures[:number]):
            workload, replicas = _configuration(cfg)
            problems.append(
                f"{where}: no earlier run of the suite measures the capacity of {workload} x{replicas} "
                f"(a closed-loop or single-stream run of it, without capacity_shares, before this one)"
            )
    if problems:
        raise ConfigError("\n".join(problems))
    return configs


def preflight_points(points: list[Point], configs: list[ExperimentConfig]) -> None:
    """:func:`gawm_lib.config.preflight` of every point (``configs``: what :func:`validate_points` gave), at the start
    of a suite's run, before the first point starts; one ConfigError lists every point this machine cannot run."""
    problems = []
    for point, cfg in zip(points, configs, strict=True):
        try:
            preflight(cfg, source=point.key)  # the point's key names the file and the overrides that make it
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))


def rates_at_shares(capacity_rps: float, shares: list[float] | tuple[float, ...]) -> list[float]:
    """``capacity_rps`` times each share, to four significant figures of the capacity (1,367 req/s: whole req/s)."""
    if not (capacity_rps > 0 and math.isfinite(capacity_rps)):
        raise ValueError(f"capacity must be a positive number of req/s, got {capacity_rps}")
    digits = 3 - math.floor(math.log10(capacity_rps))
    return [round(capacity_rps * share, digits) for share in shares]


def capacity_levels(
    state: dict[str, Any], points: list[Point], number: int, cfg: ExperimentConfig
) -> tuple[float, list[float]]:
    """The capacity [req/s] of point ``number``'s workload and replica count, measured by the suite's completed
    earlier runs without capacity shares, and the rates at the point's shares of it. RuntimeError if none measured
    it (the closed-loop run failed)."""
    from gawm_lib import analysis  # pandas and the models: only when a suite needs them

    workload, replicas = _configuration(cfg)
    run_ids = [run_id for point in points[:number] if not point.shares and (run_id := completed_run(state, point.key))]
    capacity = analysis.measured_capacity(analysis.load_requests(run_ids)[0]) if run_ids else None
    if capacity is None or (workload, replicas) not in capacity.index:
        raise RuntimeError(
            f"no completed earlier run of the suite measured the capacity of {workload} x{replicas}: "
            f"the rates at capacity_shares {list(points[number].shares)} cannot be set"
        )
    rps = float(capacity.loc[(workload, replicas)])
    return rps, rates_at_shares(rps, points[number].shares)


def state_path(name: str) -> Path:
    return paths.raw_dir().parent / "suites" / f"{name}.json"


def read_state(name: str) -> dict[str, Any]:
    path = state_path(name)
    return json.loads(path.read_text()) if path.is_file() else {"suite": name, "points": {}}


def write_state(state: dict[str, Any]) -> None:
    path = state_path(state["suite"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def completed_run(state: dict[str, Any], key: str) -> str | None:
    """The run id of a point whose run completed (and still exists), else None."""
    run_id = state["points"].get(key, {}).get("run_id")
    if not run_id:
        return None
    try:
        return run_id if runs.load_run(run_id).status == "COMPLETED" else None
    except runs.RunError:
        return None


def suite_run_ids(name: str) -> list[str]:
    """The completed runs of a suite, in the suite's order (for analysis notebooks that take a suite name)."""
    state = read_state(name)
    if not state["points"]:
        raise runs.RunError(f"suite {name!r} has no runs recorded in {state_path(name)}: run it with gawm run first")
    return [p["run_id"] for key, p in state["points"].items() if completed_run(state, key)]
