"""The conda environment and pyproject list the same dependencies; the console script and layout exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [spec for group in project["optional-dependencies"].values() for spec in group]
    wanted = {_name(s): s for s in project["dependencies"] + extras}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_name(s): s for s in pip_section if not s.startswith("-e")}
    assert sorted(set(wanted) - set(listed)) == [], "in pyproject.toml, missing from environment.yml"
    assert sorted(set(listed) - set(wanted)) == [], "in environment.yml, missing from pyproject.toml"
    drifted = {n: (wanted[n], listed[n]) for n in wanted if wanted[n].replace(" ", "") != listed[n].replace(" ", "")}
    assert drifted == {}, "version specifiers differ"


def test_make_installs_nvml_so_gpu_machines_record_gpu_metrics():
    """`make` installs the core dependencies and the test extra: NVML must be among them, not an extra of its own."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "nvidia-ml-py" in {_name(s) for s in project["dependencies"]}


def test_console_script_and_layout():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["gawm"] == "gawm_lib.cli:main"
    assert set(project["optional-dependencies"]) >= {"test", "gpu", "bench"}
    for name in (
        "notebooks",
        "gawm_lib",
        "k8s",
        "params",
        "data",
        "tests",
        "environment.yml",
        "README.md",
        "JOURNAL.md",
        "Makefile",
        ".ci/run",
    ):
        assert (ROOT / name).exists(), name


def test_notebooks_are_committed_without_outputs_and_with_a_parameters_cell():
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "python3", path
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path} has outputs"
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path}: expected one cell tagged 'parameters'"
        for line in tagged[0].source.splitlines():
            assert re.match(r"^\w+: \w+ = .+  # .+$", line), (
                f"{path}: parameter line not 'NAME: type = value  # meaning'"
            )


def test_make_test_lints_and_make_test_fast_starts_nothing():
    """CI's `make test` runs ruff (lint and format check) before pytest; `make test-fast` deselects the tests that
    start servers, Prometheus, clusters or notebooks."""
    import subprocess

    dry = subprocess.run(
        ["make", "-n", "-o", "env", "-o", "test-sysdeps", "-o", "test-prereqs", "test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert dry.index("ruff check") < dry.index("ruff format --check") < dry.index("pytest")
    fast = subprocess.run(
        ["make", "-n", "-o", "env", "test-fast"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert '-m "not integration and not slow"' in fast
