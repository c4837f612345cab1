"""How often the model server's garbage collector runs, and for how long, with a backlog of requests in flight.

A server with a backlog holds every pending request's objects (futures, parsed bodies, tokenised text); they outlive the
young collections, so every middle and full collection scans them again and the collector's cost grows with the backlog.
``python -m studies.h200.scripts.gc_probe`` starts a DistilBERT server on the CPU (one torch thread, short texts,
batches of up to 64) once per collector setting (``WorkloadConfig.gc_thresholds``: Python's own and the server's
default), holds ``--connections`` requests in flight for ``--duration-s`` seconds (closed loop, after a warm-up), and
reads the server's ``gawm_gc_pause_seconds`` per generation before and after (the warm-up and the driver's start-up
included): collections, total and mean pause, throughput and latency. Results, with the machine and packages, go to
``studies/h200/results/probes/gc_probe_cpu.json``.

On a CPU the collector's share stays small (the model is slow); on a GPU, where the same server answers 50 times as
many requests a second, it reached 15 % with Python's thresholds (``studies/h200/results/tail_goal_gc/README.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from gawm_lib import runs
from studies.h200.scripts import RESULTS

SETTINGS: dict[str, tuple[int, int, int] | None] = {"python": None, "server default": (10_000, 10, 10)}


def probe(thresholds: tuple[int, int, int] | None, connections: int, duration_s: float) -> dict[str, Any]:
    from gawm_lib.bench.server_bench import metric_samples, payloads, served, server_run
    from gawm_lib.config import WorkloadConfig

    cfg = WorkloadConfig(
        name="distilbert",
        device="cpu",
        threads=1,
        decode_workers=1,
        max_queue_size=4096,
        max_batch_size=64,
        max_queue_delay_ms=5,
        max_seq_len=16,
        warmup_batches=1,
        gc_thresholds=thresholds,
    )
    bodies, headers, _ = payloads(cfg, "encoded", per_request=1, count=64)
    with served(cfg) as replicas:
        replica = replicas[0]
        before = metric_samples(replica.url, "gawm_gc_pause_seconds_", "generation")
        result = server_run(replica, cfg, bodies, headers, 1, "closed", 1, connections, duration_s, 2.0)
        after = metric_samples(replica.url, "gawm_gc_pause_seconds_", "generation")

    def grown(name: str, generation: str) -> float:
        key = (f"gawm_gc_pause_seconds_{name}", generation)
        return after[key] - before[key]

    generations = {}
    for generation in "012":
        count, total_s = grown("count", generation), grown("sum", generation)
        generations[generation] = {
            "collections": int(count),
            "total_ms": round(1e3 * total_s, 2),
            "mean_ms": round(1e3 * total_s / count, 3) if count else None,
        }
    return {
        "gc_thresholds": list(thresholds) if thresholds else "python (700, 10, 10)",
        "requests_per_s": result["items_per_s"],
        "latency_ms": result["latency_ms"],
        "batch_size_mean": result["batch_size_mean"],
        "generations": generations,
        "collector_ms_total": round(sum(g["total_ms"] for g in generations.values()), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=256, help="requests held in flight (the backlog)")
    parser.add_argument("--duration-s", type=float, default=12.0, help="measured window per setting")
    parser.add_argument("--out", type=Path, default=RESULTS / "probes" / "gc_probe_cpu.json")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.duration_s <= 0:
        parser.error("--connections must be >= 1 and --duration-s > 0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report = {
        "benchmark": "gc_probe",
        "command": " ".join(["python -m studies.h200.scripts.gc_probe", *sys.argv[1:]]),
        "started_utc": runs.utc_now().isoformat(),
        "git": runs.git_info(),
        "host": runs.host_info(),
        "load_average": os.getloadavg(),
        "packages": runs.package_versions(),
        "threads": {"torch_per_server": 1, **runs.thread_settings()},
        "results": {},
    }
    for name, thresholds in SETTINGS.items():
        report["results"][name] = row = probe(thresholds, args.connections, args.duration_s)
        print(
            f"{name:>15}: {row['requests_per_s']} req/s, collections by generation "
            f"{[g['collections'] for g in row['generations'].values()]}, {row['collector_ms_total']} ms in all",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
