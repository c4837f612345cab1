"""Run directories: exclusive creation, manifest contents, final statuses, and reading runs back."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import pytest

from gawm_lib import runs


def test_run_ids_are_exclusive_and_never_reuse_a_directory(raw_dir, monkeypatch):
    fixed = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    monkeypatch.setattr(runs, "utc_now", lambda: fixed)
    monkeypatch.setattr(runs, "git_info", lambda root=None: {"commit": "a" * 40, "short": "aaaaaaa", "dirty": True})
    taken = raw_dir / "20260102T030405Z-exp-aaaaaaa-dirty"
    taken.mkdir()
    (taken / "keep.txt").write_text("earlier data")
    first = runs.create_run("exp", {}, {}, raw_dir)
    second = runs.create_run("exp", {}, {}, raw_dir)
    assert first.id == "20260102T030405Z-exp-aaaaaaa-dirty-1"
    assert second.id == "20260102T030405Z-exp-aaaaaaa-dirty-2"
    assert (taken / "keep.txt").read_text() == "earlier data"
    assert not (taken / "manifest.json").exists()


def test_manifest_records_provenance(raw_dir):
    requested = {"load": {"levels": [1]}}
    effective = {"load": {"levels": [1.0], "step_duration_s": 3.0}}
    run = runs.create_run("prov", requested, effective, raw_dir)
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["schema_version"] == runs.SCHEMA_VERSION
    assert manifest["status"] == "RUNNING" and manifest["end_utc"] is None
    assert manifest["params"] == {"requested": requested, "effective": effective}
    assert set(manifest["git"]) >= {"commit", "short", "dirty"}
    assert manifest["packages"]["pydantic"] and manifest["packages"]["pandas"]
    assert manifest["python"]["version"].count(".") == 2
    assert manifest["host"]["cpu_count"] >= 1 and manifest["host"]["hostname"]
    assert "OMP_NUM_THREADS" in manifest["threads"]
    assert "devices" in manifest["gpu"]
    assert (run.path / "params.yaml").read_text().startswith("load:")


def test_git_info_reports_commit_and_dirty_flag(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("1")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "init")
    clean = runs.git_info(tmp_path)
    assert len(clean["commit"]) == 40 and clean["short"] == clean["commit"][:7] and clean["dirty"] is False
    (tmp_path / "f.txt").write_text("2")
    assert runs.git_info(tmp_path)["dirty"] is True
    assert runs.make_run_id("x", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), runs.git_info(tmp_path)).endswith(
        f"-x-{clean['short']}-dirty"
    )


@pytest.mark.parametrize(
    "raised, status", [(None, "COMPLETED"), (KeyboardInterrupt, "INTERRUPTED"), (RuntimeError, "FAILED")]
)
def test_started_run_always_gets_a_final_status(raw_dir, raised, status):
    holder = {}
    try:
        with runs.started_run("st", {}, {}, raw_dir) as run:
            holder["run"] = run
            (run.path / "partial.txt").write_text("written before the end")
            if raised:
                raise raised("boom")
    except (KeyboardInterrupt, RuntimeError):
        pass
    loaded = runs.load_run(holder["run"].path)
    assert loaded.status == status
    assert loaded.manifest["end_utc"]
    assert (loaded.path / "partial.txt").read_text() == "written before the end"
    if status == "FAILED":
        assert loaded.manifest["error"] == "RuntimeError: boom"


def test_update_keeps_what_another_process_wrote(raw_dir):
    ours = runs.create_run("two", {}, {}, raw_dir)
    theirs = runs.load_run(ours.path)
    theirs.update(workloads={"resnet50": {"replicas": ["127.0.0.1:1"]}})
    ours.finish("COMPLETED")
    final = runs.load_run(ours.path).manifest
    assert final["status"] == "COMPLETED"
    assert final["workloads"] == {"resnet50": {"replicas": ["127.0.0.1:1"]}}


def test_reader_lists_runs_and_refuses_unknown_schema(raw_dir):
    a = runs.create_run("a", {}, {}, raw_dir)
    a.finish("COMPLETED")
    b = runs.create_run("b", {}, {}, raw_dir)
    manifest = json.loads((b.path / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (b.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(runs.RunError, match=r"schema_version 99 is not one this gawm reads \(it reads 1\)"):
        runs.load_run(b.path)
    assert [r.id for r in runs.list_runs(raw_dir)] == [a.id]
    with pytest.raises(runs.RunError, match="no manifest.json: not a gawm run directory"):
        runs.load_run(raw_dir / "nope")
    assert runs.load_run(a.id, raw_dir).status == "COMPLETED"


def test_running_run_of_a_dead_process_is_shown_as_such(raw_dir):
    run = runs.create_run("stale", {}, {}, raw_dir)
    assert runs.display_status(run) == "RUNNING"
    run.update(pid=2**22 + 12345)  # above the default pid_max: no such process
    assert runs.display_status(runs.load_run(run.path)) == "DEAD (marked RUNNING, its process is gone)"


def test_finish_rejects_unknown_status(raw_dir):
    run = runs.create_run("bad", {}, {}, raw_dir)
    with pytest.raises(ValueError, match="final status must be one of"):
        run.finish("DONE")


def test_gawm_git_commit_names_the_code_of_a_copied_tree_over_its_stale_git(monkeypatch):
    from gawm_lib import runs as runs_module

    real = runs_module.git_info()
    assert real["commit"] and "from" not in real  # this checkout's own .git
    monkeypatch.setenv("GAWM_GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("GAWM_GIT_DIRTY", "1")
    info = runs_module.git_info()
    assert info == {
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "short": "0123456",
        "dirty": True,
        "branch": None,
        "from": "GAWM_GIT_COMMIT",
    }
