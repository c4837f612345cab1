"""The cluster scripts of k8s/cluster/: shellcheck passes on each, and each one's --dry-run prints its whole plan while
it runs with no root, no network and none of the tools it would call (kubeadm, kubectl, apt-get, systemctl, curl, ...):
only read-only basics are on its PATH, so any command it tried to run for real would fail it. They are never run for
real here: they change the host (kernel modules, swap, packages, kubeadm).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = ROOT / "k8s" / "cluster"
SCRIPTS = ["create-cluster.sh", "recover-cluster.sh", "cleanup-cluster.sh", "gpu-health-check.sh"]
# All a dry run may use; none of them changes anything the way the scripts call them.
READ_ONLY_TOOLS = [
    "bash",
    "basename",
    "dirname",
    "date",
    "hostname",
    "id",
    "cat",
    "sed",
    "awk",
    "grep",
    "getent",
    "cut",
    "stat",
    "wc",
    "tr",
    "head",
    "paste",
]
# Where a real run writes; a dry run must leave all of them as they were.
HOST_PATHS = [
    "/etc/modules-load.d/gawm-k8s.conf",
    "/etc/sysctl.d/99-gawm-k8s.conf",
    "/etc/gawm",
    "/var/log/gawm",
    "/etc/apt/sources.list.d/gawm-kubernetes.list",
    "/etc/apt/keyrings/gawm-kubernetes.gpg",
    "/etc/kubernetes/gawm-kubeadm.yaml",
]
NOBODY = 65534


def make_sandbox(tools: list[str]) -> Path:
    """A folder of links to ``tools`` only, readable by user nobody (pytest's tmp_path is not)."""
    folder = Path(tempfile.mkdtemp(prefix="gawm-dry-run-bin-"))
    folder.chmod(0o755)
    for tool in tools:
        found = shutil.which(tool)
        assert found, f"{tool} is needed by the test itself"
        (folder / tool).symlink_to(found)
    return folder


@pytest.fixture(scope="module")
def sandbox_path():
    folder = make_sandbox(READ_ONLY_TOOLS)
    yield str(folder)
    shutil.rmtree(folder)


def dry_run(script: str, *args: str, sandbox: str, as_nobody: bool = True) -> subprocess.CompletedProcess:
    """The script's --dry-run with PATH = ``sandbox`` only, as user nobody when this test runs as root."""
    before = {p: os.path.exists(p) for p in HOST_PATHS}
    cmd = [shutil.which("bash"), str(SCRIPTS_DIR / script), "--dry-run", *args]
    if as_nobody and os.geteuid() == 0:
        cmd = [shutil.which("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    env = {"PATH": sandbox, "LANG": "C.UTF-8", "HOME": "/nonexistent"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, f"{script} --dry-run {args} failed:\n{result.stdout}\n{result.stderr}"
    assert {p: os.path.exists(p) for p in HOST_PATHS} == before, "a dry run changed the host"
    return result


def plan(result: subprocess.CompletedProcess) -> str:
    return result.stdout


def test_shellcheck_passes_on_every_script():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: apt-get install shellcheck (gawm_lib.sysdeps installs it)"
    scripts = sorted(SCRIPTS_DIR.glob("*.sh"))
    assert {p.name for p in scripts} == {*SCRIPTS, "lib.sh"}
    # -x follows `source lib.sh`; -S style: every finding, down to style notes, fails the test
    result = subprocess.run(
        [shellcheck, "-x", "-S", "style", *[p.name for p in scripts]],
        cwd=SCRIPTS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_script_is_strict_executable_and_has_no_address_in_it():
    for name in SCRIPTS:
        path = SCRIPTS_DIR / name
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and os.access(path, os.X_OK), name
        assert "\nset -euo pipefail\n" in text, name
    for path in SCRIPTS_DIR.glob("*.sh"):
        addresses = set(re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}(?:/\d+)?\b", path.read_text()))
        # the two network defaults (flags); no host address anywhere
        assert addresses <= {"10.244.0.0/16", "10.96.0.0/12"}, (path.name, addresses)


def test_create_dry_run_prints_the_whole_plan(sandbox_path):
    out = plan(dry_run("create-cluster.sh", sandbox=sandbox_path))
    steps = re.findall(r"== step (\d+): (.*)", out)
    assert [int(n) for n, _ in steps] == list(range(1, 14)), steps
    for expected in [
        "modprobe br_netfilter",
        "net.ipv4.ip_forward = 1",
        "sysctl --system",
        "swapoff -a",
        "# gawm-swapoff: ",
        "systemctl mask swap.target",
        "https://pkgs.k8s.io/core:/stable:/v1.34/deb/",
        "https://pkgs.k8s.io/addons:/cri-o:/stable:/v1.31/deb/",
        "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /",
        "apt-get install -y -qq cri-o kubelet kubeadm kubectl nvidia-container-toolkit",
        "apt-mark hold kubelet kubeadm kubectl cri-o",
        "nvidia-ctk runtime configure --runtime=crio",
        "systemctl enable --now crio",
        "kubeadm init --config /etc/kubernetes/gawm-kubeadm.yaml",
        "podSubnet: 10.244.0.0/16",
        "criSocket: unix:///var/run/crio/crio.sock",
        "cgroupDriver: systemd",
        "kubectl taint nodes --all node-role.kubernetes.io/control-plane:NoSchedule-",
        "calico/v3.31.3/manifests/tigera-operator.yaml",
        "encapsulation: VXLAN",
        "cidr: 10.244.0.0/16",
        "kind: RuntimeClass",
        "handler: nvidia",
        "helm upgrade --install nvdp nvdp/nvidia-device-plugin --version 0.16.2",
        "--set runtimeClassName=nvidia --set gfd.enabled=true",
        "until the node advertises nvidia.com/gpu",
        f"{SCRIPTS_DIR}/gpu-health-check.sh",
    ]:
        assert expected in out, expected
    # the monitoring stack of this checkout: k8s/overlays/monitoring, or k8s/monitoring where it is still there
    assert re.search(rf"\+ kubectl apply -k {ROOT}/k8s/(overlays/)?monitoring\n", out)
    # idempotent steps say when they are skipped; no address is invented when none can be detected
    assert out.count("(at run time: skipped if") >= 10
    assert 'advertiseAddress: "<node-ip: from the default route at run time>"' in out
    assert "timeSlicing" not in out and "dry run: nothing is changed" in out


def test_create_dry_run_follows_the_flags(sandbox_path):
    out = plan(
        dry_run(
            "create-cluster.sh",
            "--k8s-version",
            "1.33",
            "--k8s-patch",
            "1.33.4",
            "--crio-version",
            "1.30",
            "--pod-cidr",
            "192.168.0.0/16",
            "--node-ip",
            "10.1.2.3",
            "--gpu-replicas",
            "10",
            "--no-monitoring",
            "--no-health-check",
            sandbox=sandbox_path,
        )
    )
    assert "core:/stable:/v1.33/deb/" in out and "cri-o:/stable:/v1.30/deb/" in out
    assert "'kubelet=1.33.4-*' 'kubeadm=1.33.4-*' 'kubectl=1.33.4-*'" in out and "kubernetesVersion: v1.33.4" in out
    assert out.count("192.168.0.0/16") >= 2 and 'advertiseAddress: "10.1.2.3"' in out  # kubeadm and Calico agree
    assert "timeSlicing:" in out and "replicas: 10" in out and "time-sliced, 10 nvidia.com/gpu per GPU" in out
    assert "failRequestsGreaterThanOne: true" in out  # as k8s/overlays/gpu-time-slicing has it
    assert "kubectl apply -k" not in out and "skipped (--no-monitoring)" in out and "skipped (--no-health-check)" in out
    # environment variables are settings too
    env_result = subprocess.run(
        [shutil.which("bash"), str(SCRIPTS_DIR / "create-cluster.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": sandbox_path, "K8S_VERSION": "1.32", "GPU_REPLICAS": "4"},
    )
    assert env_result.returncode == 0 and "core:/stable:/v1.32/deb/" in env_result.stdout
    assert "replicas: 4" in env_result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pod-cidr", "10.244.0.0"], "is not an IPv4 CIDR"),
        (["--node-ip", "300.1.1.1"], "is not an IPv4 address"),
        (["--k8s-version", "1.34.1"], "expected MAJOR.MINOR"),
        (["--gpu-replicas", "many"], "expected a whole number"),
        (["--bogus"], "unknown argument: --bogus"),
        (["--k8s-version"], "--k8s-version needs a value"),
    ],
)
def test_create_refuses_bad_settings_before_doing_anything(sandbox_path, args, message):
    result = subprocess.run(
        [shutil.which("bash"), str(SCRIPTS_DIR / "create-cluster.sh"), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": sandbox_path},
    )
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "== step" not in result.stdout


def test_recover_dry_run_prints_the_whole_plan(sandbox_path):
    out = plan(dry_run("recover-cluster.sh", sandbox=sandbox_path))
    for expected in [
        "swapoff -a",
        "modprobe overlay",
        "systemctl enable --now crio",
        "systemctl restart kubelet",
        "until the API server is ready",
        "rollout restart daemonset/calico-node",
        "until the node is Ready",
        "kubectl delete pods -A --field-selector=status.phase=Failed",
        "rollout restart daemonset -l app.kubernetes.io/name=nvidia-device-plugin",
        "gpu-health-check.sh --kubeconfig /etc/kubernetes/admin.conf",
    ]:
        assert expected in out, expected
    assert "kubectl delete pods" not in plan(dry_run("recover-cluster.sh", "--keep-failed-pods", sandbox=sandbox_path))


def test_cleanup_dry_run_asks_first_and_prints_the_whole_plan(sandbox_path):
    out = plan(dry_run("cleanup-cluster.sh", "--purge", "--restore-swap", sandbox=sandbox_path))
    assert re.search(r"would ask: This will reset the Kubernetes node .*\[y/N\] \(--yes answers it\)", out)
    for expected in [
        "kubeadm reset --force --cri-socket unix:///var/run/crio/crio.sock",
        "rm -rf /var/lib/cni /var/lib/calico",
        "ip link delete",
        "iptables-save | grep -Ev 'KUBE-|cali-|cali:' | iptables-restore",
        "apt-get purge -y -qq kubeadm kubelet kubectl cri-o",
        "s|^# gawm-swapoff: ||",
        "systemctl unmask swap.target",
        "swapon -a",
    ]:
        assert expected in out, expected
    assert out.index("would ask") < out.index("kubeadm reset")
    out = plan(dry_run("cleanup-cluster.sh", "--yes", sandbox=sandbox_path))
    assert "confirmed by --yes" in out and "apt-get purge" not in out and "swapon" not in out


def test_confirmation_refuses_without_a_terminal_and_without_yes():
    # lib.sh's confirm() alone, for real (not dry-run): it is the guard in front of cleanup
    snippet = f'source "{SCRIPTS_DIR}/lib.sh"; confirm "Reset?"; echo CONFIRMED'
    refused = subprocess.run(
        ["bash", "-c", snippet],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], "GAWM_SCRIPT": "t"},
    )
    assert refused.returncode == 1 and "CONFIRMED" not in refused.stdout
    assert "no terminal to ask on: pass --yes" in refused.stderr
    agreed = subprocess.run(
        ["bash", "-c", snippet],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], "GAWM_SCRIPT": "t", "ASSUME_YES": "1"},
    )
    assert agreed.returncode == 0 and "CONFIRMED" in agreed.stdout


def test_health_check_dry_run_lists_the_checks(sandbox_path):
    out = plan(dry_run("gpu-health-check.sh", "--kubeconfig", "/tmp/k", "--no-pod", sandbox=sandbox_path))
    for expected in [
        "would check NVIDIA driver",
        "would check nvidia-smi",
        "would check NVIDIA container toolkit",
        "would check container runtime",
        "would check cgroup v2",
        "nodes advertise nvidia.com/gpu",
        "no test pod",
        "-m gawm_lib.health --kubeconfig /tmp/k --no-pod --namespace gawm-health",
        "dry run: nothing checked",
    ]:
        assert expected in out, expected
    assert "cluster checks" not in plan(dry_run("gpu-health-check.sh", "--host-only", sandbox=sandbox_path))


def test_dry_run_logs_each_step_to_the_log_file_when_asked(tmp_path):
    # the log file is the one thing a dry run writes, and only when asked: that takes mkdir and tee
    sandbox = make_sandbox([*READ_ONLY_TOOLS, "mkdir", "tee"])
    try:
        log_file = tmp_path / "logs" / "create.log"
        result = dry_run("create-cluster.sh", "--log-file", str(log_file), sandbox=str(sandbox), as_nobody=False)
    finally:
        shutil.rmtree(sandbox)
    logged = log_file.read_text()
    assert re.search(r"^\[create-cluster \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\] == step 1: ", logged, re.M)
    assert logged.count("== step") == 13 and f"log file: {log_file}" in logged
    assert set(result.stdout.splitlines()) <= set(logged.splitlines())


def test_help_prints_the_usage_of_each_script(sandbox_path):
    for name in SCRIPTS:
        result = subprocess.run(
            [shutil.which("bash"), str(SCRIPTS_DIR / name), "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": sandbox_path},
        )
        assert result.returncode == 0 and "--dry-run" in result.stdout and not result.stdout.startswith("#"), name
