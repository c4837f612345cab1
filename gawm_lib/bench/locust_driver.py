"""Locust (FastHttpUser) driving the null server, for ``loadgen_bench``: its own process, because importing Locust
patches the standard library for gevent.

``--mode open``: an open loop of Poisson arrivals at ``--rate``, as one would build it in Locust (which has no schedule
of its own): ``--users`` users, each with its own Poisson schedule of ``rate / users`` (together Poisson at ``rate``),
each waking ~1 ms before its due time and yielding to the hub until it comes (the same waiting as gawm's). Lag is
send - due, taken just before ``client.post``. ``--mode closed``: ``--users`` users sending back to back.

Writes one JSON object to ``--out``: offered and achieved rate, errors, lag and latency percentiles [ms].
"""

from __future__ import annotations

import gevent.monkey

gevent.monkey.patch_all()

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

EARLY_S = 0.0011
BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["hello null server"]}]},
    separators=(",", ":"),
)
HEADERS = {"content-type": "application/json"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="null")
    parser.add_argument("--mode", choices=("open", "closed"), default="open")
    parser.add_argument("--rate", type=float, default=1000.0, help="open loop: arrivals [req/s]")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured [s]")
    parser.add_argument("--warmup-s", type=float, default=0.5)
    parser.add_argument("--cpu", type=int, action="append")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.cpu:
        os.sched_setaffinity(0, set(args.cpu))

    import logging

    logging.disable(logging.WARNING)  # Locust's spawn-rate warnings
    from locust import FastHttpUser, constant, task
    from locust.env import Environment

    path = f"/v2/models/{args.model}/infer"
    per_user = args.rate / args.users
    clock: dict[str, float] = {}
    records: list[tuple[float, float, float, bool]] = []
    ids = itertools.count()

    class Null(FastHttpUser):
        host = args.url
        wait_time = constant(0)

        def on_start(self):
            self.rng = random.Random(args.seed * 100_003 + next(ids))
            while "start" not in clock:
                gevent.sleep(0.005)
            self.due = clock["start"] + (self.rng.expovariate(per_user) if args.mode == "open" else 0.0)

        @task
        def infer(self):
            if args.mode == "open":
                if self.due >= clock["end"]:
                    gevent.sleep(max(0.0, clock["end"] - time.monotonic()) + 1)
                    return
                delay = self.due - time.monotonic()
                if delay > EARLY_S:
                    gevent.sleep(delay - EARLY_S)
                while time.monotonic() < self.due:
                    gevent.sleep(0)
            elif time.monotonic() >= clock["end"]:
                gevent.sleep(1)
                return
            due = self.due if args.mode == "open" else time.monotonic()
            sent = time.monotonic()
            answer = self.client.post(path, data=BODY, headers=HEADERS)
            records.append((due, sent, time.monotonic(), answer.status_code == 200))
            if args.mode == "open":
                self.due += self.rng.expovariate(per_user)

    env = Environment(user_classes=[Null])
    runner = env.create_local_runner()
    runner.start(args.users, spawn_rate=max(args.users * 20, 1))
    deadline = time.monotonic() + 30
    while runner.user_count < args.users and time.monotonic() < deadline:
        gevent.sleep(0.01)
    clock["start"] = time.monotonic() + 0.2
    clock["measure"] = clock["start"] + args.warmup_s
    clock["end"] = clock["measure"] + args.seconds
    gevent.sleep(max(0.0, clock["end"] - time.monotonic()) + 0.5)
    runner.quit()
    measured = [r for r in records if clock["measure"] <= r[0] < clock["end"]]
    print(json.dumps(_stats(measured, args, clock)))
    with open(args.out, "w") as out:
        json.dump(_stats(measured, args, clock), out)


def _stats(rows, args, clock) -> dict:
    import numpy as np

    if not rows:
        return {"requests": 0}
    due, sent, done, ok = (np.array(c) for c in zip(*rows))
    lag_ms, latency_ms = (sent - due) * 1e3, (done - due) * 1e3
    span = clock["end"] - clock["measure"]
    return {
        "tool": "locust FastHttpUser",
        "mode": args.mode,
        "users": args.users,
        "rate_rps": args.rate,
        "requests": len(rows),
        "errors": int((~ok).sum()),
        "offered_rps": len(rows) / span,
        "achieved_rps": (len(sent) - 1) / (sent.max() - sent.min()) if len(sent) > 1 else float("nan"),
        "lag_p50_ms": float(np.percentile(lag_ms, 50)),
        "lag_p99_ms": float(np.percentile(lag_ms, 99)),
        "lag_max_ms": float(lag_ms.max()),
        "latency_p50_ms": float(np.percentile(latency_ms, 50)),
        "latency_p99_ms": float(np.percentile(latency_ms, 99)),
        "service_p50_ms": float(np.percentile((done - sent) * 1e3, 50)),
        "service_p99_ms": float(np.percentile((done - sent) * 1e3, 99)),
    }


if __name__ == "__main__":
    main()
