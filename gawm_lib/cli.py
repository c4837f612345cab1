"""The ``gawm`` command: ``demo``, ``run``, ``runs``, ``serve``.

``gawm run params/X.yaml [-p key=value ...]`` validates the settings (nothing starts if they are wrong), creates the run
directory, executes the measurement notebook named in the file with papermill (the executed copy is saved in the run
directory), then the figures notebook on that run, and gives the run its final status.
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

    papermill.execute_notebook(str(notebook), str(output), parameters=parameters, cwd=str(notebook.parent),
                               progress_bar=False, log_output=False, kernel_name="python3")


def run_params(params_file: str | Path, overrides: list[str]) -> int:
    from gawm_lib import config, plots, runs

    try:
        cfg, requested = config.load_params(params_file, overrides)
    except config.ConfigError as exc:
        print(f"gawm: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    root = paths.project_root()
    notebooks = [("notebook.ipynb", root / cfg.notebook, None)]
    if cfg.figures_notebook:
        notebooks.append(("figures.ipynb", root / cfg.figures_notebook, "figures"))
    for _, path, _ in notebooks:
        if not path.is_file():
            print(f"gawm: {params_file}: notebook {path} does not exist", file=sys.stderr)
            return EXIT_CONFIG
    effective = cfg.model_dump(mode="json")
    run = runs.create_run(cfg.name, requested, effective)
    print(f"run {run.id}\n  directory: {run.path}", flush=True)
    try:
        for output, notebook, kind in notebooks:
            print(f"  executing {notebook.relative_to(root)} -> {output}", flush=True)
            if kind == "figures":  # figure ids start with the experiment's name
                parameters = {"run_ids": [run.id], "fig_prefix": cfg.name}
            else:
                parameters = {"run_dir": str(run.path), "params": effective}
            _execute(notebook, run.path / output, parameters)
    except KeyboardInterrupt:
        run.finish("INTERRUPTED")
        print(f"gawm: interrupted; what was recorded is kept in {run.path}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        run.finish("FAILED", error=f"{type(exc).__name__}: {exc}")
        print(f"gawm: run failed ({type(exc).__name__}); see {run.path}\n{exc}", file=sys.stderr)
        return 1
    run.finish("COMPLETED")
    print(f"run {run.id} COMPLETED\n  directory: {run.path}")
    figures = plots.figures_for_run(run.id)
    if figures:
        print("  figures:")
        for figure in figures:
            print(f"    {figure}")
    return 0


def list_runs_command() -> int:
    from gawm_lib import runs

    found = runs.list_runs()
    if not found:
        print(f"no runs in {paths.raw_dir()}")
        return 0
    print(f"{'run id':<52} {'status':<24} {'requests':>8}")
    for run in found:
        print(f"{run.id:<52} {runs.display_status(run):<24} {run.results().get('requests', ''):>8}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gawm", description="Measure and model AI inference workloads.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="all three workloads on the CPU, a short load sweep each, figures at the end")
    demo.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    run = sub.add_parser("run", help="run the experiment of a params file")
    run.add_argument("params_file", type=Path)
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting, e.g. -p load.levels=[1,2] -p backend.replicas=2")
    sub.add_parser("runs", help="list runs with their status")
    serve = sub.add_parser("serve", help="serve one workload (OIP v2 HTTP); options as python -m gawm_lib.server")
    serve.add_argument("server_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "demo":
        return run_params(paths.params_dir() / "demo.yaml", args.param)
    if args.command == "run":
        return run_params(args.params_file, args.param)
    if args.command == "runs":
        return list_runs_command()
    if args.command == "serve":
        from gawm_lib import server

        server.main(args.server_args)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
