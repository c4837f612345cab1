"""Suites: grids expand to one run per point, every point is validated first, and a rerun resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gawm_lib import runs, suite
from gawm_lib.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def gawm_in(tmp_path):
    """``gawm`` on the command line, its runs, suites and figures under ``tmp_path``."""
    env = {**os.environ, "GAWM_RAW_DIR": str(tmp_path / "raw"), "GAWM_FIGURES_DIR": str(tmp_path / "figures")}

    def gawm(*args):
        return subprocess.run(
            [sys.executable, "-m", "gawm_lib.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    gawm.env = env
    return gawm


def test_grid_expands_to_the_cartesian_product_in_order():
    spec = suite.SuiteConfig.model_validate(
        {
            "suite": "s",
            "runs": [
                {
                    "params": "params/quick.yaml",
                    "overrides": ["load.warmup_s=0"],
                    "grid": {"backend.replicas": [1, 2], "load.levels": [[1], [1, 2]]},
                },
                {"params": "params/demo.yaml"},
            ],
        }
    )
    points = suite.expand(spec, ["load.step_duration_s=1"])
    assert [p[2] for p in points] == [
        ["load.warmup_s=0", "backend.replicas=1", "load.levels=[1]", "load.step_duration_s=1"],
        ["load.warmup_s=0", "backend.replicas=1", "load.levels=[1, 2]", "load.step_duration_s=1"],
        ["load.warmup_s=0", "backend.replicas=2", "load.levels=[1]", "load.step_duration_s=1"],
        ["load.warmup_s=0", "backend.replicas=2", "load.levels=[1, 2]", "load.step_duration_s=1"],
        ["load.step_duration_s=1"],
    ]
    assert len({p[0] for p in points}) == 5  # keys are unique


def test_every_point_is_validated_before_anything_runs():
    spec = suite.SuiteConfig.model_validate(
        {
            "suite": "s",
            "runs": [
                {"params": "params/quick.yaml", "grid": {"backend.replicas": [1, 0]}},
                {"params": "params/quick.yaml", "overrides": ["load.sceanrio=poisson"]},
            ],
        }
    )
    with pytest.raises(ConfigError) as err:
        suite.validate_points(suite.expand(spec))
    assert "-p backend.replicas=0: backend.replicas: Input should be greater than or equal to 1" in str(err.value)
    assert "unknown key 'sceanrio' (did you mean 'scenario'?)" in str(err.value)


def test_suite_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("suite: Bad Name\nruns: []\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: suite: String should match pattern"):
        suite.load_suite(path)


def test_capacity_shares_expand_with_a_stable_key_and_are_validated_first():
    spec = suite.SuiteConfig.model_validate(
        {
            "suite": "s",
            "runs": [
                {"params": "params/quick.yaml", "overrides": ["load.levels=[1,2]"]},
                {
                    "params": "params/quick.yaml",
                    "overrides": ["load.scenario=poisson"],
                    "capacity_shares": [0.2, 0.8],
                    "grid": {"load.arrival_seed": [1, 2]},
                },
            ],
        }
    )
    points = suite.expand(spec)
    assert [p.shares for p in points] == [(), (0.2, 0.8), (0.2, 0.8)]
    assert points[1].key == (
        "params/quick.yaml load.scenario=poisson load.arrival_seed=1 load.levels=capacity x [0.2, 0.8]"
    )
    assert points[1].overrides == ["load.scenario=poisson", "load.arrival_seed=1"]  # the rates come when it runs
    configs = suite.validate_points(points)
    assert len(configs) == 3 and configs[1].load.scenario == "poisson"

    def problems(runs_):
        with pytest.raises(ConfigError) as err:
            suite.validate_points(suite.expand(suite.SuiteConfig.model_validate({"suite": "s", "runs": runs_})))
        return str(err.value)

    closed = {"params": "params/quick.yaml"}
    assert "the rates are for an open-loop run (load.scenario=poisson), got load.scenario=closed_loop" in problems(
        [closed, {"params": "params/quick.yaml", "capacity_shares": [0.5]}]
    )
    assert "no earlier run of the suite measures the capacity of resnet50 x2" in problems(
        [
            closed,
            {
                "params": "params/quick.yaml",
                "overrides": ["load.scenario=poisson", "backend.replicas=2"],
                "capacity_shares": [0.5],
            },
        ]
    )
    assert "no earlier run of the suite measures the capacity of resnet50 x1" in problems(  # after, not before
        [{"params": "params/quick.yaml", "overrides": ["load.scenario=poisson"], "capacity_shares": [0.5]}, closed]
    )
    with pytest.raises(ConfigError, match="an override of load.levels would be ignored"):  # `gawm run -p ...`
        suite.validate_points(suite.expand(spec, ["load.levels=[5]"]))
    with pytest.raises(ValueError, match="each share must be between 0 and 1"):
        suite.SuiteEntry(params="params/quick.yaml", capacity_shares=[0.5, 1.0])
    with pytest.raises(ValueError, match="capacity_shares sets load.levels: drop the load.levels override"):
        suite.SuiteEntry(params="params/quick.yaml", overrides=["load.levels=[3]"], capacity_shares=[0.5])


def test_rates_at_shares_keep_four_figures_of_the_capacity():
    assert suite.rates_at_shares(1367.2, [0.15, 0.35, 0.83]) == [205.0, 479.0, 1135.0]
    assert suite.rates_at_shares(14.46, [0.1, 0.85]) == [1.45, 12.29]  # to 0.01 req/s
    with pytest.raises(ValueError, match="capacity must be a positive number of req/s"):
        suite.rates_at_shares(0.0, [0.5])


@pytest.mark.integration
def test_a_suite_runs_resumes_and_reports(tmp_path):
    gawm = gawm_in(tmp_path)
    spec = tmp_path / "suite.yaml"
    spec.write_text(
        "suite: tiny\nruns:\n  - params: params/quick.yaml\n"
        "    overrides: ['load.levels=[1]', 'load.step_duration_s=1', 'load.warmup_s=0', 'figures_notebook=null']\n"
        "    grid:\n      workloads.0.max_batch_size: [1, 2]\n"
        "report:\n  - notebooks/02_figures_load_sweep.ipynb\n"
    )

    first = gawm("run", str(spec))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "suite tiny: 2/2 runs completed" in first.stdout
    state = json.loads((tmp_path / "suites" / "tiny.json").read_text())
    run_ids = [p["run_id"] for p in state["points"].values()]
    assert len(run_ids) == 2
    batch_sizes = sorted(
        runs.load_run(r, tmp_path / "raw").manifest["params"]["effective"]["workloads"][0]["max_batch_size"]
        for r in run_ids
    )
    assert batch_sizes == [1, 2]
    sidecar = json.loads((tmp_path / "figures" / "tiny_latency_cdf.json").read_text())
    assert sorted(sidecar["run_ids"]) == sorted(run_ids)

    # a run that did not complete is redone on the next call; the completed one is skipped
    broken = runs.load_run(run_ids[1], tmp_path / "raw")
    broken.update(status="FAILED")
    second = gawm("run", str(spec))
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("done before") == 1 and f"-> {run_ids[0]}" in second.stdout
    state = json.loads((tmp_path / "suites" / "tiny.json").read_text())
    assert run_ids[0] in [p["run_id"] for p in state["points"].values()]
    assert run_ids[1] not in [p["run_id"] for p in state["points"].values()]
    assert len(runs.list_runs(tmp_path / "raw")) == 3

    # the rates a Poisson sweep would take as shares of the suite's measured capacity (both runs: one configuration)
    levels = subprocess.run(
        [
            sys.executable,
            "-m",
            "gawm_lib.bench.capacity_levels",
            "--suite",
            "tiny",
            "--fractions",
            "0.2,0.8",
            "--step",
            "0.5",
        ],
        cwd=ROOT,
        env=gawm.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert levels.returncode == 0, levels.stderr[-2000:]
    from gawm_lib import analysis
    from gawm_lib.bench import capacity_levels

    done = [p["run_id"] for p in state["points"].values()]
    capacity = float(
        analysis.measured_capacity(analysis.load_requests([tmp_path / "raw" / r for r in done])[0]).loc[("resnet50", 1)]
    )
    assert json.loads(levels.stdout) == capacity_levels.levels(capacity, [0.2, 0.8], 0.5)
    assert f"resnet50 x1: capacity {capacity:.1f} req/s" in levels.stderr
    none = subprocess.run(
        [
            sys.executable,
            "-m",
            "gawm_lib.bench.capacity_levels",
            "--suite",
            "tiny",
            "--fractions",
            "0.5",
            "--replicas",
            "4",
        ],
        cwd=ROOT,
        env=gawm.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        none.returncode == 1
        and "suite tiny: expected one configuration with a closed-loop run, found none" in none.stderr
    )

    report = gawm("report", run_ids[0], "--prefix", "again")
    assert report.returncode == 0, report.stderr[-2000:]
    assert (tmp_path / "figures" / "again_latency_vs_throughput.pdf").is_file()
    unknown = gawm("report", "no-such-run")
    assert unknown.returncode == 2 and "no-such-run" in unknown.stderr


@pytest.mark.integration
def test_a_suite_runs_its_sweeps_at_shares_of_the_capacity_it_measured(tmp_path):
    gawm = gawm_in(tmp_path)
    spec = tmp_path / "suite.yaml"
    quick = "'load.step_duration_s=2', 'load.warmup_s=0', 'figures_notebook=null'"
    spec.write_text(
        "suite: shares\nruns:\n  - params: params/quick.yaml\n"
        f"    overrides: ['load.levels=[2]', {quick}]\n"
        "  - params: params/quick.yaml\n"
        f"    overrides: ['load.scenario=poisson', {quick}]\n"
        "    capacity_shares: [0.2, 0.5]\n"
        "    grid:\n      load.arrival_seed: [1, 2]\n"
    )

    first = gawm("run", str(spec))
    assert first.returncode == 0, first.stderr[-3000:]
    state = json.loads((tmp_path / "suites" / "shares.json").read_text())
    run_ids = [p["run_id"] for p in state["points"].values()]
    assert len(run_ids) == 3
    from gawm_lib import analysis

    capacity = float(
        analysis.measured_capacity(analysis.load_requests([tmp_path / "raw" / run_ids[0]])[0]).loc[("resnet50", 1)]
    )
    rates = suite.rates_at_shares(capacity, [0.2, 0.5])
    for run_id in run_ids[1:]:  # both sweeps at the same rates, from the closed-loop run alone
        load = runs.load_run(run_id, tmp_path / "raw").manifest["params"]["effective"]["load"]
        assert load["scenario"] == "poisson" and load["levels"] == rates
    assert first.stdout.count(f"load.levels={rates}: shares [0.2, 0.5] of") == 2
    again = gawm("run", str(spec))  # the keys hold: nothing runs again
    assert again.returncode == 0 and again.stdout.count("done before") == 3, again.stdout[-2000:]


def test_capacity_levels_are_shares_of_the_capacity_rounded_and_bad_shares_are_refused():
    from gawm_lib.bench import capacity_levels

    assert capacity_levels.levels(1367.2, [0.15, 0.35, 0.83]) == [205.0, 480.0, 1135.0]
    assert capacity_levels.levels(12.7, [0.1], step=5.0) == [5.0]  # never below one step
    with pytest.raises(ValueError, match="fractions must be between 0 and 1"):
        capacity_levels.levels(100.0, [0.5, 1.2])
    with pytest.raises(ValueError, match="fractions must be between 0 and 1"):
        capacity_levels.levels(100.0, [])
    with pytest.raises(ValueError, match="capacity must be > 0"):
        capacity_levels.levels(0.0, [0.5])
    with pytest.raises(ValueError, match="step must be > 0"):
        capacity_levels.levels(100.0, [0.5], step=0)
