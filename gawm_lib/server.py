"""One model server for any workload: Open Inference Protocol v2 over HTTP, dynamic batching, Prometheus ``/metrics``.

Routes (KServe / Triton REST): ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}``,
``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``, ``GET /metrics``.

Requests are decoded in a thread pool, queued, and gathered into batches of at most ``max_batch_size`` items, waiting
at most ``max_queue_delay_ms`` after the first one for the batch to fill; one worker thread runs the model. Each answer
carries ``parameters.queue_ns`` (arrival to batch start), ``compute_ns`` (the batch's forward pass) and ``batch_size``.

Run ``python -m gawm_lib.server --workload resnet50 --port 8000`` (``--port 0`` picks a free port and writes it to
``--port-file``).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool

from gawm_lib.config import WorkloadConfig
from gawm_lib.workloads import InferenceError, Workload, build_workload

log = logging.getLogger("gawm.server")
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    """The server's Prometheus metrics (names are the contract with ``gawm_lib.prom``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gawm_requests", "Inference requests answered", ["model", "status"], registry=r)
        self.items = Counter("gawm_items", "Items (images, texts, clips) inferred", ["model"], registry=r)
        self.request_duration = Histogram("gawm_request_duration_seconds", "Request arrival to response",
                                          ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_duration = Histogram("gawm_queue_duration_seconds", "Request arrival to its batch's start",
                                        ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.compute_duration = Histogram("gawm_compute_duration_seconds", "Forward pass of one batch",
                                          ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram("gawm_batch_size", "Items per executed batch", ["model"], buckets=BATCH_BUCKETS,
                                    registry=r)
        self.inflight = Gauge("gawm_inflight_requests", "Requests received and not yet answered", ["model"], registry=r)


@dataclass
class _Pending:
    items: list[Any]
    arrival_ns: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers queued requests into batches and runs them on one worker thread."""

    def __init__(self, workload: Workload, metrics: Metrics):
        self.workload = workload
        self.metrics = metrics
        self.max_batch = workload.cfg.max_batch_size
        self.max_delay_s = workload.cfg.max_queue_delay_ms / 1000
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gawm-batch")
        self._carry: _Pending | None = None

    async def submit(self, items: list[Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(items, time.monotonic_ns(), future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            start = time.monotonic_ns()
            flat = [item for p in batch for item in p.items]
            try:
                answers = await loop.run_in_executor(self.executor, self.workload.predict, flat)
            except Exception as exc:  # a failed batch fails its requests, not the server
                log.exception("batch of %d failed", len(flat))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            compute_ns = time.monotonic_ns() - start
            name = self.workload.name
            self.metrics.compute_duration.labels(name).observe(compute_ns / 1e9)
            self.metrics.batch_size.labels(name).observe(len(flat))
            offset = 0
            for p in batch:
                timing = {"queue_ns": start - p.arrival_ns, "compute_ns": compute_ns, "batch_size": len(flat)}
                self.metrics.queue_duration.labels(name).observe(timing["queue_ns"] / 1e9)
                if not p.future.done():
                    p.future.set_result((answers[offset:offset + len(p.items)], timing))
                offset += len(p.items)

    async def _gather(self) -> list[_Pending]:
        first = self._carry or await self.queue.get()
        self._carry = None
        batch, size = [first], len(first.items)
        deadline = first.arrival_ns / 1e9 + self.max_delay_s
        while size < self.max_batch:
            try:
                nxt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic_ns() / 1e9
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(nxt.items) > self.max_batch:
                self._carry = nxt  # never split a request across batches
                break
            batch.append(nxt)
            size += len(nxt.items)
        return batch


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(cfg: WorkloadConfig) -> FastAPI:
    """The ASGI app; the model loads in the background after start, and ``/v2/health/ready`` turns 200 when it has."""
    workload = build_workload(cfg)
    metrics = Metrics()
    state: dict[str, Any] = {"ready": False, "error": None}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def load() -> None:
            try:
                await asyncio.to_thread(workload.load)
            except Exception as exc:
                state["error"] = f"{type(exc).__name__}: {exc}"
                log.exception("model failed to load")
                return
            state["batcher"] = Batcher(workload, metrics)
            state["batch_task"] = asyncio.create_task(state["batcher"].run())
            state["ready"] = True
            log.info("ready: %s %s", cfg.name, json.dumps(workload.weights_info))

        loader = asyncio.create_task(load())
        yield
        loader.cancel()
        if "batch_task" in state:
            state["batch_task"].cancel()

    app = FastAPI(title="gawm model server", lifespan=lifespan)

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if state["ready"]:
            return {"ready": True}
        return JSONResponse({"ready": False, "error": state["error"]}, status_code=503)

    @app.get("/v2")
    async def server_metadata():
        from gawm_lib import __version__

        return {"name": "gawm", "version": __version__, "extensions": []}

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str):
        if name != workload.name:
            return _error(404, f"unknown model {name!r}; this server serves {workload.name!r}")
        return workload.metadata()

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str):
        if name != workload.name:
            return _error(404, f"unknown model {name!r}; this server serves {workload.name!r}")
        return JSONResponse({"name": name, "ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        arrival = time.monotonic_ns()
        if name != workload.name:
            return _error(404, f"unknown model {name!r}; this server serves {workload.name!r}")
        if not state["ready"]:
            return _error(503, "model is not ready")
        metrics.inflight.labels(name).inc()
        status = "error"
        try:
            try:
                body = json.loads(await request.body())
                raw = workload.items_from_request(body)
                items = await run_in_threadpool(lambda: [workload.decode(r) for r in raw])
            except json.JSONDecodeError as exc:
                return _error(400, f"request body is not JSON: {exc}")
            except InferenceError as exc:
                return _error(400, str(exc))
            try:
                answers, timing = await state["batcher"].submit(items)
            except Exception as exc:
                return _error(500, f"inference failed: {type(exc).__name__}: {exc}")
            metrics.items.labels(name).inc(len(items))
            status = "ok"
            response = {"model_name": name, "model_version": "1", "outputs": workload.response_outputs(answers),
                        "parameters": timing}
            if isinstance(body, dict) and "id" in body:
                response["id"] = body["id"]
            return response
        finally:
            metrics.inflight.labels(name).dec()
            metrics.requests.labels(name, status).inc()
            metrics.request_duration.labels(name).observe((time.monotonic_ns() - arrival) / 1e9)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.workload = workload
    return app


def _exit_with_parent() -> None:
    """End this server when the process that started it is gone (no orphan replicas after a crash)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                log.warning("parent %d is gone: stopping", parent)
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="gawm-parent-watch").start()


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", required=True, help="resnet50 | distilbert | whisper")
    parser.add_argument("--settings", default="{}", help="JSON of WorkloadConfig fields (batching, precision, ...)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--exit-with-parent", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = WorkloadConfig(name=args.workload, **json.loads(args.settings))
    if args.exit_with_parent:
        _exit_with_parent()
    # proto=IPPROTO_TCP matters: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP; with
    # Nagle on, every answer on a kept-alive connection waited ~40 ms for the client's delayed ACK.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(sock.getsockname()[1]))
        tmp.replace(args.port_file)
    config = uvicorn.Config(create_app(cfg), log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
