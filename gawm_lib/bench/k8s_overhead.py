"""Kubernetes adds how much? The same CPU experiment on the local backend and on a Kubernetes node, side by side.

    KUBECONFIG=<the node's kubeconfig> python -m gawm_lib.bench.k8s_overhead          # about 5 min on 2 cores

One workload (ResNet50 by default, random weights, one torch thread, batches of up to 4) at 1 and 2 replicas of one
core each, under the same closed-loop load (``--users`` concurrent users per replica, ``--step-s`` seconds after a
warm-up), measured by gawm's own experiment (``gawm_lib.experiment.run_experiment``) once on ``local`` (child processes,
replica i pinned to core i: ``placement: exclusive``) and once on ``kubernetes`` (a Deployment of pods with a CPU
limit of one core, the server run from this machine's Python: ``image_mode: host-python``; the pod IPs are reached
through the node's routes). The load generator runs on this machine in both cases. The answer is the difference of
throughput and of p50/p95 latency, per replica count and load level, and the pod's rollout time.

Both backends share this machine's cores with the load generator, so the difference holds what Kubernetes changes on
the path: the pod network (a veth pair, a bridge, iptables), the container's cgroup with a CFS quota instead of a pinned
core, and containerd's shim. Each configuration is a gawm run (``data/raw``); the numbers, with the command, machine,
packages and git commit, are appended to ``data/benchmarks/k8s_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gawm_lib import paths, runs

SCHEMA_VERSION = 1


def _settings(args: argparse.Namespace, kind: str, replicas: int) -> dict[str, Any]:
    workload = {"name": args.workload, "weights": "random", "threads": 1, "max_batch_size": 4, "warmup_batches": 1}
    if args.workload == "whisper":
        workload.update(model_size="tiny", decode_tokens=8, max_batch_size=2)
    backend: dict[str, Any] = {"kind": kind, "replicas": replicas, "startup_timeout_s": 180}
    if kind == "local":
        backend.update(placement="exclusive", cpus=list(range(replicas)))
    else:
        backend.update(
            namespace=args.namespace,
            image_mode="host-python",
            image=args.image,
            image_pull_policy="Never",
            runtime_class=None,
            cpu="1",
            memory="2Gi",
            teardown_timeout_s=60,
        )
        if args.kubeconfig:
            backend["kubeconfig"] = args.kubeconfig
    users = [u * replicas for u in args.users]
    return {
        "name": f"k8s-overhead-{kind}",
        "description": f"{args.workload} x{replicas} on {kind}: what Kubernetes adds",
        "figures_notebook": None,
        "workloads": [workload],
        "backend": backend,
        "load": {
            "scenario": "closed_loop",
            "levels": users,
            "step_duration_s": args.step_s,
            "warmup_s": args.warmup_s,
            "payload_count": 16,
            "wake_early_ms": 0,
        },
        "prometheus": {"enabled": False},
    }


def _ensure_namespace(args: argparse.Namespace) -> None:
    """The namespace and the workbench's ServiceAccount and Role (k8s/base), created where missing."""
    from gawm_lib.cluster import apply_objects, connect, render_access, render_namespace

    api = connect(args.kubeconfig)
    apply_objects(api, [render_namespace(args.namespace), *render_access(args.namespace)])


def _rollout_s(run: runs.Run, workload: str) -> float | None:
    """Seconds from applying the Deployment until every replica was ready (the Kubernetes backend's record)."""
    record = run.logs_dir / f"{workload}-kubernetes.json"
    return json.loads(record.read_text()).get("rollout_s") if record.exists() else None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from gawm_lib.config import validate_params
    from gawm_lib.experiment import run_experiment

    rows: list[dict[str, Any]] = []
    configurations = []
    for replicas in args.replicas:
        for kind in args.backends:
            settings = _settings(args, kind, replicas)
            cfg = validate_params(settings, source=f"k8s_overhead {kind} x{replicas}")
            start = time.monotonic()
            run, table = run_experiment(cfg, requested=settings, progress=False)
            wall = time.monotonic() - start
            configurations.append(
                {
                    "backend": kind,
                    "replicas": replicas,
                    "run_id": run.id,
                    "wall_s": round(wall, 1),
                    "rollout_s": _rollout_s(run, args.workload),
                    "placement": (run.manifest.get("workloads", {}).get(args.workload) or {}).get("placement"),
                }
            )
            for step in table.to_dict(orient="records"):
                rows.append(
                    {
                        "backend": kind,
                        "replicas": replicas,
                        "users": step["level"],
                        "throughput_rps": round(step["throughput_rps"], 3),
                        "p50_ms": round(step["p50_ms"], 2),
                        "p95_ms": round(step["p95_ms"], 2),
                        "ok": step["ok"],
                        "errors": step["errors"],
                        "run_id": run.id,
                    }
                )
            print(
                f"{kind:10s} x{replicas}: "
                + "; ".join(
                    f"{r['users']:g} users {r['throughput_rps']:.2f} req/s "
                    f"p50 {r['p50_ms']:.0f} p95 {r['p95_ms']:.0f} ms"
                    for r in rows
                    if r["run_id"] == run.id
                ),
                flush=True,
            )
    return {"configurations": configurations, "steps": rows, "comparison": compare(rows)}


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kubernetes against local for each (replicas, users): throughput and latency ratios and differences."""
    by_key = {(r["backend"], r["replicas"], r["users"]): r for r in rows}
    out = []
    for (kind, replicas, users), k8s in sorted(by_key.items()):
        local = by_key.get(("local", replicas, users))
        if kind != "kubernetes" or local is None:
            continue
        out.append(
            {
                "replicas": replicas,
                "users": users,
                "throughput_local_rps": local["throughput_rps"],
                "throughput_kubernetes_rps": k8s["throughput_rps"],
                "throughput_change_pct": round(100 * (k8s["throughput_rps"] / local["throughput_rps"] - 1), 1),
                "p50_local_ms": local["p50_ms"],
                "p50_kubernetes_ms": k8s["p50_ms"],
                "p50_change_ms": round(k8s["p50_ms"] - local["p50_ms"], 2),
                "p95_local_ms": local["p95_ms"],
                "p95_kubernetes_ms": k8s["p95_ms"],
                "p95_change_ms": round(k8s["p95_ms"] - local["p95_ms"], 2),
            }
        )
    return out


def _cluster(args: argparse.Namespace) -> dict[str, Any]:
    from gawm_lib.cluster import cluster_facts, connect

    try:
        return cluster_facts(connect(args.kubeconfig))
    except Exception as exc:  # the facts are nice to have
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="resnet50", choices=["resnet50", "distilbert", "whisper"])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2], help="closed-loop users per replica")
    parser.add_argument("--step-s", type=float, default=20.0, help="length of each load step [s]")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--backends", nargs="+", default=["local", "kubernetes"], choices=["local", "kubernetes"])
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--namespace", default="gawm")
    parser.add_argument("--image", default="gawm.local/host-python:1", help="the node's host-python image")
    parser.add_argument("--out", type=Path, default=None, help="default: data/benchmarks/k8s_overhead.json")
    args = parser.parse_args(argv)
    out = args.out or paths.benchmarks_dir() / "k8s_overhead.json"
    if "kubernetes" in args.backends:
        _ensure_namespace(args)
    record: dict[str, Any] = {
        "started": runs.utc_now().isoformat(),
        "command": "python -m gawm_lib.bench.k8s_overhead " + " ".join(argv if argv is not None else sys.argv[1:]),
        "git": runs.git_info(),
        "machine": {**runs.host_info(), "load_average": os.getloadavg()},
        "packages": runs.package_versions(),
        "python": sys.version.split()[0],
        "threads": {**runs.thread_settings(), "torch_threads_per_server": 1},
        "arguments": {k: v for k, v in vars(args).items() if k not in ("out", "kubeconfig")},
    }
    if "kubernetes" in args.backends:
        record["cluster"] = _cluster(args)
    record.update(measure(args))
    record["machine"]["load_average_end"] = os.getloadavg()
    record["finished"] = runs.utc_now().isoformat()
    document = json.loads(out.read_text()) if out.exists() else {"schema_version": SCHEMA_VERSION, "runs": []}
    document["runs"].append(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1, default=str) + "\n")
    for row in record["comparison"]:
        print(
            f"x{row['replicas']} {row['users']:g} users: throughput {row['throughput_local_rps']:.2f} -> "
            f"{row['throughput_kubernetes_rps']:.2f} req/s ({row['throughput_change_pct']:+.1f} %), p50 "
            f"{row['p50_local_ms']:.0f} -> {row['p50_kubernetes_ms']:.0f} ms, p95 {row['p95_local_ms']:.0f} -> "
            f"{row['p95_kubernetes_ms']:.0f} ms"
        )
    print(f"appended to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
