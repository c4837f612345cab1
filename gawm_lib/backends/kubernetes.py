"""Replicas as a Kubernetes Deployment + Service per workload (``backend.kind: kubernetes``).

On enter it renders the objects from the settings (``gawm_lib.cluster.manifests``), applies them (create, else replace
what an earlier gawm run left), waits for the rollout (``backend.startup_timeout_s``) and gives the ready pods'
addresses as replicas. On exit, also after an exception or Ctrl-C, it saves the pods' logs where it can, deletes what it
applied and waits until the pods are gone. A failed rollout raises :class:`BackendError` with the diagnosis of
``gawm_lib.cluster.rollout.diagnose`` (scheduler reasons such as ``Insufficient nvidia.com/gpu``, image pull errors,
crash loops, OOM kills), a missing namespace or denied RBAC say so.

Pod IPs are reachable from inside the cluster (or from a node); run the experiment there, or use the in-cluster load
Job (``k8s/jobs/loadgen``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gawm_lib import cluster
from gawm_lib.backends import Backend, BackendError, Replica
from gawm_lib.cluster.manifests import MANAGED_BY
from gawm_lib.config import BackendConfig, WorkloadConfig

log = logging.getLogger("gawm.backends.kubernetes")
OWNER = (MANAGED_BY, "gawm")


class KubernetesBackend(Backend):
    """``backend.replicas`` model-server pods of one workload; ``.replicas`` holds the ready ones, ``.placement`` says
    where they run, ``.facts`` what the cluster is."""

    def __init__(
        self,
        workload: WorkloadConfig,
        backend: BackendConfig,
        logs_dir: Path,
        api_client: client.ApiClient | None = None,
        progress: Callable[[dict[str, int]], None] | None = None,
    ):
        self.workload = workload
        self.backend = backend
        self.logs_dir = Path(logs_dir)
        self.name = cluster.deployment_name(workload.name)
        self.namespace = backend.namespace
        self.replicas: list[Replica] = []
        self.placement: list[cluster.Placement] = []
        self.facts: dict[str, Any] = {}
        self._api = api_client
        self._progress = progress or self._log_progress
        self._applied: list[cluster.ObjectRef] = []
        self.wanted = backend.replicas  # replicas asked for, after any scale()
        self.rollout_s: float | None = None  # from the first apply until every replica was ready

    # -- life ----------------------------------------------------------------------------------------------------------
    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            try:
                self._api = cluster.connect(self.backend.kubeconfig, self.backend.context)
            except cluster.ClusterError as exc:
                raise BackendError(str(exc)) from None
        return self._api

    def start(self) -> list[Replica]:
        objects = cluster.render_server(self.workload, self.backend)
        self._check_namespace()
        start = time.monotonic()
        for obj in objects:  # one at a time, so that exit deletes exactly what landed
            try:
                self._applied += cluster.apply_objects(self.api, [obj], owned_by=OWNER)
            except cluster.ClusterError as exc:
                raise BackendError(f"{self.workload.name}: {exc}") from None
        self._wait()
        self.rollout_s = round(time.monotonic() - start, 2)
        self.facts = cluster.cluster_facts(self.api)
        self._record(objects)
        return self.replicas

    def _check_namespace(self) -> None:
        # A namespaced list tells whether we may work here; the namespace itself is cluster-scoped (the Role cannot
        # grant reading it), so a missing one is told only where reading namespaces is allowed.
        try:
            client.AppsV1Api(self.api).list_namespaced_deployment(self.namespace, limit=1)
        except ApiException as exc:
            raise BackendError(
                cluster.describe_api_error(exc, f"list Deployments in {self.namespace!r}", self.namespace)
            ) from None
        except Exception as exc:  # cannot reach the API server
            raise BackendError(cluster.describe_api_error(exc, "connect")) from None
        try:
            client.CoreV1Api(self.api).read_namespace(self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise BackendError(cluster.describe_api_error(exc, "deploy", self.namespace)) from None

    def _wait(self) -> None:
        try:
            cluster.wait_for_rollout(
                self.api, self.namespace, self.name, self.backend.startup_timeout_s, progress=self._progress
            )
        except cluster.ClusterError as exc:
            raise BackendError(f"{self.workload.name} on Kubernetes: {exc}") from None
        self.placement = cluster.placements(self.api, self.namespace, cluster.selector_of(self.workload.name))
        ready = [p for p in self.placement if p.ready and p.pod_ip]
        self.replicas = [
            Replica(self.workload.name, index, p.pod_ip, self.backend.port, None, self.logs_dir / f"{p.pod}.log")
            for index, p in enumerate(ready)
        ]

    def update(self, workload: WorkloadConfig) -> list[Replica]:
        """Roll the replicas over to new workload settings (a rolling update) and wait until it is done."""
        if workload.name != self.workload.name:
            raise BackendError(f"update: this backend serves {self.workload.name!r}, not {workload.name!r}")
        self.workload = workload
        objects = cluster.render_server(workload, self.backend.model_copy(update={"replicas": self.wanted}))
        try:
            cluster.apply_objects(self.api, objects, owned_by=OWNER)
        except cluster.ClusterError as exc:
            raise BackendError(f"{self.workload.name}: {exc}") from None
        self._wait()
        self._record(objects)
        return self.replicas

    def scale(self, replicas: int) -> list[Replica]:
        """Change the number of replicas and wait until exactly that many are ready."""
        try:
            cluster.scale(self.api, self.namespace, self.name, replicas)
            self.wanted = replicas
        except cluster.ClusterError as exc:
            raise BackendError(str(exc)) from None
        self._wait()
        return self.replicas

    def _record(self, objects: list[dict]) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "namespace": self.namespace,
            "deployment": self.name,
            "rollout_s": self.rollout_s,
            "cluster": self.facts,
            "placement": [p.to_dict() for p in self.placement],
            "objects": objects,
        }
        (self.logs_dir / f"{self.workload.name}-kubernetes.json").write_text(json.dumps(record, indent=2, default=str))

    def _log_progress(self, counts: dict[str, int]) -> None:
        log.info("%s: %d/%d ready (%d updated)", self.name, counts["ready"], counts["wanted"], counts["updated"])

    # -- teardown ------------------------------------------------------------------------------------------------------
    def _save_logs(self) -> None:
        core = client.CoreV1Api(self.api)
        for placement in self.placement:
            try:
                text = core.read_namespaced_pod_log(
                    placement.pod, self.namespace, container="server", _request_timeout=10
                )
            except Exception:  # no kubelet to ask, pod gone, or not allowed: the log is nice to have
                continue
            (self.logs_dir / f"{placement.pod}.log").write_text(text)

    def _remove_pods_with_nothing_running(self) -> None:
        """Delete at once (no grace period) the pods with nothing left to stop: those whose containers never started
        (an image that could not be pulled, a pod never scheduled), and those being deleted whose containers have all
        exited. A 1.20 kubelet takes up to a minute to notice the deletion of a pod backing off a pull, and as long
        again to drop a stopped pod's object (seen in CI: a server that exited 0.5 s after SIGTERM, its object still
        there 60 s later). Where not allowed, they go the slow way.

        Runs at each look of the teardown's wait: a ReplicaSet not yet marked for deletion replaces the pod deleted
        here at once, and its replacement never runs either (seen in CI: it outlived the 60 s teardown)."""
        core = client.CoreV1Api(self.api)
        selector = ",".join(f"{k}={v}" for k, v in cluster.selector_of(self.workload.name).items())
        try:
            pods = core.list_namespaced_pod(self.namespace, label_selector=selector).items
        except Exception:
            return
        for pod in pods:
            statuses = pod.status.container_statuses or []
            never_ran = all(
                not (s.state and (s.state.running or s.state.terminated))
                and not (s.last_state and (s.last_state.running or s.last_state.terminated))
                and not s.restart_count
                for s in statuses
            )
            stopped = pod.metadata.deletion_timestamp is not None and all(
                s.state and s.state.terminated for s in statuses
            )
            if never_ran or stopped:
                try:
                    core.delete_namespaced_pod(pod.metadata.name, self.namespace, grace_period_seconds=0)
                except Exception:  # gone already, or not allowed
                    continue

    def stop(self) -> list[str]:
        """Delete what was applied and wait until its pods are gone; returns what could not be removed (logged)."""
        if not self._applied:
            return []
        refs, self._applied = self._applied, []
        self._save_logs()
        errors = cluster.delete_objects(self.api, refs)
        left = cluster.wait_gone(
            self.api,
            refs,
            self.namespace,
            cluster.selector_of(self.workload.name),
            timeout_s=self.backend.teardown_timeout_s,
            each_poll=self._remove_pods_with_nothing_running,
        )
        problems = errors + [f"still there after {self.backend.teardown_timeout_s:g} s: {x}" for x in left]
        for problem in problems:
            log.error("%s teardown: %s", self.name, problem)
        self.replicas = []
        return problems
