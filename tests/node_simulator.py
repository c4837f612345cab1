"""A stand-in for the kubelets of a control plane that has no nodes, for testing gawm against a real Kubernetes API.

A real kube-apiserver, scheduler and controller-manager decide everything here: which pods exist, where they go, when a
rollout is done. The simulator does, through the API, the part a kubelet does and no more: it registers nodes (capacity
incl. ``nvidia.com/gpu``, a Ready condition, GPU labels) and removes the not-ready taint the API server gives new nodes;
it reports the pods bound to its nodes as Running and Ready, with pod IPs from the loopback range (127.0.1.10 upward),
writes the events a kubelet would, and finishes graceful deletions. It does not run containers, pull images, enforce
resources or isolate anything. Two things make it useful beyond bookkeeping:

- ``run_servers = True``: for a pod whose container runs ``python -m gawm_lib.server``, it starts that real server (with
  the pod's arguments and environment, ``$(VAR)`` expanded as a kubelet does) bound to the pod IP, and reports the pod
  Ready only when the pod's own readiness probe (HTTP GET) passes, so that clients reach the replicas end to end;
- failures as real nodes show them: images from a registry it cannot reach (``pullable``; by default any image under
  ``registry.invalid/``) go ErrImagePull -> ImagePullBackOff; ``fail(labels, "CrashLoopBackOff" | "OOMKilled")`` makes
  matching pods crash-loop (exit 1) or be OOM-killed (exit 137).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gawm_lib import processes

log = logging.getLogger("gawm.cluster.simulator")
FAILURES = ("CrashLoopBackOff", "OOMKilled")
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


@dataclass
class SimNode:
    """A node to register: its capacity (Kubernetes quantities) and, for GPU nodes, NVIDIA GPU feature discovery
    labels."""

    name: str
    cpu: str = "8"
    memory: str = "32Gi"
    gpus: int = 0
    gpu_product: str = "NVIDIA-A16"
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Pod:
    uid: str
    ip: str
    node_ip: str
    started: float
    start_time: str
    proc: Any = None
    exit_code: int | None = None
    ready_since: str | None = None
    reported: Any = None
    events: set = field(default_factory=set)
    last_probe: float = 0.0
    probe_ok: bool = False


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables are replaced, ``$$`` is a literal ``$``, others stay."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


class NodeSimulator:
    """Kubelet stand-in for ``nodes`` on the cluster of ``api_client``; a context manager (start/stop a thread)."""

    def __init__(
        self,
        api_client: client.ApiClient,
        nodes: list[SimNode],
        logs_dir: Path,
        pod_ip_base: str = "127.0.1.10",
        pullable: Callable[[str], bool] | None = None,
        poll_s: float = 0.2,
    ):
        self.core = client.CoreV1Api(api_client)
        self.nodes = {n.name: n for n in nodes}
        self.node_ips = {n.name: str(ipaddress.ip_address("127.0.1.1") + i) for i, n in enumerate(nodes)}
        self.logs_dir = Path(logs_dir)
        self.pod_ip_base = ipaddress.ip_address(pod_ip_base)
        self.pullable = pullable or (lambda image: not image.startswith("registry.invalid/"))
        self.poll_s = poll_s
        self.run_servers = False
        self.failures: list[tuple[dict[str, str], str]] = []
        self.errors: list[str] = []  # what went wrong inside the loop (tests assert it stays empty)
        self._pods: dict[str, _Pod] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life ----------------------------------------------------------------------------------------------------------
    def __enter__(self) -> NodeSimulator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for node in self.nodes.values():
            self._register(node)
        self._thread = threading.Thread(target=self._run, name="gawm-node-simulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for pod in self._pods.values():
            self._kill(pod)

    def fail(self, labels: dict[str, str], failure: str) -> None:
        """Make pods whose labels include ``labels`` fail with ``failure`` (one of :data:`FAILURES`)."""
        if failure not in FAILURES:
            raise ValueError(f"failure must be one of {FAILURES}, got {failure!r}")
        self.failures.append((dict(labels), failure))

    # -- nodes ---------------------------------------------------------------------------------------------------------
    def _register(self, node: SimNode) -> None:
        labels = {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **node.labels,
        }
        capacity = {"cpu": node.cpu, "memory": node.memory, "pods": "110", "ephemeral-storage": "100Gi"}
        if node.gpus:
            capacity["nvidia.com/gpu"] = str(node.gpus)
            labels.update(
                {
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": node.gpu_product,
                    "nvidia.com/gpu.count": str(node.gpus),
                }
            )
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
            "spec": {"taints": node.taints} if node.taints else {},
        }
        with contextlib.suppress(ApiException):
            self.core.delete_node(node.name)
        self.core.create_node(body)
        now = _now()
        conditions = [
            {
                "type": t,
                "status": "False",
                "reason": f"KubeletHas{r}",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
            for t, r in (
                ("MemoryPressure", "SufficientMemory"),
                ("DiskPressure", "NoDiskPressure"),
                ("PIDPressure", "SufficientPID"),
            )
        ]
        conditions.append(
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
                "message": "gawm node simulator (no real kubelet)",
            }
        )
        self.core.patch_node_status(
            node.name,
            {
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "conditions": conditions,
                    "addresses": [
                        {"type": "InternalIP", "address": self.node_ips[node.name]},
                        {"type": "Hostname", "address": node.name},
                    ],
                    "nodeInfo": {
                        "kubeletVersion": "v1.20.2-gawm-simulator",
                        "kubeProxyVersion": "v1.20.2-gawm-simulator",
                        "containerRuntimeVersion": "gawm-simulator://0",
                        "osImage": "gawm node simulator",
                        "operatingSystem": "linux",
                        "architecture": "amd64",
                        "kernelVersion": "n/a",
                        "machineID": uuid.uuid4().hex,
                        "systemUUID": str(uuid.uuid4()),
                        "bootID": str(uuid.uuid4()),
                    },
                }
            },
        )
        # The API server taints every new node not-ready; the node lifecycle controller (off here) would lift it.
        for _ in range(20):
            current = self.core.read_node(node.name)
            taints = [t for t in current.spec.taints or [] if t.key != NOT_READY_TAINT]
            if len(taints) == len(current.spec.taints or []):
                return
            current.spec.taints = taints or None
            with contextlib.suppress(ApiException):
                self.core.replace_node(node.name, current)
            time.sleep(0.05)

    # -- pods ----------------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # keep simulating; tests look at .errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
                log.exception("node simulator")
            self._stop.wait(self.poll_s)

    def _sync(self) -> None:
        seen = set()
        for pod in self.core.list_pod_for_all_namespaces().items:
            if pod.spec.node_name not in self.nodes:
                continue
            uid = pod.metadata.uid
            seen.add(uid)
            state = self._pods.get(uid)
            if pod.metadata.deletion_timestamp:
                self._finish_deletion(pod, state)
                continue
            if state is None:
                state = self._pods[uid] = _Pod(
                    uid, self._allocate_ip(pod), self.node_ips[pod.spec.node_name], time.monotonic(), _now()
                )
            status = self._status(pod, state)
            if status != state.reported:
                try:
                    self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})
                    state.reported = status
                except ApiException as exc:
                    if exc.status not in (404, 409):
                        raise
        for uid in set(self._pods) - seen:
            self._kill(self._pods.pop(uid))

    def _allocate_ip(self, pod: Any) -> str:
        used = {p.ip for p in self._pods.values()}
        ports = [p.container_port for c in pod.spec.containers for p in c.ports or []]
        candidate = self.pod_ip_base
        while True:
            ip = str(candidate)
            if ip not in used and (not self.run_servers or all(self._port_free(ip, port) for port in ports)):
                return ip
            candidate += 1

    @staticmethod
    def _port_free(ip: str, port: int) -> bool:
        with socket.socket() as sock:
            try:
                sock.bind((ip, port))
                return True
            except OSError:
                return False

    def _failure(self, pod: Any) -> str | None:
        labels = pod.metadata.labels or {}
        return next((f for match, f in self.failures if all(labels.get(k) == v for k, v in match.items())), None)

    def _event(self, pod: Any, state: _Pod, kind: str, reason: str, message: str) -> None:
        if (reason, message) in state.events:
            return
        state.events.add((reason, message))
        now = _now()
        with contextlib.suppress(ApiException):
            self.core.create_namespaced_event(
                pod.metadata.namespace,
                {
                    "metadata": {"name": f"{pod.metadata.name}.{uuid.uuid4().hex[:12]}"},
                    "involvedObject": {
                        "kind": "Pod",
                        "namespace": pod.metadata.namespace,
                        "name": pod.metadata.name,
                        "uid": pod.metadata.uid,
                        "apiVersion": "v1",
                    },
                    "reason": reason,
                    "message": message,
                    "type": kind,
                    "count": 1,
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "source": {"component": "kubelet", "host": pod.spec.node_name},
                },
            )

    def _status(self, pod: Any, state: _Pod) -> dict[str, Any]:
        """The status a kubelet would report now."""
        failure = self._failure(pod)
        containers, all_ready, phase = [], True, "Running"
        for container in pod.spec.containers:
            image = container.image
            cs: dict[str, Any] = {
                "name": container.name,
                "image": image,
                "imageID": "",
                "restartCount": 0,
                "ready": False,
                "started": False,
                "state": {},
            }
            if not self.pullable(image):
                host = image.split("/")[0]
                reason = "ErrImagePull" if time.monotonic() - state.started < 1.0 else "ImagePullBackOff"
                why = (
                    f'rpc error: code = Unknown desc = pinging container registry {host}: Get "https://{host}/v2/": '
                    f"dial tcp: lookup {host}: no such host"
                )
                self._event(pod, state, "Normal", "Pulling", f'Pulling image "{image}"')
                self._event(pod, state, "Warning", "Failed", f'Failed to pull image "{image}": {why}')
                message = why if reason == "ErrImagePull" else f'Back-off pulling image "{image}"'
                if reason == "ImagePullBackOff":
                    self._event(pod, state, "Normal", "BackOff", message)
                cs["state"] = {"waiting": {"reason": reason, "message": message}}
                containers.append(cs)
                all_ready, phase = False, "Pending"
                continue
            cs["imageID"] = (
                f"docker.io/simulated/{image.split(':')[0].split('/')[-1]}@sha256:"
                f"{uuid.uuid5(uuid.NAMESPACE_URL, image).hex * 2}"
            )
            cs["containerID"] = f"sim://{state.uid}-{container.name}"
            self._event(pod, state, "Normal", "Pulled", f'Container image "{image}" already present on machine')
            exit_code = self._exit_code(pod, container, state) if failure is None else None
            if failure is not None or exit_code is not None:
                oom = failure == "OOMKilled"
                code = 137 if oom else (exit_code if exit_code is not None else 1)
                cs["restartCount"] = 1 + int((time.monotonic() - state.started) / 5)
                cs["state"] = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off 10s restarting failed container={container.name} "
                        f"pod={pod.metadata.name}_{pod.metadata.namespace}({pod.metadata.uid})",
                    }
                }
                cs["lastState"] = {
                    "terminated": {
                        "exitCode": code,
                        "reason": "OOMKilled" if oom else "Error",
                        "startedAt": state.start_time,
                        "finishedAt": state.start_time,
                    }
                }
                self._event(pod, state, "Warning", "BackOff", "Back-off restarting failed container")
                containers.append(cs)
                all_ready = False
                continue
            ready = self._ready(pod, container, state)
            self._event(pod, state, "Normal", "Started", f"Started container {container.name}")
            cs.update(ready=ready, started=True, state={"running": {"startedAt": state.start_time}})
            containers.append(cs)
            all_ready = all_ready and ready
        if all_ready and state.ready_since is None:
            state.ready_since = _now()
        if not all_ready:
            state.ready_since = None
        ready_status = "True" if all_ready else "False"
        since = state.ready_since or state.start_time
        conditions = [
            {"type": "Initialized", "status": "True", "lastTransitionTime": state.start_time},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": state.start_time},
            {"type": "ContainersReady", "status": ready_status, "lastTransitionTime": since},
            {"type": "Ready", "status": ready_status, "lastTransitionTime": since},
        ]
        return {
            "phase": phase,
            "hostIP": state.node_ip,
            "podIP": state.ip,
            "podIPs": [{"ip": state.ip}],
            "startTime": state.start_time,
            "conditions": conditions,
            "containerStatuses": containers,
        }

    # -- real model servers --------------------------------------------------------------------------------------------
    @staticmethod
    def _is_server(container: Any) -> bool:
        return (container.command or [])[-2:] == ["-m", "gawm_lib.server"]

    def _exit_code(self, pod: Any, container: Any, state: _Pod) -> int | None:
        """Start the pod's model server once (when ``run_servers``); its exit code once it has exited."""
        if not (self.run_servers and self._is_server(container)):
            return None
        if state.proc is None:
            env: dict[str, str] = {}
            for var in container.env or []:
                if var.value is not None:
                    env[var.name] = expand(var.value, env)
            args = [expand(a, env) for a in container.args or []]
            if "--host" in args:
                args[args.index("--host") + 1] = state.ip  # the pod's address: what 0.0.0.0 means inside a pod
            # Paths in the environment name the image's file system, which does not exist here.
            env = {k: v for k, v in env.items() if not v.startswith("/")}
            log_path = self.logs_dir / f"{pod.metadata.namespace}_{pod.metadata.name}.log"
            state.proc = processes.spawn(
                [sys.executable, "-m", "gawm_lib.server", *args, "--exit-with-parent"], log_path, env=env
            )
        if state.exit_code is None:
            state.exit_code = state.proc.poll()
        return state.exit_code

    def _ready(self, pod: Any, container: Any, state: _Pod) -> bool:
        """Without a server process the container counts as ready at once; with one, its readiness probe decides."""
        probe = container.readiness_probe
        if state.proc is None or probe is None or probe.http_get is None:
            return True
        if time.monotonic() - state.last_probe < 0.5:
            return state.probe_ok
        state.last_probe = time.monotonic()
        port = probe.http_get.port
        if isinstance(port, str):
            port = next(p.container_port for p in container.ports if p.name == port)
        try:
            state.probe_ok = httpx.get(f"http://{state.ip}:{port}{probe.http_get.path}", timeout=1.0).status_code < 400
        except httpx.HTTPError:
            state.probe_ok = False
        return state.probe_ok

    def _kill(self, state: _Pod | None) -> None:
        if state is not None and state.proc is not None:
            processes.stop(state.proc, timeout_s=5)

    def _finish_deletion(self, pod: Any, state: _Pod | None) -> None:
        """What a kubelet does for a pod being deleted: stop its containers, then remove the pod for good."""
        if state is not None:
            self._event(pod, state, "Normal", "Killing", "Stopping container " + pod.spec.containers[0].name)
        self._kill(state)
        self._pods.pop(pod.metadata.uid, None)
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=pod.metadata.uid)
                ),
            )
