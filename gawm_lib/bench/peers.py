"""gawm's server against its peers, KServe's and Seldon MLServer's Python model servers: same model, core and load.

    python -m gawm_lib.bench.peers                # about 6 min on a 2-core machine; writes data/benchmarks/peers.json
    python -m gawm_lib.bench.peers --step-s 5 --servers kserve,mlserver   # shorter, fewer

Each server serves torchvision ResNet50 (random weights, seed 0) with one torch thread, pinned (taskset) to one core
(``--server-cpu``); the load process runs pinned to another (``--load-cpu``). Every server gets the same requests:
gawm's JPEG photos as BYTES (base64 in JSON), decoded, resized and centre-cropped in the server (the same code path
in each: PIL, then the model). Servers run one after another, each started fresh and stopped before the next:

- ``gawm``: gawm's own server as it ships (dynamic batching, ``max_batch_size`` 8, ``max_queue_delay_ms`` 2);
- ``kserve``: KServe 0.21.0's ``ModelServer`` with a ``kserve.Model`` (``tests/peers/kserve_resnet50.py``);
- ``mlserver``: MLServer 1.7.1 with a custom ``MLModel`` runtime (``tests/peers/mlserver_resnet50.py``),
  ``parallel_workers: 0`` (the model in the server process), no batching;
- ``mlserver-batching``: the same with adaptive batching (``max_batch_size`` 8, ``max_batch_time`` 2 ms).

First a closed loop at ``--users`` concurrencies: throughput, latency p50/p95/p99 and the servers' CPU time per request
(user + system time of the server's processes, read from /proc before and after each step's load, over the requests
answered, warm-up included). Then Poisson arrivals at ``--shares`` of the smallest capacity measured (the capacity of a
server: its best closed-loop throughput), the same rates for every server. Results go to ``data/benchmarks/peers.json``
(a list of runs: versions, machine, load average at start and end, arguments). The peers come from
``k8s/testenv/install-peers.sh``. The machine's other work shows in the numbers: the load average is recorded.

The launchers (:func:`start_kserve`, :func:`start_mlserver`, :func:`start_gawm`) are also what the tests of
``backend.kind: external`` use.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gawm_lib import paths, processes, runs

KSERVE_VERSION = "0.21.0"
MLSERVER_VERSION = "1.7.1"
PEERS_DIR = paths.project_root() / "tests" / "peers"
MODEL = "resnet50"
SCHEMA_VERSION = 1
SERVERS = ("gawm", "kserve", "mlserver", "mlserver-batching")


class PeerNotInstalled(RuntimeError):
    """A peer's venv is missing: ``k8s/testenv/install-peers.sh`` (``make test-prereqs``) installs it."""


def peer_python(name: str) -> Path:
    """The python of a peer's venv (``kserve`` or ``mlserver``) in ``${GAWM_CACHE_DIR:-~/.cache/gawm}/peers``."""
    version = {"kserve": KSERVE_VERSION, "mlserver": MLSERVER_VERSION}[name]
    venv = paths.cache_dir() / "peers" / f"{name}-{version}"
    if not (venv / ".gawm-ready").is_file():
        raise PeerNotInstalled(f"{name} {version} is not installed in {venv}: run k8s/testenv/install-peers.sh")
    return venv / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Peer:
    """A running model server: ``url`` (base URL on 127.0.0.1), ``metrics_url``, its process and log."""

    name: str
    proc: subprocess.Popen
    url: str
    metrics_url: str | None
    log_path: Path
    settings: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        processes.stop(self.proc)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self, timeout_s: float = 180.0) -> Peer:
        """Until ``/v2/health/ready`` and the model's ``/ready`` answer 200; RuntimeError with the log's tail if the
        process exits or the time runs out."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with code {self.proc.returncode} before it was ready\n"
                        f"{processes.log_tail(self.log_path)}"
                    )
                try:
                    if all(
                        client.get(self.url + path).status_code == 200
                        for path in ("/v2/health/ready", f"/v2/models/{MODEL}/ready")
                    ):
                        return self
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"{self.name} not ready after {timeout_s:g} s\n{processes.log_tail(self.log_path)}"
                    )
                time.sleep(0.25)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's process group (it is started in a session of its own) [s]."""
        return process_group_cpu_s(self.proc.pid)


def process_group_cpu_s(pgid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # fields[2]: pgrp; utime, stime are fields 11 and 12 after the command
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _env(threads: int) -> dict[str, str]:
    return {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "GAWM_PEER_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }


def start_kserve(
    log_path: Path, threads: int = 1, cpus: list[int] | None = None, quirk: bool = False, latency_logging: bool = False
) -> Peer:
    """KServe's ModelServer with ResNet50 on a free port (REST only; it listens on 0.0.0.0: send to 127.0.0.1)."""
    port = free_port()
    cmd = [
        str(peer_python("kserve")),
        str(PEERS_DIR / "kserve_resnet50.py"),
        "--http_port",
        str(port),
        "--enable_grpc",
        "false",
        "--enable_latency_logging",
        str(latency_logging).lower(),
        *(["--quirk"] if quirk else []),
    ]
    proc = processes.spawn(cmd, log_path, env=_env(threads), cpus=cpus)
    url = f"http://127.0.0.1:{port}"
    settings = {"server": f"kserve {KSERVE_VERSION}", "workers": 1, "latency_logging": latency_logging, "quirk": quirk}
    return Peer("kserve", proc, url, f"{url}/metrics", log_path, settings)


def mlserver_repository(
    folder: Path, threads: int = 1, max_batch_size: int = 1, max_batch_time_s: float = 0.0
) -> tuple[Path, int, int]:
    """A model repository for MLServer (``settings.json`` and ``resnet50/model-settings.json``) in ``folder``;
    returns (folder, http port, metrics port)."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0,
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=1))
    model_dir = folder / MODEL
    model_dir.mkdir(exist_ok=True)
    model = {
        "name": MODEL,
        "implementation": "mlserver_resnet50.ResNet50Runtime",
        "max_batch_size": max_batch_size,
        "max_batch_time": max_batch_time_s,
        "parameters": {"extra": {"threads": threads}},
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixel_values", "datatype": "UINT8", "shape": [-1, 3, 224, 224]},
        ],
        "outputs": [
            {"name": "label", "datatype": "INT32", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
        ],
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model, indent=1))
    return folder, http_port, metrics_port


def start_mlserver(
    folder: Path,
    log_path: Path,
    threads: int = 1,
    cpus: list[int] | None = None,
    max_batch_size: int = 1,
    max_batch_time_s: float = 0.0,
) -> Peer:
    """MLServer with the ResNet50 runtime (``parallel_workers: 0``; adaptive batching when ``max_batch_size`` > 1)."""
    repo, port, metrics_port = mlserver_repository(folder, threads, max_batch_size, max_batch_time_s)
    python = peer_python("mlserver")
    env = {**_env(threads), "PYTHONPATH": str(PEERS_DIR)}
    proc = processes.spawn([str(python), "-m", "mlserver.cli.main", "start", str(repo)], log_path, env=env, cpus=cpus)
    settings = {
        "server": f"mlserver {MLSERVER_VERSION}",
        "parallel_workers": 0,
        "max_batch_size": max_batch_size,
        "max_batch_time_s": max_batch_time_s,
    }
    name = "mlserver-batching" if max_batch_size > 1 else "mlserver"
    return Peer(name, proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", log_path, settings)


def start_gawm(log_path: Path, threads: int = 1, cpus: list[int] | None = None, **workload: Any) -> Peer:
    """gawm's own server with ResNet50 (its defaults, ``workload`` settings over them)."""
    from gawm_lib.config import WorkloadConfig

    cfg = WorkloadConfig(name=MODEL, threads=threads, **workload)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "gawm_lib.server",
        "--workload",
        MODEL,
        "--settings",
        json.dumps(cfg.model_dump(exclude={"name"})),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--replica",
        "0",
        "--exit-with-parent",
    ]
    env = {**_env(threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = processes.spawn(cmd, log_path, env=env, cpus=cpus)
    settings = {
        "server": "gawm",
        "max_batch_size": cfg.max_batch_size,
        "max_queue_delay_ms": cfg.max_queue_delay_ms,
        "decode_workers": cfg.decode_workers,
    }
    url = f"http://127.0.0.1:{port}"
    return Peer("gawm", proc, url, f"{url}/metrics", log_path, settings)


# -- the benchmark -----------------------------------------------------------------------------------------------------
def start(name: str, work: Path, args: argparse.Namespace) -> Peer:
    cpus = [args.server_cpu]
    log_path = work / f"{name}.log"
    if name == "gawm":
        return start_gawm(log_path, cpus=cpus).wait_ready()
    if name == "kserve":
        return start_kserve(log_path, cpus=cpus).wait_ready()
    if name == "mlserver":
        return start_mlserver(work / name, log_path, cpus=cpus).wait_ready()
    if name == "mlserver-batching":
        return start_mlserver(work / name, log_path, cpus=cpus, max_batch_size=8, max_batch_time_s=0.002).wait_ready()
    raise ValueError(f"unknown server {name!r}: one of {', '.join(SERVERS)}")


def bodies_file(work: Path, count: int = 16, seed: int = 2) -> Path:
    from gawm_lib.config import WorkloadConfig
    from gawm_lib.loadgen import write_bodies
    from gawm_lib.workloads import build_workload

    workload = build_workload(WorkloadConfig(name=MODEL))
    bodies = []
    for number, item in enumerate(workload.sample_items(count, seed)):
        body = workload.request_body([item])
        body["id"] = f"gawm-{number}"  # KServe answers 500 to a request without an id
        bodies.append(body)
    return write_bodies(work / "bodies.jsonl", bodies)


def measure_step(peer: Peer, work: Path, bodies: Path, scenario: str, level: float, args) -> dict[str, Any]:
    """One step of load against ``peer``: the summary row of the step with the server's CPU time per request."""
    from gawm_lib import summary
    from gawm_lib.loadgen import LoadSpec, run_load

    tag = f"{peer.name}-{scenario}-{level:g}"
    out = work / "requests" / tag
    spec = LoadSpec(
        workload=MODEL,
        model=MODEL,
        targets=[peer.url],
        bodies_path=str(bodies),
        out_dir=str(out),
        load={
            "scenario": scenario,
            "levels": [level],
            "step_duration_s": args.step_s,
            "max_step_duration_s": args.step_s * 3,
            "min_requests_per_step": args.min_requests,
            "warmup_s": args.warmup_s,
            "process_cpus": [args.load_cpu],
            "request_timeout_s": 60,
        },
    )
    cpu_before, load_before = peer.cpu_seconds(), os.getloadavg()[0]
    run_load(spec, work / "load" / tag, progress=False)
    cpu_s = peer.cpu_seconds() - cpu_before
    requests = summary.read_requests(out)
    row = summary.summarise(requests).iloc[0].to_dict()
    answered = int((requests["error"] == "").sum())
    result = {
        "server": peer.name,
        "scenario": scenario,
        "level": level,
        "duration_s": row["duration_s"],
        "sent": int(row["sent"]),
        "ok": int(row["ok"]),
        "errors": int(row["errors"]),
        "throughput_rps": row["throughput_rps"],
        "offered_rps": row["offered_rps"],
        "p50_ms": row["p50_ms"],
        "p95_ms": row["p95_ms"],
        "p99_ms": row["p99_ms"],
        "cpu_ms_per_request": 1000 * cpu_s / answered if answered else None,
        "server_cpu_s": cpu_s,
        "answered_with_warmup": answered,
        "load_average_1m": [load_before, os.getloadavg()[0]],
    }
    cpu = result["cpu_ms_per_request"] or 0.0
    print(
        f"  {peer.name:18s} {scenario:11s} {level:6g}: {result['throughput_rps']:6.2f} req/s"
        f"  p50 {result['p50_ms']:7.1f}  p95 {result['p95_ms']:7.1f}  p99 {result['p99_ms']:7.1f} ms"
        f"  cpu {cpu:6.1f} ms/req  errors {result['errors']}",
        flush=True,
    )
    return result


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"gawm_git": runs.git_info(), "python": sys.version.split()[0]}
    for name in ("kserve", "mlserver"):
        try:
            python = peer_python(name)
        except PeerNotInstalled as exc:
            out[name] = str(exc)
            continue
        script = "import importlib.metadata as m;print(m.version('%s'), m.version('torch'), m.version('torchvision'))"
        text = subprocess.run([str(python), "-c", script % name], capture_output=True, text=True, timeout=60).stdout
        mine, torch, vision = (text.split() + ["?", "?", "?"])[:3]
        out[name] = {"version": mine, "torch": torch, "torchvision": vision}
    import importlib.metadata as metadata

    out["gawm_torch"] = metadata.version("torch")
    out["gawm_torchvision"] = metadata.version("torchvision")
    return out


def save(path: Path, run: dict[str, Any]) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {"schema_version": SCHEMA_VERSION, "runs": []}
    data["runs"] = [r for r in data["runs"] if r["started"] != run["started"]] + [run]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, of {', '.join(SERVERS)}")
    parser.add_argument("--users", default="1,2,4", help="closed-loop concurrencies")
    parser.add_argument("--shares", default="0.5,0.8", help="Poisson rates: shares of the smallest capacity")
    parser.add_argument("--step-s", type=float, default=10.0, help="each step at least this long [s]")
    parser.add_argument("--min-requests", type=int, default=30, help="and this many requests (at most 3 x step-s)")
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--server-cpu", type=int, default=1, help="the core every server is pinned to")
    parser.add_argument("--load-cpu", type=int, default=0, help="the core the load process is pinned to")
    parser.add_argument("--out", type=Path, default=paths.benchmarks_dir() / "peers.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    users = [int(u) for u in args.users.split(",") if u]
    shares = [float(s) for s in args.shares.split(",") if s]
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="gawm-peers-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    run: dict[str, Any] = {
        "started": runs.utc_now().isoformat(),
        "machine": {**runs.host_info(), "load_average_start": os.getloadavg()},
        "versions": versions(),
        "torch_threads_per_server": 1,
        "server_cpu": args.server_cpu,
        "load_cpu": args.load_cpu,
        "payload": "gawm's ResNet50 sample photos: JPEG as BYTES (base64 in JSON), 16 of them, seed 2",
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "servers": {},
        "results": [],
    }
    bodies = bodies_file(work)
    print(f"work folder {work}; servers on core {args.server_cpu}, load on core {args.load_cpu}", flush=True)
    capacity: dict[str, float] = {}
    for name in servers:
        with start(name, work, args) as peer:
            run["servers"][name] = peer.settings
            for level in users:
                result = measure_step(peer, work, bodies, "closed_loop", level, args)
                run["results"].append(result)
                capacity[name] = max(capacity.get(name, 0.0), result["throughput_rps"])
        save(args.out, run)
    smallest = min(capacity.values())
    rates = [round(smallest * share, 2) for share in shares]
    run["capacity_rps"] = capacity
    run["poisson_rates_rps"] = {"smallest_capacity_rps": smallest, "shares": shares, "rates": rates}
    print(f"capacities {capacity}; Poisson at {rates} req/s", flush=True)
    for name in servers:
        with start(name, work, args) as peer:
            for rate in rates:
                run["results"].append(measure_step(peer, work, bodies, "poisson", rate, args))
        save(args.out, run)
    run["machine"]["load_average_end"] = os.getloadavg()
    run["finished"] = runs.utc_now().isoformat()
    save(args.out, run)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
