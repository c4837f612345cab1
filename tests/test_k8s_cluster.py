"""Against a real control plane (Kubernetes 1.20.2 API server, scheduler and controller-manager, started once for the
session) with simulated GPU nodes (tests/node_simulator.py): what this machine's real node cannot show, because it has
no GPU. GPU replicas scheduled onto the GPU node with its RuntimeClass, more GPUs than the nodes have, and
``kubectl apply -k`` of every kustomization in k8s/ (the GPU overlays, time-slicing, monitoring with the DCGM exporter
DaemonSet on GPU nodes only). Everything a CPU node can show (deploy, scale, rolling update, teardown, Services, probes,
logs, image/crash/OOM failures, RBAC, Ctrl-C, an experiment end to end) runs on the real node:
tests/test_real_node.py and tests/test_real_node_gawm.py."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client

from gawm_lib.backends import BackendError
from gawm_lib.backends.kubernetes import KubernetesBackend
from gawm_lib.cluster import placements, selector_of, wait_for_rollout
from gawm_lib.config import BackendConfig, WorkloadConfig
from k8s_env import Cluster  # the fixtures cluster and namespace come from conftest.py

# The first test may build the control plane (about 7 min once per machine); later ones take seconds.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
IMAGE = "gawm-model-server:test"
K8S = Path(__file__).resolve().parent.parent / "k8s"
KUBECTL = str(Path(sys.executable).parent / "kubectl")


def k8s(namespace: str, **fields) -> BackendConfig:
    return BackendConfig(
        **{
            "kind": "kubernetes",
            "namespace": namespace,
            "image": IMAGE,
            "startup_timeout_s": 30,
            "teardown_timeout_s": 30,
            **fields,
        }
    )


def backend_for(
    cluster: Cluster, namespace: str, tmp_path, workload: str = "distilbert", api=None, **fields
) -> KubernetesBackend:
    return KubernetesBackend(
        WorkloadConfig(name=workload), k8s(namespace, **fields), tmp_path / "logs", api_client=api or cluster.api
    )


def leftovers(cluster: Cluster, namespace: str) -> list[str]:
    apps, core = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
    return (
        [f"deployment/{d.metadata.name}" for d in apps.list_namespaced_deployment(namespace).items]
        + [f"service/{s.metadata.name}" for s in core.list_namespaced_service(namespace).items]
        + [f"pod/{p.metadata.name}" for p in core.list_namespaced_pod(namespace).items]
    )


def test_gpu_replicas_go_to_the_gpu_node(cluster: Cluster, namespace: str, tmp_path) -> None:
    with backend_for(cluster, namespace, tmp_path, replicas=2, gpu=1) as backend:
        assert [(p.node, p.gpus, p.gpu_product) for p in backend.placement] == [("sim-gpu-0", 1, "NVIDIA-A16")] * 2
        pod = client.CoreV1Api(cluster.api).list_namespaced_pod(namespace).items[0]
        assert pod.spec.runtime_class_name == "nvidia"
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"


def test_more_gpus_than_the_nodes_have_fails_with_the_schedulers_reason(
    cluster: Cluster, namespace: str, tmp_path
) -> None:
    start = time.monotonic()
    with pytest.raises(BackendError) as failure:
        with backend_for(cluster, namespace, tmp_path, gpu=8, startup_timeout_s=6):
            pass
    message = str(failure.value)
    assert time.monotonic() - start < 6 + 35  # the rollout timeout, then the teardown
    assert "not rolled out after 6 s" in message
    assert "Insufficient nvidia.com/gpu" in message and "backend.gpu" in message  # the reason and what to change
    assert leftovers(cluster, namespace) == []


# -- kubectl apply -k -------------------------------------------------------------------------------------------------
def kubectl(cluster: Cluster, *args: str) -> str:
    out = subprocess.run(
        [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
    return out.stdout


def test_apply_k_deploys_every_kustomization(cluster: Cluster) -> None:
    apps = client.AppsV1Api(cluster.api)
    try:
        kubectl(cluster, "apply", "-k", str(K8S / "base"))
        kubectl(cluster, "apply", "-k", str(K8S / "overlays" / "cpu"))
        kubectl(cluster, "apply", "-k", str(K8S / "overlays" / "gpu-time-slicing"))
        again = kubectl(cluster, "apply", "-k", str(K8S / "overlays" / "gpu-time-slicing"))
        assert all(line.endswith("unchanged") for line in again.splitlines()), again
        kubectl(cluster, "apply", "-k", str(K8S / "monitoring"))
        kubectl(cluster, "apply", "-k", str(K8S / "jobs" / "loadgen"))

        for name in ("resnet50", "distilbert", "whisper"):
            deployment = wait_for_rollout(cluster.api, "gawm", f"gawm-{name}", timeout_s=30)
            assert deployment.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
            (pod,) = placements(cluster.api, "gawm", selector_of(name))
            assert (pod.node, pod.gpus, pod.ready) == ("sim-gpu-0", 1, True)
        for name in ("prometheus", "kube-state-metrics"):
            wait_for_rollout(cluster.api, "gawm-monitoring", name, timeout_s=30)
        deadline = time.monotonic() + 30
        while True:  # DaemonSets: node-exporter on every node, DCGM exporter on the GPU node only
            status = {
                d.metadata.name: (d.status.desired_number_scheduled, d.status.number_ready)
                for d in apps.list_namespaced_daemon_set("gawm-monitoring").items
            }
            if status == {"node-exporter": (2, 2), "dcgm-exporter": (1, 1)} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == {"node-exporter": (2, 2), "dcgm-exporter": (1, 1)}
        while True:  # the Job's pod, created and placed asynchronously
            job_pods = (
                client.CoreV1Api(cluster.api)
                .list_namespaced_pod("gawm", label_selector="app.kubernetes.io/name=gawm-loadgen")
                .items
            )
            if (job_pods and job_pods[0].status.phase == "Running") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(job_pods) == 1 and job_pods[0].spec.node_name == "sim-cpu-0"
    finally:
        for kustomization in ("jobs/loadgen", "monitoring", "overlays/gpu-time-slicing"):
            subprocess.run(
                [
                    KUBECTL,
                    "--kubeconfig",
                    str(cluster.kubeconfig),
                    "delete",
                    "--wait=false",
                    "--ignore-not-found",
                    "-k",
                    str(K8S / kustomization),
                ],
                capture_output=True,
                timeout=120,
            )
    deadline = time.monotonic() + 60
    names = {"gawm", "gawm-monitoring", "nvidia-device-plugin"}
    while names & {n.metadata.name for n in client.CoreV1Api(cluster.api).list_namespace().items}:
        assert time.monotonic() < deadline, "namespaces not deleted"
        time.sleep(0.5)
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    assert not [r.metadata.name for r in rbac.list_cluster_role().items if r.metadata.name.startswith("gawm-")]
    assert cluster.sim.errors == []
