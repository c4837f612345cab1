"""The server benchmark's load driver: its window arithmetic, and a short closed-loop and Poisson run against a real
server process."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gawm_lib.bench.server_load import FIELDS, Plan, drive, summarise


def test_throughput_counts_answers_in_the_window_and_latency_the_requests_due_in_it():
    s = 1_000_000_000
    rows = {f: np.zeros(4, dtype=np.int64) for f in FIELDS}
    rows["due_ns"][:] = [0, 2 * s, 3 * s, 11 * s + 1]
    rows["done_ns"][:] = [3 * s, 2 * s + 5_000_000, 12 * s, 12 * s]  # the third is due inside, done after the end
    rows["status"][:] = [200, 200, 200, 200]
    rows["items"][:] = [4, 4, 4, 4]
    result = summarise(rows, 1 * s, 11 * s)
    assert result["window_s"] == 10 and result["requests"] == 2  # due in [1 s, 11 s]: the second and the third
    assert result["items_per_s"] == 0.8  # done in the window: the first and the second
    assert result["latency_ms"]["p50"] == pytest.approx((5 + 9000) / 2)


@pytest.mark.integration
@pytest.mark.slow
def test_the_driver_saturates_a_real_server_and_keeps_a_poisson_rate(tmp_path):
    from gawm_lib.backends import open_backend
    from gawm_lib.config import BackendConfig, WorkloadConfig
    from gawm_lib.workloads.oip import encode_request

    cfg = WorkloadConfig(name="distilbert", max_batch_size=4, max_queue_delay_ms=2, max_seq_len=16)
    body, headers = encode_request([("text", "BYTES", [2], ["a short text", "another one"])], binary=True)
    with open_backend(cfg, BackendConfig(), tmp_path) as backend:
        r = backend.replicas[0]
        plan = Plan(
            r.host,
            r.port,
            "/v2/models/distilbert/infer",
            [body],
            [headers],
            [2],
            connections=4,
            warmup_s=0.5,
            duration_s=2.0,
        )
        closed = drive(plan)
        assert closed["statuses"] == {"200": closed["requests"]} and closed["items_per_s"] > 5
        assert 1 < closed["batch_size_mean"] <= 4
        poisson = drive(Plan(**{**plan.__dict__, "mode": "poisson", "rate_rps": 20.0}), processes=2)
        assert 10 <= poisson["requests"] <= 70 and poisson["latency_ms"]["p50"] > 0


def test_a_saturation_run_over_two_replicas_sends_to_both_and_counts_both_processes_cpu(tmp_path):
    import httpx

    from gawm_lib.backends import open_backend
    from gawm_lib.bench.server_bench import server_run
    from gawm_lib.config import BackendConfig, WorkloadConfig
    from gawm_lib.workloads.oip import encode_request

    cfg = WorkloadConfig(name="distilbert", max_batch_size=4, max_queue_delay_ms=2, max_seq_len=16)
    body, headers = encode_request([("text", "BYTES", [2], ["a short text", "another one"])], binary=True)
    with open_backend(cfg, BackendConfig(replicas=2), tmp_path) as backend:
        result = server_run(backend.replicas, cfg, [body], [headers], 2, "closed", 1, 2, duration_s=1.5, warmup_s=0.3)
        assert result["replicas"] == 2 and result["processes"] == 2  # at least one driver process per replica
        assert result["statuses"] == {"200": result["requests"]} and result["server_cpu_cores"] > 0
        for replica in backend.replicas:
            text = httpx.get(f"{replica.url}/metrics").text
            ok = next(
                line for line in text.splitlines() if line.startswith("gawm_requests_total{") and 'status="ok"' in line
            )
            assert float(ok.rsplit(" ", 1)[1]) > 5, ok


def test_the_gil_benchmark_keeps_every_repetition_and_restores_the_interval(tmp_path):
    import sys

    from studies.h200.scripts import gil_bench

    before = sys.getswitchinterval()
    assert (
        gil_bench.main(
            ["--intervals-ms", "5,0.5", "--repeats", "2", "--ops", "200", "--out", str(tmp_path / "gil.json")]
        )
        == 0
    )
    assert sys.getswitchinterval() == before
    rows = json.loads((tmp_path / "gil.json").read_text())["results"]
    assert [r["switch_interval_ms"] for r in rows] == [5.0, 0.5]
    assert all(len(r["busy_ms"]) == 2 and r["busy_ms_max"] >= r["busy_ms_median"] > 0 for r in rows)


@pytest.mark.integration
def test_the_collector_probe_counts_fewer_collections_with_the_servers_thresholds(tmp_path):

    from studies.h200.scripts import gc_probe

    assert gc_probe.main(["--connections", "128", "--duration-s", "3", "--out", str(tmp_path / "gc.json")]) == 0
    results = json.loads((tmp_path / "gc.json").read_text())["results"]
    python, default = results["python"], results["server default"]
    assert default["gc_thresholds"] == [10_000, 10, 10]
    assert python["requests_per_s"] > 0 and default["requests_per_s"] > 0
    # a young collection every 700 surviving allocations, or every 10,000: per request served, so that the two 3 s
    # runs need not serve as many requests on a loaded machine
    young = [r["generations"]["0"]["collections"] / r["requests_per_s"] for r in (python, default)]
    assert python["generations"]["0"]["collections"] > 5 and young[0] > 3 * young[1], young


def test_shared_memory_bodies_carry_only_a_header_and_are_answered_by_every_replica(tmp_path):
    from gawm_lib.backends import open_backend
    from gawm_lib.bench.server_bench import SharedBodies, payloads, server_run
    from gawm_lib.config import BackendConfig, WorkloadConfig

    cfg = WorkloadConfig(
        name="distilbert", max_batch_size=4, max_queue_delay_ms=2, max_seq_len=16, allow_client_shm=True
    )
    binary, _, texts = payloads(cfg, "encoded", per_request=2, count=3)
    shared = SharedBodies()
    try:
        bodies, headers = payloads(cfg, "encoded", per_request=2, count=3, shared=shared)[:2]
        assert len(bodies) == 3 and all(b"binary_data_size" in full for full in binary)
        assert (
            b"shared_memory_region" in bodies[0]
            and bytes(shared.memory.buf[4 : 4 + len(texts[0])]) == texts[0].encode()
        )
        with open_backend(cfg, BackendConfig(replicas=2), tmp_path) as backend:
            shared.register(backend.replicas)
            result = server_run(backend.replicas, cfg, bodies, headers, 2, "closed", 1, 2, duration_s=1.5, warmup_s=0.3)
            assert result["statuses"] == {"200": result["requests"]} and result["items_per_s"] > 5
    finally:
        shared.close()
    assert shared.memory is None


def test_an_unknown_transport_is_refused_before_anything_runs(capsys):
    from gawm_lib.bench import server_bench

    with pytest.raises(SystemExit):
        server_bench.main(["--device", "cuda", "--transports", "binary,grpc"])
    assert "--transports: grpc: expected binary and/or shm" in capsys.readouterr().err


def test_the_speed_probe_writes_one_timing_a_line_and_reads_them_back(tmp_path):
    from studies.h200.scripts import speed_probe

    out = tmp_path / "probe" / "speed.jsonl"
    count = speed_probe.probe(out, duration_s=1.0, interval_s=0.2, loops=2_000)
    timings = speed_probe.read(out)
    assert len(timings) == count >= 3
    assert (timings["seconds"] > 0).all() and timings["monotonic_ns"].is_monotonic_increasing
    # the machine's CPU shares since the previous line, from /proc/stat (this machine is Linux; the first line may
    # come before the kernel's next clock tick, with nothing to share yet)
    later = timings.iloc[1:]
    assert later["cpu_busy"].between(0, 1).all() and later["cpu_steal"].between(0, 1).all()
    assert speed_probe.cpu_shares(None, speed_probe.cpu_times()) == {}
    assert speed_probe.cpu_shares(np.zeros(8), np.array([3.0, 0, 1, 4, 1, 0, 0, 1])) == {
        "cpu_busy": 0.5,
        "cpu_steal": 0.1,
    }
    out.write_text(out.read_text() + '{"monotonic_ns": 1}\n')
    with pytest.raises(ValueError, match=rf"speed.jsonl:{count + 1}: not a speed-probe timing"):
        speed_probe.read(out)
    with pytest.raises(ValueError, match="duration_s and interval_s must be > 0"):
        speed_probe.probe(out, duration_s=0.0)


def test_each_step_gets_the_probe_median_over_its_wall_clock_span_from_the_run_phases():
    from studies.h200.scripts import speed_probe

    # a run manifest's phases: a warm-up, step 0 from unix 1,001 s to 1,002 s, step 1 from 1,003 s to 1,004 s
    phases = [
        {"phase": "warmup", "step": -1, "start_unix_ns": 1000 * 10**9, "end_unix_ns": 1001 * 10**9},
        {"phase": "step", "step": 0, "start_unix_ns": 1001 * 10**9, "end_unix_ns": 1002 * 10**9},
        {"phase": "step", "step": 1, "start_unix_ns": 1003 * 10**9, "end_unix_ns": 1004 * 10**9},
    ]
    timings = pd.DataFrame(
        {"monotonic_ns": 0, "unix_ns": [int(1002.5e9), int(1001.5e9), int(1001.6e9)], "seconds": [0.009, 0.002, 0.004]}
    )  # the first fell between the steps
    medians = speed_probe.phase_medians(phases, timings)
    assert medians["step"].tolist() == [0, 1]
    assert medians["probe_ms"].iloc[0] == pytest.approx(3.0) and np.isnan(medians["probe_ms"].iloc[1])


def test_the_survey_pins_the_probe_to_each_core_in_turn_and_summarises_each_core(tmp_path):
    import os

    from studies.h200.scripts import speed_probe

    before = os.sched_getaffinity(0)
    cores = sorted(before)
    out = tmp_path / "survey.jsonl"
    count = speed_probe.survey(out, seconds_per_cpu=0.3, rounds=2, interval_s=0.05, loops=2_000)
    assert os.sched_getaffinity(0) == before  # the affinity it had is given back
    timings = speed_probe.read(out)
    assert len(timings) == count
    # each timing names the core it was pinned to, every core in turn, twice over
    runs = timings["cpu"].loc[timings["cpu"].shift() != timings["cpu"]].tolist()
    assert runs == cores * 2
    table = speed_probe.by_cpu(timings)
    assert table["cpu"].tolist() == cores and table["count"].sum() == count
    assert (table["p5"] <= table["median"]).all() and (table["median"] <= table["p95"]).all()
    # a core whose timings are sometimes 2x the machine's fast speed shows it in its slow share
    made = pd.DataFrame(
        {
            "unix_ns": range(7),
            "seconds": [0.002, 0.002, 0.002, 0.002, 0.002, 0.004, 0.001],
            "cpu": [0, 0, 1, 1, 1, 1, -1],
        }
    )
    shares = speed_probe.by_cpu(made).set_index("cpu")["slow_share"]
    assert shares.to_dict() == {0: 0.0, 1: 0.25}  # the core-less timing is left out
    with pytest.raises(ValueError, match="no timing records its core"):
        speed_probe.by_cpu(made[made["cpu"] < 0])
    with pytest.raises(ValueError, match="rounds >= 1"):
        speed_probe.survey(out, seconds_per_cpu=1.0, rounds=0)
    # the core a timing ended on is read from /proc/self/stat and is one this process may use
    assert speed_probe.current_cpu() in before


def test_flips_tell_cores_that_slow_down_on_their_own_from_a_machine_that_slows_down_at_once():
    from studies.h200.scripts import speed_probe

    def timings(slow_0, slow_1):  # two cores probed at once, one timing per 0.1 s for 2 s: 2 or 4 ms each
        rows = [
            {"unix_ns": int(i * 1e8), "seconds": 0.004 if slow[i] else 0.002, "cpu": cpu}
            for cpu, slow in ((0, slow_0), (1, slow_1))
            for i in range(20)
        ]
        return pd.DataFrame(rows)

    spells = [i // 5 % 2 == 1 for i in range(20)]  # slow every other half-second, 5 timings a spell
    together = speed_probe.flips(timings(spells, spells))
    assert together["slow_stretch_median"] == 5 and together["slow_stretch_max"] == 5
    assert together["mean_pairwise_correlation"] == 1.0
    assert (together["machine_slow_share_min"], together["machine_slow_share_max"]) == (0.0, 1.0)
    apart = speed_probe.flips(timings(spells, [not s for s in spells]))  # one core slow while the other is fast
    assert apart["mean_pairwise_correlation"] == -1.0
    assert apart["machine_slow_share_min"] == apart["machine_slow_share_max"] == 0.5
    one = speed_probe.flips(timings(spells, spells).query("cpu == 0"))  # a single core: no correlation to give
    assert one["slow_stretch_median"] == 5 and "mean_pairwise_correlation" not in one
