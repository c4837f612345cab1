"""How fast one of the machine's cores runs Python, second by second, beside a run.

A shared machine (a cloud VM) can run slower or faster from one minute to the next without the guest seeing any steal
time, and a model server whose CPU side holds Python's GIL runs at the speed of about one core. To tell such drift from
the server's own behaviour, ``python -m gawm_lib.bench.speed_probe --out FILE --duration-s S`` times a fixed piece of
pure-Python work (:func:`unit`) every ``--interval-s`` seconds in a process of its own and appends one JSON line per
timing: ``monotonic_ns`` (the clock the load generator's request records use, on the same machine), ``unix_ns`` and
``seconds``, and on Linux the machine's ``cpu_busy`` and ``cpu_steal`` shares since the previous line (from
``/proc/stat``: how busy all its cores were, and how much time the hypervisor gave to others while they waited).
It costs under 1 % of one core at the defaults. :func:`read` loads the lines, :func:`phase_medians` the median time
over each load step of a run (its manifest's phases, in wall-clock time). ``study_report --speed-probe FILE`` puts
them beside each step's latency.
"""

from __future__ import annotations

import argparse
import json
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
    return {"cpu_busy": round(float(1 - (spent[3] + spent[4]) / total), 4),
            "cpu_steal": round(float(spent[7] / total), 4)}


def probe(out: Path, duration_s: float, interval_s: float = 0.5, loops: int = LOOPS) -> int:
    """Time :func:`unit` every ``interval_s`` for ``duration_s`` seconds, one JSON line a timing appended to ``out``
    (flushed each time, so a probe stopped by a signal keeps what it measured); returns how many timings."""
    if not duration_s > 0 or not interval_s > 0:
        raise ValueError(f"duration_s and interval_s must be > 0 seconds, got {duration_s} and {interval_s}")
    out.parent.mkdir(parents=True, exist_ok=True)
    count, end, times = 0, time.monotonic() + duration_s, cpu_times()
    with out.open("a") as lines:
        while time.monotonic() < end:
            started = time.perf_counter()
            unit(loops)
            took = time.perf_counter() - started
            now = cpu_times()
            lines.write(json.dumps({"monotonic_ns": time.monotonic_ns(), "unix_ns": time.time_ns(), "seconds": took,
                                    **cpu_shares(times, now)}) + "\n")
            times = now
            lines.flush()
            count += 1
            time.sleep(max(0.0, interval_s - took))
    return count


def read(path: Path) -> pd.DataFrame:
    """The timings of a probe file (columns ``monotonic_ns``, ``unix_ns``, ``seconds``, ``cpu_busy``,
    ``cpu_steal``; the last two NaN where not recorded), with the line of any bad entry named in the error."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
            rows.append((int(row["monotonic_ns"]), int(row["unix_ns"]), float(row["seconds"]),
                         float(row.get("cpu_busy", np.nan)), float(row.get("cpu_steal", np.nan))))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a speed-probe timing ({exc!r}): {line[:80]!r}") from exc
    return pd.DataFrame(rows, columns=["monotonic_ns", "unix_ns", "seconds", "cpu_busy", "cpu_steal"])


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
            rows.append({"step": int(phase["step"]),
                         "probe_ms": float(np.median(seconds[lo:hi])) * 1e3 if hi > lo else np.nan})
    return pd.DataFrame(rows, columns=["step", "probe_ms"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file to append the timings to")
    parser.add_argument("--duration-s", type=float, required=True, help="how long to probe [s]")
    parser.add_argument("--interval-s", type=float, default=0.5, help="time between timings [s] (default 0.5)")
    args = parser.parse_args(argv)
    probe(args.out, args.duration_s, args.interval_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
