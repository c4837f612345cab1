"""Shared test set-up: run data and figures go to a temporary folder, never into the checkout's data/."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before any test imports gawm_lib: paths are read from the environment each time they are asked for.
_DATA = Path(os.environ.get("GAWM_TEST_DATA") or tempfile.mkdtemp(prefix="gawm-test-"))
os.environ.setdefault("GAWM_RAW_DIR", str(_DATA / "raw"))
os.environ.setdefault("GAWM_FIGURES_DIR", str(_DATA / "figures"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent

# One Kubernetes control plane for the whole session, shared by every test module that asks for it (started lazily).
from k8s_env import cluster, namespace  # noqa: E402,F401  (pytest fixtures)

# The real single-node cluster (kubelet, containerd, kube-proxy on this machine), also once per session, lazily.
from k8s_node import node_namespace, real_node, real_node_session  # noqa: E402,F401  (pytest fixtures)


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    path = tmp_path / "raw"
    path.mkdir()
    return path
