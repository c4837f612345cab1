"""What the measurement notebook prints instead of a settings dump and one warning per empty Prometheus query: one
line of settings, and the empty queries counted into the run's manifest and one line."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from gawm_lib import config, experiment, prom, runs


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("GAWM_RAW_DIR", str(tmp_path / "raw"))
    cfg = config.validate_params({"name": "quick"})
    return runs.create_run("quick", {}, cfg.model_dump(mode="json")), cfg


def test_settings_line_says_what_will_run_in_one_line():
    cfg = config.validate_params(
        {
            "name": "quick",
            "workloads": ["resnet50", {"name": "whisper", "threads": 2}],
            "backend": {"replicas": 2},
            "load": {"levels": [1, 2, 4], "step_duration_s": 2, "min_requests_per_step": 20},
        }
    )
    line = experiment.settings_line(cfg)
    assert "\n" not in line
    for part in (
        "resnet50 (random weights, cpu, 1 thread, max batch 8)",
        "whisper (random weights, cpu, 2 threads",
        "2 replicas (local)",
        "closed_loop, levels 1, 2, 4 users",
        "at least 2 s and 20 requests",
        "Prometheus on",
    ):
        assert part in line, (part, line)
    single = config.validate_params({"load": {"scenario": "single_stream"}, "prometheus": {"enabled": False}})
    assert "one request at a time" in experiment.settings_line(single)


def test_empty_queries_are_counted_in_the_manifest_not_warned_one_by_one(run, monkeypatch):
    run, cfg = run

    def query_run_phases(url, results, step_s=None, query_names=()):
        for name in ("latency_p95", "batch_size_mean"):  # as gawm_lib.prom.query emits them
            warning = prom.EmptyQueryWarning(f"query {name!r} returned no series")
            warning.query_name, warning.phases, warning.promql = name, ["warmup"], "..."
            warnings.warn(warning, stacklevel=2)
        return pd.DataFrame({c: [] for c in prom.FRAME_COLUMNS})

    monkeypatch.setattr(prom, "query_run_phases", query_run_phases)
    monkeypatch.setattr(prom, "save_run_metrics", lambda path, frame: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning leaves _save_metrics
        experiment._save_metrics(type("P", (), {"url": "http://x"})(), run, [], cfg)
    metrics = runs.load_run(run.path).manifest["metrics"]
    assert metrics["empty_queries"] == {"latency_p95": ["warmup"], "batch_size_mean": ["warmup"]}
    note = experiment.metrics_note(runs.load_run(run.path))
    assert "\n" not in note
    assert note.endswith(
        f"2 of {metrics['asked']} queries returned no series in some phase (latency_p95, batch_size_mean in warmup)"
    )


def test_metrics_note_without_prometheus_and_after_an_error(run):
    run, _ = run
    assert "not enabled" in experiment.metrics_note(run)
    run.update(metrics={"error": "Prometheus at http://x failed"})
    assert experiment.metrics_note(run) == "Prometheus: metrics not saved: Prometheus at http://x failed"
