"""The in-cluster GPU health check (gawm_lib.health) against the real test control plane of tests/k8s_env.py: a real
API server and scheduler, simulated nodes ``sim-gpu-0`` (4 x nvidia.com/gpu, tainted) and ``sim-cpu-0`` (no GPU).

Two parts of a real node are played here, through the API, because the simulator does not do them: a kubelet finishing
the run-to-completion test pod (the simulator keeps every pod Running), and a DCGM exporter answering /metrics at its
pod's (loopback) address.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import threading
import time

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gawm_lib import health
from k8s_env import GPU_NODE  # the fixtures cluster and namespace come from conftest.py

pytestmark = pytest.mark.integration

# What dcgm-exporter serves under time-slicing: per-GPU series, no pod label.
DCGM_METRICS = """\
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-5d7b",device="nvidia0",modelName="NVIDIA A16",Hostname="sim-gpu-0"} 37
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-9a01",device="nvidia1",modelName="NVIDIA A16",Hostname="sim-gpu-0"} 0
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-5d7b",device="nvidia0",modelName="NVIDIA A16",Hostname="sim-gpu-0"} 2048
DCGM_FI_DEV_FB_USED{gpu="1",UUID="GPU-9a01",device="nvidia1",modelName="NVIDIA A16",Hostname="sim-gpu-0"} 0
"""


def by_name(results: list[health.CheckResult]) -> dict[str, health.CheckResult]:
    return {r.name: r for r in results}


@contextlib.contextmanager
def kubelet_finishes_test_pods(api: client.ApiClient):
    """What a kubelet does once nvidia-smi has printed and exited 0: report the test pod Succeeded."""
    core = client.CoreV1Api(api)
    stop = threading.Event()
    finished: list[str] = []

    def loop() -> None:
        while not stop.wait(0.2):
            selector = f"app.kubernetes.io/name={health.TEST_POD_LABEL}"
            for pod in core.list_pod_for_all_namespaces(label_selector=selector).items:
                statuses = pod.status.container_statuses or []
                if pod.status.phase != "Running" or not statuses or not all(s.state.running for s in statuses):
                    continue  # not started, or failing (the simulator's CrashLoopBackOff): no kubelet would end it
                now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                done = [
                    {
                        "name": s.name,
                        "image": s.image,
                        "imageID": s.image_id,
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}
                        },
                    }
                    for s in statuses
                ]
                with contextlib.suppress(ApiException):
                    core.patch_namespaced_pod_status(
                        pod.metadata.name,
                        pod.metadata.namespace,
                        {
                            "status": {
                                "phase": "Succeeded",
                                "containerStatuses": done,
                                "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
                            }
                        },
                    )
                    finished.append(pod.metadata.name)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield finished
    finally:
        stop.set()
        thread.join(5)


@contextlib.contextmanager
def dcgm_exporter(api: client.ApiClient, namespace: str, node: str = GPU_NODE.name):
    """A pod labelled as gawm's DCGM exporter on ``node``, and its /metrics served at the pod IP the simulator gave."""
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "dcgm-exporter-test", "labels": {"app.kubernetes.io/name": "dcgm-exporter"}},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "exporter",
                        "image": "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.9-3.6.1-ubuntu22.04",
                        "ports": [{"name": "metrics", "containerPort": health.DCGM_PORT, "protocol": "TCP"}],
                    }
                ],
            },
        },
    )
    deadline = time.monotonic() + 30
    while True:
        pod = core.read_namespaced_pod("dcgm-exporter-test", namespace)
        if pod.status.phase == "Running" and pod.status.pod_ip:
            break
        assert time.monotonic() < deadline, f"exporter pod not running: {pod.status}"
        time.sleep(0.2)

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = DCGM_METRICS.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer((pod.status.pod_ip, health.DCGM_PORT), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield pod
    finally:
        server.shutdown()
        server.server_close()
        core.delete_namespaced_pod("dcgm-exporter-test", namespace, grace_period_seconds=0)


def test_a_simulated_gpu_node_passes_every_check(cluster, namespace):  # noqa: F811
    with dcgm_exporter(cluster.api, namespace) as exporter, kubelet_finishes_test_pods(cluster.api) as finished:
        results = health.check_cluster_gpus(str(cluster.kubeconfig), namespace=namespace, timeout_s=30)
    checks = by_name(results)
    assert list(checks) == ["API server", "GPU nodes", "RuntimeClass nvidia", "GPU test pod", "DCGM exporter"]
    assert all(r.ok for r in results), health.report(results)
    assert "v1.20.2" in checks["API server"].detail
    assert "sim-gpu-0: 4 of 4 nvidia.com/gpu allocatable (NVIDIA-A16)" in checks["GPU nodes"].detail
    pod = checks["GPU test pod"].detail
    assert len(finished) == 1 and finished[0] in pod and "on sim-gpu-0, Succeeded" in pod
    # no kubelet serves logs here, and none is asked (the API server would look the node's name up in DNS)
    assert "output not readable: node sim-gpu-0 reports no kubelet endpoint" in pod
    dcgm = checks["DCGM exporter"].detail
    assert f"{namespace}/dcgm-exporter-test answers directly at {exporter.status.pod_ip}:9400" in dcgm
    assert "4 series of 2 DCGM_FI metrics, 2 GPU(s)" in dcgm and "no series carries a pod label" in dcgm
    assert "PASS  GPU test pod" in health.report(results)
    # the test pod is gone again
    core = client.CoreV1Api(cluster.api)
    selector = f"app.kubernetes.io/name={health.TEST_POD_LABEL}"
    assert not core.list_namespaced_pod(namespace, label_selector=selector).items


def test_a_node_without_gpus_fails_with_the_reason(cluster):  # noqa: F811
    core = client.CoreV1Api(cluster.api)
    before = {n.metadata.name for n in core.list_namespace().items}
    started = time.monotonic()
    results = health.check_cluster_gpus(cluster.api, namespace="gawm-health-nogpu", timeout_s=60, nodes=["sim-cpu-0"])
    elapsed = time.monotonic() - started
    checks = by_name(results)
    assert not checks["GPU nodes"].ok
    assert "no Ready node advertises nvidia.com/gpu: sim-cpu-0: no nvidia.com/gpu" in checks["GPU nodes"].detail
    assert "device plugin" in checks["GPU nodes"].detail
    # the real scheduler's reason, without waiting out the timeout
    pod = checks["GPU test pod"]
    assert not pod.ok and "cannot be scheduled" in pod.detail and "Insufficient nvidia.com/gpu" in pod.detail
    assert elapsed < 30, elapsed
    assert not checks["DCGM exporter"].ok and "not found" in checks["DCGM exporter"].detail
    assert "FAIL  GPU nodes" in health.report(results)
    # nothing left behind: the namespace the check made is being deleted (or gone)
    namespaces = {n.metadata.name: n.status.phase for n in core.list_namespace().items}
    assert "gawm-health-nogpu" not in before
    assert namespaces.get("gawm-health-nogpu", "Terminating") == "Terminating"


def test_an_out_of_memory_test_pod_fails_with_the_reason(cluster, namespace):  # noqa: F811
    cluster.sim.fail({"app.kubernetes.io/name": health.TEST_POD_LABEL}, "OOMKilled")
    results = health.check_cluster_gpus(cluster.api, namespace=namespace, timeout_s=30, check_dcgm=False)
    pod = by_name(results)["GPU test pod"]
    assert not pod.ok
    assert "CrashLoopBackOff" in pod.detail and "OOMKilled (exit code 137)" in pod.detail
    assert "out-of-memory" in pod.detail


def test_without_a_runtime_class_the_pod_runs_on_the_default_runtime(cluster, namespace):  # noqa: F811
    with kubelet_finishes_test_pods(cluster.api):
        results = health.check_cluster_gpus(
            cluster.api, namespace=namespace, timeout_s=30, check_dcgm=False, runtime_class=None
        )
    assert [r.name for r in results] == ["API server", "GPU nodes", "GPU test pod"] and all(r.ok for r in results)
    assert "(default runtime, no runtimeClassName)" in results[-1].detail
    missing = by_name(
        health.check_cluster_gpus(cluster.api, run_pod=False, check_dcgm=False, runtime_class="kata-nvidia")
    )["RuntimeClass kata-nvidia"]
    assert not missing.ok and missing.detail.startswith("not found") and "--no-runtime-class" in missing.detail


def test_command_line_prints_a_line_per_check_and_exits_non_zero_on_failure(cluster, capsys):  # noqa: F811
    kubeconfig = str(cluster.kubeconfig)
    assert health.main(["--kubeconfig", kubeconfig, "--no-pod", "--no-dcgm"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:-1]] == ["PASS", "PASS", "PASS"]
    assert out[-1] == "GPU health: 3 passed, 0 failed"

    assert health.main(["--kubeconfig", kubeconfig, "--no-pod", "--no-dcgm", "--node", "sim-cpu-0"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  GPU nodes" in out and "sim-cpu-0: no nvidia.com/gpu" in out


def test_an_unreachable_api_server_is_one_failure(tmp_path):
    # a kubeconfig that names a port nothing listens on (loopback only)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    results = health.check_cluster_gpus(kubeconfig)
    assert len(results) == 1 and results[0].name == "API server" and not results[0].ok
    assert "cannot reach the API server" in results[0].detail
    missing = health.check_cluster_gpus(tmp_path / "nope")
    assert not missing[0].ok and "cannot load the Kubernetes configuration" in missing[0].detail
