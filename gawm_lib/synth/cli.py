"""``gawm synth``: fit a workload model on runs, sample a trace the load generator's ``trace`` scenario replays.

gawm synth fit RUN... --out model.pkl [--arrivals mmpp] [--demands empirical] [--resources ar]
gawm synth sample model.pkl --duration 60 --out trace.csv [--workload W] [--level 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2
# the registries' names (ARRIVALS, DEMANDS, RESOURCES), kept here so that `gawm --help` imports no pandas
ARRIVAL_KINDS = ("empirical", "mmpp", "poisson")
DEMAND_KINDS = ("empirical", "parametric")
RESOURCE_KINDS = ("ar", "lstm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="synth_command", required=True)
    fit = sub.add_parser("fit", help="fit arrival, demand and resource generators on runs; write the model")
    fit.add_argument("runs", nargs="+", help="run ids (in GAWM_RAW_DIR) or run directories")
    fit.add_argument("--out", required=True, type=Path, help="model file to write (never replaced)")
    fit.add_argument("--workload", action="append", default=None, help="fit this workload only (repeatable)")
    fit.add_argument("--arrivals", choices=ARRIVAL_KINDS, default="mmpp")
    fit.add_argument("--demands", choices=DEMAND_KINDS, default="empirical")
    fit.add_argument("--resources", choices=[*RESOURCE_KINDS, "none"], default="ar")
    sample = sub.add_parser("sample", help="sample a synthetic trace (CSV or parquet) from a model")
    sample.add_argument("model", type=Path)
    sample.add_argument("--duration", type=float, required=True, help="length of the trace [s]")
    sample.add_argument("--out", required=True, type=Path, help="trace file (.csv or .parquet)")
    sample.add_argument("--workload", default=None, help="which workload (default: the model's only one)")
    sample.add_argument("--level", type=float, default=None, help="offered load [req/s] (default: as fitted)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--resources-out", type=Path, default=None, help="also write the resource series (CSV)")


def _fit(args) -> int:
    from gawm_lib.synth.model import WorkloadModel
    from gawm_lib.synth.traces import load_traces

    if args.out.exists():
        print(f"gawm synth: {args.out} exists: choose another name (models are never overwritten)", file=sys.stderr)
        return EXIT_USAGE
    traces = load_traces(args.runs, workloads=args.workload)
    for note in traces.notes:
        print(f"  note: {note}")
    resources = None if args.resources == "none" else args.resources
    model = WorkloadModel.fit(traces, arrivals=args.arrivals, demands=args.demands, resources=resources)
    model.save(args.out)
    print(f"model {args.out} (card {args.out}.json): {', '.join(model.generators)} from {len(traces.run_ids)} run(s)")
    for workload, parts in model.generators.items():
        print(f"  {workload}: " + "; ".join(f"{family} {g.kind}" for family, g in parts.items()))
    return 0


def _sample(args) -> int:
    from gawm_lib.synth.condition import Condition
    from gawm_lib.synth.model import WorkloadModel

    model = WorkloadModel.load(args.model)
    workload = args.workload
    if workload is None:
        if len(model.generators) != 1:
            print(f"gawm synth: --workload is needed: the model has {sorted(model.generators)}", file=sys.stderr)
            return EXIT_USAGE
        workload = next(iter(model.generators))
    if args.duration <= 0:
        print("gawm synth: --duration must be > 0 [s]", file=sys.stderr)
        return EXIT_USAGE
    trace = model.sample(Condition(workload, args.level), args.duration, args.seed)
    path = trace.write(args.out)
    if args.resources_out and trace.resources is not None:
        trace.resources.to_csv(args.resources_out, index=False)
    load = model.replay_load(workload, path)
    print(f"trace {path}: {len(trace.requests)} requests over {args.duration:g} s ({workload})")
    print("  replay: gawm run PARAMS " + " ".join(f"-p load.{k}={v}" for k, v in load.items()))
    return 0


def main(args) -> int:
    try:
        return _fit(args) if args.synth_command == "fit" else _sample(args)
    except (ValueError, FileExistsError, FileNotFoundError, RuntimeError) as exc:  # RunError: an unknown run
        print(f"gawm synth: {exc}", file=sys.stderr)
        return EXIT_USAGE
