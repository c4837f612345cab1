"""The run ids behind each of the H200 study's committed reports, as one Markdown index (``results/RUNS.md``).

Every report folder under ``studies/h200/results`` holds the ``report.json`` that ``study_report`` wrote: the command,
the runs it was fitted on (``run_ids``, with each run's commit, machine and GPU under ``runs``) and, where it checked
held-out suites, their runs (``tail_curve.<workload>.<replicas>.held_out``); ``steps.csv`` has a row for every step of
every run it read. This lists them per folder, so that a finding in the study's README can be traced to its runs (the
run directories themselves, ``data/raw/<run_id>``, stayed on the machines that ran them)::

    .venv/bin/python -m studies.h200.scripts.run_index          # from the project root: writes results/RUNS.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from studies.h200.scripts import RESULTS


def held_out(report: dict) -> list[str]:
    ids = []
    for per_workload in (report.get("tail_curve") or {}).values():
        for curve in per_workload.values():
            ids += [r for r in curve.get("held_out", []) if r not in ids]
    return ids


def index(results: Path) -> str:
    note = (
        "Written by `python -m studies.h200.scripts.run_index` from each folder's `report.json` and `steps.csv`; "
        "the run id ends with the commit it ran (`<UTC start>-<name>-<commit>`). The commands are as recorded "
        "when the reports were written (before the study moved to `studies/h200`: `gawm_lib.bench.*` is now "
        "`studies.h200.scripts.*`, `data/benchmarks/h200` is `studies/h200/results`, `params/` is "
        "`studies/h200/params/`)."
    )
    lines = ["# The H200 study's runs, per report", "", note, ""]
    for path in sorted(results.rglob("report.json"), key=lambda p: (len(p.relative_to(results).parts), str(p))):
        report = json.loads(path.read_text())
        folder = path.parent.relative_to(results)
        name = "results/" + (str(folder) + "/" if str(folder) != "." else "")
        fitted = list(report.get("run_ids", []))
        out = held_out(report)
        steps = path.parent / "steps.csv"
        others = []
        if steps.is_file():
            others = [
                r
                for r in pd.read_csv(steps, usecols=["run_id"])["run_id"].drop_duplicates()
                if r not in fitted and r not in out
            ]
        gpus = sorted(
            {d["name"] for r in report.get("runs", {}).values() for d in (r.get("gpu") or {}).get("devices", [])}
        )
        lines += [
            f"## `{name}`",
            "",
            f"Command: `{report.get('command', '')}`",
            "",
            f"Runs reported ({len(fitted)}; {', '.join(gpus) or 'no GPU recorded'}):",
            "",
        ]
        lines += [f"- `{r}`" for r in fitted]
        if out:
            lines += ["", f"Held out ({len(out)}):", ""] + [f"- `{r}`" for r in out]
        if others:
            lines += ["", f"Also in its steps.csv ({len(others)}):", ""] + [f"- `{r}`" for r in others]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    out = args.results / "RUNS.md"
    out.write_text(index(args.results))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
