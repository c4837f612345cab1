"""Run directories: one per run, created exclusively, never overwritten, with a provenance manifest.

``data/raw/<UTC time>-<experiment>-<git short sha>[-dirty]/`` holds ``manifest.json`` (schema version, git, package
versions, host, GPU, settings requested and effective, start/end, status), ``params.yaml``, the raw per-request records,
metrics, server logs and the executed notebooks. The manifest is replaced atomically, so a reader never sees half of
one; a write that fails (a full or read-only disk) leaves no temporary file and raises :class:`RunError` naming the
path. A finished run carries a verdict (``verdict``, ``verdict_reasons``: :mod:`gawm_lib.verdicts`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gawm_lib import paths

SCHEMA_VERSION = 1
STATUSES = ("RUNNING", "COMPLETED", "FAILED", "INTERRUPTED")
MANIFEST = "manifest.json"
_PACKAGES = (
    "gawm",
    "torch",
    "torchvision",
    "transformers",
    "openai-whisper",
    "numpy",
    "pandas",
    "pyarrow",
    "fastapi",
    "uvicorn",
    "httptools",
    "uvloop",
    "h11",  # uvicorn serves with httptools and uvloop where installed, else h11 and asyncio
    "httpx",
    "prometheus-client",
    "prometheus-api-client",
    "kubernetes",
    "papermill",
    "pydantic",
    "matplotlib",
    "seaborn",
)


class RunError(RuntimeError):
    """A run directory that cannot be created or read."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def git_info(root: Path | None = None) -> dict[str, Any]:
    """Commit, short sha and dirty flag of the checkout (``None`` values outside a git checkout).

    ``GAWM_GIT_COMMIT`` (and ``GAWM_GIT_DIRTY=1``) name the commit of a copied working tree (a GPU machine, a container
    image): they win over whatever ``.git`` the copy holds, which may be missing or stale."""
    if os.environ.get("GAWM_GIT_COMMIT"):
        commit = os.environ["GAWM_GIT_COMMIT"]
        return {
            "commit": commit,
            "short": commit[:7],
            "dirty": os.environ.get("GAWM_GIT_DIRTY") == "1",
            "branch": None,
            "from": "GAWM_GIT_COMMIT",
        }
    root = root or paths.project_root()

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "short": commit[:7] if commit else None,
        "dirty": None if status is None else bool(status),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
    }


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None where a package is absent)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host_info() -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "memory_bytes": memory,
        "user": getpass.getuser(),
    }


def thread_settings() -> dict[str, Any]:
    settings: dict[str, Any] = {
        k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    if "torch" in sys.modules:  # never import torch just to ask
        settings["torch_num_threads"] = sys.modules["torch"].get_num_threads()
    return settings


def gpu_info() -> dict[str, Any]:
    """GPUs seen by NVML (``nvidia-ml-py``); an empty list with the reason where there is none."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return {"devices": [], "reason": "nvidia-ml-py not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"devices": [], "reason": f"NVML unavailable: {exc}"}
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                {
                    "index": i,
                    "name": pynvml.nvmlDeviceGetName(handle),
                    "uuid": pynvml.nvmlDeviceGetUUID(handle),
                    "memory_total_bytes": memory.total,
                }
            )
        return {"devices": devices, "driver": pynvml.nvmlSystemGetDriverVersion()}
    finally:
        pynvml.nvmlShutdown()


def make_run_id(experiment: str, when: dt.datetime, git: dict[str, Any]) -> str:
    sha = git.get("short") or "nogit"
    return f"{when:%Y%m%dT%H%M%SZ}-{experiment}-{sha}{'-dirty' if git.get('dirty') else ''}"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` through a hidden temporary file; on failure (a full or read-only disk) the
    temporary file is removed and :class:`RunError` names the path."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RunError(f"{path}: cannot write it: {exc.strerror or exc}") from exc


def _write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


@dataclass
class Run:
    """An existing run directory and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return self.manifest["run_id"]

    @property
    def status(self) -> str:
        return self.manifest["status"]

    @property
    def requests_path(self) -> Path:
        """Per-request records: a parquet dataset (a folder of part files, each complete on its own)."""
        return self.path / "requests.parquet"

    @property
    def logs_dir(self) -> Path:
        folder = self.path / "logs"
        folder.mkdir(exist_ok=True)
        return folder

    def refresh(self) -> dict[str, Any]:
        """Re-read the manifest (another process may have written it) and return it."""
        manifest_path = self.path / MANIFEST
        if manifest_path.exists():
            self.manifest = json.loads(manifest_path.read_text())
        return self.manifest

    def update(self, **fields: Any) -> None:
        """Merge top-level manifest fields (dicts are merged one level deep) and write the manifest atomically.

        The manifest is re-read first: the notebook kernel and the ``gawm`` command both write to it.
        """
        self.refresh()
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(self.manifest.get(key), dict):
                self.manifest[key] = {**self.manifest[key], **value}
            else:
                self.manifest[key] = value
        _write_json_atomic(self.path / MANIFEST, self.manifest)

    def finish(self, status: str, error: str | None = None) -> None:
        """Give the run its final status, then its verdict (:func:`gawm_lib.verdicts.finalise`: the step table with a
        verdict per step, and the run's); a verdict that cannot be computed is UNKNOWN, with the reason."""
        if status not in STATUSES[1:]:
            raise ValueError(f"final status must be one of {STATUSES[1:]}, got {status!r}")
        fields: dict[str, Any] = {"status": status, "end_utc": utc_now().isoformat()}
        if error:
            fields["error"] = error
        self.update(**fields)
        from gawm_lib import verdicts

        try:
            verdict, reasons = verdicts.finalise(self)
        except Exception as exc:  # noqa: BLE001 - the status is written; the verdict says why it is unknown
            verdict, reasons = verdicts.UNKNOWN, [f"verdict not computed: {type(exc).__name__}: {exc}"]
        self.update(verdict=verdict, verdict_reasons=reasons)

    @property
    def verdict(self) -> str:
        """VALID, DEGRADED, INVALID, or UNKNOWN (running, or recorded before verdicts)."""
        return self.manifest.get("verdict") or "UNKNOWN"

    def record(self, **values: Any) -> dict[str, Any]:
        """Add values to ``results.json`` (the numbers a notebook reports) and return all of them."""
        path = self.path / "results.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        results.update(values)
        _write_json_atomic(path, results)
        return results

    def results(self) -> dict[str, Any]:
        path = self.path / "results.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def process_alive(self) -> bool:
        """Whether the process that wrote a RUNNING manifest still exists on this host."""
        pid = self.manifest.get("pid")
        if not pid or self.manifest.get("host", {}).get("hostname") != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def create_run(experiment: str, requested: dict, effective: dict, raw_dir: Path | None = None) -> Run:
    """Create a new run directory (never an existing one) with its manifest in status RUNNING."""
    raw_dir = Path(raw_dir or paths.raw_dir())
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"{raw_dir}: cannot create the runs folder: {exc.strerror or exc}") from None
    started = utc_now()
    git = git_info()
    base = make_run_id(experiment, started, git)
    for attempt in range(100):
        run_id = base if attempt == 0 else f"{base}-{attempt}"
        try:
            (raw_dir / run_id).mkdir()
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunError(f"{raw_dir}: cannot create a run directory there: {exc.strerror or exc}") from None
    else:
        raise RunError(f"{raw_dir}: could not find a free run directory name for {base}")
    path = raw_dir / run_id
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "experiment": experiment,
        "status": "RUNNING",
        "start_utc": started.isoformat(),
        "end_utc": None,
        "pid": os.getpid(),
        "git": git,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "packages": package_versions(),
        "host": host_info(),
        "threads": thread_settings(),
        "gpu": gpu_info(),
        "params": {"requested": requested, "effective": effective},
    }
    run = Run(path=path, manifest=manifest)
    try:
        write_atomic(path / "params.yaml", yaml.safe_dump(requested, sort_keys=False))
        run.update()
    except RunError:
        import shutil

        shutil.rmtree(path, ignore_errors=True)  # nothing was measured: leave no half-made run behind
        raise
    return run


@contextlib.contextmanager
def started_run(experiment: str, requested: dict, effective: dict, raw_dir: Path | None = None) -> Iterator[Run]:
    """Create a run and always give it a final status: COMPLETED, FAILED (with the error) or INTERRUPTED (Ctrl-C)."""
    run = create_run(experiment, requested, effective, raw_dir)
    try:
        yield run
    except KeyboardInterrupt:
        run.finish("INTERRUPTED")
        raise
    except BaseException as exc:
        run.finish("FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    else:
        run.finish("COMPLETED")


def load_run(ref: str | Path, raw_dir: Path | None = None) -> Run:
    """Open a run by id or path; refuses manifests of a schema version this gawm does not know."""
    path = Path(ref)
    if not path.is_dir():
        path = Path(raw_dir or paths.raw_dir()) / str(ref)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise RunError(f"{path}: no {MANIFEST}: not a gawm run directory (runs live in {raw_dir or paths.raw_dir()})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{manifest_path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise RunError(f"{manifest_path}: not a manifest (a JSON {type(manifest).__name__}, not an object)")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunError(
            f"{manifest_path}: schema_version {version!r} is not one this gawm reads (it reads {SCHEMA_VERSION}); "
            "use the gawm version that wrote it"
        )
    missing = [key for key in ("run_id", "status") if not isinstance(manifest.get(key), str)]
    if missing:
        raise RunError(f"{manifest_path}: no {' or '.join(missing)} in the manifest")
    return Run(path=path, manifest=manifest)


def scan_runs(raw_dir: Path | None = None) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The readable runs, oldest first, and the unreadable folders with the reason (a corrupt manifest, an unknown
    schema version, none at all), as ``gawm runs`` lists them."""
    raw_dir = Path(raw_dir or paths.raw_dir())
    if not raw_dir.is_dir():
        return [], []
    found, unreadable = [], []
    for folder in sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found.append(load_run(folder))
        except RunError as exc:
            unreadable.append((folder, str(exc).removeprefix(f"{folder / MANIFEST}: ").removeprefix(f"{folder}: ")))
        except OSError as exc:
            unreadable.append((folder, f"cannot read: {exc.strerror or exc}"))
    return found, unreadable


def list_runs(raw_dir: Path | None = None) -> list[Run]:
    """All readable runs, oldest first. Unreadable folders are left out here (:func:`scan_runs` names them)."""
    return scan_runs(raw_dir)[0]


def display_status(run: Run) -> str:
    """The status as a person should read it: a RUNNING run whose process is gone is shown as such."""
    if run.status == "RUNNING" and not run.process_alive():
        return "DEAD (marked RUNNING, its process is gone)"
    return run.status


def latest_run(status: str | None = "COMPLETED", with_requests: bool = True, raw_dir: Path | None = None) -> Run:
    """The newest run (by id, which starts with its UTC start time) with that status and request records."""
    for run in reversed(list_runs(raw_dir)):
        if (status is None or run.status == status) and (not with_requests or run.requests_path.exists()):
            return run
    raise RunError(
        f"no {status or ''} run with request records in {raw_dir or paths.raw_dir()}: "
        "run a measurement first (gawm demo, or notebooks/01_measure_load_sweep.ipynb)"
    )
