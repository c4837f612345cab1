"""Open-loop rates as shares of a configuration's capacity measured in this session.

A tail-curve check wants Poisson steps at set shares of the capacity (10 % to 85 %), but a lent machine's capacity
moves between leases by 15-20 % (the H200 VM's ResNet50 x1: 584 req/s in one lease, 680-699 in another). So a suite
first measures the capacity (a closed-loop run), and then ``python -m gawm_lib.bench.capacity_levels --suite NAME
--fractions 0.15,0.35,0.55`` prints the rates those shares are of it, as a JSON list for ``load.levels``: the
suite's completed runs, per (workload, replicas), their :func:`gawm_lib.analysis.measured_capacity`, times each
fraction, rounded to ``--step`` req/s. With ``--workload`` / ``--replicas`` where the suite holds several
configurations.

A suite can do this itself: an entry with ``capacity_shares`` runs at those shares of the capacity its earlier runs
measured (:mod:`gawm_lib.suite`), so one ``gawm run`` measures the capacity and sweeps; this command stays for
looking at a finished suite's rates, or for rates to copy into another suite.
"""

from __future__ import annotations

import argparse
import json
import sys

from gawm_lib import analysis, runs, suite


def levels(capacity_rps: float, fractions: list[float], step: float = 5.0) -> list[float]:
    """``capacity_rps`` times each fraction, rounded to ``step`` req/s (at least one ``step``)."""
    if not capacity_rps > 0:
        raise ValueError(f"capacity must be > 0 req/s, got {capacity_rps}")
    bad = [f for f in fractions if not 0 < f < 1]
    if bad or not fractions:
        raise ValueError(f"fractions must be between 0 and 1 (shares of the capacity), got {fractions}")
    if not step > 0:
        raise ValueError(f"step must be > 0 req/s, got {step}")
    return [max(step, round(capacity_rps * f / step) * step) for f in fractions]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", required=True, help="the suite whose completed runs measured the capacity")
    parser.add_argument("--fractions", required=True, help="comma-separated shares of the capacity, e.g. 0.15,0.55")
    parser.add_argument("--workload", help="the workload, where the suite ran several")
    parser.add_argument("--replicas", type=int, help="the replica count, where the suite ran several")
    parser.add_argument("--step", type=float, default=5.0, help="round the rates to this many req/s (default 5)")
    args = parser.parse_args(argv)
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        parser.error(f"--fractions: expected numbers separated by commas, got {args.fractions!r}")
    try:
        run_ids = suite.suite_run_ids(args.suite)
    except runs.RunError as exc:
        raise SystemExit(f"capacity_levels: {exc}") from None
    if not run_ids:
        raise SystemExit(f"capacity_levels: suite {args.suite} has no completed runs")
    capacity = analysis.measured_capacity(analysis.load_requests(run_ids)[0])
    if args.workload is not None:
        capacity = capacity[capacity.index.get_level_values("workload") == args.workload]
    if args.replicas is not None:
        capacity = capacity[capacity.index.get_level_values("replicas") == args.replicas]
    if len(capacity) != 1:
        found = ", ".join(f"{w} x{r}" for w, r in capacity.index) or "none"
        raise SystemExit(
            f"capacity_levels: suite {args.suite}: expected one configuration with a closed-loop run, "
            f"found {found} (narrow it with --workload / --replicas)"
        )
    (workload, replicas), rps = capacity.index[0], float(capacity.iloc[0])
    try:
        rates = levels(rps, fractions, args.step)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"capacity_levels: {workload} x{replicas}: capacity {rps:.1f} req/s -> {rates}", file=sys.stderr)
    print(json.dumps(rates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
