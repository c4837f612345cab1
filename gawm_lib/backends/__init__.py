"""Backends start N replicas of a workload and give back their addresses; they always stop what they started.

``local`` runs replicas as child processes on loopback (the default, no cluster needed); ``kubernetes`` runs them as a
Deployment + Service; ``external`` starts nothing and measures servers someone else runs (``backend.endpoints``,
:mod:`gawm_lib.backends.external`). All are context managers with the same shape::

    with open_backend(workload_cfg, backend_cfg, logs_dir) as backend:
        backend.replicas  # [Replica(workload, index, url, ...)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gawm_lib.config import BackendConfig, WorkloadConfig


class BackendError(RuntimeError):
    """Replicas that could not be started; the message carries the server's own log."""


class Backend:
    """The context-manager shape every backend has: ``start()`` on enter (``stop()`` too if it fails), ``stop()`` on
    exit, also after an exception or Ctrl-C; ``replicas`` once started."""

    replicas: list[Replica]

    def start(self) -> list[Replica]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class Replica:
    workload: str
    index: int
    host: str
    port: int
    pid: int | None = None
    log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def open_backend(workload: WorkloadConfig, backend: BackendConfig, logs_dir: Path):
    if backend.kind == "local":
        from gawm_lib.backends.local import LocalBackend

        return LocalBackend(workload, backend, logs_dir)
    if backend.kind == "kubernetes":
        from gawm_lib.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(workload, backend, logs_dir)
    if backend.kind == "external":
        from gawm_lib.backends.external import ExternalBackend

        return ExternalBackend(workload, backend, logs_dir)
    raise BackendError(f"backend.kind {backend.kind!r} is not available: use 'local', 'kubernetes' or 'external'")


__all__ = ["Backend", "BackendError", "Replica", "open_backend"]
