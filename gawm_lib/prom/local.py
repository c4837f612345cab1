"""A real Prometheus server for local runs, started and stopped by a context manager.

    with LocalPrometheus(run_dir / "prometheus", targets=[Target("127.0.0.1:8001", {"workload": "resnet50",
                                                                                   "replica": "0"})]) as prom:
        wait_for_targets_up(prom.url, 1, timeout_s=10)
        ...                                   # drive load; prom.set_targets([...]) when replicas change
        frame = query_phases(prom.url, [...], phases)

Targets come from a ``file_sd_configs`` file rewritten atomically by :meth:`set_targets`, so
they change without a restart (Prometheus applies target changes every 5 s, so the first
scrape of a new target comes about 5 s later). Prometheus listens on 127.0.0.1 only, on a free port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gawm_lib import processes

from .common import PrometheusNotInstalled, PrometheusStartError, connect
from .promql import check_label_name, format_duration

_ADDRESS = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})\Z")


@dataclass(frozen=True)
class Target:
    """One scrape target: ``"127.0.0.1:PORT"`` plus target labels (e.g. workload, replica)."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = _ADDRESS.match(self.address) if isinstance(self.address, str) else None
        if not m or not 0 < int(m.group(2)) < 65536:
            raise ValueError(f"target address must be 'HOST:PORT', got {self.address!r}")
        for k, v in self.labels.items():
            check_label_name(k)
            if k.startswith("__"):
                raise ValueError(f"target label {k!r}: names starting with '__' are reserved")
            if not isinstance(v, str):
                raise TypeError(f"target label {k!r}: value must be a str, got {v!r}")


def _as_target(t: Any) -> Target:
    if isinstance(t, Target):
        return t
    if isinstance(t, str):
        return Target(t)
    if isinstance(t, Mapping):
        return Target(t["address"], dict(t.get("labels") or {}))
    address, labels = t
    return Target(address, dict(labels))


def find_binary(binary: str = "prometheus") -> str:
    """Absolute path of the Prometheus binary, or raise :class:`PrometheusNotInstalled`."""
    binary = os.path.expanduser(binary)  # "~/.cache/gawm/prometheus-3/usr/bin/prometheus" in a params file
    path = binary if os.sep in binary else shutil.which(binary)
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise PrometheusNotInstalled(
            f"Prometheus binary {binary!r} not found or not executable. Install it with "
            "`apt-get install prometheus` (Debian/Ubuntu), or download a release from "
            "https://prometheus.io/download/ and point the setting `prometheus.binary` at it "
            "(LocalPrometheus(binary=...))."
        )
    return os.path.abspath(path)


def prometheus_version(binary: str = "prometheus") -> str:
    """Version string from ``prometheus --version`` (e.g. ``2.42.0+ds``)."""
    path = find_binary(binary)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    m = re.search(r"version (\S+)", out.stdout + out.stderr)
    if not m:
        raise PrometheusNotInstalled(f"{path} --version printed no version: {(out.stdout + out.stderr)[-500:]!r}")
    return m.group(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPrometheus:
    """Run ``prometheus`` on 127.0.0.1 for the duration of a ``with`` block.

    Files in ``workdir``: ``prometheus.yml`` (config), ``targets.json`` (file_sd),
    ``prometheus.log``, ``data/`` (TSDB, kept after exit for later queries by a new instance).
    ``scrape_configs``: further Prometheus scrape configs (dicts as in ``prometheus.yml``, each with its own
    ``job_name``) appended after the file_sd job, e.g. ``kubernetes_sd_configs`` (needs Prometheus built with it:
    Debian 12's 2.42 is not; ``k8s/testenv/fetch-prometheus3.sh`` fetches 3.x).
    The process is stopped in ``__exit__`` on every path (SIGTERM, then SIGKILL after
    ``stop_timeout_s``), and gets SIGTERM from the kernel if our process dies first
    (PR_SET_PDEATHSIG: tied to the *thread* that entered the block; enter it from the main
    thread or a thread that outlives the run). :meth:`exits` says whether it exited before the stop (killed, crashed).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        targets: Iterable[Any] = (),
        *,
        scrape_interval_s: float = 1.0,
        binary: str = "prometheus",
        job: str = "gawm",
        ready_timeout_s: float = 20.0,
        stop_timeout_s: float = 10.0,
        extra_args: Iterable[str] = (),
        scrape_configs: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.scrape_interval_s = float(scrape_interval_s)
        self.binary, self.job = binary, job
        self.ready_timeout_s, self.stop_timeout_s = ready_timeout_s, stop_timeout_s
        self.extra_args = list(extra_args)
        self.scrape_configs = [dict(c) for c in scrape_configs]
        names = [self.job, *(c.get("job_name") for c in self.scrape_configs)]
        if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"each scrape config needs its own job_name, other than {self.job!r}; got {names[1:]!r}")
        self.targets: list[Target] = [_as_target(t) for t in targets]
        self.config_path = self.workdir / "prometheus.yml"
        self.targets_path = self.workdir / "targets.json"
        self.log_path = self.workdir / "prometheus.log"
        self.data_dir = self.workdir / "data"
        self.config_text = self._config()
        self.url: str | None = None
        self.version: str | None = None
        self._proc: subprocess.Popen | None = None
        self._watch: processes.ExitWatch | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _config(self) -> str:
        interval = format_duration(self.scrape_interval_s)
        timeout = format_duration(min(self.scrape_interval_s, 10.0))
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": timeout, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "file_sd_configs": [{"files": [str(self.targets_path.resolve())], "refresh_interval": "5s"}],
                },
                *self.scrape_configs,
            ],
        }
        return yaml.safe_dump(config, sort_keys=False)

    def set_targets(self, targets: Iterable[Any]) -> None:
        """Replace the scrape targets (Target, (address, labels), {"address", "labels"} or "host:port").
        Prometheus reads the file at once but applies target changes in batches every 5 s: expect
        new targets to be scraped after about 5 s (up to 10 s); :meth:`wait_for_targets` waits for that."""
        self.targets = [_as_target(t) for t in targets]
        groups = [{"targets": [t.address], "labels": dict(t.labels)} for t in self.targets]
        tmp = self.targets_path.with_name(self.targets_path.name + ".tmp")
        tmp.write_text(json.dumps(groups, indent=1))
        os.replace(tmp, self.targets_path)

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "(no log)"

    def start(self) -> LocalPrometheus:
        path = find_binary(self.binary)
        self.version = prometheus_version(path)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.set_targets(self.targets)
        self.config_path.write_text(self.config_text)
        try:
            for _attempt in range(3):
                port = _free_port()
                if self._launch(path, port):
                    self._watch = processes.ExitWatch()
                    self._watch.add("prometheus", self._proc)
                    return self
            raise PrometheusStartError(f"Prometheus could not bind a free port; log tail:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _launch(self, path: str, port: int) -> bool:
        """Start on ``port``; True when ready, False when the port was taken meanwhile."""
        self.stop()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [
            path,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            *self.extra_args,
        ]
        self._proc = processes.spawn(args, self.log_path)  # own session, dies with its parent
        self.url = f"http://127.0.0.1:{port}"
        import requests

        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + self.ready_timeout_s
        with session:
            while True:
                code = self._proc.poll()
                if code is not None:
                    with open(self.log_path, "rb") as f:
                        f.seek(offset)
                        if b"address already in use" in f.read():
                            return False
                    raise PrometheusStartError(
                        f"Prometheus exited with code {code} before it was ready ({' '.join(args)}); "
                        f"log {self.log_path}, tail:\n{self.log_tail()}"
                    )
                try:
                    if session.get(self.url + "/-/ready", timeout=1.0).status_code == 200:
                        return True
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise PrometheusStartError(
                        f"Prometheus at {self.url} not ready after {self.ready_timeout_s} s; "
                        f"log {self.log_path}, tail:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, wait ``stop_timeout_s``, then SIGKILL (also on Ctrl-C while waiting). Idempotent."""
        proc, self._proc = self._proc, None
        if self._watch is not None:
            self._watch.expect()
        if proc is not None:
            processes.stop(proc, timeout_s=self.stop_timeout_s)

    def exits(self) -> list[dict]:
        """The server's exit if it came before :meth:`stop` (:func:`gawm_lib.processes.exit_record`), else []."""
        return self._watch.check() if self._watch is not None else []

    def wait_for_targets(self, n: int | None = None, timeout_s: float = 30.0) -> list[dict]:
        """Wait until at least ``n`` (default: all) of the targets last given to :meth:`set_targets`
        are scraped successfully; stale targets from before the last ``set_targets`` never count."""
        return wait_for_targets_up(
            self.url, len(self.targets) if n is None else n, timeout_s, job=self.job, targets=self.targets
        )

    def reload(self) -> None:
        """Ask Prometheus to re-read its config (``POST /-/reload``; lifecycle API is on)."""
        import requests

        with requests.Session() as s:
            s.trust_env = False
            s.post(self.url + "/-/reload", timeout=10).raise_for_status()

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is(active: Mapping[str, Any], target: Target) -> bool:
    labels = active.get("labels", {})
    return labels.get("instance") == target.address and all(labels.get(k) == v for k, v in target.labels.items())


def wait_for_targets_up(
    url: str, n: int, timeout_s: float = 30.0, *, job: str | None = None, targets: Iterable[Any] | None = None
) -> list[dict]:
    """Wait until at least ``n`` active targets report health "up" (only those of ``job`` and,
    if given, matching one of ``targets`` by address and labels); return them (Prometheus'
    target dicts). TimeoutError lists every active target's state."""
    wanted = None if targets is None else [_as_target(t) for t in targets]
    prom = connect(url, timeout_s=min(5.0, timeout_s), retries=0)
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            active = prom.get_targets(state="active")["activeTargets"]
            if job is not None:
                active = [t for t in active if t.get("labels", {}).get("job") == job]
            if wanted is not None:
                active = [t for t in active if any(_is(t, w) for w in wanted)]
            up = [t for t in active if t.get("health") == "up"]
            if len(up) >= n:
                return up
            last = [(t.get("scrapeUrl"), t.get("labels"), t.get("health"), t.get("lastError")) for t in active]
        except Exception as exc:  # Prometheus still starting, or down: retry until the deadline
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {n} targets up at {url} after {timeout_s} s; last state: {last!r}")
        time.sleep(0.1)
