"""Load generator for any Open Inference Protocol v2 server: it knows server addresses, a model name and request
bodies, nothing about models.

It runs in its own process (``python -m gawm_lib.loadgen SPEC.json``), never inside a Jupyter kernel: ``run_load``
starts it, shows progress and returns when it is done. Each request becomes one row of ``requests.parquet`` (a folder
of part files, flushed every ``FLUSH_S`` seconds, each complete on its own so a crash loses at most that window).

Timing: monotonic nanosecond clocks. Open-loop (poisson) latency counts from the *scheduled* send time, so a slow server
cannot hide queueing (no coordinated omission); the actual send time and the lag are kept too. One wall-clock anchor
per run (``anchor_unix_ns`` / ``anchor_monotonic_ns``) maps monotonic times to UTC for aligning with Prometheus.

Scenarios: ``closed_loop`` (``level`` concurrent users, each sending its next request when the last is answered) and
``poisson`` (arrivals at ``level`` requests/s). Each level is one step; a step lasts at least ``step_duration_s`` and
``min_requests_per_step`` requests, at most ``max_step_duration_s``. A ``warmup`` phase at the first level comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gawm_lib import processes
from gawm_lib.config import LoadConfig

FLUSH_S = 2.0
COLUMNS = {  # name -> meaning [unit]
    "workload": "served workload",
    "phase": "'warmup' or 'step'",
    "step": "index of the load step (-1 for warm-up)",
    "level": "concurrency [users] or arrival rate [req/s] of the step",
    "scheduled_ns": "when the request was due (monotonic) [ns]",
    "sent_ns": "when it was sent [ns]",
    "done_ns": "when the answer (or error) was complete [ns]",
    "status": "HTTP status, 0 when there was no answer",
    "error": "'' when ok, else the kind: timeout, connect, http_4xx, http_5xx, cancelled, other",
    "bytes_out": "request body size [bytes]",
    "bytes_in": "response body size [bytes]",
    "batch_size": "items in the server's batch (server-reported, -1 unknown)",
    "server_queue_ns": "server: arrival to batch start [ns] (-1 unknown)",
    "server_compute_ns": "server: forward pass of the batch [ns] (-1 unknown)",
    "replica": "address of the replica that got it",
}


@dataclass
class LoadSpec:
    """Everything the load process needs, written as JSON for it."""

    workload: str
    model: str
    targets: list[str]  # base URLs of replicas, e.g. http://127.0.0.1:8000
    bodies_path: str  # JSON lines, one OIP v2 request body each
    out_dir: str  # requests.parquet folder
    load: dict[str, Any]

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2))


# -- the load process ---------------------------------------------------------------------------------------------------
class _Recorder:
    def __init__(self, out_dir: Path, workload: str):
        self.out_dir = out_dir
        self.prefix = f"{workload}-part-"
        self.rows: list[dict[str, Any]] = []
        self.parts = itertools.count(len(list(out_dir.glob(f"{self.prefix}*.parquet"))))
        self.last_flush = time.monotonic()
        self.total = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.total += 1
        if time.monotonic() - self.last_flush >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self.rows, schema=_schema())
        final = self.out_dir / f"{self.prefix}{next(self.parts):05d}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)  # a part is either complete or absent
        self.rows = []


def _schema():
    import pyarrow as pa

    strings = {"workload", "phase", "error", "replica"}
    floats = {"level"}
    fields = []
    for name in COLUMNS:
        kind = pa.string() if name in strings else pa.float64() if name in floats else pa.int64()
        fields.append(pa.field(name, kind))
    return pa.schema(fields)


async def _send(client, spec: LoadSpec, body: bytes, target: str, phase: str, step: int, level: float,
                scheduled_ns: int, timeout_s: float) -> dict[str, Any]:
    import httpx

    row = {"workload": spec.workload, "phase": phase, "step": step, "level": level, "scheduled_ns": scheduled_ns,
           "sent_ns": 0, "done_ns": 0, "status": 0, "error": "", "bytes_out": len(body), "bytes_in": 0,
           "batch_size": -1, "server_queue_ns": -1, "server_compute_ns": -1, "replica": target.split("//")[-1]}
    row["sent_ns"] = time.monotonic_ns()
    try:
        answer = await client.post(f"{target}/v2/models/{spec.model}/infer", content=body,
                                   headers={"content-type": "application/json"}, timeout=timeout_s)
        row["done_ns"] = time.monotonic_ns()
        row["status"] = answer.status_code
        row["bytes_in"] = len(answer.content)
        if answer.status_code == 200:
            params = answer.json().get("parameters") or {}
            row["batch_size"] = int(params.get("batch_size", -1))
            row["server_queue_ns"] = int(params.get("queue_ns", -1))
            row["server_compute_ns"] = int(params.get("compute_ns", -1))
        else:
            row["error"] = f"http_{answer.status_code // 100}xx"
    except asyncio.CancelledError:
        row["done_ns"] = time.monotonic_ns()
        row["error"] = "cancelled"
    except httpx.TimeoutException:
        row["done_ns"] = time.monotonic_ns()
        row["error"] = "timeout"
    except httpx.TransportError:
        row["done_ns"] = time.monotonic_ns()
        row["error"] = "connect"
    except Exception:  # noqa: BLE001 - recorded as a row, never lost
        row["done_ns"] = time.monotonic_ns()
        row["error"] = "other"
    return row


async def _generate(spec: LoadSpec, stopping: asyncio.Event) -> dict[str, Any]:
    import httpx

    load = LoadConfig.model_validate(spec.load)
    bodies = [line.encode() for line in Path(spec.bodies_path).read_text().splitlines() if line.strip()]
    if not bodies:
        raise ValueError(f"{spec.bodies_path}: no request bodies")
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recorder = _Recorder(out_dir, spec.workload)
    payload_rng = np.random.default_rng(load.payload_seed)
    arrival_rng = np.random.default_rng(load.arrival_seed)
    targets = itertools.cycle(spec.targets)
    anchor = {"anchor_unix_ns": time.time_ns(), "anchor_monotonic_ns": time.monotonic_ns()}
    phases: list[dict[str, Any]] = []
    steps = [("warmup", -1, load.levels[0], load.warmup_s, 0)] if load.warmup_s > 0 else []
    steps += [("step", i, level, load.step_duration_s, load.min_requests_per_step) for i, level in enumerate(load.levels)]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=1024)

    async with httpx.AsyncClient(limits=limits) as client:
        for phase, step, level, duration_s, min_requests in steps:
            if stopping.is_set():
                break
            start_ns = time.monotonic_ns()
            min_end = start_ns + int(duration_s * 1e9)
            max_end = start_ns + int(max(duration_s, load.max_step_duration_s) * 1e9)
            counted = 0
            last_report = 0.0

            def more() -> bool:
                now = time.monotonic_ns()
                return not stopping.is_set() and now < max_end and (now < min_end or counted < min_requests)

            def record(task: asyncio.Task) -> None:
                nonlocal counted
                counted += 1
                recorder.add(task.result())
                nonlocal last_report
                if time.monotonic() - last_report > 0.25:  # progress for the caller, a few lines a second
                    last_report = time.monotonic()
                    print(json.dumps({"phase": phase, "step": step, "done": recorder.total}), flush=True)

            def request(scheduled_ns: int) -> asyncio.Task:
                body = bodies[int(payload_rng.integers(len(bodies)))]
                task = asyncio.create_task(_send(client, spec, body, next(targets), phase, step, level, scheduled_ns,
                                                 load.request_timeout_s))
                task.add_done_callback(record)
                return task

            if load.scenario == "closed_loop":
                async def user() -> None:
                    while more():
                        await request(time.monotonic_ns())

                users = [asyncio.create_task(user()) for _ in range(int(level))]
                waiter = asyncio.create_task(stopping.wait())
                await asyncio.wait([asyncio.gather(*users), waiter], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            else:  # poisson: arrivals on a schedule drawn up front, independent of answers
                in_flight: set[asyncio.Task] = set()
                due = start_ns
                while more():
                    due += int(arrival_rng.exponential(1.0 / level) * 1e9)
                    delay = (due - time.monotonic_ns()) / 1e9
                    if delay > 0:
                        try:
                            await asyncio.wait_for(stopping.wait(), delay)
                        except TimeoutError:
                            pass
                        if not more():
                            break
                    task = request(due)
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if in_flight:
                    waiter = asyncio.create_task(stopping.wait())
                    await asyncio.wait([asyncio.gather(*in_flight, return_exceptions=True), waiter],
                                       return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
            if stopping.is_set():  # cancel what is in flight: each becomes a 'cancelled' row
                current = asyncio.current_task()
                rest = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
                for task in rest:
                    task.cancel()
                await asyncio.gather(*rest, return_exceptions=True)
            end_ns = time.monotonic_ns()
            phases.append({"phase": phase, "step": step, "level": level, "start_ns": start_ns, "end_ns": end_ns,
                           "start_unix_ns": anchor["anchor_unix_ns"] + start_ns - anchor["anchor_monotonic_ns"],
                           "end_unix_ns": anchor["anchor_unix_ns"] + end_ns - anchor["anchor_monotonic_ns"]})
            recorder.flush()
    recorder.flush()
    return {"workload": spec.workload, **anchor, "phases": phases, "requests": recorder.total,
            "interrupted": stopping.is_set()}


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gawm load process (started by gawm_lib.loadgen.run_load)")
    parser.add_argument("spec", type=Path)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    spec = LoadSpec(**json.loads(args.spec.read_text()))

    async def main() -> dict[str, Any]:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        return await _generate(spec, stopping)

    result = asyncio.run(main())
    tmp = args.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.result)
    return 0


# -- the caller's side --------------------------------------------------------------------------------------------------
class LoadError(RuntimeError):
    pass


def run_load(spec: LoadSpec, work_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Run the load in its own process; return its result (phases with UTC times, request count).

    On Ctrl-C the load process is told to stop, cancels what is in flight (recorded as ``cancelled``), writes its last
    part and exits; then KeyboardInterrupt is raised again here.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / f"{spec.workload}-load-spec.json"
    result_path = work_dir / f"{spec.workload}-load-result.json"
    spec.write(spec_path)
    proc = processes.spawn([sys.executable, "-m", "gawm_lib.loadgen", str(spec_path), "--result", str(result_path)],
                           work_dir / f"{spec.workload}-load.log", stdout=subprocess.PIPE)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"{spec.workload} load", unit="req", leave=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if bar is not None:
                update = json.loads(line)
                bar.set_postfix_str(f"{update['phase']} {update['step']}", refresh=False)
                bar.update(update["done"] - bar.n)
        proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        finally:
            processes.stop(proc)
        raise
    finally:
        if bar is not None:
            bar.close()
        processes.stop(proc)
    if proc.returncode != 0 or not result_path.is_file():
        raise LoadError(f"load process failed (exit {proc.returncode}):\n"
                        f"{processes.log_tail(work_dir / f'{spec.workload}-load.log')}")
    return json.loads(result_path.read_text())


def write_bodies(path: Path, bodies: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    return path


if __name__ == "__main__":
    sys.exit(_main())
