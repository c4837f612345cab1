"""An API client from a kubeconfig file or the pod's service account, and Kubernetes API errors said in words."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError


class ClusterError(RuntimeError):
    """Something the cluster refused or could not do; the message says what and, where it can, what to change."""


def connect(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An API client for ``kubeconfig`` (else ``$KUBECONFIG``, else ``~/.kube/config``) at ``context`` (else the current
    one); inside a pod with no kubeconfig, the pod's service account (in-cluster config)."""
    configuration = client.Configuration()
    default = os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
    have_file = kubeconfig is not None or any(Path(p).expanduser().is_file() for p in default.split(os.pathsep) if p)
    try:
        if have_file:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            raise ClusterError(
                f"no kubeconfig ({kubeconfig or default} does not exist) and not running in a pod: set "
                "backend.kubeconfig or KUBECONFIG"
            )
    except config.ConfigException as exc:
        raise ClusterError(f"cannot load the Kubernetes configuration: {exc}") from None
    return client.ApiClient(configuration)


def api_message(exc: ApiException) -> str:
    """The API server's own message of an error answer (its Status object), else the HTTP reason."""
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"


def describe_api_error(exc: BaseException, doing: str, namespace: str | None = None) -> str:
    """One sentence for an error of the API (or of reaching it) while ``doing`` something, with what to change."""
    if isinstance(exc, ApiException):
        message = api_message(exc)
        if exc.status == 0 or exc.status is None:
            return f"{doing}: cannot reach the API server: {exc.reason}"
        if exc.status == 401:
            return f"{doing}: unauthorized (401): the kubeconfig's credentials are not accepted: {message}"
        if exc.status == 403:
            return (
                f"{doing}: RBAC denied (403): {message}. Bind the Role in k8s/base (kubectl apply -k k8s/base) to "
                "this user or service account, or use one that has it"
            )
        if exc.status == 404 and namespace and f'namespaces "{namespace}" not found' in message:
            return (
                f"{doing}: namespace {namespace!r} does not exist: create it (kubectl apply -k k8s/base makes 'gawm') "
                "or set backend.namespace"
            )
        return f"{doing}: {exc.status} {exc.reason}: {message}"
    if isinstance(exc, HTTPError):
        return f"{doing}: cannot reach the API server: {exc}"
    return f"{doing}: {type(exc).__name__}: {exc}"
