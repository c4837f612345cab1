"""A local single-node Kubernetes 1.20.2 cluster with a real kubelet, offline, on this machine (as root):

    python3 k8s/testenv/node.py up       # start it (about 20 s), wait until the node is Ready, print how to use it
    python3 k8s/testenv/node.py status   # what runs; exit 0 when the node is up and Ready
    python3 k8s/testenv/node.py down     # stop it and restore what it changed on the host (a no-op when not up)

(``make cluster-up`` / ``cluster-status`` / ``cluster-down``; k8s/testenv/node.sh is the same in bash clothing.)
The binaries and images come from ``make test-prereqs`` (k8s/testenv/build-kubernetes.sh): this never builds.

What runs: etcd (127.0.0.1:12379), kube-apiserver (https://127.0.0.1:16443: TLS from a self-made CA, static tokens,
Node + RBAC authorization), kube-controller-manager (node controllers on) and kube-scheduler, containerd (a config,
root, state and socket of its own under the state folder), the kubelet (node ``gawm-node`` at the machine's own
address, API on :10250 with webhook authentication) and kube-proxy (iptables mode, leaves conntrack settings alone);
pods on the CNI bridge ``cni0``, 10.88.0.0/24; ClusterIP Services in 10.89.0.0/24.

Everything lives in the state folder ``$GAWM_NODE_DIR`` (default /var/lib/gawm-node): the admin kubeconfig is
``$GAWM_NODE_DIR/kubeconfig``, logs in ``$GAWM_NODE_DIR/logs``. ``up`` first records what it may change on the host
(``host-before.json``: sysctls, mounts, network devices, iptables/nftables tables and chains, cgroups and the folders
the kubelet, containerd and CNI hard-code), and ``down`` puts back exactly that: processes by PID, mounts deepest
first, the bridge and veths, the KUBE-*/CNI-* chains and the nft tables it created, the sysctls it changed, the
kubepods cgroups and the folders that were not there before. ``down`` keeps only ``$GAWM_NODE_DIR/logs``.

Standard library only (runs with the system Python before any virtual environment exists).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VERSION = "1.20.2"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NODE_NAME = "gawm-node"
POD_CIDR = "10.88.0.0/24"
SERVICE_CIDR = "10.89.0.0/24"
BRIDGE = "cni0"
API_PORT = int(os.environ.get("GAWM_NODE_API_PORT", "16443"))
ETCD_PORT = int(os.environ.get("GAWM_NODE_ETCD_PORT", "12379"))
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
PROXY_METRICS_PORT = int(os.environ.get("GAWM_NODE_PROXY_PORT", "10249"))
PROXY_HEALTHZ_PORT = int(os.environ.get("GAWM_NODE_PROXY_HEALTHZ_PORT", "10256"))
PAUSE_IMAGE = "gawm.local/pause:3.4.1"
HOST_PYTHON_IMAGE = "gawm.local/host-python:1"
IMAGE_FILES = ("pause.tar", "host-python.tar")
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")
PACKAGES = {  # program -> Debian package (gawm_lib.sysdeps installs them for the tests)
    "containerd": "containerd",
    "runc": "runc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "iptables": "iptables",
    "nft": "nftables",
    "conntrack": "conntrack",
    "socat": "socat",
    "ethtool": "ethtool",
    "ebtables": "ebtables",
    "etcd": "etcd-server",
    "openssl": "openssl",
}
# Sysctls a node changes (kubelet: overcommit, panic, keys; bridge plugin: ip_forward; kube-proxy: route_localnet);
# up records them all and down writes back any that differ. Others that changed are found by a whole diff too.
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv4.conf.default.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)
# Sysctl families that change on their own (counters, random numbers): never restored, never reported.
VOLATILE = (
    "kernel.random.",
    "kernel.ns_last_pid",
    "fs.dentry-state",
    "fs.file-nr",
    "fs.inode-",
    "fs.quota.",
    "kernel.pty.nr",
    "net.netfilter.nf_conntrack_count",
    "kernel.sched_domain",
    "fs.binfmt_misc",
    "kernel.tainted",
    "dev.",
    "net.ipv4.route.",
    "net.ipv6.route.",
    "kernel.perf_event",
    "user.",
    "fs.aio-nr",
)
# Folders the kubelet, containerd and the CNI plugins use whatever they are told; down removes those up did not find.
HARD_CODED = (
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/run/containerd",
    "/run/netns",
    "/var/run/netns",
    "/opt/containerd",
    "/opt/cni",
    "/etc/cni",
    "/usr/libexec/kubernetes",
    "/var/lib/containerd",
    "/etc/kubernetes",
)
MOUNT_PREFIXES = ("/run/netns/", "/var/run/netns/", "/run/containerd/", "/var/lib/kubelet/", "/var/lib/containerd/")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class NodeError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[node {time.strftime('%H:%M:%S', time.gmtime())}] {message}", file=sys.stderr, flush=True)


def state_dir() -> Path:
    return Path(os.environ.get("GAWM_NODE_DIR") or "/var/lib/gawm-node")


def cache_dir() -> Path:
    if os.environ.get("GAWM_K8S_CACHE"):
        return Path(os.environ["GAWM_K8S_CACHE"])
    base = os.environ.get("GAWM_CACHE_DIR") or str(Path.home() / ".cache" / "gawm")
    return Path(base) / f"kubernetes-{VERSION}"


def bin_dir() -> Path:
    return cache_dir() / "bin"


def images_dir() -> Path:
    return cache_dir() / "images"


def kubeconfig_path() -> Path:
    return state_dir() / "kubeconfig"


def run(cmd: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, **kw)


# ------------------------------------------------------------------------------------------------------- prerequisites
def missing_prerequisites() -> list[str]:
    """What ``up`` needs and does not find (binaries, images, packages, root); empty when all is there."""
    missing = []
    for name in BINARIES:
        if not os.access(bin_dir() / name, os.X_OK):
            missing.append(str(bin_dir() / name))
    stamp = bin_dir() / "build-stamp"
    if not stamp.is_file() or "reflect2 v1.0.2" not in stamp.read_text():
        missing.append(f"{stamp} (a build with the reflect2 fix)")
    for name in IMAGE_FILES:
        if not (images_dir() / name).is_file():
            missing.append(str(images_dir() / name))
    for program, package in PACKAGES.items():
        found = os.access(program, os.X_OK) if program.startswith("/") else shutil.which(program)
        if not found:
            missing.append(f"{program} (Debian package {package})")
    if os.geteuid() != 0:
        missing.append("root (the kubelet, containerd and CNI need it)")
    return missing


def node_ip() -> str:
    """The machine's own address (the kubelet refuses a loopback one): GAWM_NODE_IP, else the first global IPv4
    address of the interface of the default route, else of any interface."""
    if os.environ.get("GAWM_NODE_IP"):
        return os.environ["GAWM_NODE_IP"]
    routes = run(["ip", "-4", "-o", "route", "show", "default"], check=False).stdout.split()
    device = routes[routes.index("dev") + 1] if "dev" in routes else None
    for args in ([["dev", device]] if device else []) + [[]]:
        out = run(["ip", "-4", "-o", "addr", "show", "scope", "global", *args], check=False).stdout
        for line in out.splitlines():
            fields = line.split()
            if "inet" in fields:
                return fields[fields.index("inet") + 1].split("/")[0]
    raise NodeError("no global IPv4 address on this machine for the node (set GAWM_NODE_IP)")


# ------------------------------------------------------------------------------------------------------- host snapshot
def read_sysctls() -> dict[str, str]:
    values = {}
    for path in Path("/proc/sys").rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and os.access(path, os.W_OK) and (path.stat().st_mode & 0o444):
                key = ".".join(path.relative_to("/proc/sys").parts)
                if any(key.startswith(v) for v in VOLATILE):
                    continue
                values[key] = path.read_text().strip()
    return values


def write_sysctl(key: str, value: str) -> bool:
    path = Path("/proc/sys", *key.split("."))
    try:
        path.write_text(value + "\n")
        return True
    except OSError:
        return False


def mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(line.split()[4].encode().decode("unicode_escape"))
    return points


def links() -> list[str]:
    return sorted(path.name for path in Path("/sys/class/net").iterdir())


def iptables_chains() -> dict[str, list[str]]:
    """table -> its chains, as iptables (nft backend) lists them."""
    out = run(["iptables-save"], check=False).stdout
    chains: dict[str, list[str]] = {}
    table = ""
    for line in out.splitlines():
        if line.startswith("*"):
            table = line[1:]
            chains[table] = []
        elif line.startswith(":"):
            chains[table].append(line[1:].split()[0])
    return chains


def nft_tables() -> list[str]:
    if not shutil.which("nft"):
        return []
    out = run(["nft", "list", "tables"], check=False).stdout
    return sorted(line.removeprefix("table ").strip() for line in out.splitlines() if line.startswith("table "))


def cgroups() -> list[str]:
    found = []
    if CGROUP_ROOT.is_dir():
        for hierarchy in CGROUP_ROOT.iterdir():
            for name in ("kubepods", "kubepods.slice"):
                if (hierarchy / name).is_dir():
                    found.append(str(hierarchy / name))
    return sorted(found)


def snapshot() -> dict:
    return {
        "sysctls": read_sysctls(),
        "mounts": mounts(),
        "links": links(),
        "iptables": iptables_chains(),
        "nft_tables": nft_tables(),
        "cgroups": cgroups(),
        "paths": {path: os.path.lexists(path) for path in HARD_CODED},
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        "modules": sorted(line.split()[0] for line in Path("/proc/modules").read_text().splitlines())
        if Path("/proc/modules").exists()
        else [],
    }


def host_diff(before: dict, after: dict | None = None) -> dict[str, object]:
    """What differs on the host from ``before`` (empty: nothing is left of the node)."""
    after = after or snapshot()
    diff: dict[str, object] = {}
    sysctls = {
        key: (value, after["sysctls"].get(key))
        for key, value in before["sysctls"].items()
        if after["sysctls"].get(key) not in (value, None)
    }
    new_sysctls = sorted(set(after["sysctls"]) - set(before["sysctls"]))
    if sysctls:
        diff["sysctls"] = sysctls
    if new_sysctls:
        diff["new_sysctls"] = new_sysctls
    for key in ("mounts", "links", "nft_tables", "cgroups", "netns", "modules"):
        extra = sorted(set(after[key]) - set(before[key]))
        if extra:
            diff[key] = extra
    chains = {
        table: sorted(set(names) - set(before["iptables"].get(table, [])))
        for table, names in after["iptables"].items()
        if set(names) - set(before["iptables"].get(table, []))
    }
    if chains:
        diff["iptables"] = chains
    paths = sorted(path for path, existed in before["paths"].items() if not existed and os.path.lexists(path))
    if paths:
        diff["paths"] = paths
    return diff


# ---------------------------------------------------------------------------------------------------- processes (PIDs)
def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(entry: dict) -> bool:
    pid = entry["pid"]
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
        return False
    return _start_time(pid) == entry["start"]


def spawn(name: str, cmd: list[str], logs: Path, env: dict | None = None) -> dict:
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    return {"name": name, "pid": proc.pid, "start": _start_time(proc.pid), "cmd": cmd[0]}


def stop_process(entry: dict, timeout_s: float = 15) -> None:
    if not _alive(entry):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(entry["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(entry) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(entry):
        log(f"{entry['name']} (pid {entry['pid']}) ignored SIGTERM for {timeout_s:g} s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry["pid"], signal.SIGKILL)
        while _alive(entry) and time.monotonic() < deadline + 5:
            time.sleep(0.1)
    # reap it if it is our child (up and down in one process: the tests)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(entry["pid"], os.WNOHANG)


def _pids_of_cmdline(*needles: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(needle in cmdline for needle in needles):
            pids.append(int(proc.name))
    return pids


# -------------------------------------------------------------------------------------------------------------- PKI
def _openssl(*args: str, cwd: Path) -> None:
    run(["openssl", *args], cwd=cwd)


def make_pki(pki: Path, ip: str) -> None:
    """A CA, the API server's serving and kubelet-client certificates, the kubelet's serving certificate and the
    service-account key."""
    pki.mkdir(parents=True, exist_ok=True)
    days = "3650"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", days,
             "-subj", "/CN=gawm-node-ca", cwd=pki)  # fmt: skip
    service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
    certs = {
        "apiserver": (
            "/CN=kube-apiserver",
            f"subjectAltName=IP:127.0.0.1,IP:{ip},IP:{service_ip},DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
            "extendedKeyUsage=serverAuth\n",
        ),
        "apiserver-kubelet-client": (
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "extendedKeyUsage=clientAuth\n",
        ),
        "kubelet": (
            f"/O=system:nodes/CN=system:node:{NODE_NAME}",
            f"subjectAltName=IP:{ip},IP:127.0.0.1,DNS:{NODE_NAME}\nextendedKeyUsage=serverAuth\n",
        ),
    }
    for name, (subject, extensions) in certs.items():
        (pki / f"{name}.cnf").write_text(extensions)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subject, cwd=pki)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", days, "-extfile", f"{name}.cnf", cwd=pki)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    for path in pki.iterdir():
        path.chmod(0o600)


def write_kubeconfig(path: Path, ca: Path, token: str, user: str) -> None:
    ca_data = base64.b64encode(ca.read_bytes()).decode()
    # JSON is YAML: no PyYAML needed
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "gawm-node",
        "clusters": [
            {
                "name": "gawm-node",
                "cluster": {"server": f"https://127.0.0.1:{API_PORT}", "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "gawm-node", "context": {"cluster": "gawm-node", "user": user}}],
    }
    path.write_text(json.dumps(config, indent=1) + "\n")
    path.chmod(0o600)


# ------------------------------------------------------------------------------------------------------ configuration
def containerd_config(node: Path) -> str:
    c = node / "containerd"
    return f"""version = 2
root = "{c}/root"
state = "{c}/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{c}/containerd.sock"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{c}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{c}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{node}/cni/net.d"
"""


def cni_config(node: Path) -> str:
    return json.dumps(
        {
            "cniVersion": "0.4.0",
            "name": "gawm",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(node / "cni" / "networks"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=1,
    )


def kubelet_config(node: Path, ip: str) -> str:
    pki = node / "pki"
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": True,
        "failSwapOn": False,
        "nodeStatusUpdateFrequency": "2s",
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "makeIPTablesUtilChains": False,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "volumePluginDir": str(node / "kubelet-plugins"),
        "serializeImagePulls": False,
        "maxPods": 50,
        "resolvConf": "/etc/resolv.conf",
        "fileCheckFrequency": "5s",
    }
    return json.dumps(config, indent=1)


# -------------------------------------------------------------------------------------------------------------- state
class Node:
    def __init__(self, folder: Path | None = None):
        self.dir = folder or state_dir()
        self.state_file = self.dir / "state.json"
        self.before_file = self.dir / "host-before.json"
        self.logs = self.dir / "logs"

    # state.json: the components' PIDs and what up created
    def load(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def save(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_file)

    @contextlib.contextmanager
    def locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    @property
    def sock(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return run(["ctr", "--address", str(self.sock), "--namespace", "k8s.io", *args], check=check, timeout=timeout)

    # --------------------------------------------------------------------------------------------------- API access
    def _api(self, state: dict, path: str, method: str = "GET", body: dict | None = None, timeout: float = 5):
        context = ssl.create_default_context(cafile=str(self.dir / "pki" / "ca.crt"))
        request = urllib.request.Request(
            f"https://127.0.0.1:{API_PORT}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {state['tokens']['admin']}", "Content-Type": "application/json"},
        )
        # never through a proxy from the environment: the API server is on loopback
        handlers = (urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
        opener = urllib.request.build_opener(*handlers)
        with opener.open(request, timeout=timeout) as answer:
            data = answer.read()
        return json.loads(data or b"null") if answer.headers.get_content_type() == "application/json" else data.decode()

    def node_ready(self, state: dict) -> bool:
        with contextlib.suppress(Exception):
            node = self._api(state, f"/api/v1/nodes/{NODE_NAME}")
            for condition in node["status"].get("conditions", []):
                if condition["type"] == "Ready":
                    return condition["status"] == "True"
        return False

    def components(self, state: dict) -> dict[str, bool]:
        return {entry["name"]: _alive(entry) for entry in state.get("procs", [])}

    # ---------------------------------------------------------------------------------------------------------- up
    def up(self, timeout_s: float = 120) -> dict:
        missing = missing_prerequisites()
        if missing:
            raise NodeError(
                "the local node is not set up: missing " + "; ".join(missing) + ". Set it up once with "
                "`make test-prereqs` (as root: the Debian packages and the Kubernetes build, 7.5-16 min on 2 cores)."
            )
        with self.locked():
            state = self.load()
            if state is not None:
                alive = self.components(state)
                if alive and all(alive.values()) and self.node_ready(state):
                    log(f"already up (state in {self.dir}): nothing to do")
                    return state
                log(f"a node from an earlier up is not (fully) running ({alive}): taking it down first")
                self._down(state)
            return self._up(timeout_s)

    def _up(self, timeout_s: float) -> dict:
        started = time.monotonic()
        for stale in ("pki", "etcd", "containerd", "kubelet", "cni", "kubelet-plugins"):
            shutil.rmtree(self.dir / stale, ignore_errors=True)
        # what the node may change on the host, recorded before anything starts (down restores it)
        before = snapshot()
        self.before_file.write_text(json.dumps(before))
        ip = node_ip()
        tokens = {
            name: base64.b32encode(os.urandom(20)).decode().lower()
            for name in ("admin", "kubelet", "proxy", "controller-manager", "scheduler")
        }
        state: dict = {"procs": [], "ip": ip, "tokens": tokens, "started": time.time(), "dir": str(self.dir)}
        self.save(state)
        try:
            self._start(state, ip, tokens, timeout_s)
        except BaseException:
            log("up failed: taking down what started")
            self._down(state)
            raise
        state["ready_s"] = round(time.monotonic() - started, 1)
        self.save(state)
        log(f"node {NODE_NAME} Ready in {state['ready_s']} s")
        return state

    def _spawn(self, state: dict, name: str, cmd: list[str]) -> None:
        state["procs"].append(spawn(name, cmd, self.logs))
        self.save(state)

    def _check_alive(self, state: dict) -> None:
        for entry in state["procs"]:
            if not _alive(entry):
                tail = _tail(self.logs / f"{entry['name']}.log")
                raise NodeError(f"{entry['name']} exited (log {self.logs / entry['name']}.log):\n{tail}")

    def _wait(self, state: dict, what: str, condition, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive(state)
            with contextlib.suppress(Exception):
                if condition():
                    return
            if time.monotonic() > deadline:
                raise NodeError(f"not after {timeout_s:g} s: {what} (logs in {self.logs})")
            time.sleep(0.2)

    def _start(self, state: dict, ip: str, tokens: dict, timeout_s: float) -> None:
        bins, node, pki = bin_dir(), self.dir, self.dir / "pki"
        make_pki(pki, ip)
        users = {
            "admin": ("admin", "system:masters"),
            "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
            "proxy": ("system:kube-proxy", ""),
            "controller-manager": ("system:kube-controller-manager", ""),
            "scheduler": ("system:kube-scheduler", ""),
        }
        (pki / "tokens.csv").write_text(
            "".join(
                f"{tokens[key]},{user},{key}-uid" + (f',"{groups}"' if groups else "") + "\n"
                for key, (user, groups) in users.items()
            )
        )
        (pki / "tokens.csv").chmod(0o600)
        kubeconfigs = {}
        for key, (user, _) in users.items():
            path = node / ("kubeconfig" if key == "admin" else f"{key}.kubeconfig")
            write_kubeconfig(path, pki / "ca.crt", tokens[key], user)
            kubeconfigs[key] = path

        # etcd
        etcd_dir = node / "etcd"
        self._spawn(state, "etcd", [
            shutil.which("etcd") or "etcd", "--name", "gawm-node", "--data-dir", str(etcd_dir),
            "--listen-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
            "--advertise-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
            "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PORT + 1}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PORT + 1}",
            "--initial-cluster", f"gawm-node=http://127.0.0.1:{ETCD_PORT + 1}",
            "--listen-metrics-urls", "", "--log-level", "warn",
        ])  # fmt: skip
        # kube-apiserver (loopback only)
        self._spawn(state, "kube-apiserver", [
            str(bins / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
            "--bind-address=127.0.0.1", f"--advertise-address={ip}", f"--secure-port={API_PORT}", "--insecure-port=0",
            f"--cert-dir={pki}", f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}", f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}", "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-key-file={pki / 'sa.key'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--endpoint-reconciler-type=none",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            # the machine's name resolves to 127.0.0.1: reach the kubelet at the node's InternalIP only
            "--kubelet-preferred-address-types=InternalIP",
            "--enable-priority-and-fairness=false", "--profiling=false", "--v=0",
        ])  # fmt: skip
        # containerd (its own config, root, state and socket)
        (node / "containerd").mkdir(parents=True, exist_ok=True)
        (node / "containerd" / "config.toml").write_text(containerd_config(node))
        (node / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        (node / "cni" / "net.d" / "10-gawm.conflist").write_text(cni_config(node))
        self._spawn(state, "containerd", ["containerd", "--config", str(node / "containerd" / "config.toml")])

        self._wait(state, "the API server answers /readyz", lambda: self._api(state, "/readyz") == "ok", 60)
        self._wait(state, "containerd answers", lambda: self.ctr("version", timeout=5).returncode == 0, 30)
        for name in IMAGE_FILES:
            self.ctr("images", "import", str(images_dir() / name), timeout=120)
        log(f"images imported: {PAUSE_IMAGE}, {HOST_PYTHON_IMAGE}")

        common = ["--leader-elect=false", "--port=0", "--secure-port=0", "--profiling=false", "--v=0"]
        self._spawn(state, "kube-controller-manager", [
            str(bins / "kube-controller-manager"), f"--kubeconfig={kubeconfigs['controller-manager']}", *common,
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--node-monitor-period=2s",
            f"--flex-volume-plugin-dir={node / 'kubelet-plugins'}",
        ])  # fmt: skip
        self._spawn(state, "kube-scheduler", [
            str(bins / "kube-scheduler"), f"--kubeconfig={kubeconfigs['scheduler']}", *common,
        ])  # fmt: skip
        (node / "kubelet").mkdir(parents=True, exist_ok=True)
        (node / "kubelet-config.json").write_text(kubelet_config(node, ip))
        self._spawn(state, "kubelet", [
            str(bins / "kubelet"), f"--config={node / 'kubelet-config.json'}",
            f"--kubeconfig={kubeconfigs['kubelet']}", "--container-runtime=remote",
            f"--container-runtime-endpoint=unix://{self.sock}", f"--containerd={self.sock}",
            f"--root-dir={node / 'kubelet'}", f"--node-ip={ip}", f"--hostname-override={NODE_NAME}",
            f"--pod-infra-container-image={PAUSE_IMAGE}", "--v=1",
            # cAdvisor's container stats every 1 s (default 10 s, stretched to ~15 s when idle): a run's steps are
            # seconds long, and a stale counter made a busy one-core pod read as 0.3 cores.
            "--housekeeping-interval=1s",
        ])  # fmt: skip
        self._spawn(state, "kube-proxy", [
            str(bins / "kube-proxy"), f"--kubeconfig={kubeconfigs['proxy']}", "--proxy-mode=iptables",
            f"--hostname-override={NODE_NAME}", f"--bind-address={ip}", f"--cluster-cidr={POD_CIDR}",
            f"--metrics-bind-address=127.0.0.1:{PROXY_METRICS_PORT}",
            f"--healthz-bind-address=127.0.0.1:{PROXY_HEALTHZ_PORT}",
            "--conntrack-max-per-core=0", "--conntrack-min=0",
            "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
            "--profiling=false", "--v=0",
        ])  # fmt: skip
        left = max(30.0, timeout_s - 0)
        self._wait(state, f"node {NODE_NAME} Ready", lambda: self.node_ready(state), left)
        # pods need the default ServiceAccount's token before they can be created
        self._wait(
            state,
            "the default ServiceAccount's token",
            lambda: self._api(state, "/api/v1/namespaces/default/serviceaccounts/default")["secrets"],
            60,
        )

    # -------------------------------------------------------------------------------------------------------- down
    def down(self) -> dict:
        """Stop the node and restore the host; returns what differs from before ``up`` afterwards (empty: all
        restored). Without a node it does nothing."""
        with self.locked():
            state = self.load()
            if state is None:
                log(f"no node in {self.dir}: nothing to do")
                return {}
            return self._down(state)

    def _down(self, state: dict) -> dict:
        started = time.monotonic()
        by_name = {entry["name"]: entry for entry in state.get("procs", [])}
        try:
            before = json.loads(self.before_file.read_text())
        except (OSError, ValueError):
            before = None
        # 1. No controller re-creates pods; then the kubelet removes them all (so the CNI plugin undoes its part).
        for name in ("kube-controller-manager", "kube-scheduler"):
            if name in by_name:
                stop_process(by_name[name])
        if all(_alive(by_name[n]) for n in ("kube-apiserver", "kubelet", "containerd") if n in by_name) and {
            "kube-apiserver",
            "kubelet",
        } <= set(by_name):
            self._delete_pods(state)
        # 2. The rest of Kubernetes, then whatever containers are left, then containerd.
        for name in ("kube-proxy", "kubelet"):
            if name in by_name:
                stop_process(by_name[name])
        if "containerd" in by_name and _alive(by_name["containerd"]):
            self._kill_containers()
        for name in ("containerd", "kube-apiserver", "etcd"):
            if name in by_name:
                stop_process(by_name[name])
        for entry in state.get("procs", []):  # anything else from the list
            stop_process(entry)
        self._kill_leftover_processes()
        # 3. The host.
        if before is not None:
            self._restore_host(before)
        # 4. The state folder, except the logs (never through something still mounted in it).
        still = [point for point in mounts() if point.startswith(str(self.dir) + "/")]
        for path in self.dir.iterdir() if self.dir.is_dir() else []:
            if path.name in ("logs", ".lock", ".tests.lock"):
                continue
            if any(point == str(path) or point.startswith(str(path) + "/") for point in still):
                log(f"not removing {path}: still mounted there: {still}")
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        left = host_diff(before) if before is not None else {}
        log(f"down in {time.monotonic() - started:.1f} s" + (f"; NOT restored: {left}" if left else "; host restored"))
        return left

    def _delete_pods(self, state: dict, timeout_s: float = 30) -> None:
        with contextlib.suppress(Exception):
            pods = self._api(state, "/api/v1/pods")["items"]
            for pod in pods:
                meta = pod["metadata"]
                with contextlib.suppress(Exception):
                    self._api(
                        state,
                        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                        method="DELETE",
                        body={"gracePeriodSeconds": 0},
                    )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                tasks = self.ctr("tasks", "list", "--quiet", check=False, timeout=10).stdout.split()
                if not tasks and not self._api(state, "/api/v1/pods")["items"]:
                    break
                time.sleep(0.3)
            # the kubelet stops sandboxes (CNI DEL) a moment after their containers
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._pod_netns():
                time.sleep(0.3)

    def _pod_netns(self) -> list[Path]:
        """The pods' network namespaces (containerd keeps them under its state folder; older set-ups in /run/netns)."""
        state = self.dir / "containerd" / "state"
        found = [*state.glob("netns/cni-*"), *state.glob("io.containerd.grpc.v1.cri/netns/cni-*")]
        return found + list(Path("/run/netns").glob("cni-*"))

    def _kill_containers(self) -> None:
        tasks = self.ctr("tasks", "list", "--quiet", check=False, timeout=10).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, check=False, timeout=10)
        for task in tasks:
            for _ in range(20):
                if self.ctr("tasks", "delete", task, check=False, timeout=10).returncode == 0:
                    break
                time.sleep(0.2)
        for container in self.ctr("containers", "list", "--quiet", check=False, timeout=10).stdout.split():
            self.ctr("containers", "delete", container, check=False, timeout=10)

    def _kill_leftover_processes(self) -> None:
        """containerd's shims (they outlive containerd by design) and anything still in the kubepods cgroups."""
        pids = set(_pids_of_cmdline("containerd-shim", str(self.sock)))
        for group in cgroups():
            for procs in Path(group).rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(pid) for pid in procs.read_text().split())
        pids.discard(os.getpid())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = {pid for pid in pids if Path(f"/proc/{pid}").exists() and _start_time(pid) is not None}
            pids = {pid for pid in pids if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}
            time.sleep(0.1)

    def _restore_host(self, before: dict) -> None:
        # mounts the node made: deepest first (pods' volumes, rootfs overlays, shm, netns, the kubelet's self-bind)
        ours = [
            point
            for point in mounts()
            if point not in before["mounts"]
            and (point.startswith(str(self.dir) + "/") or point == str(self.dir) or point.startswith(MOUNT_PREFIXES))
        ]
        for point in sorted(set(ours), key=lambda p: (-p.count("/"), p)):
            for _ in range(mounts().count(point)):
                if run(["umount", point], check=False).returncode != 0:
                    run(["umount", "-l", point], check=False)
        # network namespaces (after their bind mounts are gone), veths on the bridge, the bridge
        for netns in Path("/run/netns").glob("cni-*") if Path("/run/netns").is_dir() else []:
            if netns.name not in before["netns"]:
                netns.unlink(missing_ok=True)
        for link in links():
            if link in before["links"]:
                continue
            master = Path(f"/sys/class/net/{link}/master")
            if link == BRIDGE or link.startswith("veth") or (master.exists() and master.resolve().name == BRIDGE):
                run(["ip", "link", "delete", link], check=False)
        # iptables: the rules that jump to chains up did not find, then those chains; then nft tables it made
        self._restore_iptables(before)
        # sysctls: the ones the node changed
        after = read_sysctls()
        for key, value in before["sysctls"].items():
            if after.get(key) not in (value, None):
                if write_sysctl(key, value):
                    log(f"sysctl {key}: {after[key]} -> {value} (as before up)")
                else:
                    log(f"sysctl {key}: could not write back {value!r} (now {after[key]!r})")
        # cgroups (deepest first; only ones that were not there)
        for group in cgroups():
            if group in before["cgroups"]:
                continue
            for folder in sorted(Path(group).rglob("*"), key=lambda p: -len(p.parts)):
                if folder.is_dir():
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            with contextlib.suppress(OSError):
                Path(group).rmdir()
        # folders the node made where the programs hard-code them
        for path, existed in before["paths"].items():
            if not existed and os.path.lexists(path):
                if any(p == path or p.startswith(path + "/") for p in mounts()):
                    log(f"not removing {path}: something is still mounted under it")
                    continue
                shutil.rmtree(path, ignore_errors=True)

    def _restore_iptables(self, before: dict) -> None:
        for binary in ("iptables", "ip6tables"):
            if not shutil.which(binary):
                continue
            save = run([f"{binary}-save"], check=False).stdout
            table, known = "", before["iptables"] if binary == "iptables" else {}
            rules: list[tuple[str, str]] = []
            chains: list[tuple[str, str]] = []
            for line in save.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line.startswith(":"):
                    chain = line[1:].split()[0]
                    if chain.startswith(("KUBE-", "CNI-")) and chain not in known.get(table, []):
                        chains.append((table, chain))
                elif line.startswith("-A "):
                    rules.append((table, line))
            ours = {(t, c) for t, c in chains}
            for table, rule in rules:
                parts = shlex.split(rule)
                chain = parts[1]
                target = parts[parts.index("-j") + 1] if "-j" in parts else ""
                if (table, chain) not in ours and (table, target) in ours:
                    run([binary, "-t", table, "-D", *parts[1:]], check=False)
            for table, chain in chains:
                run([binary, "-t", table, "-F", chain], check=False)
            for table, chain in chains:
                run([binary, "-t", table, "-X", chain], check=False)
        for table in nft_tables():
            if table not in before["nft_tables"]:
                family, name = table.split()
                # only a table that holds nothing but empty base chains now (iptables-nft leaves those)
                listing = run(["nft", "list", "table", family, name], check=False).stdout
                if not any(line.strip().startswith(("ip ", "iif", "oif", "meta", "counter", "jump", "ct ", "mark"))
                           for line in listing.splitlines()):  # fmt: skip
                    run(["nft", "delete", "table", family, name], check=False)
                else:
                    log(f"not deleting nft table {table}: it holds rules\n{listing}")

    # ------------------------------------------------------------------------------------------------------ status
    def status(self) -> tuple[bool, str]:
        state = self.load()
        if state is None:
            return False, f"no node (state folder {self.dir})"
        alive = self.components(state)
        ready = self.node_ready(state) if alive.get("kube-apiserver") else False
        lines = [f"node {NODE_NAME} at {state['ip']}: {'Ready' if ready else 'NOT Ready'}"]
        lines += [f"  {name:<24} {'running' if ok else 'NOT running'}" for name, ok in alive.items()]
        lines.append(usage(state))
        return ready and all(alive.values()), "\n".join(lines)


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def usage(state: dict) -> str:
    node = state_dir()
    return f"""  kubeconfig (admin): export KUBECONFIG={node / "kubeconfig"}
  kubectl:            {bin_dir() / "kubectl"} get nodes
  API server:         https://127.0.0.1:{API_PORT}   node {NODE_NAME}, InternalIP {state["ip"]}, kubelet :{KUBELET_PORT}
  pods:               {POD_CIDR} on {BRIDGE}; ClusterIP Services: {SERVICE_CIDR}
  images:             {HOST_PYTHON_IMAGE} (host /usr, Python and project mounted read-only by hostPath), {PAUSE_IMAGE}
  logs:               {node / "logs"}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a local single-node Kubernetes cluster (see k8s/README.md)")
    parser.add_argument("command", choices=["up", "down", "status", "check"])
    parser.add_argument("--timeout", type=float, default=120, help="seconds up waits for the node to be Ready")
    args = parser.parse_args(argv)
    node = Node()
    try:
        if args.command == "up":
            state = node.up(args.timeout)
            print(usage(state))
            return 0
        if args.command == "down":
            left = node.down()
            if left:
                print(f"node.py down: the host differs from before up: {json.dumps(left, indent=1)}", file=sys.stderr)
                return 1
            return 0
        if args.command == "check":
            missing = missing_prerequisites()
            print("\n".join(missing) if missing else "all prerequisites present")
            return 1 if missing else 0
        ok, text = node.status()
        print(text)
        return 0 if ok else 3
    except NodeError as error:
        print(f"node.py {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
