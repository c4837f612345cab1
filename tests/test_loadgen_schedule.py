"""The load's schedule without sending anything: steps of every scenario, open-loop arrivals (Poisson, constant,
ramps, split across processes), traces, joined bodies, and settings refused before anything starts, naming the field."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gawm_lib.config import ConfigError, LoadConfig, validate_params
from gawm_lib.loadgen import LoadError, LoadSpec, client, run_load, write_bodies
from gawm_lib.loadgen.schedule import Step, arrival_times_ns, plan, read_trace, seeds, share


def take(step: Step, n: int, rng=None, process: int = 0, processes: int = 1) -> np.ndarray:
    times = arrival_times_ns(step, rng or np.random.default_rng(1), 0, process, processes)
    return np.array([next(times) for _ in range(n)]) / 1e9


def open_step(rate: float, end: float | None = None, arrival: str = "poisson", duration_s: float = 10.0) -> Step:
    return Step("step", 0, "open", rate, rate if end is None else end, duration_s, 0, duration_s, arrival)


def test_plans_of_each_scenario():
    sweep = plan(LoadConfig(scenario="poisson", levels=[5, 10], warmup_s=1))
    assert [(s.phase, s.index, s.mode, s.level) for s in sweep] == [
        ("warmup", -1, "open", 5),
        ("step", 0, "open", 5),
        ("step", 1, "open", 10),
    ]
    assert all(s.drain for s in sweep)
    assert [s.mode for s in plan(LoadConfig(scenario="single_stream", warmup_s=0))] == ["closed"]
    assert plan(LoadConfig(scenario="constant_rate", levels=[3], warmup_s=0))[0].arrival == "constant"
    assert plan(LoadConfig(scenario="offline", levels=[64], warmup_s=0))[0].mode == "offline"
    stages = plan(
        LoadConfig(
            scenario="stages",
            warmup_s=0.5,
            stages=[
                {"duration_s": 2, "users": 1, "end_users": 4},
                {"duration_s": 3, "rate_rps": 20, "arrival": "constant"},
            ],
        )
    )
    assert [(s.phase, s.mode, s.level, s.end_level, s.drain) for s in stages] == [
        ("warmup", "closed", 1, 1, True),
        ("step", "closed", 1, 4, False),
        ("step", "open", 20, 20, False),
    ]
    assert stages[1].level_at(1.0) == 2.5 and stages[1].level_at(9) == 4


def test_poisson_arrivals_have_the_rate_and_exponential_gaps():
    times = take(open_step(200.0), 20_000)
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.03) and gaps.std() / gaps.mean() == pytest.approx(1, abs=0.05)
    assert (gaps >= 0).all()


def test_constant_arrivals_are_evenly_spaced_and_split_exactly_between_processes():
    step = open_step(100.0, arrival="constant")
    assert np.allclose(take(step, 5), [0, 0.01, 0.02, 0.03, 0.04])
    parts = [take(step, 50, process=i, processes=3) for i in range(3)]
    assert np.allclose(np.sort(np.concatenate(parts)), np.arange(150) / 100)


def test_poisson_split_between_processes_adds_up_to_the_rate():
    step = open_step(300.0)
    parts = [take(step, 5000, rng=seeds(7, i, 2), process=i, processes=2) for i in range(2)]
    for times in parts:
        assert 1 / np.diff(times).mean() == pytest.approx(150, rel=0.05)
    assert not np.array_equal(parts[0], parts[1])  # independent streams


def test_ramps_send_the_integral_of_the_rate():
    up = take(open_step(10.0, 50.0, arrival="constant", duration_s=10.0), 400)
    assert (up < 10).sum() == pytest.approx((10 + 50) / 2 * 10, abs=1)  # 300 in the ramp, then 50/s
    assert 1 / np.diff(up[-50:]).mean() == pytest.approx(50, rel=0.01)
    down = arrival_times_ns(open_step(40.0, 0.0, duration_s=5.0), np.random.default_rng(3), 0)
    count = sum(1 for _ in down)  # a ramp down to 0 ends by itself
    assert 100 * 0.8 < count < 100 * 1.2


def test_shares_add_up():
    assert [share(7, i, 3) for i in range(3)] == [3, 2, 2] and sum(share(1, i, 4) for i in range(4)) == 1


def test_trace_is_read_sorted_and_checked(tmp_path):
    path = tmp_path / "trace.csv"
    pd.DataFrame({"arrival_s": [0.2, 0.0, 0.1], "payload_id": [2, 0, 1]}).to_csv(path, index=False)
    arrivals, ids = read_trace(path, payload_count=3)
    assert list(arrivals) == [0.0, 0.1, 0.2] and list(ids) == [0, 1, 2]
    pd.DataFrame({"arrival_s": [0.0, 1.0]}).to_parquet(tmp_path / "t.parquet")
    assert read_trace(tmp_path / "t.parquet", 1)[1] is None
    with pytest.raises(ValueError, match="payload_id must be whole numbers from 0 to payload_count - 1 = 1"):
        read_trace(path, payload_count=2)
    pd.DataFrame({"t": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="no column arrival_s"):
        read_trace(tmp_path / "bad.csv", 1)
    pd.DataFrame({"arrival_s": [0.0, -1]}).to_csv(tmp_path / "neg.csv", index=False)
    with pytest.raises(ValueError, match=r"arrival_s must be numbers >= 0 \(row 1"):
        read_trace(tmp_path / "neg.csv", 1)


def test_bodies_join_along_the_first_dimension():
    one = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "id": "x"}
    two = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["b", "c"]}]}
    joined = client.join_bodies([one, two])
    assert joined == {
        "inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a", "b", "c"]}],
        "id": "x",
    }
    assert client.request_items(joined) == 3
    with pytest.raises(ValueError, match="cannot join"):
        client.join_bodies([one, {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["d"]}]}])


@pytest.mark.parametrize(
    ("load", "message"),
    [
        ({"scenario": "poisson", "levels": [-5]}, "load.levels.0: Input should be greater than 0 (got -5"),
        ({"step_duration_s": 0}, "load.step_duration_s: Input should be greater than 0 (got 0"),
        ({"scenario": "burst"}, "load.scenario: Input should be 'single_stream', 'closed_loop', 'poisson'"),
        ({"levels": [1.5]}, "load.levels: Value error, closed_loop levels are numbers of concurrent users"),
        ({"scenario": "stages"}, "load.stages: Value error, scenario stages needs at least one stage"),
        ({"scenario": "stages", "stages": [{"duration_s": 1}]}, "load.stages.0: Value error, give either users"),
        (
            {"scenario": "stages", "stages": [{"duration_s": -1, "users": 2}]},
            "load.stages.0.duration_s: Input should be",
        ),
        ({"scenario": "stages", "stages": [{"duration_s": 1, "rate_rps": 2, "end_users": 3}]}, "end_users ramps users"),
        ({"scenario": "poisson", "think_time_s": 1}, "load.think_time_s: Value error, think time is for closed loops"),
        ({"scenario": "trace"}, "load.trace_path: Value error, scenario trace needs trace_path"),
        (
            {"scenario": "trace", "trace_path": "/no/such.txt"},
            "load.trace_path: Value error, expected a .csv or .parquet",
        ),
        ({"trace_path": "x.csv"}, "load.trace_path: Value error, trace_path is used by scenario trace only"),
        ({"scenario": "single_stream", "levels": [4]}, "load.levels: Value error, scenario single_stream does not use"),
        (
            {"step_duration_s": 10, "max_step_duration_s": 5},
            "load.max_step_duration_s: Value error, max_step_duration_s",
        ),
        (
            {"stages": [{"duration_s": 1, "users": 1}]},
            "load.stages: Value error, stages are used by scenario stages only",
        ),
    ],
)
def test_invalid_settings_name_the_field(load, message):
    with pytest.raises(ConfigError) as err:
        validate_params({"load": load})
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("load", "message"),
    [
        (
            {"scenario": "trace", "levels": [1], "trace_path": "/no/such.csv"},
            "load.trace_path: no trace file at '/no/such.csv'",
        ),
        ({"process_cpus": [100_000]}, "load.process_cpus: CPU cores [100000] are not available here"),
    ],
)
def test_what_the_load_needs_of_this_machine_is_valid_and_stops_at_the_preflight(load, message):
    from gawm_lib.config import preflight, preflight_load

    cfg = validate_params({"load": load}, source="p.yaml")  # valid on any machine
    with pytest.raises(ConfigError) as err:
        preflight(cfg, source="p.yaml")
    assert f"p.yaml: {message}" in str(err.value)
    with pytest.raises(ConfigError, match="load settings: load."):
        preflight_load(cfg.load, source="load settings")


def test_a_trace_file_is_read_by_the_preflight_with_the_load_process_reader(tmp_path):
    from gawm_lib.config import preflight

    path = tmp_path / "trace.csv"
    pd.DataFrame({"arrival_s": [0.0, 0.5], "payload_id": [0, 3]}).to_csv(path, index=False)
    cfg = validate_params({"load": {"scenario": "trace", "levels": [1], "trace_path": str(path), "payload_count": 2}})
    with pytest.raises(
        ConfigError,
        match=r"<settings>: load.trace_path: trace.csv: payload_id must be whole numbers "
        r"from 0 to payload_count - 1 = 1",
    ):
        preflight(cfg)
    preflight(cfg.model_copy(update={"load": cfg.load.model_copy(update={"payload_count": 4})}))


def test_run_load_refuses_bad_settings_before_starting_anything(tmp_path):
    bodies = write_bodies(tmp_path / "bodies.jsonl", [{"inputs": []}])
    spec = LoadSpec(
        "w",
        "w",
        ["http://127.0.0.1:9"],
        str(bodies),
        str(tmp_path / "requests.parquet"),
        {"scenario": "poisson", "levels": [-1]},
    )
    with pytest.raises(ConfigError, match="load settings: load.levels.0: Input should be greater than 0"):
        run_load(spec, tmp_path / "work", progress=False)
    spec.load = {"process_cpus": [100_000]}  # valid, but not on this machine
    with pytest.raises(ConfigError, match=r"load settings: load.process_cpus: CPU cores \[100000\] are not available"):
        run_load(spec, tmp_path / "work", progress=False)
    spec.load, spec.targets = {}, ["127.0.0.1:9"]
    with pytest.raises(LoadError, match="expected a base URL"):
        run_load(spec, tmp_path / "work", progress=False)
    assert not (tmp_path / "requests.parquet").exists() and not (tmp_path / "work").exists()
