"""The ``gawm`` command as a user runs it: papermill executions of real runs, settings errors, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from gawm_lib import runs

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def gawm(*args, env, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "gawm_lib.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, **kwargs
    )


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "GAWM_RAW_DIR": str(tmp_path / "raw"), "GAWM_FIGURES_DIR": str(tmp_path / "figures")}


def leftovers(marker: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and proc.status() != psutil.STATUS_ZOMBIE:
            found.append(cmdline)
    return found


@pytest.mark.slow
def test_demo_with_tiny_parameters_records_all_three_workloads(env, tmp_path):
    out = gawm(
        "demo",
        "-p",
        "load.levels=[1,2]",
        "-p",
        "load.step_duration_s=1.5",
        "-p",
        "load.warmup_s=0",
        "-p",
        "load.min_requests_per_step=2",
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = runs.list_runs(tmp_path / "raw")[-1]
    assert run.status == "COMPLETED" and run.manifest["experiment"] == "demo"
    assert f"directory: {run.path}" in out.stdout and "figures:" in out.stdout
    results = run.results()
    rows = pd.read_parquet(run.requests_path)
    assert results["requests"] == len(rows) and results["errors"] == {}
    assert results["notebook"] == "01_measure_load_sweep"
    steps = pd.DataFrame(results["steps"])
    assert sorted(steps["workload"].unique()) == ["distilbert", "resnet50", "whisper"]
    assert (steps.groupby("workload").size() == 2).all() and (steps["ok"] >= 2).all()
    assert (steps["p95_ms"] >= steps["p50_ms"]).all() and (steps["throughput_rps"] > 0).all()
    for name in ("resnet50", "distilbert", "whisper"):
        assert run.manifest["workloads"][name]["weights"]["weights"] == "random"
    assert run.manifest["params"]["requested"]["load"]["levels"] == [1, 2]
    assert run.manifest["prometheus"]["version"].startswith(("2.", "3."))
    metrics = pd.read_parquet(run.path / "metrics" / "metrics.parquet")
    assert {"throughput", "latency_p95"} <= set(metrics["query"])
    assert set(metrics["workload"]) == {"resnet50", "distilbert", "whisper"}
    assert (run.path / "notebook.ipynb").is_file() and (run.path / "figures.ipynb").is_file()
    assert {p.name for p in (run.path / "logs").glob("*.log")} >= {
        "resnet50-0.log",
        "distilbert-0.log",
        "whisper-0.log",
    }
    for fig_id in (f"{run.id}_latency_cdf", f"{run.id}_latency_vs_throughput"):  # figure ids start with the run id
        sidecar = json.loads((tmp_path / "figures" / f"{fig_id}.json").read_text())
        assert sidecar["run_ids"] == [run.id] and sidecar["notebook"].endswith("02_figures_load_sweep.ipynb")
        assert (tmp_path / "figures" / f"{fig_id}.pdf").stat().st_size > 1000
        assert (tmp_path / "figures" / f"{fig_id}.png").read_bytes()[:4] == b"\x89PNG"
        assert len(pd.read_csv(tmp_path / "figures" / f"{fig_id}.csv")) > 0  # the plotted points beside it
        assert str(tmp_path / "figures" / f"{fig_id}.png") in out.stdout  # gawm run says what it wrote
    listing = gawm("runs", env=env)
    assert run.id in listing.stdout and "COMPLETED" in listing.stdout
    assert not leftovers(str(run.path))


def test_bad_settings_start_nothing(env, tmp_path):
    out = gawm("run", "params/quick.yaml", "-p", "load.step_duration_s=-2", "-p", "backend.replicaz=2", env=env)
    assert out.returncode == 2
    assert "-p load.step_duration_s=-2: load.step_duration_s: Input should be greater than 0" in out.stderr
    assert "-p backend.replicaz=2: backend.replicaz: unknown key 'replicaz' (did you mean 'replicas'?)" in out.stderr
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


def _as_in_a_terminal() -> None:
    """A terminal's foreground process takes Ctrl-C; a test run started in the background (``cmd &`` in a script)
    would hand its children SIGINT ignored, and Python would then never raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_marks_the_run_interrupted_and_keeps_its_records(env, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gawm_lib.cli",
            "run",
            "params/quick.yaml",
            "-p",
            "load.step_duration_s=60",
            "-p",
            "load.levels=[2]",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_as_in_a_terminal,
    )
    try:
        deadline = time.monotonic() + 180
        while not list((tmp_path / "raw").glob("*/requests.parquet/*.parquet")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no request records within 180 s"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted; what was recorded is kept" in stderr
    run = runs.list_runs(tmp_path / "raw")[-1]
    assert run.status == "INTERRUPTED" and run.manifest["end_utc"]
    assert len(pd.read_parquet(run.requests_path)) > 0
    assert (run.path / "notebook.ipynb").is_file()
    deadline = time.monotonic() + 20
    while leftovers(str(run.path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leftovers(str(run.path)), "processes outlived the interrupted run"


def test_gawm_serve_takes_the_server_options_as_the_readme_shows_them(env, tmp_path):
    """``gawm serve --workload ... --port ... --settings ...`` serves OIP v2 until stopped; bad settings are refused
    naming the key."""
    import httpx

    helped = gawm("serve", "--help", env=env, timeout=60)
    assert helped.returncode == 0 and "--workload" in helped.stdout and "--settings" in helped.stdout
    bad = gawm("serve", "--workload", "distilbert", "--settings", '{"max_batch_sise": 4}', env=env, timeout=60)
    assert bad.returncode == 2 and "unknown key 'max_batch_sise' (did you mean 'max_batch_size'?)" in bad.stderr
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gawm_lib.cli",
            "serve",
            "--workload",
            "distilbert",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--settings",
            '{"max_batch_size": 4, "threads": 1}',
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "serve.log", "wb"),
    )
    try:
        deadline = time.monotonic() + 180
        while not port_file.exists():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "gawm serve did not bind a port in 180 s"
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port_file.read_text()}"
        while True:  # the model loads and warms up before the server says ready
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.2)
        assert httpx.get(f"{base}/v2/models/distilbert", timeout=10).json()["name"] == "distilbert"
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello world"]}]}
        answer = httpx.post(f"{base}/v2/models/distilbert/infer", json=body, timeout=60)
        assert answer.status_code == 200 and answer.json()["model_name"] == "distilbert"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
