"""On a real single-node cluster (tests/k8s_node.py: kubelet, containerd, kube-proxy, CNI bridge on this machine):
the node is Ready; a Deployment of the tiny ``gawm.local/host-python:1`` image running ``python3 -m http.server``
from the host's /usr (mounted read-only) becomes Ready through its readiness probe; a ClusterIP Service routes a
request from the host; logs and exec work through the API server; the kubelet's /metrics/cadvisor labels containers
with their pod; rolling update and scale; teardown leaves no pods; and ``down`` restores the host (no process, mount,
interface, iptables chain or sysctl of the node left), ``up`` twice is one node, ``down`` twice is a no-op.

Traffic goes only to 127.0.0.1 (the API server) and to this machine's own pod and Service addresses.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.stream import stream

from k8s_node import RealNode, node_py  # the fixtures real_node and node_namespace come from conftest.py

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
PORT = 8080


def deployment(name: str, image: str, replicas: int = 1, env: dict | None = None) -> dict:
    """``python3 -m http.server`` from the host's /usr in the tiny image; Ready when it answers."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,  # python as PID 1 ignores SIGTERM
                    "enableServiceLinks": False,
                    "containers": [
                        {
                            "name": "server",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["/usr/bin/python3", "-u", "-m", "http.server", str(PORT)],
                            "workingDir": "/tmp",
                            "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                            "ports": [{"containerPort": PORT, "protocol": "TCP"}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": PORT},
                                "periodSeconds": 1,
                                "failureThreshold": 2,
                            },
                            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "500m"}},
                            "volumeMounts": [{"name": "usr", "mountPath": "/usr", "readOnly": True}],
                        }
                    ],
                    "volumes": [{"name": "usr", "hostPath": {"path": "/usr", "type": "Directory"}}],
                },
            },
        },
    }


def wait_until(condition, what: str, timeout_s: float = 60.0, interval_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not after {timeout_s:g} s: {what}"
        time.sleep(interval_s)


def ready_pods(api: client.ApiClient, namespace: str, app: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return [
        pod
        for pod in pods
        if pod.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
    ]


def rolled_out(api: client.ApiClient, namespace: str, name: str, replicas: int) -> bool:
    dep = client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    status = dep.status
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={name}").items
    return (
        status.observed_generation == dep.metadata.generation
        and (status.updated_replicas or 0) == replicas
        and (status.ready_replicas or 0) == replicas
        and (status.replicas or 0) == replicas
        and len(pods) == replicas
    )


def get(url: str, timeout_s: float = 3) -> str:
    # this machine's own pod and Service addresses, never through a proxy from the environment
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout_s) as answer:
        return answer.read().decode()


def test_the_node_is_ready_with_its_address(real_node: RealNode) -> None:
    node = client.CoreV1Api(real_node.api).read_node(real_node.name)
    conditions = {c.type: c.status for c in node.status.conditions}
    assert conditions["Ready"] == "True"
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == real_node.ip
    assert node.status.node_info.kubelet_version == "v1.20.2"
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert not [t for t in node.spec.taints or [] if t.effect == "NoSchedule"]


def test_the_api_server_and_kubectl_survive_pretty_and_yaml_output(real_node: RealNode) -> None:
    """The reflect2 fix: without it the API server dies on ?pretty=true, YAML and curl's User-Agent (pretty)."""
    state = real_node.state
    context = ssl.create_default_context(cafile=str(Path(state["dir"]) / "pki" / "ca.crt"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    base = f"https://127.0.0.1:{node_py.API_PORT}/api/v1/nodes"
    headers = {"Authorization": f"Bearer {state['tokens']['admin']}"}
    for url, extra in (
        (f"{base}?pretty=true", {}),
        (base, {"Accept": "application/yaml"}),
        (base, {"User-Agent": "curl/7.88.1"}),
    ):
        with opener.open(urllib.request.Request(url, headers={**headers, **extra}), timeout=10) as answer:
            assert real_node.name in answer.read().decode()
    out = subprocess.run(
        [str(real_node.kubectl), "--kubeconfig", str(real_node.kubeconfig), "get", "nodes", "-o", "yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"name: {real_node.name}" in out
    assert client.CoreV1Api(real_node.api).read_node(real_node.name)  # the API server is still there


def test_a_deployment_is_ready_serves_through_a_service_and_has_logs_exec_and_metrics(
    real_node: RealNode, node_namespace: str
) -> None:
    api, ns, name = real_node.api, node_namespace, "web"
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    start = time.monotonic()
    apps.create_namespaced_deployment(ns, deployment(name, real_node.host_python_image))
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": PORT, "protocol": "TCP"}]},
        },
    )
    (pod,) = wait_until(lambda: ready_pods(api, ns, name), "the pod Ready (readiness probe)", 60)
    ready_s = time.monotonic() - start
    assert ready_s < 30, f"Ready only after {ready_s:.1f} s"
    # the pod's own address, on the node's bridge
    assert pod.status.pod_ip.startswith(real_node.pod_cidr.rsplit(".", 1)[0] + ".")
    assert "Directory listing" in get(f"http://{pod.status.pod_ip}:{PORT}/")
    # the ClusterIP Service, through kube-proxy's rules
    service = core.read_namespaced_service(name, ns)
    assert service.spec.cluster_ip.startswith(real_node.service_cidr.rsplit(".", 1)[0] + ".")
    wait_until(lambda: core.read_namespaced_endpoints(name, ns).subsets, "the Service's endpoints", 30)
    body = wait_until(lambda: _try_get(f"http://{service.spec.cluster_ip}/"), "an answer through the ClusterIP", 30)
    assert "Directory listing" in body
    # logs through the API server (http.server logs each request on stderr)
    logs = wait_until(
        lambda: (text := core.read_namespaced_pod_log(pod.metadata.name, ns)) and '"GET / HTTP/1.1" 200' in text,
        "the request in the pod's log",
        15,
    )
    assert logs
    # exec through the API server (kubelet streaming)
    out = stream(
        core.connect_get_namespaced_pod_exec,
        pod.metadata.name,
        ns,
        command=["/usr/bin/python3", "-c", "import os; print(6 * 7, os.getpid() > 1)"],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    assert out.strip() == "42 True", out
    # cAdvisor on the kubelet, through the API server's node proxy: container and pod labels
    metrics = core.connect_get_node_proxy_with_path(real_node.name, "metrics/cadvisor")
    line = next(
        (
            m
            for m in metrics.splitlines()
            if m.startswith("container_cpu_usage_seconds_total{")
            and 'container="server"' in m
            and f'pod="{pod.metadata.name}"' in m
        ),
        None,
    )
    assert line is not None, "no container_cpu_usage_seconds_total for the pod's container in /metrics/cadvisor"
    assert f'namespace="{ns}"' in line and "image=" in line


def _try_get(url: str) -> str | None:
    try:
        return get(url, timeout_s=2)
    except OSError:
        return None


@pytest.mark.slow
def test_scale_rolling_update_and_teardown_leave_no_pods(real_node: RealNode, node_namespace: str) -> None:
    api, ns, name = real_node.api, node_namespace, "roll"
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(ns, deployment(name, real_node.host_python_image, replicas=1))
    wait_until(lambda: rolled_out(api, ns, name, 1), "1 replica rolled out", 60)
    # scale up
    apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 3}})
    wait_until(lambda: rolled_out(api, ns, name, 3), "3 replicas Ready", 60)
    old = {p.metadata.name for p in ready_pods(api, ns, name)}
    assert len(old) == 3 and len({p.status.pod_ip for p in ready_pods(api, ns, name)}) == 3
    # rolling update: a new template; surge 1, none unavailable, so Ready replicas never drop below 3
    apps.patch_namespaced_deployment(
        name,
        ns,
        {"spec": {"template": {"spec": {"containers": [{"name": "server", "env": [{"name": "V", "value": "2"}]}]}}}},
    )
    lowest = 3
    deadline = time.monotonic() + 120
    while not rolled_out(api, ns, name, 3):
        lowest = min(lowest, len(ready_pods(api, ns, name)))
        assert time.monotonic() < deadline, "the rolling update did not finish in 120 s"
        time.sleep(0.2)
    new = ready_pods(api, ns, name)
    assert not old & {p.metadata.name for p in new}
    assert all(p.spec.containers[0].env[0].value == "2" for p in new)
    assert lowest >= 3, f"Ready replicas dropped to {lowest} during the rolling update"
    # scale down, then tear down
    apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 1}})
    wait_until(lambda: rolled_out(api, ns, name, 1), "scaled down to 1", 60)
    apps.delete_namespaced_deployment(name, ns, propagation_policy="Foreground")
    wait_until(lambda: not core.list_namespaced_pod(ns).items, "no pods left after the teardown", 90)
    wait_until(lambda: not apps.list_namespaced_replica_set(ns).items, "no ReplicaSets left", 30)
    # and the node runs no container of that namespace any more
    tasks = real_node.node.ctr("containers", "list", f"labels.io.kubernetes.pod.namespace=={ns}", check=False).stdout
    assert len(tasks.strip().splitlines()) <= 1, tasks  # the header only


@pytest.mark.slow
def test_up_twice_is_one_node_and_down_restores_the_host(real_node: RealNode, node_namespace: str) -> None:
    if not real_node.started_here:
        pytest.skip("the node was up before the tests (make cluster-up): it is not ours to take down")
    state = real_node.state
    start = time.monotonic()
    assert real_node.node.up()["procs"] == state["procs"]  # up again: the same processes, nothing restarted
    assert time.monotonic() - start < 10
    # a pod, so that there are veths, netns, mounts, cgroups and CNI chains to undo
    api = real_node.api
    client.AppsV1Api(api).create_namespaced_deployment(
        node_namespace, deployment("left", real_node.host_python_image, replicas=2)
    )
    wait_until(lambda: len(ready_pods(api, node_namespace, "left")) == 2, "2 pods Ready", 60)
    assert Path("/sys/class/net/cni0").exists()
    assert len([link for link in os.listdir("/sys/class/net") if link.startswith("veth")]) >= 2
    pids = [entry["pid"] for entry in state["procs"]]
    state_dir = Path(state["dir"])

    left = real_node.down()
    assert left == {}, f"down left this on the host: {left}"
    assert real_node.baseline is not None
    assert node_py.host_diff(real_node.baseline) == {}
    # and, independently of the diff: no process, mount, interface, chain of the node
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not node_py._pids_of_cmdline("containerd-shim", str(state_dir))
    mounted = Path("/proc/self/mountinfo").read_text()
    assert str(state_dir) not in mounted and "/run/netns/cni-" not in mounted
    assert not Path("/sys/class/net/cni0").exists()
    assert not [link for link in os.listdir("/sys/class/net") if link.startswith("veth")]
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    assert not [line for line in rules.splitlines() if "KUBE-" in line or "CNI-" in line]
    assert not node_py.cgroups()
    assert {p.name for p in state_dir.iterdir()} <= {".lock", ".tests.lock", "logs"}
    # down again: nothing to do
    assert real_node.node.down() == {}
