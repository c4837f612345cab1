"""A real single-node Kubernetes 1.20.2 cluster for tests: a real kubelet, containerd, kube-proxy and the CNI bridge
on this machine (k8s/testenv/node.py, the same code as ``make cluster-up``), started once per test session by the
``real_node`` fixture and stopped at the end. tests/conftest.py imports the fixtures.

It coexists with the stand-in control plane of tests/k8s_env.py (fixture ``cluster``: free loopback ports, a node
simulator, its own temporary folder): this one has fixed ports (API server https://127.0.0.1:16443, etcd 12379,
kubelet :10250 on the machine's own address) and its state in ``$GAWM_NODE_DIR`` (default /var/lib/gawm-node). The
stand-in stays for what no node here can be (GPU nodes, ``nvidia.com/gpu`` capacity, scheduling failures across
nodes) and for the workbench backend's tests that need no running container.

The tests never build: binaries and images come from ``make test-prereqs``; when they are missing the fixture fails at
once, naming it. When a node is already up (``make cluster-up`` before pytest) the tests use it and leave it up; a
node left half-running by a killed session is taken down first. There is one node per machine, so test sessions
that use it take turns (``$GAWM_NODE_DIR/.tests.lock``; a second one waits up to 240 s, then fails naming the first).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client

ROOT = Path(__file__).resolve().parent.parent
NODE_PY = ROOT / "k8s" / "testenv" / "node.py"
PREREQS = "make test-prereqs"


def _load_node_module():
    spec = importlib.util.spec_from_file_location("gawm_testenv_node", NODE_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


node_py = _load_node_module()


@dataclass
class RealNode:
    """The running node: its admin kubeconfig and API client, its name, address and kubectl."""

    node: object = field(default_factory=lambda: node_py.Node())
    baseline: dict | None = None  # the host before this session first started the node (None: found it running)
    started_here: bool = False
    api: client.ApiClient | None = None
    timings: dict = field(default_factory=dict)

    name = node_py.NODE_NAME
    pod_cidr = node_py.POD_CIDR
    service_cidr = node_py.SERVICE_CIDR
    host_python_image = node_py.HOST_PYTHON_IMAGE

    @property
    def kubeconfig(self) -> Path:
        return node_py.kubeconfig_path()

    @property
    def kubectl(self) -> Path:
        return node_py.bin_dir() / "kubectl"

    @property
    def state(self) -> dict:
        return self.node.load() or {}

    @property
    def ip(self) -> str:
        return self.state["ip"]

    def is_up(self) -> bool:
        state = self.node.load()
        if not state:
            return False
        alive = self.node.components(state)
        return bool(alive) and all(alive.values()) and self.node.node_ready(state)

    def ensure_up(self) -> None:
        if self.is_up():
            if self.api is None:
                self.api = self._client()
            return
        if self.node.load() is not None:  # a node not (fully) running, left by a killed session: down first
            self.node.down()
        if self.baseline is None and not self.started_here:
            self.baseline = node_py.snapshot()  # the host without any node
        start = time.monotonic()
        self.node.up()
        self.timings.setdefault("up_s", []).append(round(time.monotonic() - start, 1))
        self.started_here = True
        self.api = self._client()

    def down(self) -> dict:
        """Stop the node (only one this session started); returns what differs on the host from before."""
        start = time.monotonic()
        left = self.node.down()
        self.timings.setdefault("down_s", []).append(round(time.monotonic() - start, 1))
        if self.api is not None:
            self.api.close()
            self.api = None
        return left

    def _client(self) -> client.ApiClient:
        state = self.state
        configuration = client.Configuration()
        configuration.host = f"https://127.0.0.1:{node_py.API_PORT}"
        configuration.ssl_ca_cert = str(Path(state["dir"]) / "pki" / "ca.crt")
        configuration.api_key = {"authorization": f"Bearer {state['tokens']['admin']}"}
        return client.ApiClient(configuration)


def require_prerequisites() -> None:
    missing = node_py.missing_prerequisites()
    if missing:
        pytest.fail(
            "the local Kubernetes node is not set up: missing "
            + "; ".join(missing)
            + f". Set it up once with `{PREREQS}` (as root; the Kubernetes build takes 7.5-16 min on 2 cores); "
            "`make test` does this before pytest starts.",
            pytrace=False,
        )


SESSION_WAIT_S = 240.0


@contextlib.contextmanager
def one_session_at_a_time(wait_s: float = SESSION_WAIT_S):
    """There is one node per machine: a second test session that wants it waits for the first to finish (it may take
    the node down at its end), then fails naming the holder."""
    folder = node_py.state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".tests.lock", "a+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.seek(0)
                    pytest.fail(
                        f"another test session ({handle.read().strip() or 'unknown'}) holds the real node "
                        f"({folder / '.tests.lock'}); waited {wait_s:g} s",
                        pytrace=False,
                    )
                time.sleep(1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n")
        handle.flush()
        yield


@pytest.fixture(scope="session")
def real_node_session():
    """One node for the whole session (started at the first use); stopped at the end if this session started it."""
    require_prerequisites()
    with one_session_at_a_time():
        holder = RealNode()
        try:
            yield holder
        finally:
            if holder.started_here and holder.node.load() is not None:  # a node found running is left as it was
                holder.down()


@pytest.fixture
def real_node(real_node_session: RealNode) -> RealNode:
    """The node, up and Ready (started again if a test took it down)."""
    real_node_session.ensure_up()
    return real_node_session


_names = itertools.count()


@pytest.fixture
def node_namespace(real_node: RealNode):
    """A fresh namespace on the real node; deleted after the test (its pods go with it)."""
    name = f"gawm-rn{os.getpid() % 10000}-{next(_names)}"
    core = client.CoreV1Api(real_node.api)
    core.create_namespace({"metadata": {"name": name}})
    # pods need the namespace's default ServiceAccount (the controller-manager makes it within a second)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(client.exceptions.ApiException):
            if core.read_namespaced_service_account("default", name).secrets:
                break
        time.sleep(0.2)
    yield name
    with contextlib.suppress(Exception):
        core.delete_namespace(name, grace_period_seconds=0)
