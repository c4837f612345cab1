"""How fast one of the machine's cores runs Python, second by second, beside a run.

A shared machine (a cloud VM) can run slower or faster from one minute to the next without the guest seeing any steal
time, and a model server whose CPU side holds Python's GIL runs at the speed of about one core. To tell such drift from
the server's own behaviour, ``python -m studies.h200.scripts.speed_probe --out FILE --duration-s S`` times a fixed piece
of pure-Python work (:func:`unit`) every ``--interval-s`` seconds in a process of its own and appends one JSON line per
timing: ``monotonic_ns`` (the clock the load generator's request records use, on the same machine), ``unix_ns``,
``seconds``, ``cpu`` (the core the probe was on when the timing ended), and on Linux the machine's ``cpu_busy`` and
``cpu_steal`` shares since the previous line (from ``/proc/stat``: how busy all its cores were, and how much time the
hypervisor gave to others while they waited). It costs under 1 % of one core at the defaults. :func:`read` loads the
lines, :func:`phase_medians` the median time over each load step of a run (its manifest's phases, in wall-clock time).
``study_report --speed-probe FILE`` puts them beside each step's latency.

``--survey`` asks instead whether the speed belongs to the cores: it pins the probe to each core in turn
(``--survey-s`` seconds each, ``--rounds`` passes over all of them), so that a core that is always slow (say, a
hyper-thread whose sibling another tenant keeps busy) can be told from a whole machine that changes speed, and
:func:`by_cpu` summarises each core's timings and :func:`flips` how their slow spells come and go (and, for
probes pinned to every core at once, whether the cores slow down together); ``--summarise`` prints both for a file.
A core that stays fast is one to pin a CPU server to (``backend.placement``, ``backend.cpus``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

LOOPS = 40_000  # about 2.5 ms on the build machine


def unit(loops: int = LOOPS) -> int:
    """A fixed piece of Python work: integer arithmetic and a small dict, no allocation that grows, no I/O."""
    seen: dict[int, int] = {}
    total = 0
    for i in range(loops):
        total = (total * 31 + i) % 1_000_003
        seen[i & 255] = total
    return total + len(seen)


def cpu_times() -> np.ndarray | None:
    """The machine's cumulative CPU times (``/proc/stat``'s first line: user, nice, system, idle, iowait, irq,
    softirq, steal), or None where there is no ``/proc/stat``."""
    try:
        with open("/proc/stat") as stat:
            return np.array(stat.readline().split()[1:9], dtype=float)
    except (OSError, ValueError):
        return None


def cpu_shares(before: np.ndarray | None, after: np.ndarray | None) -> dict[str, float]:
    """``cpu_busy`` (not idle nor waiting on I/O) and ``cpu_steal`` shares of the CPU time between two
    :func:`cpu_times` readings (empty if either is missing or no time passed)."""
    if before is None or after is None:
        return {}
    spent = after - before
    total = spent.sum()
    if total <= 0:
        return {}
    return {
        "cpu_busy": round(float(1 - (spent[3] + spent[4]) / total), 4),
        "cpu_steal": round(float(spent[7] / total), 4),
    }


def current_cpu() -> int:
    """The core this process is running on (``/proc/self/stat``'s ``processor`` field), or -1 where unknown."""
    try:
        with open("/proc/self/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return -1


def _timing(loops: int, times: np.ndarray | None) -> tuple[dict, np.ndarray | None]:
    """One timed :func:`unit`: its JSON line's fields, and the CPU times read at its end."""
    started = time.perf_counter()
    unit(loops)
    took = time.perf_counter() - started
    now = cpu_times()
    return (
        {
            "monotonic_ns": time.monotonic_ns(),
            "unix_ns": time.time_ns(),
            "seconds": took,
            "cpu": current_cpu(),
            **cpu_shares(times, now),
        },
        now,
    )


def probe(out: Path, duration_s: float, interval_s: float = 0.5, loops: int = LOOPS) -> int:
    """Time :func:`unit` every ``interval_s`` for ``duration_s`` seconds, one JSON line a timing appended to ``out``
    (flushed each time, so a probe stopped by a signal keeps what it measured); returns how many timings."""
    if not duration_s > 0 or not interval_s > 0:
        raise ValueError(f"duration_s and interval_s must be > 0 seconds, got {duration_s} and {interval_s}")
    out.parent.mkdir(parents=True, exist_ok=True)
    count, end, times = 0, time.monotonic() + duration_s, cpu_times()
    with out.open("a") as lines:
        while time.monotonic() < end:
            line, times = _timing(loops, times)
            lines.write(json.dumps(line) + "\n")
            lines.flush()
            count += 1
            time.sleep(max(0.0, interval_s - line["seconds"]))
    return count


def survey(out: Path, seconds_per_cpu: float, rounds: int = 1, interval_s: float = 0.05, loops: int = LOOPS) -> int:
    """Pin this process to each core it may use in turn, for ``seconds_per_cpu`` each,
    ``rounds`` times over, timing :func:`unit` every ``interval_s`` as :func:`probe` does (each line's ``cpu`` is
    the pinned core); restores the affinity it had and returns how many timings."""
    if not seconds_per_cpu > 0 or not interval_s > 0 or rounds < 1:
        raise ValueError(
            f"seconds_per_cpu and interval_s must be > 0 and rounds >= 1, got {seconds_per_cpu}, "
            f"{interval_s} and {rounds}"
        )
    before = os.sched_getaffinity(0)
    out.parent.mkdir(parents=True, exist_ok=True)
    count, times = 0, cpu_times()
    try:
        with out.open("a") as lines:
            for _ in range(rounds):
                for cpu in sorted(before):
                    os.sched_setaffinity(0, {cpu})
                    end = time.monotonic() + seconds_per_cpu
                    while time.monotonic() < end:
                        line, times = _timing(loops, times)
                        lines.write(json.dumps(line) + "\n")
                        count += 1
                        time.sleep(max(0.0, interval_s - line["seconds"]))
                    lines.flush()
    finally:
        os.sched_setaffinity(0, before)
    return count


SLOW = 1.5  # a timing is slow above this many times the machine's fast speed (the 5th percentile of all timings)


def _known(timings: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The timings that record their core, in order per core, and whether each was slow."""
    known = timings[timings["cpu"] >= 0].sort_values(["cpu", "unix_ns"], kind="stable")
    if known.empty:
        raise ValueError("no timing records its core (the probe ran where /proc/self/stat is not available)")
    return known, known["seconds"] > SLOW * known["seconds"].quantile(0.05)


def by_cpu(timings: pd.DataFrame) -> pd.DataFrame:
    """Each core's timings [ms]: ``count``, ``p5``, ``median``, ``p95`` and ``slow_share`` (the share of its timings
    above 1.5 times the machine's fast speed, the 5th percentile of all timings: a core that is sometimes slow shows
    it here even if its median is fast), one row a core, sorted by core; timings without a core (-1) are left out."""
    known, slow = _known(timings)
    cores = known["cpu"].astype(int)
    grouped = (known["seconds"] * 1e3).groupby(cores)
    table = pd.DataFrame(
        {
            "count": grouped.size(),
            "p5": grouped.quantile(0.05),
            "median": grouped.median(),
            "p95": grouped.quantile(0.95),
            "slow_share": slow.groupby(cores).mean(),
        }
    )
    table.index.name = "cpu"
    return table.reset_index()


def read(path: Path) -> pd.DataFrame:
    """The timings of a probe file (columns ``monotonic_ns``, ``unix_ns``, ``seconds``, ``cpu``, ``cpu_busy``,
    ``cpu_steal``; ``cpu`` -1 and the shares NaN where not recorded), with the line of any bad entry named in the
    error."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
            rows.append(
                (
                    int(row["monotonic_ns"]),
                    int(row["unix_ns"]),
                    float(row["seconds"]),
                    int(row.get("cpu", -1)),
                    float(row.get("cpu_busy", np.nan)),
                    float(row.get("cpu_steal", np.nan)),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a speed-probe timing ({exc!r}): {line[:80]!r}") from exc
    return pd.DataFrame(rows, columns=["monotonic_ns", "unix_ns", "seconds", "cpu", "cpu_busy", "cpu_steal"])


def phase_medians(phases: list[dict], timings: pd.DataFrame) -> pd.DataFrame:
    """The probe's median time per :func:`unit` [ms] over each load step of one workload's run phases (a run
    manifest's ``phases[workload]``: each with ``phase``, ``step`` and its wall-clock ``start_unix_ns`` /
    ``end_unix_ns``); NaN where no timing fell (the probe did not run then, or ran on another machine)."""
    order = np.argsort(timings["unix_ns"].to_numpy())
    unix, seconds = timings["unix_ns"].to_numpy()[order], timings["seconds"].to_numpy()[order]
    rows = []
    for phase in phases:
        if phase["phase"] == "step":
            lo, hi = np.searchsorted(unix, [phase["start_unix_ns"], phase["end_unix_ns"]])
            rows.append(
                {"step": int(phase["step"]), "probe_ms": float(np.median(seconds[lo:hi])) * 1e3 if hi > lo else np.nan}
            )
    return pd.DataFrame(rows, columns=["step", "probe_ms"])


def flips(timings: pd.DataFrame, bin_s: float = 0.5) -> dict[str, float]:
    """How the cores' slow spells (timings above 1.5 times the machine's fast speed, as in :func:`by_cpu`) come and
    go: ``slow_stretch_median`` / ``slow_stretch_max``, the length of a core's runs of slow timings (in timings, over
    each core's timings in order), and where several cores were probed at once (one probe pinned to each), over bins
    of ``bin_s`` seconds: ``mean_pairwise_correlation`` of the cores' slow shares (near 0: each core on its own; near
    1: the whole machine at once) and the range of the share of slow timings over all cores (``machine_slow_share_min``
    / ``_max``; absent with fewer than two cores or bins)."""
    known, slow = _known(timings)
    stretch = ((slow != slow.shift()) | (known["cpu"] != known["cpu"].shift())).cumsum()
    lengths = slow.groupby(stretch).agg(["first", "size"])
    lengths = lengths.loc[lengths["first"].astype(bool), "size"]
    out = {
        "slow_stretch_median": float(lengths.median()) if len(lengths) else 0.0,
        "slow_stretch_max": int(lengths.max()) if len(lengths) else 0,
    }
    bins = (known["unix_ns"] - known["unix_ns"].min()) // int(bin_s * 1e9)
    shares = slow.groupby([bins, known["cpu"]]).mean().unstack()
    if shares.shape[1] >= 2 and shares.dropna().shape[0] >= 2:
        pairs = shares.dropna().corr().to_numpy()[np.triu_indices(shares.shape[1], 1)]
        machine = shares.mean(axis=1)
        out.update(
            mean_pairwise_correlation=round(float(np.nanmean(pairs)), 3),
            machine_slow_share_min=round(float(machine.min()), 3),
            machine_slow_share_max=round(float(machine.max()), 3),
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file to append the timings to")
    parser.add_argument("--duration-s", type=float, help="how long to probe [s] (not with --survey)")
    parser.add_argument("--interval-s", type=float, help="time between timings [s] (default 0.5; 0.05 with --survey)")
    parser.add_argument(
        "--survey",
        action="store_true",
        help="pin the probe to each core in turn; prints the summary --summarise prints",
    )
    parser.add_argument("--survey-s", type=float, default=5.0, help="seconds on each core with --survey (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="passes over all cores with --survey (default 1)")
    parser.add_argument(
        "--summarise",
        action="store_true",
        help="probe nothing: print each core's summary and how its slow spells come and go, from --out",
    )
    args = parser.parse_args(argv)
    if not args.summarise and args.survey == (args.duration_s is not None):
        parser.error("give either --duration-s (probe beside a run) or --survey (each core in turn)")
    start = time.time_ns()
    if args.survey:
        survey(args.out, args.survey_s, args.rounds, args.interval_s or 0.05)
    elif not args.summarise:
        probe(args.out, args.duration_s, args.interval_s or 0.5)
        return 0
    timings = read(args.out)
    if args.survey:  # this survey's timings, not those the file already held
        timings = timings[timings["unix_ns"] >= start]
    print(by_cpu(timings).to_string(index=False, float_format="%.2f"))
    print(json.dumps(flips(timings)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
