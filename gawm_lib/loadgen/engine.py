"""The load process: ``python -m gawm_lib.loadgen SPEC.json --result RESULT.json``.

One asyncio loop drives the steps of :func:`gawm_lib.loadgen.schedule.plan`. Open-loop requests are launched at their
due time whatever the answers do. The wait for a due time sleeps until ~1 ms before it (the loop's timers wake up to
1 ms late: epoll counts in milliseconds) and then yields to the loop until it comes, so sends are not late by the
timer's granularity; the price is a busy core between close arrivals. Every request becomes a row
(``records.COLUMNS``) whatever happens to it: answered, failed by kind, or cancelled at a stop (SIGINT/SIGTERM), when
requests in flight or waiting for a connection are cancelled, recorded, and the last part is written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gawm_lib.loadgen import client, http1, records, schedule
from gawm_lib.loadgen.spec import LoadSpec, expand_headers

TICK_S = 0.05  # closed-loop ramps: how often the number of users is adjusted
PROGRESS_S = 0.25
PRECONNECT = 32  # connections opened to each target before the load starts (http1)
START_BATCH = 256  # closed loop: users started before the loop runs again (the first ones send while more are made)

monotonic_ns = time.monotonic_ns


class Load:
    """The state of one load process; :meth:`run` drives every step and returns the result."""

    def __init__(self, spec: LoadSpec):
        from gawm_lib.config import LoadConfig

        self.spec = spec
        self.load = LoadConfig.model_validate(spec.load)
        self.process, self.processes = spec.process_index, spec.process_count
        self.stopping = False
        self.early_ns = int(self.load.wake_early_ms * 1e6)  # wake this long before a due time, then poll until it
        self.in_flight = 0
        self.issued = 0  # requests this process issued in the current step
        self.status = {"phase": "", "step": 0}
        raw = [json.loads(line) for line in Path(spec.bodies_path).read_text().splitlines() if line.strip()]
        if not raw:
            raise ValueError(f"{spec.bodies_path}: no request bodies")
        payload_rng = schedule.seeds(self.load.payload_seed, self.process, self.processes)
        if self.load.payloads_per_request > 1:  # a pool of joined bodies, drawn once from the payload seed
            picks = payload_rng.integers(len(raw), size=(len(raw), self.load.payloads_per_request))
            raw = [client.join_bodies([raw[i] for i in row]) for row in picks]
        self.bodies = [json.dumps(b, separators=(",", ":")).encode() for b in raw]
        self.items = [client.request_items(b) for b in raw]
        self.payload_ids = schedule.draws(payload_rng, "integers", 0, len(self.bodies))
        self.arrival_rng = schedule.seeds(self.load.arrival_seed, self.process, self.processes)
        self.think = (
            schedule.draws(self.arrival_rng, self.load.think_time_distribution, self.load.think_time_s)
            if self.load.think_time_s > 0
            else None
        )
        self.trace: tuple[Any, Any] | None = None
        if self.load.scenario == "trace":
            arrivals, ids = schedule.read_trace(self.load.trace_path, len(self.bodies))
            self.trace = (arrivals * self.load.trace_time_scale, ids)
        self.urls = [t.rstrip("/") for t in spec.targets]
        self.path = f"/v2/models/{spec.model}/infer"
        self.paths = spec.paths or [self.path] * len(self.urls)
        self.headers = [expand_headers(h) for h in spec.headers] or [{} for _ in self.urls]
        self.targets = itertools.cycle(range(len(self.urls)))
        prefix = f"{spec.workload}-part-" if self.processes == 1 else f"{spec.workload}-p{self.process}-part-"
        self.recorder = records.Recorder(
            Path(spec.out_dir),
            prefix,
            spec.workload,
            spec.labels or [url.split("//")[-1] for url in self.urls],
            self.process,
        )
        self.rows = self.recorder.buffer
        self.pack = records.ROW.pack

    # -- one request -------------------------------------------------------------------------------------------------
    async def request(self, scheduled_ns: int, phase: int, step: int, level: float, payload: int = -1) -> None:
        """Send one request and record its row; ``phase`` is an index of ``records.PHASES``."""
        if payload < 0:
            payload = next(self.payload_ids)
        target = next(self.targets)
        self.in_flight += 1
        sent = first = 0
        status, error, bytes_in, timing = 0, "", 0, client.UNKNOWN
        try:
            async with self.slots:
                sent = monotonic_ns()
                status, content, first = await self.exchange(target, payload)
                done = monotonic_ns()
            bytes_in = len(content)
            if status == 200:
                timing = client.server_timing(content)
            else:
                error = client.status_kind(status)
        except asyncio.CancelledError as exc:
            done, error = monotonic_ns(), client.error_kind(exc)
        except Exception as exc:  # noqa: BLE001 - every failure is a row, by kind
            done, error = monotonic_ns(), client.error_kind(exc)
        finally:
            self.in_flight -= 1
        self.rows += self.pack(
            phase,
            step,
            level,
            scheduled_ns,
            sent,
            first,
            done,
            status,
            records.ERROR_CODE[error],
            len(self.bodies[payload]),
            bytes_in,
            self.items[payload],
            *timing,
            target,
        )

    async def _exchange_http1(self, target: int, payload: int) -> tuple[int, bytes, int]:
        return await self.pools[target].exchange(self.requests[target][payload], self.load.request_timeout_s)

    async def _exchange_aiohttp(self, target: int, payload: int) -> tuple[int, bytes, int]:
        async with self.session.post(
            self.urls[target] + self.paths[target],
            data=self.bodies[payload],
            headers={**client.HEADERS, **self.headers[target]},
        ) as answer:
            first = monotonic_ns()
            return answer.status, await answer.read(), first

    @contextlib.asynccontextmanager
    async def _transport(self):
        """Open the connections' owner of ``load.transport`` for the run."""
        if self.load.transport == "aiohttp":
            async with client.session(self.load.max_connections, self.load.request_timeout_s) as self.session:
                self.exchange = self._exchange_aiohttp
                yield
            return
        self.pools = [http1.Pool(url, self.load.request_timeout_s) for url in self.urls]
        self.requests = [
            [http1.build_request(url, path, body, headers=headers) for body in self.bodies]
            for url, path, headers in zip(self.urls, self.paths, self.headers)
        ]
        self.exchange = self._exchange_http1
        each = max(1, min(PRECONNECT, self.load.max_connections // len(self.pools)))
        await asyncio.gather(*[pool.preconnect(each) for pool in self.pools])
        try:
            yield
        finally:
            for pool in self.pools:
                pool.close()

    def _client_info(self) -> dict[str, Any]:
        if self.load.transport == "aiohttp":
            import aiohttp

            return {"transport": "aiohttp", "version": aiohttp.__version__}
        return {"transport": "http1", "connections_opened": sum(p.opened for p in self.pools)}

    # -- the scenarios -----------------------------------------------------------------------------------------------
    async def _until(self, due_ns: int) -> None:
        early = self.early_ns
        delay = due_ns - monotonic_ns()
        if delay > early:
            await asyncio.sleep((delay - early) / 1e9)
        while monotonic_ns() < due_ns:
            await asyncio.sleep(0 if early else (due_ns - monotonic_ns()) / 1e9)

    def _ends(self, step: schedule.Step, start_ns: int) -> tuple[int, int, int]:
        """(shortest end, longest end [ns], fewest requests) of this process's part of ``step``."""
        min_requests = -(-step.min_requests // self.processes)
        return start_ns + int(step.duration_s * 1e9), start_ns + int(step.max_duration_s * 1e9), min_requests

    async def _open(self, step: schedule.Step, start_ns: int) -> None:
        min_end, max_end, min_requests = self._ends(step, start_ns)
        ramp = step.end_level != step.level
        level = step.level
        phase = records.PHASES.index(step.phase)
        launch = asyncio.get_running_loop().create_task
        for due in schedule.arrival_times_ns(step, self.arrival_rng, start_ns, self.process, self.processes):
            if due >= max_end or (due >= min_end and self.issued >= min_requests):
                # The step lasts until its end, not until its last arrival: the quiet time before the next arrival
                # is part of a Poisson step (ending at the last arrival cut low-rate steps short and started the
                # next one early: 1.1 s instead of 2 s for 5 req/s).
                await self._until(max_end if due >= max_end else min_end)
                break
            if due > monotonic_ns():
                await self._until(due)
            if ramp:
                level = step.level_at((due - start_ns) / 1e9)
            self.issued += 1
            launch(self.request(due, phase, step.index, level))

    async def _closed(self, step: schedule.Step, start_ns: int) -> None:
        min_end, max_end, min_requests = self._ends(step, start_ns)
        phase = records.PHASES.index(step.phase)
        if not max(
            schedule.share(step.level, self.process, self.processes),
            schedule.share(step.end_level, self.process, self.processes),
        ):
            return  # fewer users than processes: this one has none

        def users_at(now_ns: int) -> tuple[int, float]:
            total = step.level_at((now_ns - start_ns) / 1e9)
            return schedule.share(total, self.process, self.processes), total

        async def user(index: int) -> None:
            while not self.stopping:
                if self.think is not None:
                    await asyncio.sleep(next(self.think))
                now = monotonic_ns()
                mine, total = users_at(now)
                if now >= max_end or (now >= min_end and self.issued >= min_requests) or index >= mine:
                    return
                self.issued += 1
                await self.request(now, phase, step.index, total)

        users: dict[int, asyncio.Task] = {}
        while not self.stopping:
            now = monotonic_ns()
            if now >= max_end or (now >= min_end and self.issued >= min_requests):
                break
            # Users are made a batch at a time, so that memory holds the users started, never the number asked for
            # (`levels: [1000000000]` once grew the process by 80 MB/s making users, with nothing sent).
            started = 0
            for index in range(users_at(now)[0]):
                if index not in users or users[index].done():
                    users[index] = asyncio.create_task(user(index))
                    started += 1
                    if started == START_BATCH:
                        break
            if started == START_BATCH:
                await asyncio.sleep(0)
                continue
            if step.end_level == step.level and users and all(not t.done() for t in users.values()):
                await asyncio.wait(list(users.values()), return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(TICK_S)
        if step.drain:
            await asyncio.gather(*users.values())

    async def _offline(self, step: schedule.Step, start_ns: int) -> None:
        min_end, max_end, min_requests = self._ends(step, start_ns)
        burst = schedule.share(step.level, self.process, self.processes)
        phase = records.PHASES.index(step.phase)
        while burst and not self.stopping:
            now = monotonic_ns()
            if now >= max_end or (now >= min_end and self.issued >= min_requests):
                break
            self.issued += burst
            await self._burst(burst, now, phase, step)

    async def _burst(self, count: int, queued_ns: int, phase: int, step: schedule.Step) -> None:
        """``count`` requests queued at ``queued_ns``, sent as connections free up by as many workers as there are
        connections: memory holds the requests in flight, not the queue. Those still queued at a stop are recorded
        as cancelled, as requests waiting for a connection are."""
        queued = count

        async def worker() -> None:
            nonlocal queued
            while queued and not self.stopping:
                queued -= 1
                await self.request(queued_ns, phase, step.index, step.level)

        try:
            await asyncio.gather(*[worker() for _ in range(min(count, self.load.max_connections))])
        finally:  # a stop cancels this and the workers: the requests they had not taken were never sent
            done, unsent, queued = monotonic_ns(), queued, 0
            for _ in range(unsent):
                payload = next(self.payload_ids)
                self.rows += self.pack(
                    phase,
                    step.index,
                    step.level,
                    queued_ns,
                    0,
                    0,
                    done,
                    0,
                    records.ERROR_CODE["cancelled"],
                    len(self.bodies[payload]),
                    0,
                    self.items[payload],
                    *client.UNKNOWN,
                    next(self.targets),
                )

    async def _trace(self, step: schedule.Step, start_ns: int) -> None:
        assert self.trace is not None
        arrivals_s, ids = self.trace
        warmup_ns = int(self.load.warmup_s * 1e9)
        max_end = start_ns + int(step.max_duration_s * 1e9)
        launch = asyncio.get_running_loop().create_task
        level = schedule.trace_mean_rate(arrivals_s)
        mine = arrivals_s[self.process :: self.processes]  # views: a chunk at a time becomes Python ints
        my_ids = None if ids is None else ids[self.process :: self.processes]
        for begin in range(0, len(mine), schedule.CHUNK):
            offsets = (mine[begin : begin + schedule.CHUNK] * 1e9).astype("int64").tolist()
            payloads = [-1] * len(offsets) if my_ids is None else my_ids[begin : begin + schedule.CHUNK].tolist()
            for offset, payload in zip(offsets, payloads):
                due = start_ns + offset
                if due >= max_end:
                    return
                if due > monotonic_ns():
                    await self._until(due)
                warm = offset < warmup_ns
                self.issued += 1
                launch(self.request(due, 0 if warm else 1, -1 if warm else 0, level, payload))

    async def _drain(self) -> None:
        while self.in_flight and not self.stopping:  # bounded: every request times out
            await asyncio.sleep(0.001)

    # -- the whole load ----------------------------------------------------------------------------------------------
    async def _drive(self, phases: list[dict[str, Any]]) -> None:
        trace_span = None
        if self.trace is not None:
            trace_span = float(self.trace[0][-1]) if len(self.trace[0]) else 0.0
        for step in schedule.plan(self.load, trace_span):
            if self.stopping:
                break
            self.status = {"phase": step.phase, "step": step.index}
            self.issued = 0
            start_ns = monotonic_ns()
            try:
                runner = {"open": self._open, "closed": self._closed, "offline": self._offline, "trace": self._trace}[
                    step.mode
                ]
                await runner(step, start_ns)
                if step.drain:
                    await self._drain()
            finally:
                end_ns = monotonic_ns()
                if step.mode == "trace" and self.load.warmup_s > 0:
                    split = min(start_ns + int(self.load.warmup_s * 1e9), end_ns)
                    phases.append(self._phase(step, "warmup", -1, start_ns, split))
                    phases.append(self._phase(step, "step", 0, split, end_ns))
                else:
                    phases.append(self._phase(step, step.phase, step.index, start_ns, end_ns))
        await self._drain()

    def _phase(self, step: schedule.Step, phase: str, index: int, start_ns: int, end_ns: int) -> dict[str, Any]:
        level = schedule.trace_mean_rate(self.trace[0]) if step.mode == "trace" and self.trace else step.level
        return {
            "phase": phase,
            "step": index,
            "level": level,
            "end_level": step.end_level if step.mode != "trace" else level,
            "mode": step.mode,
            "start_ns": start_ns,
            "end_ns": end_ns,
            "start_unix_ns": self.anchor["anchor_unix_ns"] + start_ns - self.anchor["anchor_monotonic_ns"],
            "end_unix_ns": self.anchor["anchor_unix_ns"] + end_ns - self.anchor["anchor_monotonic_ns"],
        }

    def stop(self) -> None:
        """Stop at once: cancel the schedule and every request in flight (each is recorded as 'cancelled')."""
        if self.stopping:
            return
        self.stopping = True
        keep = {asyncio.current_task(), self.main, self.flusher, self.reporter}
        for task in asyncio.all_tasks():
            if task not in keep:
                task.cancel()

    async def _report(self) -> None:
        last = -1
        while True:
            await asyncio.sleep(PROGRESS_S)
            done = self.recorder.total
            if done and done != last:
                last = done
                print(json.dumps({**self.status, "done": done, "process": self.process}), flush=True)

    async def _start_signal(self) -> None:
        """With several processes: say ready, then wait for the common start time in ``spec.start_file``."""
        if not self.spec.start_file:
            return
        print(json.dumps({"ready": True, "process": self.process}), flush=True)
        path = Path(self.spec.start_file)
        deadline = time.monotonic() + 300
        while not path.is_file():
            if self.stopping or time.monotonic() > deadline:
                raise TimeoutError(f"no start signal in {path} within 300 s")
            await asyncio.sleep(0.002)
        start_ns = int(json.loads(path.read_text())["start_monotonic_ns"])
        await self._until(start_ns)

    async def run(self) -> dict[str, Any]:
        # What exists now lives as long as the run: keep it out of the collector's full passes, which otherwise
        # walk every object of numpy, pyarrow and pydantic (~30 ms, a schedule hiccup) when they come.
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        self.main = asyncio.current_task()
        self.flusher = self.reporter = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        self.slots = asyncio.Semaphore(self.load.max_connections)
        phases: list[dict[str, Any]] = []
        async with self._transport():
            await self._start_signal()
            self.anchor = {"anchor_unix_ns": time.time_ns(), "anchor_monotonic_ns": monotonic_ns()}
            self.flusher = asyncio.create_task(self.recorder.flush_every())
            self.reporter = asyncio.create_task(self._report())
            driver = asyncio.create_task(self._drive(phases))
            try:
                await driver
            except asyncio.CancelledError:
                if not self.stopping:
                    raise
            rest = [t for t in asyncio.all_tasks() if t not in (self.main, self.flusher, self.reporter)]
            await asyncio.gather(*rest, return_exceptions=True)  # the cancelled requests record their rows
            for task in (self.reporter, self.flusher):
                task.cancel()
            await asyncio.gather(self.reporter, self.flusher, return_exceptions=True)
            info = self._client_info()
        self.recorder.flush()
        return {
            "workload": self.spec.workload,
            **self.anchor,
            "phases": phases,
            "requests": self.recorder.total,
            "interrupted": self.stopping,
            "process": self.process,
            "processes": self.processes,
            "client": info,
            "pid": os.getpid(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gawm load process (started by gawm_lib.loadgen.run_load)")
    parser.add_argument("spec", type=Path)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    spec = LoadSpec.read(args.spec)
    load = Load(spec)
    cpus = load.load.process_cpus
    if cpus:
        os.sched_setaffinity(0, {cpus[spec.process_index % len(cpus)]})
    result = asyncio.run(load.run())
    tmp = args.result.with_name(f".{args.result.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
