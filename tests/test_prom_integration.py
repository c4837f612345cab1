"""gawm_lib.prom against a real Prometheus (the Debian ``prometheus`` binary) on 127.0.0.1.

One Prometheus per module scrapes a small exporter (``EXPORTER`` below) that stands in for the
gawm model server until the lead's integration test uses the real one.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from gawm_lib.prom import (
    CATALOGUE,
    FRAME_COLUMNS,
    EmptyQueryWarning,
    LocalPrometheus,
    Prefix,
    PrometheusQueryError,
    PrometheusStartError,
    Target,
    find_binary,
    load_run_metrics,
    query_phases,
    query_run_phases,
    save_run_metrics,
    wait_for_targets_up,
)
from gawm_lib.prom.common import PrometheusNotInstalled

try:
    find_binary()
except PrometheusNotInstalled as exc:  # pragma: no cover - the test machine has it
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = pytest.mark.integration

OK_RATE, ERR_RATE, POWER_W = 20.0, 2.0, 100.0
ROOT = Path(__file__).resolve().parents[1]

# Simulates one replica of the gawm model server's /metrics (same metric names, labels and latency
# buckets): OK_RATE ok and ERR_RATE error requests per second on an exact schedule; every 10th ok
# request takes 0.3 s, the rest 0.003 s (so p50 is in (0.002, 0.005], p95 in (0.2, 0.5]); queue
# wait 0.002 s; a batch of 4 every 4 requests; 3 in flight; NVML gauges for gpu "0" and an energy
# counter growing at POWER_W joules per second. Prints its port, then runs until killed; it gets
# SIGTERM if the test process dies (PR_SET_PDEATHSIG).
EXPORTER = textwrap.dedent("""
    import ctypes, sys, time
    ctypes.CDLL(None).prctl(1, 15, 0, 0, 0)
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
    ok_rate, err_rate, power = map(float, sys.argv[1:4])
    B = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)
    r = CollectorRegistry()
    req = Counter("gawm_requests", "requests", ["model", "status"], registry=r)
    dur = Histogram("gawm_request_duration_seconds", "latency", ["model"], buckets=B, registry=r)
    queue = Histogram("gawm_queue_duration_seconds", "queue", ["model"], buckets=B, registry=r)
    comp = Histogram("gawm_compute_duration_seconds", "compute", ["model"], buckets=B, registry=r)
    batch = Histogram("gawm_batch_size", "batch", ["model"], buckets=(1, 2, 4, 8, 16, 32), registry=r)
    inflight = Gauge("gawm_inflight_requests", "in flight", ["model"], registry=r)
    items = Counter("gawm_items", "items", ["model"], registry=r)
    util = Gauge("gawm_gpu_utilization_ratio", "util", ["gpu"], registry=r)
    mem = Gauge("gawm_gpu_memory_used_bytes", "mem", ["gpu"], registry=r)
    watts = Gauge("gawm_gpu_power_watts", "power", ["gpu"], registry=r)
    energy = Counter("gawm_gpu_energy_joules", "energy", ["gpu"], registry=r)
    m = "resnet50"
    inflight.labels(m).set(3); util.labels("0").set(0.5); mem.labels("0").set(2**30); watts.labels("0").set(power)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=r)
    print(server.server_port, flush=True)
    total = ok_rate + err_rate
    t0 = last = time.monotonic()
    n = n_ok = 0
    while True:
        time.sleep(max(0.0, t0 + n / total - time.monotonic()))
        now = time.monotonic(); energy.labels("0").inc(power * (now - last)); last = now
        if n_ok < ok_rate / total * (n + 1):
            req.labels(m, "ok").inc(); dur.labels(m).observe(0.3 if n_ok % 10 == 9 else 0.003); n_ok += 1
        else:
            req.labels(m, "error").inc(); dur.labels(m).observe(0.003)
        queue.labels(m).observe(0.002)
        n += 1
        if n % 4 == 0:
            batch.labels(m).observe(4); comp.labels(m).observe(0.01); items.labels(m).inc(4)
""")

HOSTILE = ['a"b\\c\nd', ".*", 'x"} or vector(1) or up{job="', "resnet50|distilbert", "$window", "é🙂\t"]


def start_exporter() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", EXPORTER, str(OK_RATE), str(ERR_RATE), str(POWER_W)], stdout=subprocess.PIPE, text=True
    )
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"exporter did not start: {line!r}")
    return proc, f"127.0.0.1:{int(line)}"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text`` (a unique work directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read() and alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                pass
    return found


def recent(seconds: float, name: str = "steady") -> list[tuple[str, datetime, datetime]]:
    end = datetime.now(UTC)
    return [(name, end - timedelta(seconds=seconds), end)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    exporter, address = start_exporter()
    work = tmp_path_factory.mktemp("prometheus")
    try:
        with LocalPrometheus(work, [Target(address, {"workload": "resnet50", "replica": "0"})]) as prom:
            wait_for_targets_up(prom.url, 1, timeout_s=20)
            first_up = time.monotonic()
            # targets change while Prometheus runs: the same exporter again under hostile workload names
            prom.set_targets(
                [
                    (address, {"workload": "resnet50", "replica": "0"}),
                    *[(address, {"workload": w, "replica": "0"}) for w in HOSTILE],
                ]
            )
            prom.wait_for_targets(timeout_s=20)
            time.sleep(max(0.0, first_up + 6.5 - time.monotonic()))  # enough samples for 4 s rate windows
            yield {"prom": prom, "address": address, "work": work}
    finally:
        stop(exporter)


def test_started_prometheus_exposes_url_version_config(env):
    prom = env["prom"]
    assert prom.url.startswith("http://127.0.0.1:") and prom.version[0].isdigit()
    assert "scrape_interval: 1s" in prom.config_text and "evaluation_interval: 1s" in prom.config_text
    assert "file_sd_configs" in prom.config_text and prom.log_path.exists()
    assert alive(prom.pid)
    with pytest.raises(TimeoutError, match="fewer than 99 targets"):
        wait_for_targets_up(prom.url, 99, timeout_s=0.3)


def test_throughput_error_rate_and_step_from_scrape_interval(env):
    frame = query_phases(
        env["prom"].url,
        ["throughput", "error_rate", "items_per_second", "inflight"],
        recent(4),
        params={"workload": "resnet50"},
    )
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]" and frame["value"].dtype == "float64"
    by = frame.groupby("query")["value"].median()
    assert by["throughput"] == pytest.approx(OK_RATE, rel=0.2)
    assert by["error_rate"] == pytest.approx(ERR_RATE / (OK_RATE + ERR_RATE), rel=0.35)
    assert by["items_per_second"] == pytest.approx(OK_RATE + ERR_RATE, rel=0.3)
    assert by["inflight"] == 3
    assert set(frame["labels"]) == {json.dumps({"workload": "resnet50"}, separators=(",", ":"))}
    assert set(frame["unit"]) == {"requests/s", "ratio", "items/s", "requests"}
    steps = frame[frame["query"] == "throughput"]["time"].diff().dropna()
    assert (steps == pd.Timedelta(seconds=1)).all()  # step = scrape interval, read from Prometheus


def test_histogram_quantiles_land_in_the_right_buckets(env):
    frame = query_phases(
        env["prom"].url,
        ["latency_p50", "latency_p95", "latency_p99", "queue_wait_p95", "latency_mean", "batch_size_mean"],
        recent(3),
        params={"workload": "resnet50"},
        step_s=1,
        window="4s",
    )
    v = frame.groupby("query")["value"]
    assert (v.min()["latency_p50"], v.max()["latency_p50"]) > (0.002, 0) and v.max()["latency_p50"] <= 0.005
    assert v.min()["latency_p95"] > 0.2 and v.max()["latency_p95"] <= 0.5
    assert v.min()["latency_p99"] > 0.2 and v.max()["latency_p99"] <= 0.5
    assert v.min()["queue_wait_p95"] > 0.001 and v.max()["queue_wait_p95"] <= 0.002
    assert v.median()["latency_mean"] == pytest.approx(
        (OK_RATE * 0.0327 + ERR_RATE * 0.003) / (OK_RATE + ERR_RATE), rel=0.3
    )
    assert v.median()["batch_size_mean"] == pytest.approx(4)


def test_phases_derived_energy_chunking_and_save(env, tmp_path):
    url = env["prom"].url
    end = datetime.now(UTC) - timedelta(seconds=2)  # settled data: both queries below see the same
    phases = [
        ("warmup", end - timedelta(seconds=5), end - timedelta(seconds=3)),
        ("steady", end - timedelta(seconds=3), end),
    ]
    names = ["throughput", "gpu_power_nvml", "energy_per_request_nvml", "gpu_energy_nvml"]
    frame = query_phases(url, names, phases, params={"workload": "resnet50"})
    assert list(frame["phase"].unique()) == ["warmup", "steady"]
    per_phase = frame[frame["query"] == "energy_per_request_nvml"]
    ends = [pd.Timestamp(end - timedelta(seconds=3)), pd.Timestamp(end)]
    # one point per phase, at its exact end (to the millisecond), over its exact length: not whole seconds around it
    assert [abs(t - e) < pd.Timedelta(milliseconds=1) for t, e in zip(per_phase["time"], ends)] == [True, True]
    energy = frame[frame["query"] == "gpu_energy_nvml"]
    print("gpu_energy_nvml per phase [J]:", energy["value"].tolist(), "at", POWER_W, "W")
    assert energy["value"].tolist() == pytest.approx([POWER_W * 2, POWER_W * 3], rel=0.1)  # 2 s and 3 s phases
    assert per_phase["value"].tolist() == pytest.approx([POWER_W / OK_RATE] * 2, rel=0.35)
    assert json.loads(frame[frame["query"] == "gpu_power_nvml"]["labels"].iloc[0])["gpu"] == "0"
    # a range split into chunks of 2 points gives the same rows as one request
    chunked = query_phases(url, ["throughput"], phases, params={"workload": "resnet50"}, max_points=2)
    pd.testing.assert_frame_equal(chunked, frame[frame["query"] == "throughput"].reset_index(drop=True))
    path = save_run_metrics(tmp_path, frame)
    assert path.name == "metrics.parquet"
    pd.testing.assert_frame_equal(load_run_metrics(tmp_path), frame)


def test_query_run_phases_takes_load_results(env):
    end_ns = time.time_ns()
    result = {
        "workload": "resnet50",
        "phases": [
            {
                "phase": "warmup",
                "step": -1,
                "level": 5.0,
                "start_unix_ns": end_ns - 5 * 10**9,
                "end_unix_ns": end_ns - 3 * 10**9,
            },
            {"phase": "step", "step": 0, "level": 5.0, "start_unix_ns": end_ns - 3 * 10**9, "end_unix_ns": end_ns},
        ],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = query_run_phases(env["prom"].url, [result], step_s=1, query_names=["throughput", "latency_p95"])
    assert list(frame.columns) == [*FRAME_COLUMNS, "workload", "step", "level"]
    assert set(zip(frame["phase"], frame["step"])) == {("warmup", -1), ("step", 0)}
    assert (frame["workload"] == "resnet50").all()
    assert len(query_run_phases(env["prom"].url, [])) == 0


def test_hostile_label_values_match_only_themselves(env):
    url = env["prom"].url

    def workloads(value) -> list[str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EmptyQueryWarning)
            frame = query_phases(url, ["inflight"], recent(2), params={"workload": value}, step_s=1)
        return sorted({json.loads(s)["workload"] for s in frame["labels"]})

    for value in HOSTILE:
        assert workloads(value) == [value], value
    assert workloads([".*", "resnet50"]) == sorted([".*", "resnet50"])
    assert workloads(Prefix("resnet50")) == sorted(["resnet50", "resnet50|distilbert"])
    assert workloads(Prefix(".")) == [".*"]
    with pytest.warns(EmptyQueryWarning, match=r"'inflight'.*\['steady'\]"):
        frame = query_phases(url, ["inflight"], recent(2), params={"workload": "resnet"}, step_s=1)
    assert list(frame.columns) == list(FRAME_COLUMNS) and len(frame) == 0
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]"


def test_every_catalogue_query_parses_on_real_prometheus(env):
    params = {
        label: HOSTILE[i % len(HOSTILE)]
        for i, label in enumerate(sorted({lab for q in CATALOGUE.values() for lab in q.labels}))
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyQueryWarning)
        frame = query_phases(env["prom"].url, list(CATALOGUE), recent(2), params=params, step_s=1)
        frame = query_phases(env["prom"].url, list(CATALOGUE), recent(2), step_s=1)
    assert {"throughput", "latency_p95", "gpu_util_nvml", "energy_per_request_nvml"} <= set(frame["query"])


def test_slow_and_stopped_prometheus_raise_query_error(tmp_path):
    import socket

    with socket.socket() as silent:  # accepts connections, never answers: a hung Prometheus
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(PrometheusQueryError, match="ReadTimeout") as info:
            query_phases(url, ["throughput"], recent(5), step_s=1, window="4s", timeout_s=0.3, retries=0)
        assert info.value.url == url and info.value.query_name == "throughput"

    with pytest.raises(RuntimeError, match="boom"):
        with LocalPrometheus(tmp_path / "p", scrape_interval_s=0.5) as prom:
            url, pid = prom.url, prom.pid
            assert alive(pid)
            raise RuntimeError("boom")
    assert not alive(pid) and processes_mentioning(str(tmp_path)) == []
    with pytest.raises(PrometheusQueryError) as info:
        query_phases(url, ["latency_p95"], recent(5), step_s=1, params={"workload": "resnet50"})
    msg = str(info.value)
    assert url in msg and "'latency_p95'" in msg and "histogram_quantile(0.95" in msg and "ConnectionError" in msg
    with pytest.raises(PrometheusQueryError, match="scrape interval"):  # step from a Prometheus that is gone
        query_phases(url, ["throughput"], recent(5))


def test_start_failure_reports_the_log_tail(tmp_path):
    with pytest.raises(PrometheusStartError, match="(?s)exited with code.*retention"):
        with LocalPrometheus(tmp_path, extra_args=["--storage.tsdb.retention.time=forever"]):
            pass
    assert processes_mentioning(str(tmp_path)) == []


def test_killed_parent_leaves_no_prometheus(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from gawm_lib.prom.local import LocalPrometheus
        p = LocalPrometheus({str(tmp_path)!r}).start()
        print(p.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        ready, _, _ = select.select([parent.stdout], [], [], 20)
        pid = int(parent.stdout.readline()) if ready else pytest.fail("child did not start Prometheus")
        assert alive(pid)
    finally:
        parent.send_signal(signal.SIGKILL)  # no __exit__, no atexit: only PR_SET_PDEATHSIG can help
        parent.wait()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid) and processes_mentioning(str(tmp_path)) == []
