"""Faults and stops against real servers: a null OIP v2 server that answers 5xx, answers too late, resets
connections, or is killed mid-run and restarted; and a load process stopped by SIGINT or killed by SIGKILL. Each time
the run completes (or its records stay readable) and every request is accounted for, by kind."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import binom

from gawm_lib import processes, summary
from gawm_lib.bench import null_server
from gawm_lib.config import LoadConfig
from gawm_lib.loadgen import LoadSpec, run_load, write_bodies

pytestmark = pytest.mark.integration


def spec_for(tmp_path: Path, url: str, model: str = "null", **load) -> LoadSpec:
    bodies = write_bodies(
        tmp_path / "bodies.jsonl",
        [{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [f"x{i}"]}]} for i in range(4)],
    )
    return LoadSpec(
        "null", model, [url], str(bodies), str(tmp_path / "requests.parquet"), LoadConfig(**load).model_dump()
    )


def accounted(rows: pd.DataFrame) -> pd.Series:
    table = summary.summarise(rows)
    assert (table["sent"] == table["ok"] + table["errors"] + table["cancelled"]).all()
    return table.sum(numeric_only=True)


@pytest.mark.parametrize("transport", ["http1", "aiohttp"])
def test_server_errors_slow_answers_and_resets_are_counted_by_kind(tmp_path, transport):
    with null_server.running(error_fraction=0.1, slow_fraction=0.05, slow_s=1.0, reset_fraction=0.03, seed=3) as (
        _,
        url,
    ):
        spec = spec_for(
            tmp_path,
            url,
            scenario="constant_rate",
            levels=[400],
            step_duration_s=1.0,
            warmup_s=0,
            request_timeout_s=0.25,
            transport=transport,
        )
        result = run_load(spec, tmp_path / "work", progress=False)
    rows = summary.read_requests(spec.out_dir)
    assert len(rows) == result["requests"] == 400 and not result["interrupted"]
    totals = accounted(rows)
    n = 400
    for kind, fraction in (("http_5xx", 0.1), ("timeout", 0.05), ("reset", 0.03)):
        low, high = binom.ppf([0.0005, 0.9995], n, fraction)
        assert low <= totals[f"errors_{kind}"] <= high, kind
    assert totals["ok"] == n - totals["errors"] and totals["errors_other"] == 0
    five = rows[rows["error"] == "http_5xx"]
    assert (five["status"] == 500).all() and (five["bytes_in"] > 0).all()
    late = rows[rows["error"] == "timeout"]
    assert ((late["done_ns"] - late["sent_ns"]) / 1e9).between(0.24, 0.6).all()  # cut at the timeout, not at 1 s


@pytest.mark.parametrize("transport", ["http1", "aiohttp"])
def test_unknown_model_is_counted_as_4xx_and_refused_connections_as_connect(tmp_path, transport):
    spec = spec_for(
        tmp_path / "refused", "http://127.0.0.1:9", levels=[1], step_duration_s=0.2, warmup_s=0, transport=transport
    )
    run_load(spec, tmp_path / "work", progress=False)
    rows = summary.read_requests(spec.out_dir)
    assert summary.errors_by_kind(rows) == {"connect": len(rows)} and (rows["sent_ns"] > 0).all()
    with null_server.running() as (_, url):
        spec = spec_for(
            tmp_path, url, model="nosuchmodel", levels=[1], step_duration_s=0.2, warmup_s=0, transport=transport
        )
        run_load(spec, tmp_path / "work", progress=False)
    rows = summary.read_requests(spec.out_dir)
    assert summary.errors_by_kind(rows) == {"http_4xx": len(rows)} and (rows["status"] == 404).all()


class Progress:
    """The load process's progress lines (``{"done": N, ...}`` every 0.25 s), read in a thread: ``wait_for`` waits for a
    count rather than for a fixed time, so that a loaded machine only makes the test slower."""

    def __init__(self, proc: subprocess.Popen):
        self.done = 0
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.reader.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError), self.changed:
                self.done = max(self.done, int(json.loads(line).get("done", 0)))
                self.changed.notify_all()

    def wait_for(self, count: int, what: str, timeout_s: float = 120.0) -> int:
        with self.changed:
            if not self.changed.wait_for(lambda: self.done >= count, timeout_s):
                raise AssertionError(f"{what}: {self.done} of {count} requests done after {timeout_s:g} s")
            return self.done


def test_server_killed_mid_run_and_restarted(tmp_path):
    """A replica crashes mid-run (SIGKILL: no goodbye to the open connections) and comes back on the same port: the
    load carries on, requests meanwhile fail as connect or reset errors, and requests succeed before and after. Each
    phase lasts until the requests it needs are done (not a fixed time), so a loaded machine only makes it slower."""
    port_file, log = tmp_path / "port", tmp_path / "server.log"
    server = null_server.start(0, "null", None, port_file, log)
    port = null_server.wait_for_port(server, port_file)
    spec = spec_for(
        tmp_path,
        f"http://127.0.0.1:{port}",
        scenario="poisson",
        levels=[200],
        step_duration_s=120,
        warmup_s=0,
        request_timeout_s=1.0,
    )
    load, result_path = start_load_process(tmp_path, spec)
    try:
        progress = Progress(load)
        progress.wait_for(80, "answered before the crash")  # every request so far was answered: no faults yet
        server.kill()  # a crash: no goodbye to the open connections
        server.wait(10)
        killed_ns = time.monotonic_ns()
        # no server: none can succeed (of these 100, at most the last 0.25 s before the kill, ~50, were answered)
        progress.wait_for(progress.done + 100, "done while the server is down")
        server = null_server.start(port, "null", None, port_file, log)  # the same port again
        null_server.wait_for_port(server, port_file)
        restarted_ns = time.monotonic_ns()
        progress.wait_for(progress.done + 200, "done after the restart")
        load.send_signal(signal.SIGINT)  # the end of the run: what is in flight is recorded as cancelled
        assert load.wait(60) == 0
    finally:
        load.kill()
        processes.stop(server)
    result = json.loads(result_path.read_text())
    rows = summary.read_requests(spec.out_dir)
    assert result["requests"] == len(rows) > 0
    totals = accounted(rows)
    assert totals["errors_connect"] + totals["errors_reset"] >= 20  # found no server, or lost it mid-request
    ok = rows[rows["error"] == ""]
    assert (ok["done_ns"] < killed_ns).sum() > 50 and (ok["sent_ns"] > restarted_ns).sum() > 50  # before and after
    assert totals["errors_other"] == 0 and set(rows["error"]) <= {"", "connect", "reset", "timeout", "cancelled"}


def start_load_process(tmp_path: Path, spec: LoadSpec) -> tuple[subprocess.Popen, Path]:
    spec_path, result_path = tmp_path / "spec.json", tmp_path / "result.json"
    spec.write(spec_path)
    # own session and a parent-death signal (gawm_lib.processes): a killed test run leaves no load process behind
    proc = processes.spawn(
        [sys.executable, "-m", "gawm_lib.loadgen", str(spec_path), "--result", str(result_path)],
        tmp_path / "load.log",
        stdout=subprocess.PIPE,
    )
    return proc, result_path


def test_sigint_stops_an_open_loop_and_accounts_for_requests_in_flight(tmp_path):
    with null_server.running(slow_fraction=0.5, slow_s=30) as (_, url):
        spec = spec_for(
            tmp_path, url, scenario="poisson", levels=[200], step_duration_s=60, warmup_s=0, max_connections=20
        )
        proc, result_path = start_load_process(tmp_path, spec)
        try:
            assert json.loads(proc.stdout.readline())["done"] >= 1
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            proc.kill()
    result = json.loads(result_path.read_text())
    rows = summary.read_requests(spec.out_dir)
    assert result["interrupted"] and result["requests"] == len(rows)
    cancelled = rows[rows["error"] == "cancelled"]
    assert len(cancelled) >= 20  # the stalled ones, and those waiting for one of the 20 connections
    assert (cancelled["sent_ns"] == 0).any() and (cancelled["sent_ns"] > 0).any()
    assert set(rows["error"]) <= {"", "cancelled"}


def test_sigkill_leaves_the_records_readable_up_to_the_last_flush(tmp_path):
    with null_server.running() as (_, url):
        spec = spec_for(tmp_path, url, scenario="poisson", levels=[500], step_duration_s=60, warmup_s=0)
        proc, result_path = start_load_process(tmp_path, spec)
        try:
            folder = Path(spec.out_dir)
            deadline = time.monotonic() + 30
            while not list(folder.glob("*.parquet")):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            time.sleep(1.0)  # somewhere between two flushes, perhaps in the middle of one
            proc.kill()
            proc.wait(10)
        finally:
            proc.kill()
    assert not result_path.exists()
    rows = summary.read_requests(spec.out_dir)  # hidden half-written parts, if any, are skipped
    assert len(rows) >= 500 and (rows["error"] == "").all()
    assert rows["scheduled_ns"].is_unique
