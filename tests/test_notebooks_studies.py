"""The study notebooks executed with papermill and small parameters, asserting on what they recorded: replica scaling
(placement per replica in each run's manifest, measured against the model) and Whisper's audio-duration sweep (one run
per clip length, the clips as long as asked, the real-time factor per length)."""

from __future__ import annotations

import base64
import io
import json
import os
import wave
from pathlib import Path

import papermill
import pytest

from gawm_lib import runs

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
CORES = sorted(os.sched_getaffinity(0))


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Run and figure folders of this test only; the kernel papermill starts inherits them."""
    monkeypatch.setenv("GAWM_RAW_DIR", str(tmp_path / "raw"))
    monkeypatch.setenv("GAWM_FIGURES_DIR", str(tmp_path / "figures"))
    return tmp_path / "raw", tmp_path / "figures"


def execute(name: str, out: Path, **parameters):
    return papermill.execute_notebook(
        str(ROOT / "notebooks" / name),
        str(out),
        parameters=parameters,
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
        kernel_name="python3",
    )


@pytest.mark.skipif(len(CORES) < 2, reason="exclusive placement of two replicas needs two cores")
def test_replica_scaling_places_each_replica_and_compares_with_the_model(dirs, tmp_path):
    raw, figures = dirs
    params = {
        "name": "scaling-test",
        "workloads": [{"name": "resnet50", "max_batch_size": 1}],
        "backend": {"cpus": CORES[:2]},
        "prometheus": {"enabled": False},
        "load": {"levels": [2], "step_duration_s": 1.5, "warmup_s": 0.3},
    }
    execute("05_replica_scaling.ipynb", tmp_path / "out.ipynb", params=params, replicas=[1, 2], fig_prefix="scaling")
    done = runs.list_runs(raw)
    assert [r.status for r in done] == ["COMPLETED"] * 3  # one replica is one point for both placements
    by_point = {(r.results()["point"]["backend.placement"], r.results()["point"]["backend.replicas"]): r for r in done}
    assert sorted(by_point) == [("exclusive", 1), ("exclusive", 2), ("shared", 2)]
    wanted = {
        ("exclusive", 1): [[CORES[0]]],
        ("exclusive", 2): [[CORES[0]], [CORES[1]]],
        ("shared", 2): [[CORES[0]], [CORES[0]]],
    }
    for point, run in by_point.items():
        effective = run.manifest["params"]["effective"]["backend"]
        assert (effective["placement"], effective["replicas"]) == point
        placed = run.manifest["workloads"]["resnet50"]["placement"]
        assert [p["cpus_actual"] for p in placed] == wanted[point]  # as the kernel reported each server process
        assert [p["cpus"] for p in placed] == wanted[point] and {p["placement"] for p in placed} == {point[0]}
        assert all(isinstance(p["pid"], int) for p in placed)
    recorded = {(row["placement"], row["replicas"]): row for r in done for row in r.results()["replica_scaling"]}
    assert sorted(recorded) == [("exclusive", 1), ("exclusive", 2), ("shared", 1), ("shared", 2)]
    one = recorded["exclusive", 1]
    assert recorded["shared", 1] == {**one, "placement": "shared"}
    assert one["throughput_rps_mva"] == pytest.approx(one["throughput_rps"])  # the model's demand comes from here
    assert recorded["exclusive", 2]["throughput_rps_mva"] == pytest.approx(2 * one["throughput_rps"])
    assert recorded["shared", 2]["throughput_rps_mva"] == pytest.approx(one["throughput_rps"])
    # what the study is about: two replicas on their own cores serve more than two time-slicing one core
    assert recorded["exclusive", 2]["throughput_rps"] > 1.3 * recorded["shared", 2]["throughput_rps"]
    sidecar = json.loads((figures / "scaling_resnet50.json").read_text())
    assert sorted(sidecar["run_ids"]) == sorted(r.id for r in done)
    assert sidecar["notebook"] == "notebooks/05_replica_scaling.ipynb"
    assert (figures / "scaling_resnet50.pdf").stat().st_size > 1000
    assert (figures / "scaling_measured.csv").is_file() and (figures / "scaling_predicted.csv").is_file()


def test_replica_scaling_refuses_bad_parameters_before_starting_anything(dirs, tmp_path):
    raw, _ = dirs
    with pytest.raises(papermill.PapermillExecutionError, match="placements: expected 'shared' and/or 'exclusive'"):
        execute("05_replica_scaling.ipynb", tmp_path / "out.ipynb", placements=["spread"])
    assert not runs.list_runs(raw)


def clip_frames(run: runs.Run) -> set[int]:
    bodies = (run.path / "load" / "whisper-bodies.jsonl").read_text().splitlines()
    frames = set()
    for line in bodies:
        data = json.loads(line)["inputs"][0]["data"][0]
        with wave.open(io.BytesIO(base64.b64decode(data))) as wav:
            frames.add(wav.getnframes())
    return frames


def test_whisper_audio_duration_records_the_real_time_factor_per_clip_length(dirs, tmp_path):
    raw, figures = dirs
    params = {
        "name": "audio-test",
        "prometheus": {"enabled": False},
        "workloads": [{"name": "whisper", "model_size": "tiny", "decode_tokens": 2, "max_batch_size": 1}],
        "load": {
            "scenario": "single_stream",
            "step_duration_s": 1.5,
            "warmup_s": 0.3,
            "payload_count": 2,
            "min_requests_per_step": 3,
        },
    }
    execute(
        "06_whisper_audio_duration.ipynb", tmp_path / "out.ipynb", params=params, audio_s=[8, 1.5], fig_prefix="audio"
    )
    done = runs.list_runs(raw)
    assert [r.status for r in done] == ["COMPLETED"] * 2
    rows = {}
    for run in done:
        seconds = run.manifest["params"]["effective"]["load"]["payload_audio_s"]
        assert clip_frames(run) == {round(seconds * 16_000)}  # every request carried a clip of exactly that length
        (row,) = run.results()["audio_duration"]
        assert row["audio_s"] == seconds and row["ok"] >= 3
        assert row["rtf_p50"] == pytest.approx(row["p50_ms"] / 1e3 / seconds)
        assert row["rtf_server"] == pytest.approx(row["compute_ms"] / 1e3 / seconds)
        rows[seconds] = row
    assert sorted(rows) == [1.5, 8.0]
    # Whisper encodes one padded 30 s window whatever the clip: the time hardly changes, so the RTF falls with length
    assert rows[1.5]["rtf_p50"] > 3 * rows[8.0]["rtf_p50"]
    sidecar = json.loads((figures / "audio_rtf.json").read_text())
    assert sorted(sidecar["run_ids"]) == sorted(r.id for r in done)
    assert (figures / "audio_rtf.png").read_bytes()[:4] == b"\x89PNG"


def test_whisper_audio_duration_needs_whisper(dirs, tmp_path):
    raw, _ = dirs
    with pytest.raises(
        papermill.PapermillExecutionError,
        match="load.payload_audio_s sets the length of Whisper's clips: add the whisper workload",
    ):
        execute("06_whisper_audio_duration.ipynb", tmp_path / "out.ipynb", params={"workloads": ["resnet50"]})
    assert not runs.list_runs(raw)
