"""The server's batcher on its own: batches close when full or at the delay once the model is idle, keep filling while
it is busy, never split a request, survive failures, and keep running while the event loop is busy (the batches are
formed and run on the batcher's own threads)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gawm_lib.config import WorkloadConfig
from gawm_lib.server import Batcher, Metrics


class Model:
    """A stand-in for a workload: ``prepare`` and ``forward`` record what they were given and when."""

    def __init__(self, max_batch: int, delay_ms: float, forward_s: float = 0.0):
        self.cfg = WorkloadConfig(name="distilbert", max_batch_size=max_batch, max_queue_delay_ms=delay_ms)
        self.forward_s = forward_s
        self.batches: list[list[str]] = []
        self.started: list[float] = []
        self.fail_prepare: set[str] = set()

    def prepare(self, items):
        if self.fail_prepare & set(items):
            raise ValueError("cannot collate")
        return list(items)

    def forward(self, batch, count):
        self.started.append(time.monotonic())
        self.batches.append(batch)
        time.sleep(self.forward_s)
        return [{"item": item} for item in batch[:count]]


def serve(model: Model, scenario):
    """Run ``scenario(batcher)`` on an event loop with a started batcher; closed afterwards."""

    async def main():
        batcher = Batcher(model, Metrics("distilbert", "0"))
        batcher.start(asyncio.get_running_loop())
        try:
            return await asyncio.wait_for(scenario(batcher), 10)
        finally:
            await asyncio.to_thread(batcher.close)

    return asyncio.run(main())


async def submit(batcher: Batcher, *items: str):
    assert batcher.admit()
    return await batcher.submit(list(items))


def test_an_idle_model_gets_a_partial_batch_at_the_delay_and_a_full_one_at_once():
    model = Model(max_batch=4, delay_ms=150)

    async def scenario(batcher):
        started = time.monotonic()
        answers, timing = await submit(batcher, "a")
        waited = time.monotonic() - started
        full = await asyncio.gather(*(submit(batcher, x) for x in "bcde"))
        return answers, timing, waited, full

    answers, timing, waited, full = serve(model, scenario)
    assert answers == [{"item": "a"}] and timing["batch_size"] == 1
    assert 0.14 <= waited < 1.0  # closed at the delay, not before
    assert model.batches[1] == list("bcde") and all(t["batch_size"] == 4 for _, t in full)
    assert [a for a, _ in full] == [[{"item": x}] for x in "bcde"]  # each request gets its own answers


def test_a_busy_model_lets_the_next_batch_fill_past_the_delay_and_requests_are_never_split():
    model = Model(max_batch=4, delay_ms=1, forward_s=0.3)

    async def scenario(batcher):
        first = asyncio.create_task(submit(batcher, "a"))
        await asyncio.sleep(0.05)  # the model is busy with [a] for 0.3 s: the next batch fills meanwhile
        rest = [asyncio.create_task(submit(batcher, x)) for x in "bc"]
        await asyncio.sleep(0.05)
        pair = asyncio.create_task(submit(batcher, "d", "e"))  # two items: only one slot is left after b, c, ...
        await asyncio.sleep(0.01)
        rest.append(asyncio.create_task(submit(batcher, "f")))
        return await asyncio.gather(first, *rest, pair)

    results = serve(model, scenario)
    assert model.batches == [["a"], ["b", "c", "d", "e"], ["f"]]  # d and e travel together, f waits for the next
    assert results[-1][0] == [{"item": "d"}, {"item": "e"}]
    assert all(timing["queue_ns"] >= 0 and timing["compute_ns"] > 0 for _, timing in results)


def test_a_backlog_of_requests_of_several_items_is_cut_into_the_greedy_batches_in_order():
    model = Model(max_batch=4, delay_ms=1, forward_s=0.15)
    sizes = [1, 3, 2, 2, 1, 1, 1, 4, 3, 1, 2, 3, 1, 1, 2]
    requests = [[f"r{i}.{k}" for k in range(n)] for i, n in enumerate(sizes)]
    expected, batch = [], []  # each batch takes requests in order while they fit, a request never split
    for items in requests:
        if batch and len(batch) + len(items) > 4:
            expected.append(batch)
            batch = []
        batch = batch + items
    expected.append(batch)

    async def scenario(batcher):
        first = asyncio.create_task(submit(batcher, "x"))
        await asyncio.sleep(0.03)  # the model is busy with [x]: the backlog arrives meanwhile
        rest = [asyncio.create_task(submit(batcher, *items)) for items in requests]
        return await asyncio.gather(first, *rest)

    results = serve(model, scenario)
    assert model.batches == [["x"], *expected]
    assert [answers for answers, _ in results[1:]] == [[{"item": i} for i in items] for items in requests]


def test_a_batch_that_fails_to_collate_fails_its_requests_and_the_next_partial_batch_still_runs():
    model = Model(max_batch=4, delay_ms=20)
    model.fail_prepare = {"bad"}

    async def scenario(batcher):
        with pytest.raises(ValueError, match="cannot collate"):
            await submit(batcher, "bad")
        answers, _ = await submit(batcher, "good")  # hangs if the failed batch left the model marked busy
        return answers, batcher.depth

    answers, depth = serve(model, scenario)
    assert answers == [{"item": "good"}] and depth == 0


def test_the_model_keeps_running_batches_while_the_event_loop_is_busy():
    """Batches are formed and started on the batcher's threads: a loop stuck for 0.5 s (reading hundreds of bodies)
    delays the answers, not the next forward pass."""
    model = Model(max_batch=2, delay_ms=1, forward_s=0.05)

    async def scenario(batcher):
        tasks = [asyncio.create_task(submit(batcher, str(i))) for i in range(6)]
        await asyncio.sleep(0)  # the six are queued
        blocked_from = time.monotonic()
        time.sleep(0.5)  # the event loop does something else
        await asyncio.gather(*tasks)
        return blocked_from

    blocked_from = serve(model, scenario)
    assert len(model.batches) == 3
    assert model.started[-1] < blocked_from + 0.5  # all three ran while the loop was blocked


def test_admission_is_bounded_and_counted_from_any_thread():
    model = Model(max_batch=4, delay_ms=1)
    model.cfg = WorkloadConfig(name="distilbert", max_batch_size=4, max_queue_size=3)
    batcher = Batcher(model, Metrics("distilbert", "0"))
    assert [batcher.admit() for _ in range(4)] == [True, True, True, False]
    threads = [threading.Thread(target=batcher.release) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert batcher.depth == 0 and batcher.admit()
