"""Kubernetes for gawm, with the official ``kubernetes`` client: connect, render the model-server manifests from
settings, apply them idempotently, wait for the rollout (and say why it failed), scale, read pod -> node -> GPU
placement and cluster facts, and delete what was applied.

Modules: ``connect`` (kubeconfig or in-cluster config, API errors in words), ``manifests`` (objects from settings; also
writes ``k8s/base``), ``apply`` (create-or-replace, delete, wait until gone), ``rollout`` (wait and diagnose), ``facts``
(placement, nodes, versions) and ``loadjob`` (the in-cluster load-generator Job's entry point). The kubelet stand-in
of the tests is ``tests/node_simulator.py``, not part of the package. The backend built on them is
``gawm_lib.backends.kubernetes``.
"""

from gawm_lib.cluster.apply import ObjectRef, apply_objects, delete_objects, wait_gone
from gawm_lib.cluster.connect import ClusterError, connect, describe_api_error
from gawm_lib.cluster.facts import Placement, cluster_facts, placements
from gawm_lib.cluster.manifests import (
    MODEL_SERVER,
    deployment_name,
    render_access,
    render_namespace,
    render_server,
    selector_of,
)
from gawm_lib.cluster.rollout import RolloutError, diagnose, scale, wait_for_rollout

__all__ = [
    "MODEL_SERVER",
    "ClusterError",
    "ObjectRef",
    "Placement",
    "RolloutError",
    "apply_objects",
    "cluster_facts",
    "connect",
    "delete_objects",
    "deployment_name",
    "describe_api_error",
    "diagnose",
    "placements",
    "render_access",
    "render_namespace",
    "render_server",
    "scale",
    "selector_of",
    "wait_for_rollout",
    "wait_gone",
]
