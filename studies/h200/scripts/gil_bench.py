"""What Python's GIL switch interval does to a thread issuing many short torch ops while another thread runs Python.

That is a GPU model server's situation: its compute thread launches thousands of short kernels per batch (Whisper's
decode loop: ~100 ops a token), each op giving the GIL up and taking it back, while the event loop and decode threads
run Python. A thread that wants the GIL back waits until the holder gives it up, at most one switch interval (Python's
default 5 ms). ``python -m studies.h200.scripts.gil_bench`` times 20,000 small in-place ops alone and beside a busy
Python thread, for several intervals, repeated in shuffled order (one torch thread; the result depends on the cores and
on what else runs, so every repetition is kept), and writes ``studies/h200/results/probes/gil_switch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

from gawm_lib import runs
from studies.h200.scripts import RESULTS


def small_ops(count: int) -> float:
    import torch

    x = torch.ones(16)
    started = time.perf_counter()
    for _ in range(count):
        x.add_(1)
    return time.perf_counter() - started


def beside_busy_thread(count: int) -> float:
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    time.sleep(0.05)
    try:
        return small_ops(count)
    finally:
        stop.set()
        thread.join()


def measure(intervals_ms: list[float], repeats: int, ops: int, seed: int = 1) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    default = sys.getswitchinterval()
    plan = [i for i in intervals_ms for _ in range(repeats)]
    random.Random(seed).shuffle(plan)
    times: dict[float, dict[str, list[float]]] = {i: {"alone": [], "busy": []} for i in intervals_ms}
    try:
        for interval in plan:
            sys.setswitchinterval(interval / 1000)
            times[interval]["alone"].append(small_ops(ops) * 1000)
            times[interval]["busy"].append(beside_busy_thread(ops) * 1000)
    finally:
        sys.setswitchinterval(default)
    return [
        {
            "switch_interval_ms": i,
            "ops": ops,
            "alone_ms_median": round(statistics.median(t["alone"]), 1),
            "busy_ms_median": round(statistics.median(t["busy"]), 1),
            "busy_ms_max": round(max(t["busy"]), 1),
            "busy_ms": [round(v, 1) for v in t["busy"]],
        }
        for i, t in times.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals-ms", type=lambda s: [float(x) for x in s.split(",")], default=[5.0, 0.5, 0.1])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--out", type=Path, help="default studies/h200/results/probes/gil_switch.json")
    args = parser.parse_args(argv)
    out = args.out or RESULTS / "probes" / "gil_switch.json"
    rows = measure(args.intervals_ms, args.repeats, args.ops)
    record = {
        "created_utc": runs.utc_now().isoformat(),
        "git": runs.git_info(),
        "host": runs.host_info(),
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
        "torch_threads": 1,
        "command": "python -m studies.h200.scripts.gil_bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    for row in rows:
        print(
            f"switch interval {row['switch_interval_ms']} ms: {row['ops']} ops alone {row['alone_ms_median']} ms, "
            f"beside a busy Python thread median {row['busy_ms_median']} ms, worst {row['busy_ms_max']} ms"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
