"""Replicas as local processes: ``python -m gawm_lib.server`` on free loopback ports, logs in the run directory, each
on the CPU cores or GPU that ``backend.placement`` gives it (:mod:`gawm_lib.backends.placement`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from gawm_lib import processes
from gawm_lib.backends import Backend, BackendError, Replica
from gawm_lib.backends.placement import PlacementError, affinity, plan_for
from gawm_lib.config import BackendConfig, WorkloadConfig


class LocalBackend(Backend):
    """Start ``backend.replicas`` servers for one workload, each placed as ``backend.placement`` says; wait until each
    is ready; stop them all on exit. ``.placement`` holds, per replica, the cores or GPU it was given and the cores the
    kernel reports for its process once it runs. :meth:`exits` lists the replicas that exited before the stop (a
    crash, a ``kill -9``), each with its time and exit code or signal."""

    def __init__(self, workload: WorkloadConfig, backend: BackendConfig, logs_dir: Path):
        self.workload = workload
        self.backend = backend
        self.logs_dir = Path(logs_dir)
        self.replicas: list[Replica] = []
        self.placement: list[LocalPlacement] = []
        self._procs: list[subprocess.Popen] = []
        self._watch = processes.ExitWatch()

    def start(self) -> list[Replica]:
        try:
            plans = plan_for(self.workload, self.backend)
        except PlacementError as exc:
            raise BackendError(f"{self.workload.name}: {exc}") from None
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        port_files = []
        for index, where in enumerate(plans):
            stem = f"{self.workload.name}-{index}"
            port_file = self.logs_dir / f"{stem}.port"
            port_file.unlink(missing_ok=True)
            cmd = [
                sys.executable,
                "-m",
                "gawm_lib.server",
                "--workload",
                self.workload.name,
                "--settings",
                json.dumps(self.workload.model_dump(exclude={"name"})),
                "--host",
                self.backend.host,
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--replica",
                str(index),
                "--exit-with-parent",
            ]
            threads = str(self.workload.threads)
            env = {
                "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads,
                "TOKENIZERS_PARALLELISM": "false",
                **where.env(),
            }
            self._procs.append(processes.spawn(cmd, self.logs_dir / f"{stem}.log", env=env, cpus=where.cpus))
            port_files.append(port_file)
        deadline = time.monotonic() + self.backend.startup_timeout_s
        for index, (proc, port_file, where) in enumerate(zip(self._procs, port_files, plans)):
            port = self._wait_ready(index, proc, port_file, deadline)
            self.replicas.append(
                Replica(
                    self.workload.name,
                    index,
                    self.backend.host,
                    port,
                    proc.pid,
                    self.logs_dir / f"{self.workload.name}-{index}.log",
                )
            )
            self.placement.append(LocalPlacement(**where.to_dict(), pid=proc.pid, cpus_actual=affinity(proc.pid)))
        for index, proc in enumerate(self._procs):
            self._watch.add(f"{self.workload.name}-{index}", proc)
        return self.replicas

    def exits(self) -> list[dict[str, Any]]:
        """Replicas that exited on their own since they were ready (:func:`gawm_lib.processes.exit_record`, with
        ``replica``: the index), oldest first."""
        return [{**record, "replica": int(record["name"].rsplit("-", 1)[1])} for record in self._watch.check()]

    def _wait_ready(self, index: int, proc: subprocess.Popen, port_file: Path, deadline: float) -> int:
        log_path = self.logs_dir / f"{self.workload.name}-{index}.log"

        def fail(why: str) -> BackendError:
            return BackendError(
                f"{self.workload.name} replica {index}: {why}\n--- {log_path} (last lines) ---\n"
                f"{processes.log_tail(log_path)}"
            )

        with httpx.Client(timeout=2.0) as client:
            while True:
                if proc.poll() is not None:
                    raise fail(f"server exited with code {proc.returncode} before it was ready")
                if time.monotonic() > deadline:
                    raise fail(f"not ready after {self.backend.startup_timeout_s:g} s (backend.startup_timeout_s)")
                if port_file.is_file():
                    port = int(port_file.read_text())
                    try:
                        answer = client.get(f"http://{self.backend.host}:{port}/v2/health/ready")
                    except httpx.TransportError:
                        answer = None
                    if answer is not None and answer.status_code == 200:
                        return port
                    if answer is not None and answer.status_code == 503 and answer.json().get("error"):
                        raise fail(f"model failed to load: {answer.json()['error']}")
                time.sleep(0.1)

    def stop(self) -> None:
        self._watch.expect()
        for proc in self._procs:
            processes.stop(proc)
        self._procs.clear()


@dataclass(frozen=True)
class LocalPlacement:
    """Where one local replica runs: as planned (``placement``, ``cpus``, ``gpu`` = its ``CUDA_VISIBLE_DEVICES``) and
    as the kernel reports it once started (``cpus_actual``: the process's CPU affinity)."""

    replica: int
    placement: str
    device: str
    cpus: list[int] | None
    gpu: str | None
    pid: int
    cpus_actual: list[int] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
