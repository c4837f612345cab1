"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager and kube-scheduler
(Kubernetes 1.20.2, built once from Debian's source package by ``k8s/testenv/build-kubernetes.sh``, which
``make test-prereqs`` runs before pytest, and cached in ``~/.cache/gawm/kubernetes-1.20.2/bin``), all on loopback with
free ports, plus the node simulator of ``tests/node_simulator.py`` (no kubelet). tests/conftest.py imports the
fixtures, so that every test module shares one plane; test modules import only the plain names they need
(``Cluster``, ``GPU_NODE``, ...).

This stand-in stays for what no node on this machine can be: GPU nodes (``nvidia.com/gpu`` capacity, taints,
RuntimeClass ``nvidia``), several nodes, and pod failures made on purpose (image pull back-off, crash loop, OOM kill)
for the backend's diagnoses. What a real node does (containers, probes, Services, logs, exec, cAdvisor, rolling
updates, teardown) is tested on one: ``tests/k8s_node.py`` (fixture ``real_node``) and ``tests/test_real_node.py``.

``cluster`` (session): the running plane with two simulated nodes, ``sim-gpu-0`` (4 x nvidia.com/gpu, tainted
``nvidia.com/gpu:NoSchedule`` as GPU nodes usually are) and ``sim-cpu-0``, and the RuntimeClass ``nvidia``.
``namespace`` (per test): a fresh namespace holding the workbench's ServiceAccount, Role and RoleBinding.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client

from gawm_lib import processes
from gawm_lib.cluster import apply_objects, render_access
from node_simulator import NodeSimulator, SimNode

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "k8s" / "testenv" / "build-kubernetes.sh"
FETCH_SCRIPT = ROOT / "k8s" / "testenv" / "fetch-prometheus3.sh"
VERSION = "1.20.2"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# Controllers that need a kubelet, a cloud or volumes; without them the plane does what gawm needs.
CONTROLLERS = (
    "*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle,-attachdetach,-persistentvolume-binder,"
    "-persistentvolume-expander,-pvc-protection,-pv-protection,-csrsigning,-route,-service"
)
SERVICE_RANGE = "127.0.2.0/24"  # cluster IPs are only numbers here (no kube-proxy); keep even those on loopback


def cache_base() -> Path:
    return Path(os.environ.get("GAWM_CACHE_DIR") or Path.home() / ".cache" / "gawm")


def bin_dir() -> Path:
    cache = os.environ.get("GAWM_K8S_CACHE")
    if cache:
        return Path(cache) / "bin"
    return cache_base() / f"kubernetes-{VERSION}" / "bin"


PREREQS = "make test-prereqs"


def ensure_binaries() -> Path:
    """The cached control-plane binaries; the tests never build them (``make test-prereqs`` does, before pytest, in
    6-16 min on 2 cores, once per machine): if they are missing this fails at once, naming the command."""
    folder = bin_dir()
    missing = [str(folder / name) for name in BINARIES if not (folder / name).is_file()]
    if shutil.which("etcd") is None:
        missing.append("etcd on PATH (Debian package etcd-server)")
    if missing:
        pytest.fail(
            f"the Kubernetes {VERSION} test control plane is not set up: missing {', '.join(missing)}. "
            f"Build it once with `{PREREQS}` (or `bash {BUILD_SCRIPT.relative_to(ROOT)}`; 6-16 min on "
            "2 cores); `make test` does this before pytest starts.",
            pytrace=False,
        )
    return folder


def prometheus3_binary() -> Path:
    """Prometheus 3 (with Kubernetes service discovery), fetched once by ``make test-prereqs``
    (k8s/testenv/fetch-prometheus3.sh); fails at once, naming the command, when it is missing."""
    binary = cache_base() / "prometheus-3" / "usr" / "bin" / "prometheus"
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"Prometheus 3 is not fetched: no {binary}. Fetch it once with `{PREREQS}` "
            f"(or `bash {FETCH_SCRIPT.relative_to(ROOT)}`); `make test` does this before pytest starts.",
            pytrace=False,
        )
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(folder: Path) -> None:
    """A self-made CA, the API server's serving certificate (127.0.0.1, kubernetes.default...) and the service-account
    signing key."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=gawm-test-ca",
        cwd=folder,
    )
    (folder / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,IP:127.0.2.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
        cwd=folder,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "apiserver.crt",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        cwd=folder,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=folder)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on loopback; ``start()`` / ``stop()``."""

    workdir: Path
    bins: Path

    def __post_init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.token = secrets.token_hex(16)
        self.port = 0
        self.kubeconfig = self.workdir / "kubeconfig"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _spawn(self, name: str, cmd: list[str]) -> None:
        self.procs.append((name, processes.spawn(cmd, self.workdir / f"{name}.log")))

    def _fail(self, why: str) -> RuntimeError:
        tails = "\n".join(
            f"--- {name}.log ---\n{processes.log_tail(self.workdir / f'{name}.log', 15)}" for name, _ in self.procs
        )
        return RuntimeError(f"control plane: {why}\n{tails}")

    def start(self, timeout_s: float = 90.0) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True)
        make_pki(pki)
        (pki / "tokens.csv").write_text(f"{self.token},admin,admin-uid,system:masters\n")
        etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        shm = Path("/dev/shm")
        etcd_dir = Path(tempfile.mkdtemp(prefix="gawm-etcd-", dir=shm if shm.is_dir() else None))
        self._etcd_dir = etcd_dir
        self._spawn(
            "etcd",
            [
                shutil.which("etcd") or "etcd",
                "--name",
                "gawm",
                "--data-dir",
                str(etcd_dir),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"gawm=http://127.0.0.1:{peer_port}",
                "--log-level",
                "warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                str(self.bins / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                "--insecure-port=0",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={pki / 'sa.key'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                "--endpoint-reconciler-type=none",
                # Nodes are reached only at their InternalIP (loopback): never resolve a node name through DNS.
                "--kubelet-preferred-address-types=InternalIP",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=0",
            ],
        )
        self._write_kubeconfig(pki)
        self._wait_ready(timeout_s)
        common = [
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--port=0",
            "--secure-port=0",
            "--profiling=false",
            "--v=0",
        ]
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bins / "kube-controller-manager"),
                *common,
                f"--controllers={CONTROLLERS}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
            ],
        )
        self._spawn("kube-scheduler", [str(self.bins / "kube-scheduler"), *common])
        time.sleep(0.5)
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise self._fail(f"{name} exited with code {proc.returncode}")

    def _write_kubeconfig(self, pki: Path) -> None:
        ca = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "gawm-test",
                    "clusters": [
                        {"name": "gawm-test", "cluster": {"server": self.url, "certificate-authority-data": ca}}
                    ],
                    "users": [{"name": "admin", "user": {"token": self.token}}],
                    "contexts": [{"name": "gawm-test", "context": {"cluster": "gawm-test", "user": "admin"}}],
                }
            )
        )
        self.ca_path = pki / "ca.crt"

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(
            verify=ssl.create_default_context(cafile=str(self.ca_path)),
            headers={"Authorization": f"Bearer {self.token}"},
        ) as http:
            while True:
                for name, proc in self.procs:
                    if proc.poll() is not None:
                        raise self._fail(f"{name} exited with code {proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise self._fail(f"API server not ready after {timeout_s:g} s")
                time.sleep(0.2)

    def api_client(self, token: str | None = None) -> client.ApiClient:
        """A client as the admin, or as the bearer of ``token`` (for example a ServiceAccount's)."""
        configuration = client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = str(self.ca_path)
        configuration.api_key = {"authorization": f"Bearer {token or self.token}"}
        return client.ApiClient(configuration)

    def write_kubeconfig(self, path: Path, token: str) -> Path:
        """A kubeconfig for the bearer of ``token``."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"][0]["user"] = {"token": token}
        path.write_text(yaml.safe_dump(config))
        return path

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            processes.stop(proc, timeout_s=10)
        self.procs.clear()
        shutil.rmtree(getattr(self, "_etcd_dir", ""), ignore_errors=True)
        # the kubernetes client's discovery cache for this server (kubernetes.dynamic names it after the URL)
        digest = hashlib.md5(self.url.encode()).hexdigest()
        (Path(tempfile.gettempdir()) / f"osrcp-{digest}.json").unlink(missing_ok=True)


@dataclass
class Cluster:
    plane: ControlPlane
    api: client.ApiClient
    sim: NodeSimulator

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig


GPU_NODE = SimNode(
    "sim-gpu-0",
    cpu="16",
    memory="64Gi",
    gpus=4,
    taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
)
CPU_NODE = SimNode("sim-cpu-0", cpu="8", memory="32Gi")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """The control plane with simulated nodes; everything stops at the end of the session."""
    plane = ControlPlane(tmp_path_factory.mktemp("k8s"), ensure_binaries())
    try:
        plane.start()
        api = plane.api_client()
        client.NodeV1Api(api).create_runtime_class(
            {
                "apiVersion": "node.k8s.io/v1",
                "kind": "RuntimeClass",
                "metadata": {"name": "nvidia"},
                "handler": "nvidia",
            }
        )
        with NodeSimulator(api, [GPU_NODE, CPU_NODE], logs_dir=plane.workdir / "pods") as sim:
            yield Cluster(plane, api, sim)
    finally:
        plane.stop()


_names = itertools.count()


@pytest.fixture
def namespace(cluster: Cluster):
    """A fresh namespace with the workbench's ServiceAccount, Role and RoleBinding; deleted after the test."""
    name = f"gawm-t{os.getpid() % 10000}-{next(_names)}"
    core = client.CoreV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": name}})
    apply_objects(cluster.api, render_access(name))
    cluster.sim.failures.clear()
    cluster.sim.run_servers = False
    yield name
    cluster.sim.failures.clear()
    cluster.sim.run_servers = False
    with contextlib.suppress(Exception):
        core.delete_namespace(name)


def service_account_token(cluster: Cluster, namespace: str, name: str = "gawm", timeout_s: float = 20.0) -> str:
    """The token the controller-manager minted for ServiceAccount ``namespace/name`` (Kubernetes 1.20 still makes
    token Secrets)."""
    core = client.CoreV1Api(cluster.api)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for secret in core.list_namespaced_secret(namespace).items:
            if (
                secret.type == "kubernetes.io/service-account-token"
                and (secret.metadata.annotations or {}).get("kubernetes.io/service-account.name") == name
            ):
                return base64.b64decode(secret.data["token"]).decode()
        time.sleep(0.2)
    raise TimeoutError(f"no token for ServiceAccount {namespace}/{name} after {timeout_s:g} s")
