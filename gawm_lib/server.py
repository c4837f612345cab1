"""One model server for any workload: Open Inference Protocol v2 over HTTP, dynamic batching, Prometheus ``/metrics``.

Routes (KServe / Triton REST): ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}``,
``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer`` (also under ``/versions/1``), ``GET /metrics``. Inference
requests are JSON tensors or use the binary tensor data extension (see :mod:`gawm_lib.workloads.oip`), so a stock OIP v2
client (``tritonclient.http``) can call it. With ``allow_client_shm``, local clients may send input tensors through
system shared memory instead (``/v2/systemsharedmemory/...``, see :mod:`gawm_lib.workloads.shm`).

A request's body is read up to ``max_body_bytes`` (else 413), while the bodies being read at once hold at most
``max_body_buffer_bytes`` (else 503 with ``Retry-After``: see :class:`BodyBudget`); once it is complete the request is
admitted only while
fewer than ``max_queue_size`` requests wait (else 503 with ``Retry-After``: the queue never grows without bound, and a
client that sends its body slowly holds no slot), then its declared tensors are checked against the limits (names,
shapes, ``max_batch_size``) before any data is decoded, and it is decoded on a pool of ``decode_workers`` threads (0: on
the event loop). Items are gathered into batches of at most ``max_batch_size``,
waiting at most ``max_queue_delay_ms`` after the first; one thread collates (and copies to the GPU) the next batch while
another runs the current one, both off the event loop, which only reads, admits and answers requests. Every answer
carries ``parameters``: ``queue_ns`` (enqueued to its batch's forward pass), ``compute_ns`` (the forward pass),
``decode_ns`` (arrival to enqueued: body, parsing, decoding), ``prepare_ns`` (collation and copy), ``batch_size``, and
workload totals (``tokens``; ``audio_s``, ``rtf`` = compute time / audio time and ``truncated`` = clips cut at
``decode_tokens`` for Whisper). Bad input gets a 4xx with
``{"error", "field", "expected"}``; the server stays ready.

Limits and timeouts (``WorkloadConfig``): the request line and headers at most ``max_header_bytes`` (64 KiB; else 431
and the connection is closed); a request's headers within ``body_timeout_s`` (30 s) of its first byte, and its body
within ``body_timeout_s`` of its headers (else 408 and the connection is closed); a connection idle for
``keepalive_timeout_s`` (5 s) before its first request or between two is closed. Error messages echo at most what the
request's JSON declared, never data (see :mod:`gawm_lib.workloads.oip`). ``/docs``, ``/redoc`` and ``/openapi.json``
are off unless ``api_docs``.

``/v2/health/ready`` is 200 only while the server would take one more request: 503 with ``reason`` while the model
loads, while the queue is full (``max_queue_size`` admitted requests wait: one more would get 503 anyway) and once it
drains. That is what a Kubernetes readiness probe wants: a saturated replica gets no new traffic until it catches up.
It flips at the moment the queue is full, so a probe should not act on one answer: the kubelet's ``failureThreshold``
(consecutive failures before the pod leaves the Service) is what keeps a replica that is full for an instant from
flapping in and out; ``/v2/health/live`` stays 200 throughout.

On SIGTERM (how Kubernetes stops a pod) the server stops accepting connections, answers ``/v2/health/ready`` with 503 on
connections still open, answers every request already received (their batches run as usual), closes idle connections,
and exits 0 once they are answered, or after ``shutdown_grace_s`` (20 s; keep it below the pod's
``terminationGracePeriodSeconds``) with whatever is left unanswered cancelled.

Once the model is loaded it is frozen out of Python's garbage collector (``gc_freeze``) and the collector's thresholds
are raised (``gc_thresholds``), so that a backlog's objects are not scanned again and again; every collection is timed
into ``gawm_gc_pause_seconds``.

Run ``python -m gawm_lib.server --workload resnet50 --port 8000`` (``--port 0`` picks a free port and writes it to
``--port-file``; ``--replica`` labels the metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import gc
import json
import logging
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from gawm_lib.config import WorkloadConfig
from gawm_lib.prom.catalogue import GAWM_BUCKETS_S
from gawm_lib.workloads import InferenceError, Workload, build_workload
from gawm_lib.workloads.device import GpuCollector
from gawm_lib.workloads.oip import HEADER_LENGTH, InferRequest, Tensor, encode_response, parse_request
from gawm_lib.workloads.shm import SharedMemoryRegistry

log = logging.getLogger("gawm.server")
LATENCY_BUCKETS_S = GAWM_BUCKETS_S  # defined once, with the query catalogue that reads them
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
GC_BUCKETS_S = (1e-5, 3e-5, 1e-4, 3e-4, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


class Metrics:
    """The server's Prometheus metrics (names are the contract with ``gawm_lib.prom``), labelled model and replica, and
    the process's own (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``process_open_fds``, ...:
    prometheus_client's process collector, unlabelled, as KServe and MLServer export them)."""

    def __init__(self, model: str, replica: str) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        lab = ["model", "replica"]
        self.requests = Counter(
            "gawm_requests", "Inference requests answered, ok or error", [*lab, "status"], registry=r
        )
        self.responses = Counter(
            "gawm_responses", "Inference responses by HTTP status code", [*lab, "code"], registry=r
        )
        self.items = Counter("gawm_items", "Items (images, texts, clips) inferred", lab, registry=r)
        self.tokens = Counter("gawm_tokens", "Tokens processed (DistilBERT input, Whisper output)", lab, registry=r)
        self.audio = Counter("gawm_audio_seconds", "Seconds of audio transcribed", lab, registry=r)

        def hist(name: str, doc: str, buckets=LATENCY_BUCKETS_S) -> Histogram:
            return Histogram(name, doc, lab, buckets=buckets, registry=r)

        self.request_duration = hist("gawm_request_duration_seconds", "Request arrival to response")
        self.decode_duration = hist("gawm_decode_duration_seconds", "Request arrival to enqueued (read, parse, decode)")
        self.queue_duration = hist("gawm_queue_duration_seconds", "Enqueued to its batch's forward pass")
        self.compute_duration = hist("gawm_compute_duration_seconds", "Forward pass of one batch")
        self.batch_size = hist("gawm_batch_size", "Items per executed batch", BATCH_BUCKETS)
        self.gc_pause = Histogram(
            "gawm_gc_pause_seconds",
            "Python garbage collections: each one stops every thread of the server",
            [*lab, "generation"],
            buckets=GC_BUCKETS_S,
            registry=r,
        )
        self.inflight = Gauge("gawm_inflight_requests", "Requests received and not yet answered", lab, registry=r)
        self.queue_depth = Gauge("gawm_queue_depth", "Requests admitted and not yet in a forward pass", lab, registry=r)
        self.queue_limit = Gauge(
            "gawm_queue_limit", "max_queue_size: admitted requests beyond it get 503", lab, registry=r
        )
        self.load_seconds = Gauge("gawm_model_load_seconds", "Model build and warm-up time", lab, registry=r)
        self.ready = Gauge("gawm_model_ready", "1 once the model is loaded and warmed up", lab, registry=r)
        self.info = Gauge(
            "gawm_server_info",
            "The served configuration (value 1)",
            [*lab, "weights", "device", "precision", "compile", "max_batch_size"],
            registry=r,
        )
        self.labels = (model, replica)
        for generation in ("0", "1", "2"):
            self.gc_pause.labels(model, replica, generation)
        for status in ("ok", "error"):  # both series exist from the start: an error rate of 0 is a value, not absent
            self.requests.labels(model, replica, status)


class GcTimer:
    """Times the process's garbage collections into ``gawm_gc_pause_seconds`` (a ``gc.callbacks`` hook)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics, self.started = metrics, 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter_ns()
        else:
            self.metrics.gc_pause.labels(*self.metrics.labels, str(info["generation"])).observe(
                (time.perf_counter_ns() - self.started) / 1e9
            )


@dataclass
class _Pending:
    items: list[Any]
    enqueued_ns: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Admission (the bounded queue), batching, and a two-stage pipeline run on two threads of its own: one gathers
    and collates (and copies to the GPU) the next batch while the other runs the current one.

    The batches are formed off the event loop: a loop busy with hundreds of requests (reading bodies, encoding
    answers) delays neither the closing of a batch nor the start of the next forward pass, so the model keeps pace
    with a backlog instead of slowing down as it grows. Only the answers go back through the loop, one callback per
    batch (``call_soon_threadsafe``)."""

    def __init__(self, workload: Workload, metrics: Metrics):
        self.workload, self.metrics = workload, metrics
        self.max_batch = workload.cfg.max_batch_size
        self.max_delay_ns = int(workload.cfg.max_queue_delay_ms * 1e6)
        self.max_queue = workload.cfg.max_queue_size
        self.depth = 0  # admitted and not yet in a forward pass (decoding, queued, or collated)
        self._depth_lock = threading.Lock()
        self._cond = threading.Condition()  # guards _waiting, _head, _idle, _closed
        self._waiting: collections.deque[_Pending] = collections.deque()
        # the next batch as the waiting requests fill it: (requests, items, full), kept up as requests arrive so that
        # the collate thread, woken by each arrival, does not walk the queue again (O(max_batch) per wake)
        self._head = (0, 0, False)
        self._idle = True  # the compute thread waits for a batch
        self._closed = False
        self._prepared: queue.Queue = queue.Queue(maxsize=1)  # one batch collated ahead of the running one
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for name, target in (("gawm-collate", self._collate), ("gawm-compute", self._compute)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop both threads once the batch in hand is done (waiting requests are not run); waits ``timeout_s`` for each
        (they are daemon threads: a long batch does not hold up the exit)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)

    def admit(self) -> bool:
        with self._depth_lock:
            if self.depth >= self.max_queue:
                return False
            self.depth += 1
            depth = self.depth
        self.metrics.queue_depth.labels(*self.metrics.labels).set(depth)
        return True

    @property
    def full(self) -> bool:
        """Whether one more request would be refused now."""
        return self.depth >= self.max_queue

    def release(self, count: int = 1) -> None:
        with self._depth_lock:
            self.depth -= count
            depth = self.depth
        self.metrics.queue_depth.labels(*self.metrics.labels).set(depth)

    async def submit(self, items: list[Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Queue an admitted request's items; its answers and timing once its batch has run."""
        future = asyncio.get_running_loop().create_future()
        with self._cond:
            self._waiting.append(_Pending(items, time.monotonic_ns(), future))
            self._head = self._grow(self._head, len(items))
            self._cond.notify()
        return await future

    # -- the collate thread ------------------------------------------------------------------------------------------
    def _grow(self, head: tuple[int, int, bool], items: int) -> tuple[int, int, bool]:
        """The next batch with one more waiting request of ``items`` items: it takes at least one request (a request
        is never split), and is full once the next request would not fit."""
        count, size, full = head
        if full:
            return head
        if count and size + items > self.max_batch:
            return count, size, True
        return count + 1, size + items, size + items >= self.max_batch

    def _next_batch(self) -> tuple[list[_Pending], bool] | None:
        """A batch: full, or closed once the oldest request has waited ``max_queue_delay_ms`` and the model is idle
        (None once closed).

        While the model is busy, waiting costs nothing: the batch keeps filling (as in Triton, where a batch is formed
        when a model instance is free), and a full one is collated ahead, overlapping the running batch. Also says
        whether the model was idle (so that a batch that fails to collate can give the idle state back)."""
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._waiting[0].enqueued_ns + self.max_delay_ns
            while True:
                count, _, full = self._head
                if full:
                    break
                remaining = deadline - time.monotonic_ns()
                if remaining <= 0 and self._idle:
                    break
                self._cond.wait(remaining / 1e9 if remaining > 0 else None)
                if self._closed:
                    return None
            was_idle, self._idle = self._idle, False  # the model has this batch coming: the next fills until it is idle
            batch = [self._waiting.popleft() for _ in range(count)]
            head = (0, 0, False)  # the requests left behind start the next batch (a walk of at most one batch)
            for pending in self._waiting:
                if (head := self._grow(head, len(pending.items)))[2]:
                    break
            self._head = head
            return batch, was_idle

    def _collate(self) -> None:
        while (taken := self._next_batch()) is not None:
            batch, was_idle = taken
            start = time.monotonic_ns()
            flat = [item for p in batch for item in p.items]
            try:
                prepared = self.workload.prepare(flat)
            except Exception as exc:
                with self._cond:  # the model never gets this batch: if it was waiting, it still is
                    self._idle = self._idle or was_idle
                self.release(len(batch))
                self._fail(batch, exc)
                continue
            self._prepared.put((batch, flat, prepared, time.monotonic_ns() - start))
        self._prepared.put(None)

    # -- the compute thread ------------------------------------------------------------------------------------------
    def _compute(self) -> None:
        m, labels = self.metrics, self.metrics.labels
        while True:
            try:
                entry = self._prepared.get_nowait()
            except queue.Empty:
                with self._cond:
                    self._idle = True
                    self._cond.notify()
                entry = self._prepared.get()
            if entry is None:
                return
            batch, flat, prepared, prepare_ns = entry
            start = time.monotonic_ns()
            self.release(len(batch))
            try:
                answers = self.workload.forward(prepared, len(flat))
            except Exception as exc:  # a failed batch fails its requests, not the server
                self._fail(batch, exc)
                continue
            compute_ns = time.monotonic_ns() - start
            m.compute_duration.labels(*labels).observe(compute_ns / 1e9)
            m.batch_size.labels(*labels).observe(len(flat))
            timing = {"compute_ns": compute_ns, "prepare_ns": prepare_ns, "batch_size": len(flat)}
            for p in batch:
                m.queue_duration.labels(*labels).observe((start - p.enqueued_ns) / 1e9)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._deliver, batch, answers, start, timing)

    # -- back on the event loop --------------------------------------------------------------------------------------
    @staticmethod
    def _deliver(batch: list[_Pending], answers: list[dict[str, Any]], start: int, timing: dict[str, int]) -> None:
        offset = 0
        for p in batch:
            if not p.future.done():  # a request whose client went away was cancelled
                p.future.set_result(
                    (answers[offset : offset + len(p.items)], {"queue_ns": start - p.enqueued_ns, **timing})
                )
            offset += len(p.items)

    def _fail(self, batch: list[_Pending], exc: Exception) -> None:
        log.error("batch of %d requests failed: %s: %s", len(batch), type(exc).__name__, exc)

        def fail() -> None:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)

        assert self._loop is not None
        self._loop.call_soon_threadsafe(fail)


def _error(status: int, message: str, field_name: str = "", expected: str = "", **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": message, "field": field_name, "expected": expected}, status_code=status, headers=headers or None
    )


class BodyBudget:
    """Bytes of request bodies being read at once, over all connections (``max_body_buffer_bytes``): without it, many
    clients each sending a body of up to ``max_body_bytes`` slowly would hold that much memory each before any of them
    is admitted. A body reserves its declared ``Content-Length`` before its first byte is read (and what it sends
    beyond that as it comes); what it held is given back once it is read, or refused. The event loop is its only
    user, so it needs no lock."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, size: int) -> None:
        if self.used + size > self.limit:
            raise InferenceError(
                "body",
                f"room among the bodies being read at once ({self.used} of {self.limit} bytes, max_body_buffer_bytes); "
                "retry later",
                f"{size} more bytes",
                503,
            )
        self.used += size


async def _read_body(request: Request, limit: int, timeout_s: float, budget: BodyBudget | None = None) -> bytes:
    """The whole body, at most ``limit`` bytes (else 413), within ``timeout_s`` (else 408), and while ``budget`` has
    room for it (else 503)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not re.fullmatch(r"[0-9]{1,18}", declared) or int(declared) > limit):
        raise InferenceError("Content-Length", f"a body of at most {limit} bytes (max_body_bytes)", declared, 413)
    chunks, size, held = [], 0, 0
    try:
        if budget is not None and declared is not None:
            budget.take(int(declared))
            held = int(declared)
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise InferenceError("body", f"at most {limit} bytes (max_body_bytes)", f"more than {limit}", 413)
                if budget is not None and size > held:
                    budget.take(size - held)
                    held = size
                chunks.append(chunk)
    except TimeoutError:
        raise InferenceError("body", f"the whole body within {timeout_s:g} s (body_timeout_s)", None, 408) from None
    finally:
        if budget is not None:
            budget.used -= held
    return b"".join(chunks)


def _answer(exc: InferenceError) -> JSONResponse:
    # A request whose body did not come in time, or was refused while it came, leaves unread bytes behind: the
    # connection cannot carry another.
    headers = None
    if exc.status == 408:
        headers = {"connection": "close"}
    elif exc.status == 503 and exc.field == "body":
        headers = {"connection": "close", "retry-after": "1"}
    return JSONResponse(exc.as_json(), status_code=exc.status, headers=headers)


class _Declared:
    """What :meth:`Workload.decode_request` checks before it decodes (one input, its name, datatype, shape and
    ``max_batch_size``), run on a request's declared tensors before any of their data is read."""

    def __init__(self, workload: Workload) -> None:
        self.inputs, self.cfg = workload.inputs, workload.cfg

    @staticmethod
    def decode_tensor(tensor: Tensor) -> list[Any]:
        return []

    def __call__(self, tensors: list[Tensor]) -> None:
        Workload.decode_request(self, InferRequest(tensors))  # type: ignore[arg-type]


def create_app(cfg: WorkloadConfig, replica: str = "0") -> FastAPI:
    """The ASGI app; the model loads in the background after start, and ``/v2/health/ready`` turns 200 when it has."""
    workload = build_workload(cfg)
    metrics = Metrics(workload.name, replica)
    labels = metrics.labels
    metrics.queue_limit.labels(*labels).set(cfg.max_queue_size)
    metrics.info.labels(
        *labels,
        cfg.weights if cfg.weights in ("random", "pretrained") else "path",
        cfg.device,
        cfg.precision,
        str(cfg.compile).lower(),
        str(cfg.max_batch_size),
    ).set(1)
    state: dict[str, Any] = {"ready": False, "error": None}
    bodies = BodyBudget(cfg.max_body_buffer_bytes)
    decode_pool = (
        concurrent.futures.ThreadPoolExecutor(cfg.decode_workers, thread_name_prefix="gawm-decode")
        if cfg.decode_workers
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def load() -> None:
            try:
                await asyncio.to_thread(workload.load)
                metrics.registry.register(GpuCollector(workload.name, replica).start())
            except Exception as exc:
                state["error"] = f"{type(exc).__name__}: {exc}"
                log.exception("model failed to load")
                return
            if cfg.gc_freeze:
                gc.collect()
                gc.freeze()  # the model's and the libraries' objects: no collection needs to scan them again
            if cfg.gc_thresholds is not None:
                gc.set_threshold(*cfg.gc_thresholds)
            state["batcher"] = Batcher(workload, metrics)
            state["batcher"].start(asyncio.get_running_loop())
            metrics.load_seconds.labels(*labels).set(workload.load_s)
            metrics.ready.labels(*labels).set(1)
            state["ready"] = True
            log.info("ready: %s %s", cfg.name, json.dumps(workload.weights_info))

        gc_timer = GcTimer(metrics)
        gc.callbacks.append(gc_timer)
        loader = asyncio.create_task(load())
        yield
        gc.callbacks.remove(gc_timer)
        loader.cancel()
        if "batcher" in state:
            await asyncio.to_thread(state["batcher"].close)
        if decode_pool is not None:
            decode_pool.shutdown(wait=False, cancel_futures=True)

    docs = {} if cfg.api_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="gawm model server", lifespan=lifespan, **docs)
    app.state.draining = False  # set on SIGTERM (see serve)

    @app.exception_handler(InferenceError)
    async def bad_request(request: Request, exc: InferenceError):
        # Routes without their own accounting (the shared-memory ones) let their 4xx answers rise to here.
        return _answer(exc)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        # A bug still answers in the same JSON shape (starlette would answer plain text); it is logged by starlette.
        return _error(500, f"{request.method} {request.url.path}: {type(exc).__name__}", "server", "no server error")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        # Unknown routes and methods answer in the same JSON shape as every other error.
        return _error(
            exc.status_code,
            f"{request.method} {request.url.path}: {exc.detail}",
            "path",
            "an OIP v2 route: /v2/health/live|ready, /v2/models/{name}[/ready|/infer], /metrics",
        )

    def unknown(name: str, version: str | None) -> JSONResponse | None:
        if name != workload.name:
            return _error(
                404, f"unknown model {name!r}; this server serves {workload.name!r}", "model_name", repr(workload.name)
            )
        if version not in (None, "1"):
            return _error(404, f"unknown version {version!r} of {name!r}", "model_version", "'1'")
        return None

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        # See the module's docstring for why a full queue is "not ready".
        batcher: Batcher | None = state.get("batcher")
        if app.state.draining:
            reason = "shutting down: answering the requests in flight"
        elif not state["ready"] or batcher is None:
            reason = f"model failed to load: {state['error']}" if state["error"] else "model loading"
        elif batcher.full:
            reason = f"queue full: {cfg.max_queue_size} requests waiting (max_queue_size)"
        else:
            return {"ready": True}
        return JSONResponse({"ready": False, "reason": reason, "error": state["error"]}, status_code=503)

    @app.get("/v2")
    async def server_metadata():
        from gawm_lib import __version__

        extensions = ["binary_tensor_data", *(["system_shared_memory"] if cfg.allow_client_shm else [])]
        return {"name": "gawm", "version": __version__, "extensions": extensions}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        if (missing := unknown(name, version)) is not None:
            return missing
        meta = workload.metadata()
        meta["parameters"]["gil_switch_interval_ms"] = round(sys.getswitchinterval() * 1000, 4)  # this process's
        meta["parameters"]["gc_frozen_objects"] = gc.get_freeze_count()
        meta["parameters"]["gc_thresholds"] = list(gc.get_threshold())
        return meta

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        return unknown(name, version) or JSONResponse(
            {"name": name, "ready": state["ready"]}, status_code=200 if state["ready"] else 503
        )

    shared_memory = SharedMemoryRegistry() if cfg.allow_client_shm else None

    def shm_registry() -> SharedMemoryRegistry:
        if shared_memory is None:
            raise InferenceError("allow_client_shm", "a server started with allow_client_shm: true", False, 403)
        return shared_memory

    @app.get("/v2/systemsharedmemory/status")
    @app.get("/v2/systemsharedmemory/region/{region}/status")
    async def shm_status(region: str | None = None):
        return shm_registry().status(region)

    @app.post("/v2/systemsharedmemory/region/{region}/register")
    async def shm_register(region: str, request: Request):
        registry = shm_registry()
        body = await _read_body(request, 64 * 1024, cfg.body_timeout_s)
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise InferenceError("body", 'a JSON object {"key", "offset", "byte_size"}', str(exc)[:80]) from None
        registry.register(region, doc)
        return Response()

    @app.post("/v2/systemsharedmemory/unregister")
    @app.post("/v2/systemsharedmemory/region/{region}/unregister")
    async def shm_unregister(region: str | None = None):
        shm_registry().unregister(region)
        return Response()

    declared = _Declared(workload)

    def decode(body: bytes, header: str | None) -> tuple[Any, list[Any]]:
        parsed = parse_request(body, header, workload.output_names, shared_memory, declared)
        return parsed, workload.decode_request(parsed)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        arrival = time.monotonic_ns()
        deadline = time.monotonic() + cfg.body_timeout_s
        if (missing := unknown(name, version)) is not None:
            metrics.responses.labels(*labels, "404").inc()
            return missing
        code, admitted = 500, False
        batcher: Batcher | None = state.get("batcher")
        metrics.inflight.labels(*labels).inc()
        try:
            if not state["ready"] or batcher is None:
                code = 503
                return _error(503, "model is not ready", "model", "a ready model (poll /v2/health/ready)")
            # The body first: a client that sends it slowly (or never) must not hold a place in the queue. A queue
            # that is full already refuses at once, without reading the body.
            full = batcher.full
            if not full:
                body = await _read_body(request, cfg.max_body_bytes, max(0.0, deadline - time.monotonic()), bodies)
                full = not batcher.admit()
            if full:
                code = 503
                return _error(
                    503,
                    f"queue full: {cfg.max_queue_size} requests waiting (max_queue_size); retry later",
                    "queue",
                    f"fewer than {cfg.max_queue_size} waiting requests",
                    **{"retry-after": "1"},
                )
            admitted = True
            header = request.headers.get(HEADER_LENGTH)
            if decode_pool is None:
                parsed, items = decode(body, header)
            else:
                parsed, items = await asyncio.get_running_loop().run_in_executor(decode_pool, decode, body, header)
            decode_ns = time.monotonic_ns() - arrival
            metrics.decode_duration.labels(*labels).observe(decode_ns / 1e9)
            admitted = False  # from here on the batcher releases the admission, when the batch starts
            answers, timing = await batcher.submit(items)
            stats = workload.request_stats(answers)
            parameters: dict[str, Any] = {**timing, "decode_ns": decode_ns, **stats}
            if stats.get("audio_s"):
                parameters["rtf"] = timing["compute_ns"] / 1e9 / stats["audio_s"]
            content, headers = encode_response(name, parsed, workload.response_outputs(answers), parameters)
            metrics.items.labels(*labels).inc(len(items))
            metrics.tokens.labels(*labels).inc(stats.get("tokens", 0))
            metrics.audio.labels(*labels).inc(stats.get("audio_s", 0))
            code = 200
            return Response(content, headers=headers)
        except InferenceError as exc:
            code = exc.status
            return _answer(exc)
        except ClientDisconnect:
            code = 499  # the client went away while sending; nobody reads an answer
            return Response(status_code=499)
        except Exception as exc:  # a bug or a failed batch: still a JSON answer, and the server carries on
            log.exception("request failed")
            return _error(500, f"inference failed: {type(exc).__name__}: {exc}", "model", "a working model")
        finally:
            if admitted:
                batcher.release()
            metrics.inflight.labels(*labels).dec()
            metrics.requests.labels(*labels, "ok" if code == 200 else "error").inc()
            metrics.responses.labels(*labels, str(code)).inc()
            metrics.request_duration.labels(*labels).observe((time.monotonic_ns() - arrival) / 1e9)

    @app.get("/metrics")
    def prometheus_metrics():  # not async: FastAPI runs it on a worker thread, so NVML readings never stall requests
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.workload = workload
    app.state.metrics = metrics
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


def switch_interval_ms(cfg: WorkloadConfig) -> float:
    """The GIL switch interval the server process runs with (see ``WorkloadConfig.gil_switch_interval_ms``)."""
    if cfg.gil_switch_interval_ms is not None:
        return cfg.gil_switch_interval_ms
    return 0.5 if cfg.device == "cuda" else sys.getswitchinterval() * 1000


def _json_answer(status: int, message: str, field_name: str, expected: str) -> bytes:
    """A whole HTTP response that closes the connection, for answers given below the ASGI app."""
    from http import HTTPStatus

    body = json.dumps({"error": message, "field": field_name, "expected": expected}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _HeadersTooLarge(Exception):
    pass


def http_protocol(max_header_bytes: int, request_timeout_s: float) -> type:
    """uvicorn's httptools protocol with the bounds it lacks (uvicorn 0.55: ``h11_max_incomplete_event_size`` bounds
    h11 only; httptools' llhttp has no header limit, and uvicorn gathers the URL and each header with ``+=``, so one
    50 MB header stalled the event loop for 8 s; an idle connection is timed out only after a response; a request
    sent a byte at a time is never timed out):

    - the request line and headers at most ``max_header_bytes`` (counted as they arrive: 431 and close);
    - a request's headers within ``request_timeout_s`` of its first byte (408 and close); its body is the app's to time
      (it answers 408 itself), and a body still arriving after the app answered is cut off at the same deadline;
    - ``timeout_keep_alive`` from the connection's start too, not only between requests."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_bytes: int | None = 0  # received since the last request ended, while headers are incomplete
            self._too_large = False
            self._deadline: asyncio.TimerHandle | None = None
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._header_bytes is not None:
                self._header_bytes += len(data)
            super().data_received(data)
            if self._header_bytes is not None and self._header_bytes > max_header_bytes and not self._too_large:
                self._reject_too_large()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._disarm()
            self._deadline = self.loop.call_later(request_timeout_s, self._timed_out)

        def on_headers_complete(self) -> None:
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            self._header_bytes = None
            if size > max_header_bytes:
                self._too_large = True
                raise _HeadersTooLarge  # httptools stops parsing; uvicorn calls send_400_response
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()
            self._header_bytes = 0

        def send_400_response(self, msg: str) -> None:
            if self._too_large:
                self._reject_too_large()
            else:
                super().send_400_response(msg)

        def _reject_too_large(self) -> None:
            self._too_large = True
            self._close_with(
                431, f"request line and headers over {max_header_bytes} bytes", "max_header_bytes", "smaller headers"
            )

        def _close_with(self, status: int, message: str, field_name: str, expected: str) -> None:
            if not self.transport.is_closing():
                self.transport.write(_json_answer(status, message, field_name, expected))
                self.transport.close()

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _timed_out(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            answering = self.cycle is not None and not self.cycle.response_complete
            if self._header_bytes is not None and not answering:  # no app has this request: answer it here
                self._close_with(
                    408,
                    f"request headers not complete within {request_timeout_s:g} s",
                    "headers",
                    "the whole request within body_timeout_s",
                )
            elif not answering:  # answered, and the rest of the body is still coming
                self.transport.close()
            else:  # the app reads the body under its own deadline and answers 408 itself: look again shortly
                self._deadline = self.loop.call_later(1.0, self._timed_out)

    return BoundedHttpToolsProtocol


def uvicorn_config(app, cfg: WorkloadConfig):
    """How uvicorn serves ``app``: httptools (bounded, see :func:`http_protocol`) and the event loop left to uvicorn's
    choice (uvloop, which gawm depends on), a deep accept backlog (a burst of clients is queued by the kernel, then
    answered: 503 when over the queue), the limits and timeouts of ``cfg``."""
    import uvicorn

    return uvicorn.Config(
        app,
        http=http_protocol(cfg.max_header_bytes, cfg.body_timeout_s),
        log_level="warning",
        access_log=False,
        timeout_keep_alive=cfg.keepalive_timeout_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=cfg.shutdown_grace_s,  # type: ignore[arg-type]
        backlog=2048,
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The server's command-line options (``python -m gawm_lib.server`` and ``gawm serve`` take the same)."""
    parser.add_argument(
        "--workload", required=True, choices=["resnet50", "distilbert", "whisper"], help="the model to serve"
    )
    parser.add_argument(
        "--settings",
        default="{}",
        metavar="JSON",
        help='WorkloadConfig fields as JSON, e.g. \'{"max_batch_size": 8, "max_queue_delay_ms": 2}\' '
        "(batching, device, precision, threads, ...: see gawm_lib/config.py)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--replica", default="0", help="replica label on the metrics")
    parser.add_argument("--exit-with-parent", action="store_true", help="stop when the starting process is gone")
    return parser


def workload_settings(workload: str, settings_json: str) -> WorkloadConfig:
    """The served workload's settings from ``--settings``; ValueError naming the field and what was expected."""
    import difflib

    from pydantic import ValidationError

    try:
        settings = json.loads(settings_json)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"--settings: not JSON ({exc}); expected an object such as '{{\"max_batch_size\": 8}}'"
        ) from None
    if not isinstance(settings, dict):
        raise ValueError(f"--settings: expected a JSON object of WorkloadConfig fields, got {settings_json!r}")
    try:
        return WorkloadConfig(name=workload, **settings)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                hint = difflib.get_close_matches(key, list(WorkloadConfig.model_fields), n=1)
                problems.append(f"--settings: unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            else:
                problems.append(f"--settings: {key}: {err['msg']} (got {err.get('input')!r})")
        raise ValueError("\n".join(problems)) from None


def serve(args: argparse.Namespace) -> None:
    """Serve ``args.workload`` until stopped (what ``main`` and ``gawm serve`` run)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = workload_settings(args.workload, args.settings)
    # uvicorn handles SIGTERM while it serves, then raises it again with the handler it found: this one, so that a
    # drained server exits 0 (the default handler would kill it with the signal: Kubernetes reports exit code 143).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    sys.setswitchinterval(switch_interval_ms(cfg) / 1000)
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

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            self.config.app.state.draining = True  # /v2/health/ready answers 503 from now on
            super().handle_exit(sig, frame)

    DrainingServer(uvicorn_config(create_app(cfg, args.replica), cfg)).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        serve(args)
    except ValueError as exc:
        parser.exit(2, f"gawm serve: {exc}\n")


if __name__ == "__main__":
    main()
