"""Where local replicas run: which CPU cores or which GPU each replica gets (``backend.placement``).

The seed study compared replicas that each own a GPU with replicas time-slicing one GPU (an NVIDIA A16 shared by the
device plugin). Locally the same comparison is made with:

- ``exclusive``: replica ``i`` alone on its own devices: CPU cores ``cpus[i*t:(i+1)*t]`` (``t`` = the workload's
  ``threads``), or GPU ``gpus[i]`` (``CUDA_VISIBLE_DEVICES``) with device ``cuda``; at most as many replicas as there
  are devices for them;
- ``shared``: every replica on the same devices, ``cpus[:t]`` or ``gpus[0]``: the kernel (CPU) or the driver's
  time-slicing between processes (GPU) shares them;
- ``none``: no pinning; the OS places the processes (every replica on the process's default GPU with device cuda).

CPU pinning is set in the child before it executes the server (``processes.spawn(cpus=...)``), so every thread the
server starts inherits it. On Kubernetes the device plugin decides instead (``k8s/overlays/gpu`` gives each replica a
whole GPU, ``k8s/overlays/gpu-time-slicing`` a tenth of one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

PLACEMENTS = ("none", "shared", "exclusive")


class PlacementError(ValueError):
    """Replicas that cannot be placed as asked (too few cores or GPUs, unknown mode); the message says which setting."""


@dataclass(frozen=True)
class ReplicaPlacement:
    """Where one replica is to run: ``cpus`` (None: not pinned) and ``gpu`` (the ``CUDA_VISIBLE_DEVICES`` value given
    to it; None: inherited)."""

    replica: int
    placement: str
    device: str
    cpus: tuple[int, ...] | None
    gpu: str | None

    def env(self) -> dict[str, str]:
        return {} if self.gpu is None else {"CUDA_VISIBLE_DEVICES": self.gpu}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cpus"] = list(self.cpus) if self.cpus is not None else None
        return out


def available_cpus() -> list[int]:
    """The CPU cores this process may run on (its affinity), sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def visible_gpus() -> list[str]:
    """The GPUs a child would see, as ``CUDA_VISIBLE_DEVICES`` entries: this process's ``CUDA_VISIBLE_DEVICES`` where
    set, else one index per GPU that NVML (or ``nvidia-smi -L``) lists; empty where there is none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [entry.strip() for entry in visible.split(",") if entry.strip() and entry.strip() != "-1"]
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no nvidia-ml-py, no driver: ask nvidia-smi, if there is one
        pass
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(row for row in out.stdout.splitlines() if row.startswith("GPU "))]


def plan(
    placement: str,
    replicas: int,
    threads: int,
    device: str,
    cpus: Sequence[int] = (),
    gpus: Sequence[int] = (),
    *,
    available: Sequence[int] | None = None,
    visible: Sequence[str] | None = None,
) -> list[ReplicaPlacement]:
    """Where each of ``replicas`` replicas runs. ``cpus``/``gpus`` narrow the devices used (empty: all of
    ``available`` cores / ``visible`` GPUs, by default this machine's); GPU numbers index ``visible``.

    Raises :class:`PlacementError` naming the setting when the devices do not suffice."""
    if placement not in PLACEMENTS:
        raise PlacementError(f"backend.placement: expected one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if placement == "none":
        return [ReplicaPlacement(i, placement, device, None, None) for i in range(replicas)]
    if device == "cuda":
        visible = list(visible_gpus() if visible is None else visible)
        bad = [g for g in gpus if not 0 <= g < len(visible)]
        if bad:
            raise PlacementError(
                f"backend.gpus: GPUs {bad} are not visible here ({len(visible)} visible: "
                f"CUDA_VISIBLE_DEVICES={','.join(visible) or '(none)'})"
            )
        pool = [visible[g] for g in gpus] if gpus else visible
        need = replicas if placement == "exclusive" else 1
        if len(pool) < need:
            raise PlacementError(
                f"backend.placement {placement}: {replicas} replica(s) need {need} GPU(s), "
                f"{len(pool)} available ({'backend.gpus' if gpus else 'visible here'}: "
                f"{', '.join(pool) or 'none'})"
            )
        return [
            ReplicaPlacement(i, placement, device, None, pool[i] if placement == "exclusive" else pool[0])
            for i in range(replicas)
        ]
    available = list(available_cpus() if available is None else available)
    missing = [c for c in cpus if c not in available]
    if missing:
        raise PlacementError(f"backend.cpus: cores {missing} are not available here (available: {available})")
    pool = list(cpus) if cpus else available
    need = replicas * threads if placement == "exclusive" else threads
    if len(pool) < need:
        what = f"{replicas} replica(s) x {threads} thread(s)" if placement == "exclusive" else f"{threads} thread(s)"
        raise PlacementError(
            f"backend.placement {placement}: {what} need {need} CPU core(s), {len(pool)} available "
            f"({'backend.cpus' if cpus else 'this process may use'}: {pool})"
        )
    if placement == "exclusive":
        return [
            ReplicaPlacement(i, placement, device, tuple(pool[i * threads : (i + 1) * threads]), None)
            for i in range(replicas)
        ]
    return [ReplicaPlacement(i, placement, device, tuple(pool[:threads]), None) for i in range(replicas)]


def plan_for(workload, backend) -> list[ReplicaPlacement]:
    """:func:`plan` for a :class:`~gawm_lib.config.WorkloadConfig` and a :class:`~gawm_lib.config.BackendConfig`."""
    return plan(backend.placement, backend.replicas, workload.threads, workload.device, backend.cpus, backend.gpus)


def affinity(pid: int) -> list[int] | None:
    """The cores process ``pid`` may run on, as the kernel has them (None where it cannot be read)."""
    try:
        return sorted(os.sched_getaffinity(pid))
    except (OSError, AttributeError):
        return None


def scaling_points(
    workloads, backend, replicas: Sequence[int], placements: Sequence[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The points of a replica-scaling study (``backend.placement`` x ``backend.replicas`` settings) that can be placed
    here, and a note for each one that cannot (more exclusive replicas than cores or GPUs). One replica is placed
    the same way by every placement (alone on the first cores or GPU), so it is one point, run as the last placement
    given. ``workloads`` and ``backend`` are the study's validated settings. Raises ValueError for parameters that are
    wrong in themselves."""
    if backend.kind != "local":
        raise ValueError(
            "replica placement is the local backend's; on kubernetes the device plugin places replicas "
            "(k8s/overlays/gpu: a GPU each; k8s/overlays/gpu-time-slicing: shared GPUs): measure a grid "
            "of backend.replicas under each overlay instead"
        )
    if (
        not isinstance(replicas, (list, tuple))
        or not replicas
        or len(set(replicas)) != len(replicas)
        or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 64 for n in replicas)
    ):
        raise ValueError(f"replicas: expected distinct whole numbers from 1 to 64, e.g. [1, 2, 4], got {replicas!r}")
    if (
        not isinstance(placements, (list, tuple))
        or not placements
        or len(set(placements)) != len(placements)
        or not set(placements) <= {"shared", "exclusive"}
    ):
        raise ValueError(
            f"placements: expected 'shared' and/or 'exclusive', e.g. ['shared', 'exclusive'], got {placements!r}"
        )
    points, skipped = [], []
    for count in sorted(replicas):
        for mode in placements if count > 1 else placements[-1:]:
            try:
                for workload in workloads:
                    plan(mode, count, workload.threads, workload.device, backend.cpus, backend.gpus)
            except PlacementError as exc:
                skipped.append(f"{mode} x {count} replicas skipped: {exc}")
                continue
            points.append({"backend.placement": mode, "backend.replicas": count})
    return points, skipped
