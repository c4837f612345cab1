"""Waiting for a Deployment to roll out, scaling it, and saying why a rollout fails.

The diagnosis reads what a person would look at: the Deployment's conditions, each pod's phase, conditions and container
states, and the Warning events of the pods, ReplicaSets and the Deployment. Failures that do not heal by waiting (image
pull back-off, crash loops, OOM kills, pods that cannot be created) stop the wait at once; a pod the scheduler cannot
place (for example ``Insufficient nvidia.com/gpu``) is waited for until the timeout, since the cluster may yet make
room.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gawm_lib.cluster.connect import ClusterError, describe_api_error

# container waiting reasons that waiting does not cure
FATAL_WAITING = {
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}
HINTS = {
    "Insufficient nvidia.com/gpu": "ask for fewer GPUs (backend.gpu) or replicas, free GPUs, or share them by "
    "time-slicing (k8s/overlays/gpu-time-slicing)",
    "Insufficient cpu": "ask for less CPU per replica (backend.cpu, the workload's threads) or fewer replicas",
    "Insufficient memory": "ask for less memory per replica (backend.memory) or fewer replicas",
    "taint": "the nodes are tainted: add a toleration (backend.tolerations)",
    "node(s) didn't match": "no node has the labels in backend.node_selector",
    "ImagePull": "check backend.image and that the nodes can pull it (k8s/README.md: build and push the image)",
    "ErrImagePull": "check backend.image and that the nodes can pull it (k8s/README.md: build and push the image)",
    "ErrImageNeverPull": "the image is not on the node and backend.image_pull_policy is Never: load it onto the node "
    "(ctr -n k8s.io images import, kind load, minikube image load) or let the node pull it",
    "InvalidImageName": "backend.image is not a valid image reference",
    "OOMKilled": "the server ran out of memory: raise backend.memory",
    "CrashLoopBackOff": "the server exits: read its log (kubectl logs -n NAMESPACE POD --previous)",
    "serviceaccount": "the ServiceAccount is missing: kubectl apply -k k8s/base, or set backend.service_account",
    "RuntimeClass": "the RuntimeClass does not exist: install the NVIDIA runtime, or set backend.runtime_class: null",
}


class RolloutError(ClusterError):
    """A rollout that failed or timed out; the message is the diagnosis."""


def _selector(deployment: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in (deployment.spec.selector.match_labels or {}).items())


def _progress(deployment: Any) -> dict[str, int]:
    status = deployment.status
    return {
        "wanted": deployment.spec.replicas or 0,
        "updated": status.updated_replicas or 0,
        "ready": status.ready_replicas or 0,
        "available": status.available_replicas or 0,
        "total": status.replicas or 0,
    }


def rolled_out(deployment: Any) -> bool:
    """The rule of ``kubectl rollout status``: the controller saw the latest spec, and every replica is updated and
    available, with no old ones left."""
    p = _progress(deployment)
    observed = (deployment.status.observed_generation or 0) >= (deployment.metadata.generation or 0)
    return (
        observed
        and p["updated"] == p["wanted"]
        and p["available"] == p["wanted"]
        and p["total"] == p["wanted"]
        and p["ready"] == p["wanted"]
    )


def _fatal(pods: list[Any], deployment: Any) -> str | None:
    for pod in pods:
        if pod.metadata.deletion_timestamp:
            continue
        for status in pod.status.container_statuses or []:
            last = status.last_state.terminated if status.last_state else None
            now = status.state.terminated if status.state else None
            if any(t and t.reason == "OOMKilled" for t in (last, now)):  # before CrashLoopBackOff, which it causes
                return "OOMKilled"
            waiting = status.state.waiting if status.state else None
            if waiting and waiting.reason in FATAL_WAITING:
                return waiting.reason
    for condition in deployment.status.conditions or []:
        if condition.type == "ReplicaFailure" and condition.status == "True":
            return "ReplicaFailure"
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            return "ProgressDeadlineExceeded"
    return None


def wait_for_rollout(
    api_client: client.ApiClient,
    namespace: str,
    name: str,
    timeout_s: float,
    progress: Callable[[dict[str, int]], None] | None = None,
    poll_s: float = 0.5,
) -> Any:
    """Wait until Deployment ``namespace/name`` has rolled out; return it. ``progress`` gets the replica counts each
    time they change. Raises :class:`RolloutError` with a diagnosis on a failure that waiting does not cure, or at the
    timeout [s]."""
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    start = time.monotonic()
    last = None
    while True:
        try:
            deployment = apps.read_namespaced_deployment(name, namespace)
            pods = core.list_namespaced_pod(namespace, label_selector=_selector(deployment)).items
        except ApiException as exc:
            raise RolloutError(describe_api_error(exc, f"read Deployment {namespace}/{name}", namespace)) from None
        counts = _progress(deployment)
        if counts != last:
            last = counts
            if progress is not None:
                progress(counts)
        if rolled_out(deployment):
            return deployment
        reason = _fatal(pods, deployment)
        elapsed = time.monotonic() - start
        if reason is not None:
            raise RolloutError(diagnose(api_client, namespace, name, f"failed after {elapsed:.0f} s ({reason})"))
        if elapsed > timeout_s:
            raise RolloutError(diagnose(api_client, namespace, name, f"not rolled out after {timeout_s:g} s"))
        time.sleep(poll_s)


def scale(api_client: client.ApiClient, namespace: str, name: str, replicas: int) -> None:
    """Set the replica count of Deployment ``namespace/name`` through its scale subresource."""
    try:
        client.AppsV1Api(api_client).patch_namespaced_deployment_scale(
            name, namespace, {"spec": {"replicas": replicas}}
        )
    except ApiException as exc:
        raise ClusterError(describe_api_error(exc, f"scale Deployment {namespace}/{name}", namespace)) from None


def _container_lines(pod: Any) -> list[str]:
    lines = []
    for status in pod.status.container_statuses or []:
        state, last = status.state, status.last_state
        if state and state.waiting:
            lines.append(
                f"container {status.name}: waiting: {state.waiting.reason}: {state.waiting.message or ''}".rstrip(": ")
            )
        elif state and state.terminated:
            lines.append(
                f"container {status.name}: terminated: {state.terminated.reason} (exit {state.terminated.exit_code})"
            )
        if last and last.terminated:
            lines.append(
                f"container {status.name}: last terminated: {last.terminated.reason} "
                f"(exit {last.terminated.exit_code}), restarts {status.restart_count}"
            )
    return lines


LOG_LINES = 12  # last lines of a crashed container's log in a diagnosis


def _log_tail(core: client.CoreV1Api, namespace: str, pod: Any) -> list[str]:
    """The last lines of the log of each container of ``pod`` that exited (the previous instance's, where it was
    restarted) or that runs without being ready: what the server said before it died, or why it is not ready (a model
    that failed to load). Empty where the log cannot be read (no permission, no kubelet)."""
    lines = []
    for status in pod.status.container_statuses or []:
        last = status.last_state.terminated if status.last_state else None
        now = status.state.terminated if status.state else None
        running_unready = bool(status.state and status.state.running and not status.ready)
        if not (last or now or running_unready):
            continue
        try:
            text = core.read_namespaced_pod_log(
                pod.metadata.name,
                namespace,
                container=status.name,
                previous=bool(last) and not now and not running_unready,
                tail_lines=LOG_LINES,
                _request_timeout=10,
            )
        except Exception:  # a diagnosis without the log is still a diagnosis
            continue
        tail = [line[:240] for line in (text or "").splitlines() if line.strip()][-LOG_LINES:]
        if tail:
            if running_unready:
                which = "running, not ready"
            else:
                which = f"{'previous ' if last and not now else ''}container, exit {(now or last).exit_code}"
            lines.append(f"last log lines of {pod.metadata.name}/{status.name} ({which}):")
            lines += [f"  | {line}" for line in tail]
    return lines


def _when(event: Any) -> Any:
    return event.last_timestamp or event.event_time or event.metadata.creation_timestamp


def _events(core: client.CoreV1Api, namespace: str, names: set[str], since: Any, limit: int = 12) -> list[str]:
    """Warning events of the named pods, ReplicaSets and Deployment since ``since`` (not an earlier namesake's)."""
    try:
        events = core.list_namespaced_event(namespace).items
    except ApiException:
        return []
    chosen = [
        e
        for e in events
        if e.involved_object.name in names
        and e.type == "Warning"
        and e.involved_object.kind in ("Pod", "ReplicaSet", "Deployment")
        and (since is None or _when(e) >= since)
    ]
    chosen.sort(key=_when)
    lines, seen = [], set()
    for event in reversed(chosen):
        key = (event.reason, event.message)
        if key in seen:
            continue
        seen.add(key)
        count = f" (x{event.count})" if (event.count or 1) > 1 else ""
        lines.append(
            f"{event.involved_object.kind.lower()}/{event.involved_object.name}: {event.reason}{count}: "
            f"{(event.message or '').strip()}"
        )
    return lines[:limit][::-1]


def diagnose(api_client: client.ApiClient, namespace: str, name: str, headline: str = "") -> str:
    """Why Deployment ``namespace/name`` is not (yet) rolled out: the first line says it in short, with a hint; the
    following lines show the evidence."""
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    try:
        deployment = apps.read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        return describe_api_error(exc, f"read Deployment {namespace}/{name}", namespace)
    counts = _progress(deployment)
    lines = [
        f"Deployment {namespace}/{name}: {counts['ready']} of {counts['wanted']} replicas ready "
        f"({counts['updated']} updated, {counts['available']} available)"
    ]
    for condition in deployment.status.conditions or []:
        if condition.status != "True" or condition.type == "ReplicaFailure":
            lines.append(f"condition {condition.type}={condition.status}: {condition.reason}: {condition.message}")
    pods = core.list_namespaced_pod(namespace, label_selector=_selector(deployment)).items
    names = {name, *(p.metadata.name for p in pods)}
    names |= {
        r.metadata.name for r in apps.list_namespaced_replica_set(namespace, label_selector=_selector(deployment)).items
    }
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        where = pod.spec.node_name or "not scheduled"
        lines.append(
            f"pod {pod.metadata.name} ({where}): {pod.status.phase}"
            + (" (terminating)" if pod.metadata.deletion_timestamp else "")
        )
        for condition in pod.status.conditions or []:
            if condition.status != "True" and condition.reason:
                lines.append(f"  {condition.type}={condition.status}: {condition.reason}: {condition.message or ''}")
        lines += [f"  {line}" for line in _container_lines(pod)]
    events = _events(core, namespace, names, deployment.metadata.creation_timestamp)
    if events:
        lines.append("warning events:")
        lines += [f"  {line}" for line in events]
    logs = [line for pod in sorted(pods, key=lambda p: p.metadata.name) for line in _log_tail(core, namespace, pod)]
    evidence = "\n".join(lines)
    hints = [
        hint
        for key, hint in HINTS.items()
        if key in evidence and not (key == "CrashLoopBackOff" and "OOMKilled" in evidence)
    ]  # the OOM kills are the crashes
    why = _why(evidence)
    first = "; ".join(filter(None, [headline, why]))
    said = [line.removeprefix("  | ") for line in logs if line.startswith("  | ")]
    if said:  # what the server said last, usually why it exited
        first += f"; its log ends: {said[-1].strip()}"
    if hints:
        first += " -> " + "; ".join(dict.fromkeys(hints))
    return "\n".join([first, evidence, *logs])


def _why(evidence: str) -> str:
    """The most telling line of the evidence, in short."""
    for marker in (
        "OOMKilled",
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "FailedCreate",
        "Unschedulable",
        "FailedScheduling",
    ):
        for line in evidence.splitlines():
            if marker in line:
                return line.strip()
    return ""
