"""A lean load driver for the server benchmarks: pre-encoded OIP v2 requests over raw keep-alive HTTP/1.1 sockets,
from several processes, closed loop (saturation) or Poisson open loop.

Its overhead per request is a socket write and a small JSON parse, so that the server, not the driver, is what runs out
first at tens of thousands of items per second. Each process records, per request: when it was due (open loop) or sent,
when the answer was complete [ns, monotonic], the HTTP status, the items it carried and the server's
``queue_ns``/``compute_ns``/``decode_ns``/``batch_size``. Throughput counts the answers completed inside the measured
window (after the warm-up); latency, the requests due inside it. ``gawm_lib.loadgen`` is the general-purpose
generator; this one exists to push a single server to its limit.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

FIELDS = ("due_ns", "done_ns", "status", "items", "queue_ns", "compute_ns", "decode_ns", "batch_size")


@dataclass(frozen=True)
class Plan:
    """What to send: ``bodies`` (with their ``headers`` and ``items`` each) to ``host:port``/``path``."""

    host: str
    port: int
    path: str
    bodies: list[bytes]
    headers: list[dict[str, str]]
    items: list[int]
    mode: str = "closed"  # "closed": `connections` back-to-back requests; "poisson": `rate_rps` arrivals
    connections: int = 8
    rate_rps: float = 0.0
    warmup_s: float = 2.0
    duration_s: float = 10.0
    seed: int = 0
    ports: tuple[int, ...] = ()  # several replicas: driver process k sends to ports[k % len(ports)] only


def _request_bytes(plan: Plan, index: int) -> bytes:
    head = [
        f"POST {plan.path} HTTP/1.1",
        f"Host: {plan.host}:{plan.port}",
        f"Content-Length: {len(plan.bodies[index])}",
    ]
    head += [f"{k}: {v}" for k, v in plan.headers[index].items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + plan.bodies[index]


async def _exchange(reader, writer, request: bytes) -> tuple[int, dict[str, Any]]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    params: dict[str, Any] = {}
    if status == 200:
        length = int(headers.get("inference-header-content-length", len(body)))
        params = json.loads(body[:length]).get("parameters", {})
    return status, params


async def _run(plan: Plan, start_ns: int) -> dict[str, list[int]]:
    requests = [_request_bytes(plan, i) for i in range(len(plan.bodies))]
    rng = np.random.default_rng(plan.seed)
    end_ns = start_ns + int((plan.warmup_s + plan.duration_s) * 1e9)
    rows: dict[str, list[int]] = {f: [] for f in FIELDS}
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(plan.connections):
        pool.put_nowait(await asyncio.open_connection(plan.host, plan.port, limit=1 << 24))

    async def one(due_ns: int) -> None:
        reader, writer = await pool.get()  # open loop: waiting for a free connection counts in the latency
        index = int(rng.integers(len(requests)))
        try:
            status, params = await _exchange(reader, writer, requests[index])
        except (OSError, asyncio.IncompleteReadError, ValueError):
            writer.close()
            reader, writer = await asyncio.open_connection(plan.host, plan.port, limit=1 << 24)
            status, params = 0, {}
        pool.put_nowait((reader, writer))
        done = time.monotonic_ns()
        for name, value in zip(
            FIELDS,
            (
                due_ns,
                done,
                status,
                plan.items[index],
                params.get("queue_ns", -1),
                params.get("compute_ns", -1),
                params.get("decode_ns", -1),
                params.get("batch_size", -1),
            ),
        ):
            rows[name].append(int(value))

    while time.monotonic_ns() < start_ns:
        await asyncio.sleep(0.001)
    if plan.mode == "closed":

        async def user() -> None:
            while time.monotonic_ns() < end_ns:
                await one(time.monotonic_ns())

        await asyncio.gather(*(user() for _ in range(plan.connections)))
    else:
        due, tasks = start_ns, set()
        while due < end_ns:
            due += int(rng.exponential(1e9 / plan.rate_rps))
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return rows


def _child(plan: Plan, start_ns: int, out) -> None:
    try:
        import uvloop

        uvloop.install()  # where available (the GPU machine has it): a cheaper event loop
    except ImportError:
        pass
    out.send(asyncio.run(_run(plan, start_ns)))
    out.close()


def drive(plan: Plan, processes: int = 1) -> dict[str, Any]:
    """Run ``plan`` from ``processes`` processes (each with ``connections`` and ``rate_rps / processes``, spread over
    ``plan.ports`` when there are several replicas); summarise what was answered in the measured window."""
    ctx = multiprocessing.get_context("spawn")
    start_ns = time.monotonic_ns() + int(2e9 + 0.3e9 * processes)  # after every child has started
    children = []
    for k in range(processes):
        port = plan.ports[k % len(plan.ports)] if plan.ports else plan.port
        part = Plan(**{**plan.__dict__, "rate_rps": plan.rate_rps / processes, "seed": plan.seed + k, "port": port})
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(part, start_ns, send), daemon=True)
        proc.start()
        children.append((proc, recv))
    parts = []
    for proc, recv in children:
        parts.append(recv.recv())
        proc.join(30)
    rows = {f: np.concatenate([np.asarray(p[f], dtype=np.int64) for p in parts]) for f in FIELDS}
    return summarise(rows, start_ns + int(plan.warmup_s * 1e9), start_ns + int((plan.warmup_s + plan.duration_s) * 1e9))


def summarise(rows: dict[str, np.ndarray], window_start_ns: int, window_end_ns: int) -> dict[str, Any]:
    """Throughput from the answers completed in the window; latency [ms] of the requests due in it (every one is
    awaited, so slow ones at the end are not left out)."""
    due = (rows["due_ns"] >= window_start_ns) & (rows["due_ns"] <= window_end_ns)
    done = (rows["done_ns"] >= window_start_ns) & (rows["done_ns"] <= window_end_ns) & (rows["status"] == 200)
    window_s = (window_end_ns - window_start_ns) / 1e9
    ok = due & (rows["status"] == 200)
    latency_ms = (rows["done_ns"][ok] - rows["due_ns"][ok]) / 1e6

    def pct(values: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(values, q)), 3) if len(values) else None

    statuses, counts = np.unique(rows["status"][due], return_counts=True)
    return {
        "window_s": round(window_s, 3),
        "requests": int(due.sum()),
        "ok": int(ok.sum()),
        "statuses": {str(s): int(c) for s, c in zip(statuses, counts)},
        "requests_per_s": round(done.sum() / window_s, 2),
        "items_per_s": round(rows["items"][done].sum() / window_s, 2),
        "latency_ms": {
            "mean": round(float(latency_ms.mean()), 3) if len(latency_ms) else None,
            **{f"p{q}": pct(latency_ms, q) for q in (50, 90, 99, 99.9)},
        },
        "server_ms": {name: pct(rows[f"{name}_ns"][ok] / 1e6, 50) for name in ("queue", "compute", "decode")},
        "batch_size_mean": round(float(rows["batch_size"][ok].mean()), 2) if ok.any() else None,
    }
