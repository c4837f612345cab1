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

Every point is validated before anything starts. Progress is kept in ``data/suites/<suite>.json`` (point -> run id):
running the suite again skips the points whose run COMPLETED and redoes the others.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gawm_lib import paths, runs
from gawm_lib.config import ConfigError, ExperimentConfig, load_params


class SuiteEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    params: str = Field(description="params file, from the project root")
    overrides: list[str] = Field(default_factory=list, description="-p style overrides for every point")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="key path -> values; one run per combination")


class SuiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    description: str = ""
    runs: list[SuiteEntry] = Field(min_length=1)
    report: list[str] = Field(default_factory=list, description="notebooks executed on all the suite's runs")


def is_suite_file(path: str | Path) -> bool:
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(loaded, dict) and "suite" in loaded


def load_suite(path: str | Path) -> SuiteConfig:
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the suite file: {exc}") from None
    try:
        return SuiteConfig.model_validate(loaded)
    except ValidationError as exc:
        problems = [f"  {path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid suite:\n" + "\n".join(problems)) from None


def _literal(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def expand(suite: SuiteConfig, extra: list[str] = ()) -> list[tuple[str, str, list[str]]]:
    """Every point as (key, params file, overrides), in order; the key identifies the point across resumes."""
    points = []
    for entry in suite.runs:
        keys = list(entry.grid)
        for values in itertools.product(*(entry.grid[k] for k in keys)) if keys else [()]:
            overrides = [*entry.overrides, *(f"{k}={_literal(v)}" for k, v in zip(keys, values)), *extra]
            points.append((" ".join([entry.params, *overrides]), entry.params, overrides))
    return points


def validate_points(points: list[tuple[str, str, list[str]]]) -> list[ExperimentConfig]:
    """Validate every point before any runs; one ConfigError lists all the bad ones."""
    configs, problems = [], []
    root = paths.project_root()
    for _, params, overrides in points:
        try:
            cfg, _ = load_params(root / params, overrides)
            configs.append(cfg)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return configs


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
