"""Against a real control plane (Kubernetes 1.20.2 API server, scheduler and controller-manager, started once for the
module) with simulated nodes: ``kubectl apply -k`` of every kustomization in k8s/, and the Kubernetes backend: deploy,
scale, rolling update, teardown, failures and their diagnosis, RBAC, Ctrl-C, and a real model server answering
inference through the backend's replicas. One module, so that one control plane serves all of them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gawm_lib.backends import BackendError, open_backend
from gawm_lib.backends.kubernetes import KubernetesBackend
from gawm_lib.cluster import placements, selector_of, wait_for_rollout
from gawm_lib.config import BackendConfig, WorkloadConfig
from k8s_env import Cluster, service_account_token  # the fixtures cluster and namespace come from conftest.py

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


def test_deploy_scale_and_teardown(cluster: Cluster, namespace: str, tmp_path) -> None:
    with backend_for(cluster, namespace, tmp_path, replicas=2) as backend:
        assert len(backend.replicas) == 2
        for replica in backend.replicas:
            assert replica.host.startswith("127.0.1.") and replica.port == 8000 and replica.pid is None
        assert {p.node for p in backend.placement} == {"sim-cpu-0"}  # CPU pods do not tolerate the GPU taint
        assert all(p.image == IMAGE and p.image_id and p.gpus == 0 for p in backend.placement)
        record = json.loads((tmp_path / "logs" / "distilbert-kubernetes.json").read_text())
        assert record["cluster"]["version"]["git_version"] == "v1.20.2"
        assert record["cluster"]["gpus_total"] == 4
        assert [o["kind"] for o in record["objects"]] == ["Deployment", "Service"]

        assert len(backend.scale(3)) == 3
        assert len({r.host for r in backend.replicas}) == 3
        assert len(backend.scale(1)) == 1
        pods = client.CoreV1Api(cluster.api).list_namespaced_pod(namespace).items
        assert len([p for p in pods if not p.metadata.deletion_timestamp]) == 1
    assert leftovers(cluster, namespace) == []


def test_apply_is_idempotent_and_rolls_out_new_settings(cluster: Cluster, namespace: str, tmp_path) -> None:
    apps = client.AppsV1Api(cluster.api)
    with backend_for(cluster, namespace, tmp_path, replicas=2) as backend:
        generation = apps.read_namespaced_deployment(backend.name, namespace).metadata.generation
        backend.update(WorkloadConfig(name="distilbert"))  # the same settings: nothing to roll
        assert apps.read_namespaced_deployment(backend.name, namespace).metadata.generation == generation
        old_pods = {p.pod for p in backend.placement}

        backend.update(WorkloadConfig(name="distilbert", max_batch_size=16))
        assert apps.read_namespaced_deployment(backend.name, namespace).metadata.generation == generation + 1
        assert len(backend.replicas) == 2 and not old_pods & {p.pod for p in backend.placement}
        for pod in client.CoreV1Api(cluster.api).list_namespaced_pod(namespace).items:
            if pod.metadata.deletion_timestamp:  # an old one the simulated kubelet is still stopping
                continue
            env = {e.name: e.value for e in pod.spec.containers[0].env}
            assert env["GAWM_MAX_BATCH_SIZE"] == "16"
    assert leftovers(cluster, namespace) == []


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


def test_an_image_that_cannot_be_pulled_fails_fast(cluster: Cluster, namespace: str, tmp_path) -> None:
    image = "registry.invalid/gawm/model-server:0.1.0"
    start = time.monotonic()
    with pytest.raises(BackendError) as failure:
        with backend_for(cluster, namespace, tmp_path, image=image, startup_timeout_s=60):
            pass
    assert time.monotonic() - start < 30  # no waiting for the timeout
    message = str(failure.value)
    assert "ImagePullBackOff" in message and image in message and "backend.image" in message
    assert leftovers(cluster, namespace) == []


@pytest.mark.parametrize("failure, expected", [("CrashLoopBackOff", "kubectl logs"), ("OOMKilled", "backend.memory")])
def test_crash_loops_and_oom_kills_are_diagnosed(
    cluster: Cluster, namespace: str, tmp_path, failure: str, expected: str
) -> None:
    cluster.sim.fail({"gawm/workload": "distilbert"}, failure)
    with pytest.raises(BackendError) as caught:
        with backend_for(cluster, namespace, tmp_path):
            pass
    message = str(caught.value)
    assert failure in message.splitlines()[0] and expected in message
    assert leftovers(cluster, namespace) == []


def test_a_missing_namespace_is_named(cluster: Cluster, tmp_path) -> None:
    with pytest.raises(BackendError, match="namespace 'gawm-nowhere' does not exist"):
        with backend_for(cluster, "gawm-nowhere", tmp_path):
            pass


def test_what_someone_else_deployed_is_left_alone(cluster: Cluster, namespace: str, tmp_path) -> None:
    apps = client.AppsV1Api(cluster.api)
    theirs = {
        "metadata": {"name": "gawm-distilbert"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "theirs"}},
            "template": {
                "metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "c", "image": "theirs:1"}]},
            },
        },
    }
    apps.create_namespaced_deployment(namespace, theirs)
    with pytest.raises(BackendError, match="was not deployed by gawm"):
        with backend_for(cluster, namespace, tmp_path):
            pass
    assert (
        apps.read_namespaced_deployment("gawm-distilbert", namespace).spec.template.spec.containers[0].image
        == "theirs:1"
    )


def test_ctrl_c_tears_down_inside_and_during_the_rollout(cluster: Cluster, namespace: str, tmp_path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with backend_for(cluster, namespace, tmp_path, replicas=2):
            raise KeyboardInterrupt
    assert leftovers(cluster, namespace) == []

    def interrupt(counts: dict[str, int]) -> None:
        raise KeyboardInterrupt

    backend = KubernetesBackend(
        WorkloadConfig(name="whisper"), k8s(namespace), tmp_path, api_client=cluster.api, progress=interrupt
    )
    with pytest.raises(KeyboardInterrupt):
        with backend:
            pass
    assert leftovers(cluster, namespace) == []


def test_the_service_account_can_do_its_job_and_no_more(cluster: Cluster, namespace: str, tmp_path) -> None:
    token = service_account_token(cluster, namespace)
    kubeconfig = cluster.plane.write_kubeconfig(tmp_path / "sa-kubeconfig", token)
    cfg = k8s(namespace, kubeconfig=str(kubeconfig))
    with open_backend(WorkloadConfig(name="resnet50"), cfg, tmp_path / "logs") as backend:  # through the kubeconfig
        assert len(backend.replicas) == 1 and backend.placement[0].node == "sim-cpu-0"
        assert "nodes_error" in backend.facts and "RBAC denied" in backend.facts["nodes_error"]
    assert leftovers(cluster, namespace) == []

    as_sa = cluster.plane.api_client(token)
    core = client.CoreV1Api(as_sa)
    for denied in (
        lambda: core.list_namespaced_secret(namespace),
        lambda: core.list_namespaced_config_map(namespace),
        lambda: core.list_namespaced_pod("default"),
        lambda: core.list_node(),
    ):
        with pytest.raises(ApiException) as caught:
            denied()
        assert caught.value.status == 403
    with pytest.raises(BackendError, match=r"RBAC denied \(403\)"):
        with backend_for(cluster, "default", tmp_path, api=as_sa):
            pass


@pytest.mark.filterwarnings("ignore:query .* returned no series")  # the 0.2 s warm-up is too short for rates
def test_an_experiment_runs_on_kubernetes_end_to_end(cluster: Cluster, namespace: str, tmp_path) -> None:
    """``gawm run`` with ``backend.kind: kubernetes``: the simulated kubelet starts each pod's real model server on its
    pod IP, the load generator and Prometheus reach the replicas the backend reports, and nothing is left behind."""
    from gawm_lib.config import ExperimentConfig, LoadConfig, PrometheusConfig
    from gawm_lib.experiment import run_experiment

    cluster.sim.run_servers = True
    cfg = ExperimentConfig(
        name="k8s-e2e",
        workloads=[WorkloadConfig(name="distilbert", warmup_batches=0)],
        backend=k8s(namespace, kubeconfig=str(cluster.kubeconfig), startup_timeout_s=120),
        load=LoadConfig(levels=[1], step_duration_s=1.0, warmup_s=0.2),
        prometheus=PrometheusConfig(scrape_interval_s=0.5),
    )
    run, table = run_experiment(cfg, progress=False)
    assert table["ok"].sum() > 0 and table["errors"].sum() == 0
    manifest = json.loads((run.path / "manifest.json").read_text())
    (replica,) = manifest["workloads"]["distilbert"]["replicas"]
    assert re.fullmatch(r"127\.0\.1\.\d+:8000", replica)
    assert manifest["metrics"]["rows"] > 0  # Prometheus scraped the pod
    record = json.loads((run.logs_dir / "distilbert-kubernetes.json").read_text())
    assert record["placement"][0]["node"] == "sim-cpu-0"
    assert leftovers(cluster, namespace) == []
    assert cluster.sim.errors == []


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
