"""A run that went wrong says so (issue 31, Runs): verdicts per step and per run, replica and Prometheus exits in the
manifest, SIGTERM and SIGHUP as interruptions, full and read-only disks, unreadable run folders. The integration tests
use real model servers (or gawm's null server) on 127.0.0.1 with a few seconds of load, and wait for conditions."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from gawm_lib import analysis, cli, experiment, plots, runs, summary, verdicts
from gawm_lib.bench import null_server
from gawm_lib.config import LoadConfig, validate_params
from gawm_lib.loadgen import LoadError, LoadSpec, run_load, write_bodies

ROOT = Path(__file__).resolve().parent.parent


# -- the rules, on hand-made tables ------------------------------------------------------------------------------------
def step_row(step=0, sent=100, errors=0, cancelled=0, duration_s=3.0, workload="w") -> dict:
    return {
        "workload": workload,
        "step": step,
        "sent": sent,
        "ok": sent - errors - cancelled,
        "errors": errors,
        "cancelled": cancelled,
        "duration_s": duration_s,
    }


def manifest_for(phases=(), exits=(), prometheus_exits=(), **load) -> dict:
    return {
        "params": {
            "effective": {"load": LoadConfig(**{"step_duration_s": 3.0, "levels": [1] * 6, **load}).model_dump()}
        },
        "phases": {"w": list(phases)},
        "workloads": {"w": {"exits": list(exits)}},
        "prometheus": {"exits": list(prometheus_exits)},
    }


def phase(step, start_s, end_s) -> dict:
    return {
        "phase": "step",
        "step": step,
        "start_ns": int(start_s * 1e9),
        "end_ns": int(end_s * 1e9),
        "start_unix_ns": int((1000 + start_s) * 1e9),
        "end_unix_ns": int((1000 + end_s) * 1e9),
    }


def an_exit(at_s, replica=1, sig="SIGKILL") -> dict:
    return {"replica": replica, "exit_code": None, "signal": sig, "at_utc": "x", "at_unix_ns": int((1000 + at_s) * 1e9)}


def test_step_verdicts_follow_the_rules():
    table = pd.DataFrame(
        [
            step_row(0),  # fine
            step_row(1, sent=40, errors=1),  # 2.5 % errors > 1 %
            step_row(2, sent=5),  # fewer than min_requests_per_step
            step_row(3),  # shorter than step_duration_s
            step_row(4),  # a replica died during it
            step_row(5),  # Prometheus died during it
        ]
    )
    phases = [phase(0, 0, 3), phase(1, 3, 6), phase(2, 6, 9), phase(3, 9, 10.5), phase(4, 11, 14), phase(5, 14, 17)]
    judged = verdicts.judge_steps(
        table,
        manifest_for(phases, [an_exit(12.0)], [an_exit(15.0, sig=None) | {"exit_code": 1}], min_requests_per_step=10),
    ).set_index("step")
    assert judged.loc[0, "verdict"] == "VALID" and judged.loc[0, "verdict_reasons"] == ""
    assert judged.loc[1, "verdict"] == "INVALID" and "errors 2.5 % > 1 %" in judged.loc[1, "verdict_reasons"]
    assert judged.loc[2, "verdict_reasons"] == "few requests: 5 of 10"
    assert judged.loc[3, "verdict_reasons"] == "short: 1.5 of 3 s"
    assert judged.loc[4, "verdict"] == "INVALID" and "replica 1 exited (SIGKILL)" in judged.loc[4, "verdict_reasons"]
    assert judged.loc[5, "verdict"] == "INVALID"  # the replica died before it too: INVALID wins over DEGRADED
    assert "prometheus exited (code 1)" in judged.loc[5, "verdict_reasons"]
    only_prometheus = verdicts.judge_steps(
        pd.DataFrame([step_row(0), step_row(1)]),
        manifest_for([phase(0, 0, 3), phase(1, 3, 6)], [], [an_exit(4.0, sig="SIGKILL")]),
    )
    assert list(only_prometheus["verdict"]) == ["VALID", "DEGRADED"]
    run_verdict, reasons = verdicts.judge_run({"status": "COMPLETED", "metrics": {"error": "down"}}, only_prometheus)
    assert run_verdict == "DEGRADED"
    assert (
        reasons[0].startswith("w step 1 DEGRADED: prometheus exited (SIGKILL)") and "metrics not saved: down" in reasons
    )
    assert verdicts.judge_run({"status": "INTERRUPTED"}, judged.reset_index())[1][0] == "run INTERRUPTED"
    assert verdicts.judge_run({"status": "COMPLETED"}, None) == ("INVALID", ["no measured step"])
    assert verdicts.judge_run({"status": "COMPLETED"}, judged.reset_index().iloc[:1])[0] == "VALID"


def test_a_larger_error_bound_is_a_setting():
    table = pd.DataFrame([step_row(0, sent=40, errors=1)])
    judged = verdicts.judge_steps(table, manifest_for([phase(0, 0, 3)], max_error_share=0.05))
    assert judged["verdict"].tolist() == ["VALID"]


def test_runs_recorded_before_verdicts_still_load_as_unknown(raw_dir, tmp_path):
    run = runs.create_run("old", {}, {}, raw_dir)
    run.update(status="COMPLETED")  # an old run: finished without a verdict
    pd.DataFrame([step_row(0)]).to_csv(run.path / "summary.csv", index=False)
    loaded = runs.load_run(run.path)
    assert loaded.verdict == "UNKNOWN"
    steps = verdicts.step_verdicts(run.path / "summary.csv")
    assert steps.to_dict(orient="records") == [
        {"workload": "w", "step": 0, "verdict": "UNKNOWN", "verdict_reasons": "recorded before verdicts"}
    ]
    assert verdicts.step_verdicts(tmp_path / "none.csv").empty


def test_figures_of_steps_cross_the_steps_that_are_not_valid_and_say_so():
    steps = pd.DataFrame(
        {
            "run_id": "r",
            "workload": "resnet50",
            "step": [0, 1, 2],
            "level": [1.0, 2.0, 4.0],
            "offered_rps": [10.0, 20.0, 40.0],
            "throughput_rps": [10.0, 19.0, 30.0],
            "p50_ms": [5.0, 6.0, 9.0],
            "p95_ms": [7.0, 9.0, 20.0],
            "p99_ms": [8.0, 10.0, 25.0],
            "ok": [100, 100, 100],
            "replicas": 1,
            "scenario": "closed_loop",
            "verdict": ["VALID", "DEGRADED", "INVALID"],
        }
    )
    for draw in (plots.latency_vs_throughput, plots.percentiles_vs_load, plots.tail_vs_throughput_by_replicas):
        fig = draw(steps)
        data = plots.figure_data(fig)
        assert list(data.drop_duplicates("step")["verdict"]) == ["VALID", "DEGRADED", "INVALID"], draw.__name__
        notes = " ".join(t.get_text() for t in fig.texts)
        assert "x: 2 step(s) not VALID (DEGRADED, INVALID" in notes, draw.__name__
        crosses = [line for ax in fig.axes for line in ax.lines if line.get_marker() == "x"]
        assert crosses and all(len(line.get_xdata()) == 2 for line in crosses), draw.__name__
    old = plots.figure_data(plots.latency_vs_throughput(steps.drop(columns="verdict")))
    assert set(old["verdict"]) == {"UNKNOWN"}  # runs before verdicts: drawn plainly, said unknown


def test_the_metric_timeline_hatches_the_steps_that_are_not_valid(tmp_path):
    """A run's steps with their verdicts (verdicts.step_phases: the manifest's phases and summary.csv) go into the
    timeline: the DEGRADED step is hatched, counted in the note, and each point carries its step's verdict."""
    run = runs.create_run("timeline", {}, {}, tmp_path)
    run.update(
        phases={"w": [phase(0, 0, 10), {"phase": "warmup", "start_unix_ns": 0, "end_unix_ns": 1}, phase(1, 10, 20)]}
    )
    pd.DataFrame(
        {
            "workload": "w",
            "step": [0, 1],
            "verdict": ["VALID", "DEGRADED"],
            "verdict_reasons": ["", "prometheus exited"],
        }
    ).to_csv(run.path / "summary.csv", index=False)
    steps = verdicts.step_phases(runs.load_run(run.path))
    assert [(p["workload"], p["step"], p["verdict"]) for p in steps] == [("w", 0, "VALID"), ("w", 1, "DEGRADED")]
    times = pd.to_datetime([1002, 1012, 1025], unit="s", utc=True)
    metrics = pd.DataFrame(
        {"time": times, "query": "throughput", "value": [5.0, 6.0, 0.0], "unit": "req/s", "labels": '{"workload": "w"}'}
    )
    fig = plots.metric_timeline(metrics, ["throughput"], steps)
    hatched = [patch for patch in fig.axes[0].patches if patch.get_hatch()]
    assert len(hatched) == 1 and len(fig.axes[0].patches) == 3  # two steps shaded, the DEGRADED one also hatched
    assert "hatched: 1 step(s) not VALID (DEGRADED)" in " ".join(t.get_text() for t in fig.texts)
    data = plots.figure_data(fig)
    assert data["verdict"].tolist() == ["VALID", "DEGRADED", ""] and data["step"].tolist()[:2] == [0, 1]
    old = runs.load_run(run.path)
    (old.path / "summary.csv").unlink()  # a run recorded before verdicts: steps UNKNOWN, nothing hatched
    plain = plots.metric_timeline(metrics, ["throughput"], verdicts.step_phases(old))
    assert not [patch for patch in plain.axes[0].patches if patch.get_hatch()]


def test_the_batches_a_figure_shows_are_the_ones_the_fit_used():
    """server_batches (the points of throughput_vs_batch) and batch_time_factors leave INVALID steps out, as
    fit_service does, and say so."""
    from gawm_lib.models import BatchLatencyModel

    rows = pd.DataFrame(
        {
            "run_id": "r",
            "workload": "w",
            "phase": "step",
            "step": [0, 0, 1],
            "error": "",
            "batch_size": [1, 2, 4],
            "server_compute_ns": [10**7, 2 * 10**7, 9 * 10**7],
            "verdict": ["VALID", "VALID", "INVALID"],
            "verdict_reasons": ["", "", "replica 1 exited (SIGKILL)"],
        }
    )
    with pytest.warns(analysis.InvalidStepsWarning, match=r"server_batches: 1 INVALID step\(s\) left out: r w 1"):
        batches = analysis.server_batches(rows)
    assert batches["batch_size"].tolist() == [1, 2]
    with pytest.warns(analysis.InvalidStepsWarning):
        factors = analysis.batch_time_factors(rows, BatchLatencyModel(alpha=0.01, beta=0.0))
    assert factors.tolist() == pytest.approx([1.0, 1.0])  # the INVALID step's slow batch (2.25 x) is not among them


def test_predicted_vs_measured_crosses_the_steps_that_are_not_valid():
    """The verdict goes from the request rows through predict_steps and validation_table to the figure: a DEGRADED
    step (predictions leave only INVALID ones out) is crossed in every metric's panel and counted once."""
    from gawm_lib.models import BatchLatencyModel

    rows = []
    for step, verdict in ((0, "VALID"), (1, "DEGRADED")):
        for i in range(20):
            rows.append(
                {
                    "run_id": "r",
                    "workload": "resnet50",
                    "phase": "step",
                    "step": step,
                    "level": float(step + 1),
                    "scenario": "closed_loop",
                    "replicas": 1,
                    "max_batch_size": 1,
                    "max_queue_delay_ms": 0.0,
                    "error": "",
                    "batch_size": 1,
                    "server_compute_ns": 10**7,
                    "server_queue_ns": 10**5,
                    "scheduled_ns": int((step * 10 + i * 0.5) * 1e9),
                    "sent_ns": int((step * 10 + i * 0.5) * 1e9),
                    "done_ns": int((step * 10 + i * 0.5 + 0.011 + step / 1000) * 1e9),
                    "verdict": verdict,
                }
            )
    requests = pd.DataFrame(rows)
    predicted = analysis.predict_steps(requests, BatchLatencyModel(alpha=0.009, beta=0.001), 0.0)
    assert list(predicted["verdict"]) == ["VALID", "DEGRADED"] and list(predicted["step"]) == [0, 1]
    validation = analysis.validation_table(predicted)
    assert set(validation.loc[validation["step"] == 1, "verdict"]) == {"DEGRADED"}
    fig = plots.predicted_vs_measured(validation)
    crosses = [line for ax in fig.axes for line in ax.lines if line.get_marker() == "x"]
    assert len(crosses) == 3 and all(len(line.get_xdata()) == 1 for line in crosses)  # one per metric's panel
    assert "x: 1 step(s) not VALID (DEGRADED" in " ".join(t.get_text() for t in fig.texts)
    data = plots.figure_data(fig)
    assert set(data.loc[data["step"] == 1, "verdict"]) == {"DEGRADED"}
    plain = plots.predicted_vs_measured(validation.drop(columns=["step", "verdict"]))  # tables made before verdicts
    assert not [line for ax in plain.axes for line in ax.lines if line.get_marker() == "x"] and not plain.texts


# -- gawm runs: every folder listed, the unreadable ones with the reason -----------------------------------------------
def test_gawm_runs_lists_unreadable_run_folders_with_the_reason(raw_dir, monkeypatch, capsys):
    monkeypatch.setenv("GAWM_RAW_DIR", str(raw_dir))
    good = runs.create_run("good", {}, {}, raw_dir)
    good.finish("COMPLETED")  # no records: INVALID, "no measured step"
    corrupt = raw_dir / "20260101T000000Z-corrupt-abc"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text('{"schema_version": 1, "run_id": "x", "sta')
    future = raw_dir / "20260101T000001Z-future-abc"
    future.mkdir()
    (future / "manifest.json").write_text(json.dumps({"schema_version": 99, "run_id": "y", "status": "COMPLETED"}))
    (raw_dir / "20260101T000002Z-empty-abc").mkdir()
    assert cli.main(["runs"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "verdict" in out.splitlines()[0]
    assert "COMPLETED" in lines[good.id] and "INVALID" in lines[good.id]
    assert "UNREADABLE" in lines[corrupt.name] and "not valid JSON" in lines[corrupt.name]
    assert "UNREADABLE" in lines[future.name] and "schema_version 99 is not one this gawm reads" in lines[future.name]
    assert "no manifest.json" in lines["20260101T000002Z-empty-abc"]


# -- disks: read-only from the start, full in the middle ---------------------------------------------------------------
@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str, read_only: bool = False):
    """A small tmpfs at ``path`` (root only; the test is skipped elsewhere): a disk that fills, or is read-only."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_read_only_raw_dir_is_one_clear_line_and_nothing_starts(tmp_path):
    raw = tmp_path / "raw"
    with mounted_tmpfs(raw, "64k", read_only=True):
        env = {**os.environ, "GAWM_RAW_DIR": str(raw), "GAWM_FIGURES_DIR": str(tmp_path / "figures")}
        out = subprocess.run(
            [sys.executable, "-m", "gawm_lib.cli", "run", "params/quick.yaml"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 1
        assert "Traceback" not in out.stderr
        assert out.stderr.strip().splitlines() == [
            f"gawm: {raw}: cannot create a run directory there: Read-only file system"
        ]
        assert not list(raw.iterdir())


def null_spec(tmp_path: Path, url: str, out_dir: Path, **load) -> LoadSpec:
    bodies = write_bodies(
        tmp_path / "bodies.jsonl",
        [{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [f"x{i}"]}]} for i in range(4)],
    )
    return LoadSpec("null", "null", [url], str(bodies), str(out_dir), LoadConfig(**load).model_dump())


def test_a_disk_that_fills_mid_run_fails_the_run_keeps_its_rows_and_leaves_no_temporary_file(raw_dir, tmp_path):
    """The request records go to a 192 KiB tmpfs that fills after a few parts (3,000 req/s against the null server):
    the load stops with an error naming the folder, the run is FAILED with that error, the parts written before stay
    readable, and no ``.tmp`` file is left anywhere in the run."""
    with pytest.raises(LoadError) as caught, runs.started_run("diskfull", {}, {}, raw_dir) as run:
        with mounted_tmpfs(run.requests_path, "192k"), null_server.running() as (_, url):
            spec = null_spec(
                tmp_path,
                url,
                run.requests_path,
                scenario="constant_rate",
                levels=[3000],
                step_duration_s=60,
                warmup_s=0,
            )
            started = time.monotonic()
            try:
                run_load(spec, run.path / "load", progress=False)
            finally:
                elapsed_s = time.monotonic() - started
                kept = summary.read_requests(run.requests_path)
                left = [p.name for p in run.requests_path.iterdir()]
    message = str(caught.value)
    assert f"cannot write request records to {run.requests_path}/" in message.splitlines()[0]
    assert "No space left on device" in message.splitlines()[0]
    assert elapsed_s < 40  # stopped at the failure, not at the end of the 60 s step
    assert len(kept) > 1000 and kept["scheduled_ns"].is_unique
    assert not [name for name in left if name.endswith(".tmp")]
    final = runs.load_run(run.path)
    assert final.status == "FAILED" and "No space left on device" in final.manifest["error"]
    assert final.verdict == "INVALID" and "run FAILED" in final.manifest["verdict_reasons"]
    assert not list(run.path.rglob("*.tmp")) and not list(run.path.rglob(".*.tmp"))


def test_a_manifest_that_cannot_be_written_names_its_path_and_leaves_no_temporary_file(raw_dir, monkeypatch):
    run = runs.create_run("full", {}, {}, raw_dir)
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.endswith(".tmp"):
            real(self, "half")  # what a full disk leaves: part of the file
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(runs.RunError, match=rf"{run.path}/manifest.json: cannot write it: No space left on device"):
        run.finish("COMPLETED")
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]


# -- real runs: a replica or Prometheus killed mid-run, a run sent SIGTERM or SIGHUP -----------------------------------
def tiny_settings(**extra) -> dict:
    """ResNet50 with random weights on the CPU, closed loop, three 2 s steps: a few seconds of load."""
    params = {
        "name": "verdicts",
        "workloads": ["resnet50"],
        "load": {"levels": [2, 2, 2], "step_duration_s": 2, "warmup_s": 0},
        "prometheus": {"enabled": False},
    }
    for key, value in extra.items():
        params[key] = {**params.get(key, {}), **value}
    return params


def kill_when_recording(raw_dir: Path, find_pid, found: dict, timeout_s: float = 180.0) -> threading.Thread:
    """In a thread: wait for the run's first part of request records (the load is under way), then SIGKILL the process
    ``find_pid(run)`` names; ``found`` gets its pid and the time [unix ns]."""

    def kill() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            parts = list(raw_dir.glob("*/requests.parquet/*.parquet"))
            if parts:
                pid = find_pid(runs.load_run(parts[0].parent.parent))
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    found.update(pid=pid, at_unix_ns=time.time_ns())
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


@pytest.mark.integration
def test_a_replica_killed_mid_run_is_recorded_and_makes_the_run_invalid(raw_dir, monkeypatch):
    monkeypatch.setenv("GAWM_RAW_DIR", str(raw_dir))
    cfg = validate_params(tiny_settings(backend={"replicas": 2}))

    def replica_1(run):
        placed = (run.manifest.get("workloads", {}).get("resnet50") or {}).get("placement") or []
        return placed[1]["pid"] if len(placed) > 1 else None

    found: dict = {}
    killer = kill_when_recording(raw_dir, replica_1, found)
    run, table = experiment.run_experiment(cfg, progress=False)
    killer.join(5)
    run = runs.load_run(run.path)
    assert found, "no replica was killed"
    assert run.status == "COMPLETED"  # the run ran to its end ...
    assert run.verdict == "INVALID"  # ... but says it went wrong, and why
    (record,) = run.manifest["workloads"]["resnet50"]["exits"]
    assert record["replica"] == 1 and record["pid"] == found["pid"] and record["signal"] == "SIGKILL"
    assert record["exit_code"] is None and 0 <= record["at_unix_ns"] - found["at_unix_ns"] < 2e9
    last = pd.read_csv(run.path / "summary.csv", keep_default_na=False).iloc[-1]
    assert last["verdict"] == "INVALID" and "replica 1 exited (SIGKILL)" in last["verdict_reasons"]
    assert table["verdict"].iloc[-1] == "INVALID"
    assert run.results()["steps"][-1]["verdict"] == "INVALID"
    assert any("replica 1 exited (SIGKILL)" in reason for reason in run.manifest["verdict_reasons"])
    # analysis and figures: every step keeps its verdict; fits leave INVALID steps out and say so
    requests, _ = analysis.load_requests([run.path])
    steps = analysis.summarise_runs(requests)
    assert steps["verdict"].iloc[-1] == "INVALID" and "replica 1 exited" in steps["verdict_reasons"].iloc[-1]
    assert "INVALID" in set(plots.figure_data(plots.latency_vs_throughput(steps))["verdict"])
    assert "INVALID" in set(plots.figure_data(plots.latency_cdf(requests))["verdict"])
    with pytest.warns(analysis.InvalidStepsWarning, match=r"fit_service: \d+ INVALID step\(s\) left out"):
        with contextlib.suppress(ValueError):  # every step INVALID leaves nothing to fit
            analysis.fit_service(requests)


@pytest.mark.integration
def test_prometheus_killed_mid_run_is_recorded_and_makes_the_run_degraded(raw_dir, monkeypatch):
    monkeypatch.setenv("GAWM_RAW_DIR", str(raw_dir))
    cfg = validate_params(tiny_settings(prometheus={"enabled": True, "scrape_interval_s": 0.5}))

    def prometheus(run):
        for proc in psutil.process_iter(["cmdline"]):
            if f"--storage.tsdb.path={run.path / 'prometheus' / 'data'}" in (proc.info["cmdline"] or []):
                return proc.pid
        return None

    found: dict = {}
    killer = kill_when_recording(raw_dir, prometheus, found)
    run, table = experiment.run_experiment(cfg, progress=False)
    killer.join(5)
    run = runs.load_run(run.path)
    assert found, "Prometheus was not killed"
    assert run.status == "COMPLETED" and run.verdict == "DEGRADED"
    (record,) = run.manifest["prometheus"]["exits"]
    assert record["signal"] == "SIGKILL" and 0 <= record["at_unix_ns"] - found["at_unix_ns"] < 2e9
    assert "error" in run.manifest["metrics"]
    assert (
        table["verdict"].iloc[-1] == "DEGRADED" and "prometheus exited (SIGKILL)" in table["verdict_reasons"].iloc[-1]
    )
    assert set(table["verdict"]) <= {"VALID", "DEGRADED"}
    assert any(reason.startswith("metrics not saved") for reason in run.manifest["verdict_reasons"])


def leftovers(marker: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(cmdline)
    return found


@pytest.mark.integration
@pytest.mark.parametrize(("sig", "to_group"), [(signal.SIGTERM, False), (signal.SIGHUP, True)])
def test_sigterm_and_sighup_interrupt_a_run_as_ctrl_c_does(tmp_path, sig, to_group):
    """A batch scheduler's SIGTERM to gawm's process, or a closed terminal's SIGHUP to its process group, mid-run:
    the run is INTERRUPTED (not left RUNNING), its records are kept, its children stopped, and it says why."""
    env = {**os.environ, "GAWM_RAW_DIR": str(tmp_path / "raw"), "GAWM_FIGURES_DIR": str(tmp_path / "figures")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gawm_lib.cli", "run", "params/quick.yaml", "-p", "load.step_duration_s=60"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not list((tmp_path / "raw").glob("*/requests.parquet/*.parquet")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no request records within 180 s"
            time.sleep(0.2)
        (os.killpg if to_group else os.kill)(proc.pid, sig)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == cli.EXIT_INTERRUPTED, stderr[-3000:]
    assert f"interrupted by {sig.name}; what was recorded is kept" in stderr
    run = runs.list_runs(tmp_path / "raw")[-1]
    assert run.status == "INTERRUPTED" and run.manifest["end_utc"]
    assert run.verdict == "INVALID" and "run INTERRUPTED" in run.manifest["verdict_reasons"]
    assert f"run {run.id} INTERRUPTED, verdict INVALID" in stderr
    assert len(pd.read_parquet(run.requests_path)) > 0
    deadline = time.monotonic() + 30
    while leftovers(str(run.path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leftovers(str(run.path)), "processes outlived the interrupted run"
