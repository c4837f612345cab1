"""The load-generator Job's entry point (``k8s/jobs/loadgen``): drive a load sweep at model servers from inside the
cluster and print the per-step summary to the log (``kubectl logs job/gawm-loadgen``)::

    python -m gawm_lib.cluster.loadjob --workload distilbert --discover gawm \\
        --load '{"scenario": "closed_loop", "levels": [1, 2, 4], "step_duration_s": 30}' --out /results

Targets are the ready pods of the workload's Deployment (``--discover NAMESPACE``, through the API with the pod's
service account: the Role in k8s/base allows it), so each request row names the replica that served it; or explicit
base URLs (``--target http://gawm-distilbert.gawm.svc:8000``, repeatable). The raw request records are written to
``--out`` (``requests.parquet``), the settings are validated as ``gawm_lib.config.LoadConfig``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gawm_lib import summary
from gawm_lib.config import LoadConfig, WorkloadConfig


def discover(namespace: str, workload: str, port: int) -> list[str]:
    """Base URLs of the ready pods of ``workload`` in ``namespace``."""
    from gawm_lib.cluster.connect import connect
    from gawm_lib.cluster.facts import placements
    from gawm_lib.cluster.manifests import selector_of

    ready = [p for p in placements(connect(), namespace, selector_of(workload)) if p.ready and p.pod_ip]
    return [f"http://{p.pod_ip}:{port}" for p in ready]


def main(argv: list[str] | None = None) -> int:
    from gawm_lib.loadgen import LoadSpec, run_load, write_bodies
    from gawm_lib.workloads import build_workload, sample_payloads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", required=True, help="resnet50 | distilbert | whisper")
    parser.add_argument("--target", action="append", default=[], help="base URL of a server (repeatable)")
    parser.add_argument("--discover", metavar="NAMESPACE", help="load the ready pods of the workload in NAMESPACE")
    parser.add_argument("--port", type=int, default=8000, help="model-server port of discovered pods")
    parser.add_argument("--load", default="{}", help="JSON of gawm_lib.config.LoadConfig fields")
    parser.add_argument("--out", type=Path, default=Path("/results"))
    args = parser.parse_args(argv)

    load = LoadConfig(**json.loads(args.load))
    targets = list(args.target)
    if args.discover:
        targets += discover(args.discover, args.workload, args.port)
    if not targets:
        parser.error("no targets: give --target URL or --discover NAMESPACE (with ready pods)")
    workload = build_workload(WorkloadConfig(name=args.workload))
    items = sample_payloads(workload, load)
    bodies = write_bodies(args.out / "bodies.jsonl", [workload.request_body([item]) for item in items])
    spec = LoadSpec(
        workload=workload.name,
        model=workload.name,
        targets=targets,
        bodies_path=str(bodies),
        out_dir=str(args.out / "requests.parquet"),
        load=load.model_dump(mode="json"),
    )
    print(f"gawm load job: {workload.name} at {', '.join(targets)}", flush=True)
    result = run_load(spec, args.out / "load", progress=False)
    table = summary.summarise(summary.read_requests(args.out / "requests.parquet"))
    print(table.to_csv(index=False), flush=True)
    print(json.dumps({"requests": result.get("requests"), "interrupted": result.get("interrupted")}), flush=True)
    return 130 if result.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
