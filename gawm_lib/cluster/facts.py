"""What the cluster is and where the replicas landed: pod -> node -> GPU, server version, nodes and their GPUs, image
digests. Reading nodes needs a cluster-wide permission that the workbench's namespaced Role does not give: without it
the facts say so instead of failing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gawm_lib.cluster.connect import describe_api_error

GPU_RESOURCE = "nvidia.com/gpu"
# labels that NVIDIA's GPU feature discovery puts on GPU nodes
GPU_LABELS = (
    "nvidia.com/gpu.product",
    "nvidia.com/gpu.count",
    "nvidia.com/gpu.memory",
    "nvidia.com/gpu.replicas",
    "nvidia.com/gpu.sharing-strategy",
)


@dataclass(frozen=True)
class Placement:
    """One pod: where it runs, what it was given, whether it serves."""

    pod: str
    node: str | None
    pod_ip: str | None
    ready: bool
    gpus: int  # nvidia.com/gpu limit of the pod (virtual GPUs under time-slicing)
    gpu_product: str | None  # the node's nvidia.com/gpu.product label
    image: str
    image_id: str | None  # the digest the node ran (status.containerStatuses[].imageID)
    restarts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _node_labels(core: client.CoreV1Api, names: set[str]) -> dict[str, dict[str, str]]:
    labels = {}
    for name in names:
        try:
            labels[name] = core.read_node(name).metadata.labels or {}
        except ApiException:  # no cluster-wide read: keep going without node facts
            labels[name] = {}
    return labels


def placements(api_client: client.ApiClient, namespace: str, selector: dict[str, str]) -> list[Placement]:
    """The pods matching ``selector``, sorted by name, not counting those being deleted."""
    core = client.CoreV1Api(api_client)
    label_selector = ",".join(f"{k}={v}" for k, v in selector.items())
    pods = [
        p
        for p in core.list_namespaced_pod(namespace, label_selector=label_selector).items
        if not p.metadata.deletion_timestamp
    ]
    nodes = _node_labels(core, {p.spec.node_name for p in pods if p.spec.node_name})
    result = []
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        gpus = sum(int((c.resources.limits or {}).get(GPU_RESOURCE, 0)) for c in pod.spec.containers if c.resources)
        statuses = pod.status.container_statuses or []
        result.append(
            Placement(
                pod=pod.metadata.name,
                node=pod.spec.node_name,
                pod_ip=pod.status.pod_ip,
                ready=_ready(pod),
                gpus=gpus,
                gpu_product=nodes.get(pod.spec.node_name, {}).get("nvidia.com/gpu.product"),
                image=pod.spec.containers[0].image,
                image_id=statuses[0].image_id if statuses else None,
                restarts=sum(s.restart_count or 0 for s in statuses),
            )
        )
    return result


def cluster_facts(api_client: client.ApiClient) -> dict[str, Any]:
    """Server version and, where readable, each node's kubelet, runtime, CPU, memory and GPU capacity and GPU labels."""
    facts: dict[str, Any] = {"server": api_client.configuration.host}
    try:
        version = client.VersionApi(api_client).get_code()
        facts["version"] = {"git_version": version.git_version, "platform": version.platform}
    except ApiException as exc:
        facts["version"] = {"error": describe_api_error(exc, "read the server version")}
    try:
        nodes = client.CoreV1Api(api_client).list_node().items
    except ApiException as exc:
        facts["nodes_error"] = describe_api_error(exc, "list nodes")
        return facts
    facts["nodes"] = []
    for node in nodes:
        info, capacity = node.status.node_info, node.status.capacity or {}
        labels = node.metadata.labels or {}
        facts["nodes"].append(
            {
                "name": node.metadata.name,
                "kubelet": info.kubelet_version if info else None,
                "runtime": info.container_runtime_version if info else None,
                "os": info.os_image if info else None,
                "cpu": capacity.get("cpu"),
                "memory": capacity.get("memory"),
                "gpus": int(capacity.get(GPU_RESOURCE, 0)),
                "gpus_allocatable": int((node.status.allocatable or {}).get(GPU_RESOURCE, 0)),
                "gpu_labels": {k: labels[k] for k in GPU_LABELS if k in labels},
                "ready": any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []),
            }
        )
    facts["gpus_total"] = sum(n["gpus"] for n in facts["nodes"])
    return facts
