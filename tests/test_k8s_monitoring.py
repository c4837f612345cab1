"""The container metrics of a Kubernetes run, without a cluster: the run's Prometheus gets a cAdvisor job that goes
through the API server's node proxy with the kubeconfig's credentials (the token in a private file, never in the run
directory), and the figures notebook's usage table reads the container series of a run's metrics."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import pandas as pd
import pytest

from gawm_lib.cluster import monitoring
from gawm_lib.config import BackendConfig

matplotlib.use("Agg")


def fake_api(**configuration) -> SimpleNamespace:
    defaults = {
        "host": "https://127.0.0.1:6443",
        "ssl_ca_cert": "/tmp/ca.crt",
        "verify_ssl": True,
        "cert_file": None,
        "key_file": None,
        "api_key": {},
    }
    return SimpleNamespace(configuration=SimpleNamespace(**{**defaults, **configuration}))


def test_the_cadvisor_job_scrapes_each_node_through_the_api_server() -> None:
    backend = BackendConfig(kind="kubernetes", namespace="gawm-runs")
    scrape = monitoring.cadvisor_scrape_config(backend, fake_api(api_key={"authorization": "Bearer s3cret"}))
    (sd,) = scrape["kubernetes_sd_configs"]
    assert sd["role"] == "node" and sd["api_server"] == "https://127.0.0.1:6443"
    assert scrape["scheme"] == "https" and scrape["tls_config"] == {"ca_file": "/tmp/ca.crt"}
    relabel = {r["target_label"]: r for r in scrape["relabel_configs"]}
    assert relabel["__address__"]["replacement"] == "127.0.0.1:6443"
    assert relabel["__metrics_path__"]["replacement"] == "/api/v1/nodes/$1/proxy/metrics/cadvisor"
    assert scrape["metric_relabel_configs"] == [
        {"source_labels": ["namespace"], "regex": "gawm-runs", "action": "keep"}
    ]
    token = Path(scrape["authorization"]["credentials_file"])
    assert token.read_text() == "s3cret" and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert "s3cret" not in json.dumps(scrape)
    assert os.access(token.parent, os.R_OK)
    # client certificates instead of a token
    scrape = monitoring.cadvisor_scrape_config(backend, fake_api(cert_file="/c.crt", key_file="/c.key"))
    assert scrape["tls_config"] == {"ca_file": "/tmp/ca.crt", "cert_file": "/c.crt", "key_file": "/c.key"}
    assert "authorization" not in scrape
    assert monitoring.run_scrape_configs(BackendConfig()) == []  # local runs: none


def test_container_usage_reads_per_pod_series_of_a_run(tmp_path: Path) -> None:
    rows = []
    for pod, cpu, memory in (("gawm-resnet50-a-1", 0.5, 300e6), ("gawm-resnet50-a-2", 0.9, 310e6)):
        labels = json.dumps({"namespace": "gawm", "pod": pod, "container": "server"})
        for step, level in ((0, 1.0), (1, 2.0)):
            for t in range(3):
                time = pd.Timestamp("2026-12-04T12:00:00Z") + pd.Timedelta(seconds=10 * step + t)
                # the 30 s rate: its first point of a step still sees the idle (or lighter) time before
                windowed = cpu * level * (0.5 if t == 0 else 1.0)
                rows.append(("container_cpu", windowed, "cores", labels, "step", step, level, time))
                rows.append(("container_memory_working_set", memory + t, "bytes", labels, "step", step, level, time))
            end = pd.Timestamp("2026-12-04T12:00:00Z") + pd.Timedelta(seconds=10 * step + 3)
            rows.append(("container_cpu_step", cpu * level, "cores", labels, "step", step, level, end))  # one per step
    columns = ["query", "value", "unit", "labels", "phase", "step", "level", "time"]
    metrics = pd.DataFrame(rows, columns=columns).assign(workload="resnet50")
    (tmp_path / "metrics").mkdir()
    metrics.to_parquet(tmp_path / "metrics" / "metrics.parquet")
    run = SimpleNamespace(id="r1", path=tmp_path)
    table = pd.DataFrame(
        {
            "run_id": ["r1", "r1"],
            "workload": ["resnet50"] * 2,
            "step": [0, 1],
            "throughput_rps": [4.0, 7.0],
            "p50_ms": [200.0, 250.0],
            "p95_ms": [260.0, 400.0],
        }
    )
    other = tmp_path / "other"  # a run recorded before the step-mean query: the windowed rate's mean stands in
    (other / "metrics").mkdir(parents=True)
    metrics[metrics["query"] != "container_cpu_step"].to_parquet(other / "metrics" / "metrics.parquet")
    both = monitoring.container_usage([run, SimpleNamespace(id="r0", path=other)])  # several runs: one row each
    assert len(both) == 8 and both["cpu_cores"].notna().all() and both["memory_bytes"].notna().all()
    old = both[both["run_id"] == "r0"]
    assert (old["cpu_source"] == "container_cpu").all()
    assert old[(old["pod"] == "gawm-resnet50-a-2") & (old["step"] == 1)]["cpu_cores"].item() == pytest.approx(1.5)
    assert "before the step-mean query" in monitoring.plot_usage(both)._suptitle.get_text()
    usage = monitoring.container_usage([run], table)
    assert len(usage) == 4 and set(usage["pod"]) == {"gawm-resnet50-a-1", "gawm-resnet50-a-2"}
    assert (usage["cpu_source"] == "container_cpu_step").all()
    first = usage[(usage["pod"] == "gawm-resnet50-a-2") & (usage["step"] == 1)].iloc[0]
    assert first["cpu_cores"] == 1.8 and first["memory_bytes"] == 310e6 + 2 and first["p95_ms"] == 400.0
    assert usage["throttled_ratio"].isna().all()  # not recorded: a column of NaN, not an error
    fig = monitoring.plot_usage(usage)
    assert len(fig.axes) == 3 and len(fig.axes[0].lines) == 2
    assert "each step's mean" in fig._suptitle.get_text()
    assert [list(line.get_ydata()) for line in fig.axes[0].lines] == [[0.5, 1.0], [0.9, 1.8]]  # the table's numbers
    assert all(axis.get_xlim()[0] == 0 for axis in fig.axes)  # throughput from zero, not zoomed onto a plateau
    # a local run (no container series) gives an empty table with the same columns
    empty = monitoring.container_usage([SimpleNamespace(id="r2", path=tmp_path / "none")], table)
    assert empty.empty and {"pod", "cpu_cores", "memory_bytes"} <= set(empty.columns)


def test_process_usage_reads_each_replicas_server_process(tmp_path: Path) -> None:
    """Local runs have no container series: the usage table then comes from the server processes' own counters, the
    step mean (``process_cpu_step``) first, the mean of the windowed ``process_cpu`` for runs recorded before it."""
    rows = []
    for replica, cpu, rss in (("0", 0.6, 500e6), ("1", 0.8, 520e6)):
        labels = json.dumps({"replica": replica, "workload": "resnet50"})
        for step, level in ((0, 1.0), (1, 2.0)):
            for t in range(3):
                time = pd.Timestamp("2026-12-04T12:00:00Z") + pd.Timedelta(seconds=10 * step + t)
                windowed = cpu * level * (0.5 if t == 0 else 1.0)  # the first point still sees the time before
                rows.append(("process_cpu", windowed, "cores", labels, "step", step, level, time))
                rows.append(("process_resident_memory", rss + t, "bytes", labels, "step", step, level, time))
            end = pd.Timestamp("2026-12-04T12:00:00Z") + pd.Timedelta(seconds=10 * step + 3)
            rows.append(("process_cpu_step", cpu * level, "cores", labels, "step", step, level, end))
        warmup = pd.Timestamp("2026-12-04T11:59:00Z")
        rows.append(("process_cpu", 9.0, "cores", labels, "warmup", -1, float("nan"), warmup))  # not a step: left out
    columns = ["query", "value", "unit", "labels", "phase", "step", "level", "time"]
    metrics = pd.DataFrame(rows, columns=columns).assign(workload="resnet50")
    new, old = tmp_path / "new", tmp_path / "old"
    for path, frame in ((new, metrics), (old, metrics[metrics["query"] != "process_cpu_step"])):
        (path / "metrics").mkdir(parents=True)
        frame.to_parquet(path / "metrics" / "metrics.parquet")
    runs = [SimpleNamespace(id="r1", path=new), SimpleNamespace(id="r0", path=old)]
    table = pd.DataFrame(
        {
            "run_id": ["r1", "r1"],
            "workload": ["resnet50"] * 2,
            "step": [0, 1],
            "throughput_rps": [3.0, 5.5],
            "p50_ms": [300.0, 330.0],
            "p95_ms": [340.0, 420.0],
        }
    )
    assert monitoring.container_usage(runs).empty  # no container series: the container table is empty
    usage = monitoring.process_usage(runs, table)
    assert len(usage) == 8 and set(usage["replica"]) == {"0", "1"} and "pod" not in usage
    mine = usage[usage["run_id"] == "r1"]
    assert (mine["cpu_source"] == "process_cpu_step").all()
    one = mine[(mine["replica"] == "1") & (mine["step"] == 1)].iloc[0]
    assert one["cpu_cores"] == 1.6 and one["memory_bytes"] == 520e6 + 2 and one["p95_ms"] == 420.0
    before = usage[usage["run_id"] == "r0"]
    assert (before["cpu_source"] == "process_cpu").all()
    assert before[(before["replica"] == "1") & (before["step"] == 1)]["cpu_cores"].item() == pytest.approx(4 / 3)
    fig = monitoring.plot_usage(mine)
    assert "Server process CPU" in fig._suptitle.get_text() and "each step's mean" in fig._suptitle.get_text()
    assert [line.get_label() for line in fig.axes[0].lines] == ["resnet50-0", "resnet50-1"]
    assert [list(line.get_ydata()) for line in fig.axes[0].lines] == [[0.6, 1.2], [0.8, 1.6]]  # the table's numbers
    assert "RSS" in fig.axes[1].get_ylabel()
    assert "reads low" in monitoring.plot_usage(before)._suptitle.get_text()


@pytest.mark.integration
def test_prometheus_without_kubernetes_discovery_is_told_apart() -> None:
    """Debian 12's Prometheus 2.42 is built without Kubernetes service discovery (its version cannot tell): a
    Kubernetes run with it gets no cAdvisor job instead of a Prometheus that refuses its config."""
    from k8s_env import prometheus3_binary

    assert monitoring.supports_kubernetes_sd(str(prometheus3_binary())) is True
    if shutil.which("prometheus"):
        version = subprocess.run(["prometheus", "--version"], capture_output=True, text=True).stdout
        if "+ds" in version and " 2." in version:
            assert monitoring.supports_kubernetes_sd("prometheus") is False
            backend = BackendConfig(kind="kubernetes", kubeconfig="/nonexistent")
            assert monitoring.run_scrape_configs(backend, "prometheus") == []
