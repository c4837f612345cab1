"""Where things live. Every other module takes its paths from here.

The project root is found from ``GAWM_HOME`` when set, else from the current directory upwards (the folder holding
``pyproject.toml`` and ``gawm_lib``), else from this file's location (an editable install). Data always flows one way:
``data/raw`` (immutable run directories) -> ``data/figures`` and ``data/benchmarks``.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The gawm checkout that data, params and notebooks belong to."""
    env = os.environ.get("GAWM_HOME")
    if env:
        return Path(env).resolve()
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "pyproject.toml").is_file() and (folder / "gawm_lib").is_dir():
            return folder
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return project_root() / "data"


def raw_dir() -> Path:
    """Run directories, one per run, never rewritten (``data/raw/<run_id>/``)."""
    return Path(os.environ.get("GAWM_RAW_DIR") or data_dir() / "raw")


def figures_dir() -> Path:
    """Exported figures: ``<fig_id>.pdf``, ``.png`` and ``.json`` (provenance)."""
    return Path(os.environ.get("GAWM_FIGURES_DIR") or data_dir() / "figures")


def benchmarks_dir() -> Path:
    return data_dir() / "benchmarks"


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def params_dir() -> Path:
    return project_root() / "params"


def cache_dir() -> Path:
    """Heavy things kept between runs and clones (built binaries, synthesised samples): ``~/.cache/gawm``."""
    return Path(os.environ.get("GAWM_CACHE_DIR") or Path.home() / ".cache" / "gawm")


PACKAGE_DATA = Path(__file__).resolve().parent / "workloads" / "data"
