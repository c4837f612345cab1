"""The studies under studies/ stay runnable and readable from where they live: every params file of a study is valid,
every suite names params files and notebooks that exist (paths from the project root), and the study's scripts import
from the project root as ``studies.<study>.scripts.<name>``."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from gawm_lib import suite
from gawm_lib.config import load_params

ROOT = Path(__file__).resolve().parent.parent
STUDY_PARAMS = sorted(ROOT.glob("studies/*/params/*.yaml"))


def test_the_studies_have_their_params_readme_and_scripts():
    assert STUDY_PARAMS, "no params files under studies/*/params"
    for study in sorted(p for p in (ROOT / "studies").iterdir() if p.is_dir() and not p.name.startswith("_")):
        assert (study / "README.md").is_file(), f"{study.relative_to(ROOT)} has no README.md"
    scripts = sorted((ROOT / "studies" / "h200" / "scripts").glob("*.py"))
    names = {p.stem for p in scripts} - {"__init__"}
    assert {"study_report", "models_bench", "speed_probe", "gc_probe", "gil_bench", "redraw_figures"} <= names
    for name in sorted(names):
        importlib.import_module(f"studies.h200.scripts.{name}")


@pytest.mark.parametrize("path", STUDY_PARAMS, ids=[p.name for p in STUDY_PARAMS])
def test_every_study_params_file_is_valid_with_paths_from_the_project_root(path):
    if suite.is_suite_file(path):
        spec = suite.load_suite(path)
        for entry in spec.runs:
            assert (ROOT / entry.params).is_file(), f"{path.name}: params {entry.params} missing"
        assert all((ROOT / nb).is_file() for nb in spec.report), f"{path.name}: report notebook missing"
        configs = suite.validate_points(suite.expand(spec))
    else:
        configs = [load_params(path)[0]]
    for cfg in configs:
        assert (ROOT / cfg.notebook).is_file(), f"{path.name}: notebook {cfg.notebook} missing"
