"""Benchmark of the model server against the bare model: what serving costs, and where the limit is.

``python -m gawm_lib.bench.server_bench --device cpu`` (one torch thread; about 3 min) measures for each workload the
bare model's throughput (``prepare`` + ``forward`` of full batches, items decoded beforehand) and the server's
throughput at saturation with the same batch settings (closed loop, enough requests in flight to keep batches full),
with pre-processed tensor payloads and with encoded ones (JPEG, text, WAV).

``python -m gawm_lib.bench.server_bench --device cuda`` (an NVIDIA GPU; ``--scenarios`` picks parts) measures:

- ``ceiling``: the bare model, same precision and compile settings, over a batch sweep: the model alone on tensors
  already on the GPU, and ``prepare`` + ``forward`` (host-to-device copy and post-processing included);
- ``saturation``: the server's sustained throughput with pre-processed tensors, for each count in ``--replicas``:
  one server process, then several sharing the GPU (one Python process's request handling, not the GPU, is the limit
  for large tensor bodies), and for each of ``--transports``: tensors in the HTTP body (binary tensor data extension)
  or in system shared memory (Triton's extension: what a client on the same host can use);
- ``poisson``: p50/p99 latency under Poisson arrivals at 80 % of that throughput;
- ``jpeg``: ResNet50 end to end with JPEG decoding in the server, and which side limits it (decode threads or model);
- ``whisper``: Whisper clips/s for 30 s clips with a fixed 96-token decode, batched, bare and served, for tiny, base,
  small and large-v3.

Results (with machine, GPU, packages, git commit and load average: the build machine is shared) are appended to
``data/benchmarks/server_<device>.json`` as each one is measured, so a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from gawm_lib import paths, runs
from gawm_lib.bench.server_load import Plan, drive
from gawm_lib.config import BackendConfig, WorkloadConfig
from gawm_lib.workloads import build_workload, samples
from gawm_lib.workloads.oip import encode_request, tensor_bytes

SCHEMA_VERSION = 1
CPU_SETTINGS = {  # one thread; batch sizes that make a CPU batch last about a second
    "resnet50": {"max_batch_size": 4, "max_queue_delay_ms": 5},
    "distilbert": {"max_batch_size": 16, "max_queue_delay_ms": 5},
    "whisper": {"max_batch_size": 4, "max_queue_delay_ms": 5, "model_size": "tiny", "decode_tokens": 16},
}
GPU_SETTINGS = {  # three padded sizes each: every one is compiled and captured before the server is ready
    "resnet50": {
        "max_batch_size": 256,
        "batch_sizes": [64, 128],
        "precision": "bf16",
        "channels_last": True,
        "compile": True,
        "cuda_graphs": True,
    },
    "distilbert": {
        "max_batch_size": 512,
        "batch_sizes": [128, 256],
        "precision": "bf16",
        "compile": True,
        "cuda_graphs": True,
        "max_seq_len": 128,
    },
    "whisper": {"max_batch_size": 128, "precision": "fp16", "decode_tokens": 96},
}


# -- payloads ----------------------------------------------------------------------------------------------------------
def payloads(
    cfg: WorkloadConfig, kind: str, per_request: int, count: int = 8, shared: SharedBodies | None = None
) -> tuple[list[bytes], list[dict], Any]:
    """``count`` request bodies of ``per_request`` items each, from real samples, and the decoded items for the bare
    model. ``kind``: ``tensor`` (pre-processed, binary) or ``encoded`` (JPEG / text / WAV, binary BYTES). With
    ``shared``, the bodies name the inputs' bytes in that shared-memory object instead of carrying them."""
    w = build_workload(cfg)
    n = per_request * count
    if cfg.name == "resnet50":
        photos = samples.photos(n, seed=1)
        pixels = np.stack([w.decode_item(p) for p in photos])
        chunks = [
            ("pixel_values", "UINT8", pixels[i : i + per_request])
            if kind == "tensor"
            else ("image", "BYTES", photos[i : i + per_request])
            for i in range(0, n, per_request)
        ]
        items = list(pixels)
    elif cfg.name == "distilbert":
        texts = samples.sentences(n, seed=1)
        chunks = [("text", "BYTES", texts[i : i + per_request]) for i in range(0, n, per_request)]
        items = texts  # tokenised once the model (and its tokenizer) is loaded
    else:
        clips = [c for c, _ in samples.speech(min(n, 16), seed=1)] * math.ceil(n / 16)
        pcm = w.sample_pcm(min(n, 16), seed=1, seconds=30.0)
        pcm = np.concatenate([pcm] * math.ceil(n / len(pcm)))[:n]
        chunks = [
            ("pcm", "FP32", pcm[i : i + per_request])
            if kind == "tensor"
            else ("audio", "BYTES", clips[i : i + per_request])
            for i in range(0, n, per_request)
        ]
        items = list(pcm)
    inputs = [
        [(name, datatype, list(values.shape) if isinstance(values, np.ndarray) else [len(values)], values)]
        for name, datatype, values in chunks
    ]
    output = [w.output_names[1]]
    if shared is not None:
        bodies, headers = shared.bodies(inputs, output)
    else:
        bodies, headers = map(
            list, zip(*(encode_request(i, binary=True, outputs=output, binary_outputs=True) for i in inputs))
        )
    return bodies, headers, items


class SharedBodies:
    """Request bodies whose input tensors sit in one POSIX shared-memory object (Triton's system shared-memory
    extension, as perf_analyzer's ``--shared-memory system``): written once, registered with every replica, read by
    the server for each request; only a small JSON header goes over HTTP."""

    region = "gawm-bench-inputs"

    def __init__(self) -> None:
        self.memory: shared_memory.SharedMemory | None = None

    def bodies(self, inputs: list[list[tuple]], output: list[str]) -> tuple[list[bytes], list[dict]]:
        blobs = [b"".join(tensor_bytes(dt, values) for _, dt, _, values in request) for request in inputs]
        self.close()
        self.memory = shared_memory.SharedMemory(create=True, size=sum(map(len, blobs)))
        bodies, headers, offset = [], [], 0
        for request, blob in zip(inputs, blobs):
            self.memory.buf[offset : offset + len(blob)] = blob
            body, head = encode_request(
                request, outputs=output, binary_outputs=True, shared_memory=(self.region, offset)
            )
            bodies.append(body)
            headers.append(head)
            offset += len(blob)
        return bodies, headers

    def register(self, replicas) -> None:
        """Register the object with each replica (nothing to do before :meth:`bodies`)."""
        import httpx

        if self.memory is None:
            return
        for replica in replicas:
            base = f"{replica.url}/v2/systemsharedmemory"
            httpx.post(f"{base}/region/{self.region}/unregister", timeout=10).raise_for_status()
            httpx.post(
                f"{base}/region/{self.region}/register",
                timeout=10,
                json={"key": f"/{self.memory.name}", "offset": 0, "byte_size": self.memory.size},
            ).raise_for_status()

    def close(self) -> None:
        if self.memory is not None:
            self.memory.close()
            self.memory.unlink()
            self.memory = None

    def __enter__(self) -> SharedBodies:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bodies_by_transport(
    cfg: WorkloadConfig,
    kind: str,
    per_request: int,
    binary: tuple[list, list],
    transports: list[str],
    shared: SharedBodies,
) -> dict[str, tuple[list, list]]:
    """``{transport: (bodies, headers)}``: the ``binary`` ones as given; the ``shm`` ones written into ``shared``."""
    out = {"binary": binary}
    if "shm" in transports:
        out["shm"] = payloads(cfg, kind, per_request, shared=shared)[:2]
    return out


def model_items(workload, raw: list[Any]) -> list[Any]:
    """Decoded items as the server would hand them to ``prepare`` (the workload must be loaded)."""
    if workload.name == "distilbert":
        return [workload.decode_item(t) for t in raw]
    if workload.name == "whisper":
        return [workload._mel(np.ascontiguousarray(p), "pcm") for p in raw]  # noqa: SLF001 -- the server's own step
    return raw


# -- measurements ------------------------------------------------------------------------------------------------------
def bare(cfg: WorkloadConfig, raw: list[Any], batches: list[int], min_s: float, model_only: bool) -> list[dict]:
    """Items/s of full batches through the loaded workload (and through the model alone, on the device)."""
    import torch

    workload = build_workload(cfg.model_copy(update={"warmup_batches": 0}))
    workload.load()
    items = model_items(workload, raw)
    rows = []
    for batch in batches:
        chunk = (items * math.ceil(batch / len(items)))[:batch]
        modes = {"workload": lambda c=chunk, w=workload: w.predict(c)}
        if model_only and cfg.name != "whisper":
            prepared = workload.prepare(chunk)
            tensors = (prepared[0] if isinstance(prepared, tuple) else prepared).get()
            # The device-side computation alone (normalisation, model, softmax, top-k), graphed like the server's.
            modes["model"] = lambda t=tensors, w=workload: w.device_forward(**t)
        for mode, step in modes.items():
            with torch.inference_mode():
                for _ in range(2):  # warm-up: compile, cuDNN autotuning
                    step()
                sync()
                times, started = [], time.perf_counter()
                while time.perf_counter() - started < min_s or len(times) < 3:
                    t0 = time.perf_counter()
                    step()
                    sync()
                    times.append(time.perf_counter() - t0)
            rows.append(
                {
                    "scenario": "bare",
                    "mode": mode,
                    "batch": batch,
                    "iterations": len(times),
                    "items_per_s": round(batch * len(times) / sum(times), 2),
                    "batch_ms_p50": round(1000 * float(np.median(times)), 3),
                }
            )
            print(f"  bare {cfg.name} {mode} batch {batch}: {rows[-1]['items_per_s']} items/s", flush=True)
    del workload, modes
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # leave the GPU to the server that comes next
    return rows


def sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextlib.contextmanager
def served(cfg: WorkloadConfig, replicas: int = 1):
    """``replicas`` server processes (the local backend), all on the same device: on a GPU they share it by
    time-slicing."""
    from gawm_lib.backends import open_backend

    with tempfile.TemporaryDirectory(prefix="gawm-server-bench-") as logs:
        started = time.perf_counter()
        with open_backend(cfg, BackendConfig(replicas=replicas, startup_timeout_s=1800), Path(logs)) as backend:
            print(f"  server {cfg.name} x{replicas} ready in {time.perf_counter() - started:.1f} s", flush=True)
            yield backend.replicas


def server_run(
    replicas,
    cfg: WorkloadConfig,
    bodies,
    headers,
    per_request: int,
    mode: str,
    processes: int,
    connections: int,
    duration_s: float,
    warmup_s: float,
    rate_rps: float = 0.0,
) -> dict[str, Any]:
    """Drive the replicas (one or more driver processes each) and measure; ``connections`` per driver process."""
    import psutil

    replicas = replicas if isinstance(replicas, list) else [replicas]
    first = replicas[0]
    processes = len(replicas) * math.ceil(processes / len(replicas))
    plan = Plan(
        first.host,
        first.port,
        f"/v2/models/{cfg.name}/infer",
        bodies,
        headers,
        [per_request] * len(bodies),
        mode=mode,
        connections=connections,
        rate_rps=rate_rps,
        warmup_s=warmup_s,
        duration_s=duration_s,
        ports=tuple(r.port for r in replicas),
    )
    procs = [psutil.Process(r.pid) for r in replicas]

    def cpu_s() -> float:
        return sum(t.user + t.system for t in (p.cpu_times() for p in procs))

    cpu_before, gpu_before, t0 = cpu_s(), gpu_readings(first), time.monotonic()
    result = drive(plan, processes)
    cpu_after, gpu_after, t1 = cpu_s(), gpu_readings(first), time.monotonic()
    if gpu_after:
        energy = "gawm_gpu_energy_joules_total"
        joules = sum(v - gpu_before.get((n, g), v) for (n, g), v in gpu_after.items() if n == energy)
        result["gpu"] = {
            "mean_power_w": round(joules / (t1 - t0), 1),
            "energy_j": round(joules, 1),
            "readings_after": {f"{n}{{gpu={g}}}": v for (n, g), v in gpu_after.items()},
        }
    result["server_cpu_cores"] = round((cpu_after - cpu_before) / (duration_s + warmup_s + 2.3 + 0.3 * processes), 2)
    result.update(
        mode=mode,
        replicas=len(replicas),
        processes=processes,
        connections=connections,
        items_per_request=per_request,
        offered_rps=rate_rps or None,
    )
    print(
        f"  server {cfg.name} x{len(replicas)} {mode}: {result['items_per_s']} items/s, "
        f"p99 {result['latency_ms']['p99']} ms, "
        f"batch {result['batch_size_mean']}, statuses {result['statuses']}",
        flush=True,
    )
    return result


def metric_samples(url: str, prefix: str, label: str) -> dict[tuple[str, str], float]:
    """The server's samples from ``url``/metrics whose name starts with ``prefix``, by (name, value of ``label``)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, sample.labels.get(label, "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(prefix)
    }


def gpu_readings(replica) -> dict[tuple[str, str], float]:
    """The server's ``gawm_gpu_*`` samples, by (name, gpu)."""
    return metric_samples(replica.url, "gawm_gpu_", "gpu")


# -- the benchmark -----------------------------------------------------------------------------------------------------
def record(args: argparse.Namespace) -> dict[str, Any]:
    machine = {**runs.host_info(), "load_average": os.getloadavg()}
    return {
        "started": runs.utc_now().isoformat(),
        "device": args.device,
        "git": runs.git_info(),
        "machine": machine,
        "gpu": runs.gpu_info(),
        "packages": runs.package_versions(),
        "python": sys.version.split()[0],
        "threads": {**runs.thread_settings(), "torch_threads_per_server": 1 if args.device == "cpu" else None},
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "results": [],
    }


def save(path: Path, run: dict[str, Any]) -> None:
    """Write ``run`` into ``path``'s list of runs (replacing its earlier state; other runs are kept)."""
    data = json.loads(path.read_text()) if path.is_file() else {"schema_version": SCHEMA_VERSION, "runs": []}
    if data.get("schema_version") != SCHEMA_VERSION:
        raise SystemExit(f"{path}: schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    data["runs"] = [r for r in data["runs"] if r["started"] != run["started"]] + [run]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def run_cpu(args, run, out) -> None:
    for name in args.workloads:
        cfg = WorkloadConfig(
            name=name,
            device="cpu",
            threads=1,
            decode_workers=1,
            max_queue_size=1024,
            warmup_batches=1,
            **CPU_SETTINGS[name],
        )
        batch = cfg.max_batch_size
        print(f"{name}: {cfg.model_dump(exclude_defaults=True)}", flush=True)
        for kind in ("tensor", "encoded") if name != "distilbert" else ("encoded",):
            bodies, headers, raw = payloads(cfg, kind, per_request=1, count=max(8, batch))
            entry = {"workload": name, "payload": kind, "settings": cfg.model_dump(), "items_per_request": 1}
            if kind == payloads_bare_kind(name):
                entry["bare"] = bare(cfg, raw, [batch], args.duration_s, model_only=False)[0]
            scale = 3 if name == "whisper" else 1  # seconds per batch: a longer window for as many batches
            with served(cfg) as replica:
                entry["server"] = server_run(
                    replica,
                    cfg,
                    bodies,
                    headers,
                    1,
                    "closed",
                    1,
                    2 * batch + 1,
                    scale * args.duration_s,
                    scale * args.warmup_s,
                )
            run["results"].append(entry)
            save(out, run)


def payloads_bare_kind(name: str) -> str:
    return "encoded" if name == "distilbert" else "tensor"


def run_gpu(args, run, out) -> None:
    scenarios = set(args.scenarios)
    for name in [w for w in args.workloads if w != "whisper"]:
        cfg = WorkloadConfig(
            name=name,
            device="cuda",
            decode_workers=args.decode_workers,
            max_queue_delay_ms=2,
            max_queue_size=4096,
            allow_client_shm="shm" in args.transports,
            warmup_batches=1,
            **{**GPU_SETTINGS[name], "compile": args.compile, "cuda_graphs": args.cuda_graphs, **overrides(args)},
        )
        per_request = min(32 if name == "resnet50" else 64, cfg.max_batch_size)  # items per request
        kind = "tensor" if name == "resnet50" else "encoded"
        bodies, headers, raw = payloads(cfg, kind, per_request)
        if "ceiling" in scenarios:
            rows = bare(cfg, raw, workload_buckets(cfg), args.duration_s / 3, model_only=True)
            run["results"].append({"workload": name, "scenario": "ceiling", "settings": cfg.model_dump(), "rows": rows})
            save(out, run)
        if not scenarios & {"saturation", "poisson", "jpeg"}:
            continue
        with SharedBodies() as shared:
            by_transport = bodies_by_transport(cfg, kind, per_request, (bodies, headers), args.transports, shared)
            connections = 2 * cfg.max_batch_size // per_request + 4  # in flight per replica: two full batches and more
            common = dict(duration_s=args.duration_s, warmup_s=args.warmup_s)
            for count in args.replicas:  # one process, then several sharing the GPU; Poisson and JPEG on the last
                with served(cfg, count) as replicas:
                    shared.register(replicas)
                    per_process = max(2, connections * count // max(args.processes, count))
                    served_items = []  # items/s at saturation per transport: what JPEG decoding is compared with
                    for transport in args.transports:
                        t_bodies, t_headers = by_transport[transport]
                        sat = server_run(
                            replicas,
                            cfg,
                            t_bodies,
                            t_headers,
                            per_request,
                            "closed",
                            args.processes,
                            per_process,
                            **common,
                        )
                        served_items.append(sat["items_per_s"])
                        run["results"].append(
                            {
                                "workload": name,
                                "scenario": "saturation",
                                "replicas": count,
                                "transport": transport,
                                "settings": cfg.model_dump(),
                                "server": sat,
                            }
                        )
                        save(out, run)
                        if count == args.replicas[-1] and "poisson" in scenarios and sat["requests_per_s"]:
                            rate = 0.8 * sat["requests_per_s"]
                            result = server_run(
                                replicas,
                                cfg,
                                t_bodies,
                                t_headers,
                                per_request,
                                "poisson",
                                args.processes,
                                64,
                                rate_rps=rate,
                                **common,
                            )
                            run["results"].append(
                                {
                                    "workload": name,
                                    "scenario": "poisson_80pct",
                                    "replicas": count,
                                    "transport": transport,
                                    "server": result,
                                }
                            )
                            save(out, run)
                    if count == args.replicas[-1] and "jpeg" in scenarios and name == "resnet50":
                        jpeg_bodies, jpeg_headers, _ = payloads(cfg, "encoded", per_request)
                        result = server_run(
                            replicas,
                            cfg,
                            jpeg_bodies,
                            jpeg_headers,
                            per_request,
                            "closed",
                            args.processes,
                            per_process,
                            **common,
                        )
                        decode_ms = result["server_ms"]["decode"] or 0
                        decode_capacity = (
                            count * cfg.decode_workers * per_request / (decode_ms / 1000) if decode_ms else None
                        )
                        result["decode_capacity_items_per_s"] = round(decode_capacity, 1) if decode_capacity else None
                        result["bottleneck"] = (
                            "decode (CPU: JPEG decoding and resizing on decode_workers threads)"
                            if decode_capacity and decode_capacity < 1.2 * max(served_items)
                            else "model or server loop"
                        )
                        run["results"].append(
                            {"workload": name, "scenario": "jpeg_end_to_end", "replicas": count, "server": result}
                        )
                        save(out, run)
    if "whisper" in scenarios and "whisper" in args.workloads:
        for size in args.whisper_sizes:
            cfg = WorkloadConfig(
                name="whisper",
                device="cuda",
                model_size=size,
                decode_workers=args.decode_workers,
                max_queue_size=1024,
                max_queue_delay_ms=20,
                warmup_batches=1,
                allow_client_shm="shm" in args.transports,
                **{**GPU_SETTINGS["whisper"], **overrides(args)},
            )
            per_request = min(4, cfg.max_batch_size)
            bodies, headers, raw = payloads(cfg, "tensor", per_request)
            rows = bare(
                cfg,
                raw,
                [b for b in args.whisper_batches if b <= cfg.max_batch_size],
                args.duration_s / 3,
                model_only=False,
            )
            batch_s = rows[-1]["batch_ms_p50"] / 1000  # a full batch: the window holds several, after the first ones
            window_s = max(args.duration_s, 8 * batch_s, args.whisper_min_window_s)
            with SharedBodies() as shared, served(cfg) as replicas:
                by_transport = bodies_by_transport(
                    cfg, "tensor", per_request, (bodies, headers), args.transports, shared
                )
                shared.register(replicas)
                for transport in args.transports:
                    sat = server_run(
                        replicas,
                        cfg,
                        *by_transport[transport],
                        per_request,
                        "closed",
                        2,
                        cfg.max_batch_size // per_request + 2,
                        window_s,
                        max(args.warmup_s, 3 * batch_s),
                    )
                    run["results"].append(
                        {
                            "workload": "whisper",
                            "scenario": "whisper_30s_96_tokens",
                            "model_size": size,
                            "transport": transport,
                            "settings": cfg.model_dump(),
                            "bare": rows,
                            "server": sat,
                        }
                    )
                    save(out, run)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    if not args.max_batch_size:
        return {}
    return {"max_batch_size": args.max_batch_size, "batch_sizes": None}


def workload_buckets(cfg: WorkloadConfig) -> list[int]:
    """The ceiling's batch sweep: the padded sizes the server runs (each one compiled and captured once)."""
    return build_workload(cfg).batch_buckets()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--workloads", type=lambda s: s.split(","), default=["resnet50", "distilbert", "whisper"])
    parser.add_argument(
        "--scenarios",
        type=lambda s: s.split(","),
        default=["ceiling", "saturation", "poisson", "jpeg", "whisper"],
        help="GPU only",
    )
    parser.add_argument(
        "--whisper-batches",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16, 64, 128],
        help="GPU: Whisper bare batch sweep",
    )
    parser.add_argument(
        "--whisper-min-window-s",
        type=float,
        default=20.0,
        help="GPU: shortest measured window of a served Whisper run (a batch takes seconds) [s]",
    )
    parser.add_argument("--whisper-sizes", type=lambda s: s.split(","), default=["tiny", "base", "small", "large-v3"])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="GPU: torch.compile")
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="GPU: replay captured CUDA graphs (ResNet50, DistilBERT)",
    )
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured window of each server run [s]")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="load before the window [s]")
    parser.add_argument("--processes", type=int, default=4, help="GPU: load driver processes (at least one a replica)")
    parser.add_argument(
        "--replicas",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 4],
        help="GPU: server processes sharing the GPU, one saturation run each (Poisson and JPEG on the last)",
    )
    parser.add_argument(
        "--transports",
        type=lambda s: s.split(","),
        default=["binary", "shm"],
        help="GPU saturation and Poisson runs: 'binary' (tensors in the HTTP body, binary extension), "
        "'shm' (tensors in system shared memory, only a JSON header over HTTP)",
    )
    parser.add_argument("--max-batch-size", type=int, help="GPU: instead of each workload's default (quick runs)")
    parser.add_argument("--decode-workers", type=int, default=8, help="GPU: server threads decoding requests")
    parser.add_argument("--out", type=Path, help="default data/benchmarks/server_<device>.json")
    args = parser.parse_args(argv)
    if unknown := set(args.transports) - {"binary", "shm"}:
        parser.error(f"--transports: {', '.join(sorted(unknown))}: expected binary and/or shm")
    os.environ.setdefault("OMP_NUM_THREADS", "1" if args.device == "cpu" else os.environ.get("OMP_NUM_THREADS", "8"))
    import torch

    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    out = args.out or paths.benchmarks_dir() / f"server_{args.device}.json"
    run = record(args)
    t0 = time.perf_counter()
    (run_cpu if args.device == "cpu" else run_gpu)(args, run, out)
    run["finished"] = runs.utc_now().isoformat()
    run["wall_s"] = round(time.perf_counter() - t0, 1)
    run["machine"]["load_average_end"] = os.getloadavg()
    save(out, run)
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
