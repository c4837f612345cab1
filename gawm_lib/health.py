"""GPU health of a Kubernetes cluster, through its API: what gawm needs before a GPU experiment.

Checks, each a :class:`CheckResult` (name, ok, detail):

- ``API server``: reachable, with its version (when it is not, this is the only result);
- ``GPU nodes``: which Ready nodes advertise ``nvidia.com/gpu`` (allocatable, capacity, product, time-slicing);
- ``RuntimeClass nvidia``: exists (gawm's GPU pods run with ``runtimeClassName: nvidia``; ``runtime_class=None`` skips
  this where the NVIDIA runtime is the default one, as ``backend.runtime_class: null`` does);
- ``GPU test pod``: a pod asking for one ``nvidia.com/gpu`` runs ``nvidia-smi`` to completion (phase Succeeded); its
  output is shown where the node's kubelet serves logs; pending, failing or crash-looping pods say why;
- ``DCGM exporter``: a pod labelled as the DCGM exporter answers ``/metrics`` with ``DCGM_FI_*`` series, through the API
  server's proxy or, where that is refused, directly at the pod's address.

    from gawm_lib import health
    results = health.check_cluster_gpus("~/.kube/config")    # or an ApiClient; None: KUBECONFIG, ~/.kube/config, in-pod
    print(health.report(results))

    python -m gawm_lib.health [--kubeconfig K] [--no-pod] [--no-dcgm] [--node NAME]...   # exit 1 on any failure

``k8s/cluster/gpu-health-check.sh`` runs this after its host checks; the ``00_environment_check`` notebook calls
:func:`check_cluster_gpus`. What each failure means and what to do: ``docs/troubleshooting.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from gawm_lib.cluster.connect import ClusterError, api_message, connect, describe_api_error

GPU_RESOURCE = "nvidia.com/gpu"
RUNTIME_CLASS = "nvidia"
DEFAULT_NAMESPACE = "gawm-health"
# A CUDA base image: nvidia-smi and the driver's libraries are injected by the nvidia runtime, not shipped in it.
DEFAULT_IMAGE = "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04"
SMI_COMMAND = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
TEST_POD_LABEL = "gawm-gpu-check"
# Labels of the DCGM exporter: gawm's monitoring overlay and the upstream chart; the GPU Operator's.
DCGM_SELECTORS = ("app.kubernetes.io/name=dcgm-exporter", "app=nvidia-dcgm-exporter")
DCGM_PORT = 9400
HINT_DEVICE_PLUGIN = (
    "the NVIDIA device plugin is not running or not registered (docs/troubleshooting.md: "
    "'The device plugin does not advertise GPUs')"
)
_SERIES = re.compile(r"^(DCGM_FI_[A-Za-z0-9_]+)(\{[^}]*\})?\s")
_REQUEST_TIMEOUT_S = 10


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        """``PASS  name  detail``: the layout ``gpu-health-check.sh`` prints for its host checks too."""
        return f"{'PASS' if self.ok else 'FAIL':<4}  {self.name:<26} {self.detail}"


def report(results: Sequence[CheckResult]) -> str:
    failed = sum(not r.ok for r in results)
    summary = f"GPU health: {len(results) - failed} passed, {failed} failed"
    return "\n".join([*(r.line() for r in results), summary])


def check_cluster_gpus(
    api_client_or_kubeconfig: client.ApiClient | str | Path | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    run_pod: bool = True,
    timeout_s: float = 180.0,
    image: str = DEFAULT_IMAGE,
    check_dcgm: bool = True,
    nodes: Sequence[str] | None = None,
    runtime_class: str | None = RUNTIME_CLASS,
) -> list[CheckResult]:
    """Run the checks and return one result each (see the module docstring).

    ``namespace``: where the test pod runs; made when missing and then removed again. ``timeout_s``: longest wait for
    the test pod to finish [s]. ``nodes``: only these nodes count (and the test pod may only go there); default all.
    ``runtime_class``: the RuntimeClass GPU pods use; None: none (the test pod runs with the default runtime).
    """
    if isinstance(api_client_or_kubeconfig, client.ApiClient):
        return _run_checks(
            api_client_or_kubeconfig, namespace, run_pod, timeout_s, image, check_dcgm, nodes, runtime_class
        )
    try:
        api = connect(None if api_client_or_kubeconfig is None else str(Path(api_client_or_kubeconfig).expanduser()))
    except ClusterError as exc:
        return [CheckResult("API server", False, str(exc))]
    with api:  # made here, closed here
        return _run_checks(api, namespace, run_pod, timeout_s, image, check_dcgm, nodes, runtime_class)


def _run_checks(
    api: client.ApiClient,
    namespace: str,
    run_pod: bool,
    timeout_s: float,
    image: str,
    check_dcgm: bool,
    nodes: Sequence[str] | None,
    runtime_class: str | None,
) -> list[CheckResult]:
    try:
        version = client.VersionApi(api).get_code(_request_timeout=_REQUEST_TIMEOUT_S).git_version
    except (ApiException, HTTPError) as exc:
        return [CheckResult("API server", False, describe_api_error(exc, "asking for the server version"))]
    results = [CheckResult("API server", True, f"reachable at {api.configuration.host}, Kubernetes {version}")]
    gpu_nodes = _check_nodes(api, nodes)
    results.append(gpu_nodes)
    if runtime_class is not None:
        found = _check_runtime_class(api, runtime_class)
        results.append(found)
        runtime_class = runtime_class if found.ok else None
    if run_pod:
        results.append(
            _check_test_pod(api, namespace, timeout_s, image, nodes, runtime_class, gpus_advertised=gpu_nodes.ok)
        )
    if check_dcgm:
        results.append(_check_dcgm(api, nodes))
    return results


# -- nodes and RuntimeClass --------------------------------------------------------------------------------------------
def _node_ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def _check_nodes(api: client.ApiClient, only: Sequence[str] | None) -> CheckResult:
    name = "GPU nodes"
    try:
        items = client.CoreV1Api(api).list_node(_request_timeout=_REQUEST_TIMEOUT_S).items
    except (ApiException, HTTPError) as exc:
        return CheckResult(name, False, describe_api_error(exc, "listing nodes"))
    if only is not None:
        missing = sorted(set(only) - {n.metadata.name for n in items})
        items = [n for n in items if n.metadata.name in set(only)]
        if missing:
            return CheckResult(name, False, f"no such node: {', '.join(missing)}")
    if not items:
        return CheckResult(name, False, "the cluster has no nodes")
    good, notes = [], []
    for node in items:
        capacity = int((node.status.capacity or {}).get(GPU_RESOURCE, 0))
        allocatable = int((node.status.allocatable or {}).get(GPU_RESOURCE, 0))
        labels = node.metadata.labels or {}
        if capacity == 0:
            notes.append(f"{node.metadata.name}: no {GPU_RESOURCE}")
            continue
        what = f"{node.metadata.name}: {allocatable} of {capacity} {GPU_RESOURCE} allocatable"
        if labels.get("nvidia.com/gpu.product"):
            what += f" ({labels['nvidia.com/gpu.product']})"
        if int(labels.get("nvidia.com/gpu.replicas", "1") or 1) > 1:
            what += f", time-sliced x{labels['nvidia.com/gpu.replicas']}"
        if allocatable == 0:
            notes.append(what + ": none allocatable (the device plugin reports the GPUs unhealthy)")
        elif not _node_ready(node):
            notes.append(what + ": node NotReady")
        elif node.spec.unschedulable:
            notes.append(what + ": node cordoned (unschedulable)")
        else:
            good.append(what)
    if good:
        return CheckResult(name, True, "; ".join(good + notes))
    return CheckResult(
        name, False, f"no Ready node advertises {GPU_RESOURCE}: {'; '.join(notes)}. Likely {HINT_DEVICE_PLUGIN}"
    )


def _check_runtime_class(api: client.ApiClient, runtime_class: str) -> CheckResult:
    name = f"RuntimeClass {runtime_class}"
    try:
        handler = client.NodeV1Api(api).read_runtime_class(runtime_class, _request_timeout=_REQUEST_TIMEOUT_S).handler
    except ApiException as exc:
        if exc.status == 404:
            return CheckResult(
                name,
                False,
                "not found: create it (create-cluster.sh does; on a managed cluster the "
                "GPU Operator does), or where the NVIDIA runtime is the default one, "
                "use none (--no-runtime-class; backend.runtime_class: null)",
            )
        return CheckResult(name, False, describe_api_error(exc, f"reading RuntimeClass {runtime_class}"))
    except HTTPError as exc:
        return CheckResult(name, False, describe_api_error(exc, f"reading RuntimeClass {runtime_class}"))
    return CheckResult(
        name, True, f"exists, handler '{handler}' (the container runtime must have a runtime of that name)"
    )


# -- the GPU test pod --------------------------------------------------------------------------------------------------
def _test_pod(
    name: str, image: str, timeout_s: float, nodes: Sequence[str] | None, runtime_class: str | None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # It needs no API access; and a namespace made just now has no ServiceAccount token yet (before 1.24 the pod
        # would be refused until it has).
        "automountServiceAccountToken": False,
        "activeDeadlineSeconds": max(int(timeout_s), 1),  # a pod stuck at run time is stopped by its kubelet
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "nvidia-smi",
                "image": image,
                "command": SMI_COMMAND,
                "resources": {"limits": {GPU_RESOURCE: "1"}},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    }
    if runtime_class is not None:
        spec["runtimeClassName"] = runtime_class
    if nodes is not None:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": list(nodes)}
                            ]
                        }
                    ]
                }
            }
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": TEST_POD_LABEL, "app.kubernetes.io/part-of": "gawm"},
        },
        "spec": spec,
    }


def _ensure_namespace(core: client.CoreV1Api, namespace: str, deadline: float) -> bool:
    """Make ``namespace`` when missing (waiting out one still terminating); True when this call made it."""
    while True:
        try:
            current = core.read_namespace(namespace, _request_timeout=_REQUEST_TIMEOUT_S)
        except ApiException as exc:
            if exc.status != 404:
                raise
            core.create_namespace(
                {"metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "gawm"}}},
                _request_timeout=_REQUEST_TIMEOUT_S,
            )
            return True
        if current.status.phase != "Terminating":
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespace {namespace} is still terminating")
        time.sleep(1.0)


def _pending_reason(pod: Any) -> str | None:
    """Why the pod is not running yet or not any more: the scheduler's condition or a container's waiting state."""
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return f"{condition.reason}: {condition.message}"
    for status in pod.status.container_statuses or []:
        if status.state and status.state.waiting and status.state.waiting.reason not in (None, "ContainerCreating"):
            return f"{status.state.waiting.reason}: {status.state.waiting.message or ''}".rstrip(": ")
    return None


def _terminated(pod: Any) -> Any:
    """The container's termination record: its current state, or its last one when it was restarted."""
    for status in pod.status.container_statuses or []:
        if status.state and status.state.terminated:
            return status.state.terminated
        if status.last_state and status.last_state.terminated:
            return status.last_state.terminated
    return None


def _failure_hint(terminated: Any) -> str:
    if terminated is None:
        return ""
    text = f"{terminated.reason or 'exited'} (exit code {terminated.exit_code})"
    if terminated.message:
        text += f": {terminated.message.strip()[:300]}"
    if terminated.exit_code == 137 or terminated.reason == "OOMKilled":
        text += "; killed for memory (docs/troubleshooting.md: 'CrashLoopBackOff from out-of-memory')"
    elif terminated.exit_code in (126, 127) or "executable file not found" in (terminated.message or ""):
        text += (
            "; nvidia-smi is missing in the container: the nvidia runtime did not inject the driver "
            "(runtimeClassName nvidia; sudo nvidia-ctk runtime configure --runtime=crio)"
        )
    return text


def _kubelet_port(core: client.CoreV1Api, node_name: str | None) -> int | None:
    """The kubelet port the node reports (0: no kubelet serves it); None when the node cannot be read."""
    try:
        node = core.read_node(node_name, _request_timeout=_REQUEST_TIMEOUT_S)
    except (ApiException, HTTPError, ValueError):
        return None
    endpoints = node.status.daemon_endpoints
    return endpoints.kubelet_endpoint.port if endpoints and endpoints.kubelet_endpoint else 0


def _pod_logs(core: client.CoreV1Api, pod: Any) -> tuple[str | None, str]:
    """The pod's output, or None and why not. Logs come from the node's kubelet through the API server; a node that
    reports no kubelet endpoint (the simulated nodes of the tests) is not asked."""
    name, namespace, node = pod.metadata.name, pod.metadata.namespace, pod.spec.node_name
    if _kubelet_port(core, node) == 0:
        return None, f"node {node} reports no kubelet endpoint"
    try:
        return core.read_namespaced_pod_log(name, namespace, _request_timeout=5).strip(), ""
    except ApiException as exc:
        return None, api_message(exc)
    except HTTPError as exc:
        return None, str(exc)


def _check_test_pod(
    api: client.ApiClient,
    namespace: str,
    timeout_s: float,
    image: str,
    nodes: Sequence[str] | None,
    runtime_class: str | None,
    gpus_advertised: bool,
) -> CheckResult:
    name = "GPU test pod"
    core = client.CoreV1Api(api)
    pod_name = f"{TEST_POD_LABEL}-{secrets.token_hex(3)}"
    start = time.monotonic()
    deadline = start + timeout_s
    made_namespace = created = False
    try:
        made_namespace = _ensure_namespace(core, namespace, deadline)
        core.create_namespaced_pod(
            namespace, _test_pod(pod_name, image, timeout_s, nodes, runtime_class), _request_timeout=_REQUEST_TIMEOUT_S
        )
        created = True
        where = f"pod {namespace}/{pod_name}" + ("" if runtime_class else " (default runtime, no runtimeClassName)")
        reason = None
        while True:
            pod = core.read_namespaced_pod(pod_name, namespace, _request_timeout=_REQUEST_TIMEOUT_S)
            phase = pod.status.phase
            elapsed = time.monotonic() - start
            if phase == "Succeeded":
                logs, why = _pod_logs(core, pod)
                if logs:
                    output = ": " + " | ".join(logs.splitlines())
                else:
                    output = f" (output not readable: {why})" if logs is None else " (no output)"
                return CheckResult(
                    name, True, f"{where} ran nvidia-smi on {pod.spec.node_name}, Succeeded in {elapsed:.1f} s{output}"
                )
            if phase == "Failed":
                logs, _ = _pod_logs(core, pod)
                tail = f"; output: {logs[-300:]}" if logs else ""
                detail = _failure_hint(_terminated(pod)) or f"{pod.status.reason or ''} {pod.status.message or ''}"
                return CheckResult(name, False, f"{where} Failed on {pod.spec.node_name}: {detail.strip()}{tail}")
            terminated = _terminated(pod)
            if terminated is not None and terminated.exit_code != 0:
                # A container that ran and failed but is restarted: the pod never finishes (CrashLoopBackOff).
                return CheckResult(
                    name,
                    False,
                    f"{where} on {pod.spec.node_name}: {_pending_reason(pod) or phase}: {_failure_hint(terminated)}",
                )
            reason = _pending_reason(pod) or reason
            if reason and reason.startswith("Unschedulable") and not gpus_advertised:
                return CheckResult(name, False, f"{where} cannot be scheduled: {reason} ({HINT_DEVICE_PLUGIN})")
            if time.monotonic() > deadline:
                node = f" on {pod.spec.node_name}" if pod.spec.node_name else ""
                return CheckResult(
                    name,
                    False,
                    f"{where} not finished after {timeout_s:g} s: {phase}{node}{f'; {reason}' if reason else ''}",
                )
            time.sleep(0.5)
    except (ApiException, HTTPError) as exc:
        return CheckResult(name, False, describe_api_error(exc, f"running the test pod in {namespace}", namespace))
    except TimeoutError as exc:
        return CheckResult(name, False, str(exc))
    finally:  # also on Ctrl-C: nothing is left behind
        if created:
            with contextlib.suppress(ApiException, HTTPError):
                core.delete_namespaced_pod(
                    pod_name, namespace, grace_period_seconds=0, _request_timeout=_REQUEST_TIMEOUT_S
                )
        if made_namespace:
            with contextlib.suppress(ApiException, HTTPError):
                core.delete_namespace(namespace, _request_timeout=_REQUEST_TIMEOUT_S)


# -- the DCGM exporter -------------------------------------------------------------------------------------------------
def _dcgm_pods(core: client.CoreV1Api) -> list[Any]:
    """Pods of the DCGM exporter: by label, else those behind a Service whose name contains 'dcgm'."""
    found: dict[str, Any] = {}
    for selector in DCGM_SELECTORS:
        for pod in core.list_pod_for_all_namespaces(label_selector=selector, _request_timeout=_REQUEST_TIMEOUT_S).items:
            found[pod.metadata.uid] = pod
    if not found:
        for service in core.list_service_for_all_namespaces(_request_timeout=_REQUEST_TIMEOUT_S).items:
            if "dcgm" in service.metadata.name and service.spec.selector:
                selector = ",".join(f"{k}={v}" for k, v in service.spec.selector.items())
                for pod in core.list_namespaced_pod(
                    service.metadata.namespace, label_selector=selector, _request_timeout=_REQUEST_TIMEOUT_S
                ).items:
                    found[pod.metadata.uid] = pod
    return list(found.values())


def _metrics_port(pod: Any) -> int:
    ports = [p for c in pod.spec.containers for p in c.ports or []]
    named = [p.container_port for p in ports if p.name == "metrics" or p.container_port == DCGM_PORT]
    return (named or [p.container_port for p in ports] or [DCGM_PORT])[0]


def _scrape(core: client.CoreV1Api, pod: Any, port: int) -> tuple[str | None, str]:
    """The pod's /metrics text and how it was reached; None and why both ways failed."""
    ns, name = pod.metadata.namespace, pod.metadata.name
    try:
        text = core.connect_get_namespaced_pod_proxy_with_path(
            f"{name}:{port}", ns, "metrics", _request_timeout=_REQUEST_TIMEOUT_S
        )
        return text, "through the API server proxy"
    except (ApiException, HTTPError) as exc:
        proxy_error = api_message(exc) if isinstance(exc, ApiException) else str(exc)
    # The API server refuses to proxy to some addresses (loopback, link-local); from a node, pod IPs are routable.
    url = f"http://{pod.status.pod_ip}:{port}/metrics"
    try:
        answer = httpx.get(url, timeout=5.0, trust_env=False)
        answer.raise_for_status()
        return answer.text, f"directly at {pod.status.pod_ip}:{port}"
    except httpx.HTTPError as exc:
        return None, f"API server proxy: {proxy_error}; {url}: {exc}"


def _check_dcgm(api: client.ApiClient, nodes: Sequence[str] | None) -> CheckResult:
    name = "DCGM exporter"
    core = client.CoreV1Api(api)
    try:
        pods = _dcgm_pods(core)
    except (ApiException, HTTPError) as exc:
        return CheckResult(name, False, describe_api_error(exc, "looking for the DCGM exporter"))
    if nodes is not None:
        pods = [p for p in pods if p.spec.node_name in set(nodes)]
    where = f" on {', '.join(nodes)}" if nodes is not None else " in any namespace"
    if not pods:
        return CheckResult(
            name,
            False,
            f"not found: no pod labelled {' or '.join(DCGM_SELECTORS)} (nor behind a "
            f"'dcgm' Service){where}: deploy the monitoring overlay "
            "(kubectl apply -k k8s/overlays/monitoring)",
        )
    running = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
    if not running:
        states = "; ".join(
            f"{p.metadata.namespace}/{p.metadata.name} {p.status.phase}"
            f"{f' ({_pending_reason(p)})' if _pending_reason(p) else ''}"
            for p in pods
        )
        return CheckResult(name, False, f"found but not running: {states}")
    errors = []
    for pod in running:
        port = _metrics_port(pod)
        text, how = _scrape(core, pod, port)
        label = f"{pod.metadata.namespace}/{pod.metadata.name}"
        if text is None:
            errors.append(f"{label}: {how}")
            continue
        series = [m for m in (_SERIES.match(line) for line in text.splitlines()) if m]
        if not series:
            errors.append(
                f"{label} answers {how} but exports no DCGM_FI_* series (the exporter sees no GPU: "
                "check its runtimeClassName and GPU access)"
            )
            continue
        gpus = {g for m in series for g in re.findall(r'\bgpu="([^"]*)"', m.group(2) or "")}
        with_pod = any(re.search(r'\bpod="[^"]+"', m.group(2) or "") for m in series)
        detail = (
            f"{label} answers {how}: {len(series)} series of {len({m.group(1) for m in series})} DCGM_FI "
            f"metrics, {len(gpus)} GPU(s)"
        )
        if not with_pod:
            detail += "; no series carries a pod label (expected under time-slicing: docs/troubleshooting.md)"
        return CheckResult(name, True, detail)
    return CheckResult(name, False, "does not answer: " + "; ".join(errors))


# -- command line ------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gawm_lib.health",
        description="GPU health of a Kubernetes cluster: one PASS/FAIL line per check; exit 1 when any fails",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-pod)")
    parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help="namespace of the test pod, made and removed when missing (default %(default)s)",
    )
    parser.add_argument("--no-pod", action="store_true", help="do not run the GPU test pod")
    parser.add_argument("--no-dcgm", action="store_true", help="do not look for the DCGM exporter")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="test pod image (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=180.0, help="longest wait for the test pod [s]")
    parser.add_argument("--node", action="append", dest="nodes", help="check only this node (repeatable)")
    parser.add_argument("--runtime-class", default=RUNTIME_CLASS, help="RuntimeClass of GPU pods (default %(default)s)")
    parser.add_argument(
        "--no-runtime-class",
        action="store_true",
        help="GPU pods use the default runtime (where it is NVIDIA's): no RuntimeClass needed",
    )
    args = parser.parse_args(argv)
    results = check_cluster_gpus(
        args.kubeconfig,
        namespace=args.namespace,
        run_pod=not args.no_pod,
        timeout_s=args.timeout,
        image=args.image,
        check_dcgm=not args.no_dcgm,
        nodes=args.nodes,
        runtime_class=None if args.no_runtime_class else args.runtime_class,
    )
    print(report(results), flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
