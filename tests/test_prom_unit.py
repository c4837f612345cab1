"""Unit tests for gawm_lib.prom that need no Prometheus server."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from gawm_lib.prom import (
    CATALOGUE,
    GRAFANA_UNITS,
    SOURCES,
    UNITS,
    LocalPrometheus,
    Phase,
    Prefix,
    PrometheusNotInstalled,
    Target,
    format_duration,
    get_query,
    grafana_dashboard,
    load_run_metrics,
    matcher,
    parse_duration,
    quote_regex,
    quote_string,
    save_run_metrics,
)
from gawm_lib.prom.query import _chunks, as_phase

HOSTILE = [
    'a"b',
    "back\\slash",
    "new\nline",
    "tab\tcr\r",
    ".*",
    "resnet50|distilbert",
    'x"} or vector(1) or up{job="',
    "$window",
    "${sel}",
    "[a-z]+(?:x){2}^$",
    "é🙂",
    "\x00\x1f\x7f",
    "",
    '\\"',
    "trailing\\",
]


def _unquote(literal: str) -> str:
    """Our PromQL string literals are also JSON strings: decode them to check the round trip."""
    assert literal.startswith('"') and literal.endswith('"')
    return json.loads(literal)


@pytest.mark.parametrize("value", HOSTILE)
def test_quote_string_round_trips_and_stays_one_token(value):
    lit = quote_string(value)
    assert _unquote(lit) == value
    assert "\n" not in lit and "\r" not in lit
    # the only unescaped quotes are the delimiters
    assert re.fullmatch(r'"(?:[^"\\]|\\.)*"', lit, re.S)


@pytest.mark.parametrize("value", HOSTILE)
def test_quote_regex_matches_only_the_literal(value):
    pattern = quote_regex(value)
    assert re.fullmatch(pattern, value, re.S)
    for other in (value + "x", "x" + value, "resnet50", "distilbert", "anything"):
        if other != value:
            assert not re.fullmatch(pattern, other, re.S)


def test_matcher_forms():
    assert matcher("workload", 'a"b') == 'workload="a\\"b"'
    assert matcher("workload", ["b.c", "a"]) == 'workload=~"a|b\\\\.c"'
    regex = _unquote(matcher("pod", Prefix("resnet50-")).split("=~", 1)[1])
    assert regex == "resnet50-.*"
    assert re.fullmatch(_unquote(matcher("w", [".*", "a|b"]).split("=~", 1)[1]), "a|b")
    assert not re.fullmatch(_unquote(matcher("w", [".*", "a|b"]).split("=~", 1)[1]), "a")
    with pytest.raises(ValueError):
        matcher("bad-name", "x")
    with pytest.raises(ValueError):
        matcher("w", [])
    with pytest.raises(TypeError):
        matcher("w", 3)
    with pytest.raises(ValueError):
        quote_string("\ud800")  # lone surrogate: not UTF-8


def test_render_substitutes_in_one_pass_and_validates():
    q = get_query("throughput")
    out = q.render(workload="$window", window="10s")
    assert out == 'sum by (workload) (rate(gawm_requests_total{status="ok",workload="$window"}[10s]))'
    assert q.render() == 'sum by (workload) (rate(gawm_requests_total{status="ok"}[1m]))'
    assert q.render(by=(), window=2.5) == 'sum by () (rate(gawm_requests_total{status="ok"}[2500ms]))'
    assert q.render(workload=None, replica="1") == q.render(replica="1")
    assert get_query("inflight").render() == "sum by (workload) (gawm_inflight_requests)"
    # a parameter that exists elsewhere but not for this source is ignored
    assert get_query("node_memory_available").render(workload="x") == "node_memory_MemAvailable_bytes"
    with pytest.raises(ValueError, match="unknown query parameter"):
        q.render(worklaod="x")
    with pytest.raises(ValueError):
        q.render(window="1 minute")
    with pytest.raises(ValueError):
        q.render(by=("le-x",))
    with pytest.raises(KeyError, match="throughput"):
        get_query("throughput_")


def test_catalogue_is_complete_and_consistent():
    for name, q in CATALOGUE.items():
        assert q.name == name and q.source in SOURCES and q.unit in UNITS and q.description
        q.render(window="30s", range="1m")
    promql = " ".join(q.template for q in CATALOGUE.values())
    for metric in (
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "DCGM_FI_PROF_SM_ACTIVE",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_GPU_TEMP",
        "gawm_gpu_utilization_ratio",
        "gawm_gpu_memory_used_bytes",
        "gawm_gpu_power_watts",
        "gawm_gpu_energy_joules_total",
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_cpu_cfs_throttled_periods_total",
        "container_pressure_cpu",
        "container_pressure_memory",
        "kube_pod_container_status_restarts_total",
        "kube_pod_status_phase",
        "OOMKilled",
        "kube_deployment_status_replicas_available",
        "node_cpu_seconds_total",
        "node_memory_MemAvailable_bytes",
        "node_pressure_cpu",
        "node_pressure_memory",
    ):
        assert metric in promql, metric
    for q in CATALOGUE.values():
        if q.source == "cadvisor":
            assert q.template.count('container!="",container!="POD"') == q.template.count("container_")
    for name in ("latency_p50", "latency_p95", "latency_p99", "queue_wait_p95"):
        assert get_query(name).render().startswith("histogram_quantile(")
    for name in ("energy_per_request_nvml", "energy_per_request_dcgm"):
        q = get_query(name)
        assert q.over_range and q.unit == "joules/request" and q.lower_is_better
        assert q.render(range=90).count("increase(") == 2 and "[90s]" in q.render(range=90)
    assert get_query("throughput").lower_is_better is False and get_query("latency_p95").lower_is_better


def test_durations():
    assert parse_duration("1m30s") == 90 and parse_duration("500ms") == 0.5 and parse_duration(4) == 4
    assert format_duration(1) == "1s" and format_duration(0.25) == "250ms" and format_duration("2m") == "2m"
    assert format_duration("$__rate_interval") == "$__rate_interval"
    for bad in ("", "1", "1.5s", "s", "-1s", 0, -2, float("nan"), "$__x}"):
        with pytest.raises(ValueError):
            format_duration(bad)


def test_phases_and_chunks():
    naive = datetime(2025, 1, 1, 12, 0, 0)
    ph = as_phase(("steady", naive, naive + timedelta(seconds=10)))
    assert ph.start.tzinfo == UTC and ph.start.hour == 12
    assert as_phase(Phase("steady", ph.start, ph.end)) == ph
    with pytest.raises(ValueError):
        as_phase(("bad", ph.end, ph.start))
    chunks = _chunks(0, 100, 1, 11_000)
    assert chunks == [(0, 100)]
    chunks = _chunks(0, 25, 1, 10)
    assert chunks == [(0, 9), (10, 19), (20, 25)]
    points = [t for a, b in chunks for t in range(a, b + 1)]
    assert points == list(range(26))


def test_save_and_load_run_metrics(tmp_path):
    frame = pd.DataFrame(
        {
            "time": pd.to_datetime([0, 1], unit="s", utc=True),
            "query": ["throughput"] * 2,
            "value": [1.0, float("nan")],
            "unit": ["requests/s"] * 2,
            "labels": ['{"workload":"a"}'] * 2,
            "phase": ["steady"] * 2,
        }
    )
    path = save_run_metrics(tmp_path / "run1", frame)
    assert path == tmp_path / "run1" / "metrics" / "metrics.parquet"
    back = load_run_metrics(tmp_path / "run1")
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert str(back["time"].dtype).endswith("UTC]")
    with pytest.raises(ValueError, match="missing columns"):
        save_run_metrics(tmp_path, frame.drop(columns=["phase"]))


def test_grafana_dashboard():
    names = ["throughput", "latency_p95", "gpu_power_dcgm", "energy_per_request_nvml", "container_cpu"]
    dash = grafana_dashboard(names)
    json.dumps(dash)
    assert [p["title"] for p in dash["panels"]] == names
    for p, name in zip(dash["panels"], names):
        q = get_query(name)
        assert p["targets"][0]["expr"] == q.render()
        assert p["fieldConfig"]["defaults"]["unit"] == GRAFANA_UNITS[q.unit]
    assert dash["panels"][1]["fieldConfig"]["defaults"]["unit"] == "s"
    assert dash["panels"][0]["fieldConfig"]["defaults"]["unit"] == "reqps"
    assert len({p["id"] for p in dash["panels"]}) == len(names)
    with pytest.raises(KeyError):
        grafana_dashboard(["nope"])


def test_targets_and_config_without_starting(tmp_path):
    lp = LocalPrometheus(
        tmp_path, [("127.0.0.1:9999", {"workload": "w", "replica": "0"}), "127.0.0.1:9998"], scrape_interval_s=0.5
    )
    assert "scrape_interval: 500ms" in lp.config_text and "evaluation_interval: 500ms" in lp.config_text
    assert "file_sd_configs" in lp.config_text and str(lp.targets_path.resolve()) in lp.config_text
    assert lp.targets[0] == Target("127.0.0.1:9999", {"workload": "w", "replica": "0"})
    for bad in ("127.0.0.1", "http://127.0.0.1:80", "127.0.0.1:0", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            Target(bad)
    with pytest.raises(ValueError):
        Target("127.0.0.1:1", {"__address__": "x"})
    with pytest.raises(ValueError):
        Target("127.0.0.1:1", {"bad-name": "x"})


def test_missing_binary_says_how_to_install(tmp_path):
    with pytest.raises(PrometheusNotInstalled) as info:
        with LocalPrometheus(tmp_path, binary=str(tmp_path / "nonexistent" / "prometheus")):
            pytest.fail("must not get here")
    msg = str(info.value)
    assert "apt-get install prometheus" in msg and "prometheus.io" in msg and "prometheus.binary" in msg
    with pytest.raises(PrometheusNotInstalled):
        LocalPrometheus(tmp_path, binary="no-such-prometheus-binary-xyz").start()


def test_shipped_grafana_dashboard_is_generated_from_the_catalogue():
    import json
    from pathlib import Path

    from gawm_lib.prom.grafana import shipped_dashboard

    shipped = Path(__file__).resolve().parent.parent / "k8s" / "monitoring" / "dashboards" / "gawm.json"
    assert json.loads(shipped.read_text()) == shipped_dashboard(), (
        "k8s/monitoring/dashboards/gawm.json is stale: python -m gawm_lib.prom.grafana"
    )
