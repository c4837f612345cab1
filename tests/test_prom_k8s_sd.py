"""Prometheus 3 (Debian sid's, fetched by k8s/testenv/fetch-prometheus3.sh in `make test-prereqs`) discovers the
model-server pods of a Deployment through ``kubernetes_sd_configs`` against the test control plane (tests/k8s_env.py),
with the relabelling rules shipped in k8s/monitoring/prometheus.yaml, and scrapes the real servers the node simulator
starts on the pod IPs. Debian 12's Prometheus 2.42 is built without Kubernetes service discovery, hence the separate
binary."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from gawm_lib.backends.kubernetes import KubernetesBackend
from gawm_lib.config import BackendConfig, WorkloadConfig
from gawm_lib.prom import LocalPrometheus, wait_for_targets_up
from gawm_lib.prom.common import connect
from k8s_env import Cluster, prometheus3_binary  # the fixtures cluster and namespace come from conftest.py

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "k8s" / "monitoring" / "prometheus.yaml"
JOB = "gawm-k8s"


@pytest.fixture(scope="module")
def prometheus3() -> str:
    """The Prometheus 3 binary, fetched once per machine by `make test-prereqs` (the test fails at once, naming that
    command, when it is missing)."""
    binary = str(prometheus3_binary())
    version = subprocess.run([binary, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout
    assert re.search(r"version 3\.", version), version
    return binary


def shipped_pod_relabelling() -> list[dict]:
    """The relabel_configs of the ``gawm`` job in the monitoring kustomization's Prometheus config."""
    for doc in yaml.safe_load_all(MONITORING.read_text()):
        if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "prometheus-config":
            config = yaml.safe_load(doc["data"]["prometheus.yml"])
            (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "gawm"]
            assert job["kubernetes_sd_configs"][0]["role"] == "pod"
            return job["relabel_configs"]
    raise AssertionError(f"no ConfigMap prometheus-config in {MONITORING}")


def test_kubernetes_sd_finds_the_simulated_pods(
    cluster: Cluster, namespace: str, tmp_path: Path, prometheus3: str
) -> None:
    start = time.monotonic()
    cluster.sim.run_servers = True  # real model servers on the pod IPs (the namespace fixture turns it off again)
    token_file = tmp_path / "token"
    token_file.write_text(cluster.plane.token)
    token_file.chmod(0o600)
    scrape = {
        "job_name": JOB,
        "kubernetes_sd_configs": [
            {
                "role": "pod",
                "api_server": cluster.plane.url,
                "tls_config": {"ca_file": str(cluster.plane.ca_path)},
                "authorization": {"credentials_file": str(token_file)},
                "namespaces": {"names": [namespace]},
            }
        ],
        "relabel_configs": shipped_pod_relabelling(),
    }
    backend_cfg = BackendConfig(
        kind="kubernetes",
        namespace=namespace,
        image="gawm-model-server:test",
        replicas=2,
        startup_timeout_s=60,
        teardown_timeout_s=30,
    )
    with (
        KubernetesBackend(
            WorkloadConfig(name="distilbert", warmup_batches=0), backend_cfg, tmp_path / "logs", api_client=cluster.api
        ) as backend,
        LocalPrometheus(
            tmp_path / "prometheus", binary=prometheus3, scrape_interval_s=1.0, scrape_configs=[scrape]
        ) as prom,
    ):
        pods = {p.pod for p in backend.placement}
        addresses = {f"{r.host}:{r.port}" for r in backend.replicas}
        assert len(pods) == 2 and all(re.fullmatch(r"127\.0\.1\.\d+:8000", a) for a in addresses), addresses
        assert prom.version.startswith("3.")

        up = wait_for_targets_up(prom.url, 2, timeout_s=30, job=JOB)
        assert {t["labels"]["instance"] for t in up} == addresses  # the pod IPs with the annotated port
        assert {t["labels"]["pod"] for t in up} == pods
        assert {t["labels"]["namespace"] for t in up} == {namespace}
        assert {t["labels"]["workload"] for t in up} == {"distilbert"}
        assert {t["labels"]["node"] for t in up} == {p.node for p in backend.placement}
        assert all(t["discoveredLabels"]["__meta_kubernetes_pod_phase"] == "Running" for t in up)

        client = connect(prom.url, timeout_s=10)
        deadline = time.monotonic() + 15
        while True:  # the first scrape's samples become queryable a moment after the target turns up
            series = client.custom_query(f'up{{job="{JOB}"}}')
            ready = client.custom_query(f'gawm_model_ready{{job="{JOB}",namespace="{namespace}"}}')
            if (len(series), len(ready)) == (2, 2) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert {s["metric"]["pod"] for s in series} == pods and {s["value"][1] for s in series} == {"1"}, series
        # the servers' own metrics carry the pod (and namespace) the discovery gave their target
        assert {(s["metric"]["pod"], s["metric"]["namespace"], s["metric"]["instance"]) for s in ready} == {
            (t["labels"]["pod"], namespace, t["labels"]["instance"]) for t in up
        }
        assert {s["value"][1] for s in ready} == {"1"}, ready
    assert prom.pid is None
    assert cluster.sim.errors == []
    print(f"kubernetes_sd test took {time.monotonic() - start:.1f} s after the control plane was up")
