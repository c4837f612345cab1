"""Client-side apply of plain-dict objects (create, else replace at the current resourceVersion), deletion, and waiting
until objects and their pods are gone.

Server-side apply is avoided on purpose: it is buggy on older API servers (1.20), and create-or-replace gives the same
result for objects that gawm renders whole. Replacing keeps what the cluster owns (a Service's cluster IP).
"""

from __future__ import annotations

import copy
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from gawm_lib.cluster.connect import ClusterError, describe_api_error


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str
    namespace: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"


def ref_of(obj: dict[str, Any]) -> ObjectRef:
    meta = obj.get("metadata", {})
    return ObjectRef(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))


_DYNAMIC: weakref.WeakKeyDictionary[client.ApiClient, DynamicClient] = weakref.WeakKeyDictionary()


def _dynamic(api_client: client.ApiClient) -> DynamicClient:
    """One dynamic client per API client: its discovery of the server's resources is done once."""
    if api_client not in _DYNAMIC:
        _DYNAMIC[api_client] = DynamicClient(api_client)
    return _DYNAMIC[api_client]


def _resource(dyn: DynamicClient, ref: ObjectRef):
    try:
        return dyn.resources.get(api_version=ref.api_version, kind=ref.kind)
    except ResourceNotFoundError:
        version = client.VersionApi(dyn.client).get_code().git_version
        raise ClusterError(f"{ref}: {ref.kind} {ref.api_version} is not served by this cluster ({version})") from None


def _keep_cluster_owned(body: dict[str, Any], existing: Any) -> None:
    # Annotations that controllers write (a Deployment's revision): dropping them would count as a change.
    annotations = dict(existing.metadata.annotations or {})
    if annotations:
        body["metadata"]["annotations"] = {**annotations, **body["metadata"].get("annotations", {})}
    if body["kind"] == "Service":  # allocated by the cluster, immutable
        for key in ("clusterIP", "clusterIPs", "healthCheckNodePort"):
            value = getattr(existing.spec, key, None)
            if value and key not in body.get("spec", {}):
                body["spec"][key] = value.to_dict() if hasattr(value, "to_dict") else value


def apply_objects(
    api_client: client.ApiClient, objects: list[dict[str, Any]], owned_by: tuple[str, str] | None = None
) -> list[ObjectRef]:
    """Create each object, or replace it where it exists; return their references, in order.

    ``owned_by=(label, value)``: an existing object without that label is left alone and a :class:`ClusterError` says
    so (gawm does not take over what someone else deployed).
    """
    dyn = _dynamic(api_client)
    refs = []
    for obj in objects:
        ref = ref_of(obj)
        resource = _resource(dyn, ref)
        if resource.namespaced and not ref.namespace:
            raise ClusterError(f"{ref}: a namespaced object needs metadata.namespace")
        for attempt in range(4):
            try:
                resource.create(body=obj, namespace=ref.namespace)
                break
            except ApiException as exc:
                if exc.status != 409:
                    raise ClusterError(describe_api_error(exc, f"create {ref}", ref.namespace)) from None
            try:
                existing = resource.get(name=ref.name, namespace=ref.namespace)
                labels = dict(existing.metadata.labels or {})
                if owned_by and labels.get(owned_by[0]) != owned_by[1]:
                    raise ClusterError(
                        f"{ref} exists and was not deployed by gawm (no label {owned_by[0]}="
                        f"{owned_by[1]}): delete it or use another namespace"
                    )
                body = copy.deepcopy(obj)
                body["metadata"]["resourceVersion"] = existing.metadata.resourceVersion
                _keep_cluster_owned(body, existing)
                resource.replace(body=body, namespace=ref.namespace)
                break
            except ApiException as exc:
                if exc.status == 409 and attempt < 3:  # changed meanwhile, or deleted: try again
                    continue
                raise ClusterError(describe_api_error(exc, f"replace {ref}", ref.namespace)) from None
        refs.append(ref)
    return refs


def delete_objects(api_client: client.ApiClient, refs: list[ObjectRef], propagation: str = "Foreground") -> list[str]:
    """Delete each object (its dependents too); objects already gone are fine. Returns the errors, as text."""
    dyn = _dynamic(api_client)
    errors = []
    for ref in reversed(refs):
        try:
            _resource(dyn, ref).delete(name=ref.name, namespace=ref.namespace, body={"propagationPolicy": propagation})
        except ApiException as exc:
            if exc.status != 404:
                errors.append(describe_api_error(exc, f"delete {ref}", ref.namespace))
        except Exception as exc:  # keep deleting the rest
            errors.append(describe_api_error(exc, f"delete {ref}", ref.namespace))
    return errors


def wait_gone(
    api_client: client.ApiClient,
    refs: list[ObjectRef],
    namespace: str | None = None,
    pod_selector: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    poll_s: float = 0.5,
    each_poll: Callable[[], None] | None = None,
) -> list[str]:
    """Wait until ``refs`` and the pods matching ``pod_selector`` in ``namespace`` are gone; return what is left.
    ``each_poll`` runs before each look (to hurry along what appears while waiting)."""
    dyn = _dynamic(api_client)
    core = client.CoreV1Api(api_client)
    deadline = time.monotonic() + timeout_s
    while True:
        if each_poll is not None:
            each_poll()
        left = []
        for ref in refs:
            try:
                _resource(dyn, ref).get(name=ref.name, namespace=ref.namespace)
                left.append(str(ref))
            except ApiException as exc:
                if exc.status != 404:  # cannot tell (not allowed to read it): waiting would not help
                    return [*left, describe_api_error(exc, f"read {ref}", ref.namespace)]
        if pod_selector and namespace:
            selector = ",".join(f"{k}={v}" for k, v in pod_selector.items())
            pods = core.list_namespaced_pod(namespace, label_selector=selector).items
            left += [f"Pod {namespace}/{p.metadata.name}" for p in pods]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(poll_s)
