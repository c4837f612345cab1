"""System programs gawm needs besides Python packages, and installing them (Debian/Ubuntu, as root).

Runs with the system Python before the virtual environment exists (standard library only)::

    python3 -m gawm_lib.sysdeps --install     # install what is missing (apt-get, as root), else say how
    python3 -m gawm_lib.sysdeps --install --tests   # and what the test suite needs
    python3 -m gawm_lib.sysdeps --install --cluster # and what the local cluster needs (make cluster-up)
    python3 -m gawm_lib.sysdeps               # only check
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

# program -> (Debian package, what gawm uses it for)
PROGRAMS = {
    "prometheus": ("prometheus", "metrics server for local runs"),
    "ffmpeg": ("ffmpeg", "decoding FLAC/MP3 audio for Whisper"),
    "espeak-ng": ("espeak-ng", "speech samples with known transcripts"),
    "git": ("git", "provenance of every run"),
}
# what only the test suite needs
TEST_PROGRAMS = {
    "shellcheck": ("shellcheck", "checking the cluster scripts in k8s/cluster/"),
    "etcd": ("etcd-server", "the test Kubernetes control plane (k8s/testenv/)"),
    "openssl": ("openssl", "certificates of the test Kubernetes control plane"),
    "chromium": ("chromium", "the headless browser of the JupyterLab browser test (tests/test_lab_browser.py)"),
    "chromedriver": ("chromium-driver", "Selenium's driver for that browser, so Selenium downloads none"),
}
# the local single-node cluster with a real kubelet (k8s/testenv/node.py: make cluster-up; tests/k8s_node.py)
CLUSTER_PROGRAMS = {
    "etcd": ("etcd-server", "the local cluster's store"),
    "openssl": ("openssl", "the local cluster's certificates"),
    "containerd": ("containerd", "the container runtime of the local Kubernetes node"),
    "runc": ("runc", "the OCI runtime containerd starts containers with"),
    "/usr/lib/cni/bridge": ("containernetworking-plugins", "the CNI bridge, host-local and portmap plugins"),
    "iptables": ("iptables", "kube-proxy's Services and the CNI bridge's masquerading"),
    "nft": ("nftables", "removing the nftables tables the local node created, on the way down"),
    "conntrack": ("conntrack", "kube-proxy's clean-up of stale connections"),
    "socat": ("socat", "the kubelet's port forwarding"),
    "ethtool": ("ethtool", "the CNI bridge plugin's veth set-up"),
    "ebtables": ("ebtables", "what the kubelet and CNI plugins expect on a node"),
    "gcc": ("gcc", "compiling the static pause binary of the node's pod sandboxes"),
}


def wanted(tests: bool = False, cluster: bool = False) -> dict[str, tuple[str, str]]:
    """What to have: gawm's programs, and those of the tests (which use the local cluster) or of the cluster."""
    return {**PROGRAMS, **(TEST_PROGRAMS if tests else {}), **(CLUSTER_PROGRAMS if tests or cluster else {})}


def missing(tests: bool = False, cluster: bool = False) -> dict[str, tuple[str, str]]:
    wanted_now = wanted(tests, cluster)
    return {prog: info for prog, info in wanted_now.items() if not _found(prog)}


def _found(prog: str) -> bool:
    """A program on PATH, or a file at an absolute path (CNI plugins live outside PATH)."""
    return os.access(prog, os.X_OK) if os.path.isabs(prog) else shutil.which(prog) is not None


def install(packages: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check (and install) the system programs gawm needs")
    parser.add_argument("--install", action="store_true", help="install missing ones with apt-get when running as root")
    parser.add_argument("--tests", action="store_true", help="also what the test suite needs")
    parser.add_argument("--cluster", action="store_true", help="also what the local cluster needs (make cluster-up)")
    args = parser.parse_args(argv)
    absent = missing(args.tests, args.cluster)
    if not absent:
        print("gawm: system programs present: " + ", ".join(wanted(args.tests, args.cluster)))
        return 0
    packages = sorted({pkg for pkg, _ in absent.values()})
    can_apt = shutil.which("apt-get") is not None and os.geteuid() == 0
    if args.install and can_apt:
        print(f"gawm: installing {' '.join(packages)} with apt-get", flush=True)
        install(packages)
        still = missing(args.tests, args.cluster)
        if not still:
            return 0
        absent = still
    print("gawm: missing system programs:", file=sys.stderr)
    for prog, (pkg, why) in absent.items():
        print(f"  {prog:<12} ({why}): Debian/Ubuntu package '{pkg}'", file=sys.stderr)
    print(f"install them with: sudo apt-get install -y {' '.join(packages)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
