"""Real runs of the replay's source configuration and replays of the synthetic trace, interleaved (real, replay, real,
replay, ...) so that the shared machine's drifts hit both alike; writes their latency table (``role, run_id, ...,
p50_ms, p95_ms`` and each against the source run) and the roles.

    GAWM_RAW_DIR=/tmp/synth-runs/raw OMP_NUM_THREADS=1 .venv/bin/python -m studies.synth.scripts.interleave

The real runs are ``studies/synth/params/synth_cpu.yaml`` cut to DistilBERT with the source run's seeds (arrival 11,
payload 21); the replays replay ``--trace`` (the study notebook's synthetic trace) as the source run was configured."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from studies.synth.scripts import RESULTS

SOURCE = "20261204T155546Z-synth-a062b96-dirty"


def main(argv: list[str] | None = None) -> int:
    from gawm_lib import config, experiment
    from gawm_lib.synth import replay

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=SOURCE, help="the run whose configuration and load profile are replayed")
    parser.add_argument("--trace", default=str(RESULTS / "synth_study_synthetic_trace.csv"))
    parser.add_argument("--params", default="studies/synth/params/synth_cpu.yaml")
    parser.add_argument("--workload", default="distilbert")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--arrival-seed", type=int, default=11, help="the source run's arrival seed")
    parser.add_argument("--payload-seed", type=int, default=21, help="the source run's payload seed")
    parser.add_argument("--pairs", type=int, default=2, help="how many (real, replay) pairs")
    parser.add_argument("--out", default=str(RESULTS / "interleave.csv"))
    args = parser.parse_args(argv)
    overrides = [
        f'workloads=[{{"name": "{args.workload}", "max_batch_size": {args.max_batch_size}}}]',
        f"load.arrival_seed={args.arrival_seed}",
        f"load.payload_seed={args.payload_seed}",
        f"name=synth-real-{args.workload}",
    ]
    roles = {args.source: "source"}
    for i in range(args.pairs):
        cfg, requested = config.load_params(args.params, overrides)
        run, _ = experiment.run_experiment(cfg, requested=requested, progress=False)
        roles[run.id] = f"real again {i + 1}"
        print("real", run.id, flush=True)
        again = replay.replay(args.source, args.workload, args.trace)
        roles[again.id] = f"replay again {i + 1}"
        print("replay", again.id, flush=True)
    table = replay.latency_table(roles, args.workload)
    print(table.round(2).to_string())
    out = Path(args.out)
    table.to_csv(out, index=False)
    out.with_name(out.stem + "_roles.json").write_text(json.dumps(roles, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
