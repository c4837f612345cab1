"""Issue 31, hardening of the settings: bounds on what a run can do, a one-line error (never a traceback, never
silence) for a bad file or override, no alias expansion, values cut in messages, and a report name that is a name."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from gawm_lib import cli, config, runs, suite
from gawm_lib.config import ConfigError, load_params, preflight

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = "prometheus:\n  enabled: false\n"  # what these settings need of the machine: nothing


def write(tmp_path: Path, text: str | bytes, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# -- 9: bounds ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["load.levels=[1000000000]"],
            "load.levels: Value error, closed_loop levels are concurrent users: expected each <= 10,000",
        ),
        (["load.levels=[.inf]"], "expected each <= 10,000"),  # was an OverflowError (a traceback)
        (["load.scenario=poisson", "load.levels=[1e6]"], "arrival rates [req/s]: expected each <= 100,000"),
        (["load.scenario=offline", "load.levels=[1000000]"], "requests queued at once: expected each <= 100,000"),
        (
            ["load.scenario=stages", "load.stages=[{duration_s: 10, users: 1, end_users: 20000}]"],
            "load.stages.0.end_users: Input should be less than or equal to 10000",
        ),
        (
            ["load.scenario=stages", "load.stages=[{duration_s: 10, rate_rps: 200000}]"],
            "load.stages.0.rate_rps: Input should be less than or equal to 100000",
        ),
        ([f"load.levels={list(range(1, 1002))}"], "load.levels: List should have at most 1000 items"),
        (
            ["load.levels=[1, 2, 3, 4, 5, 6, 7, 8]", "load.step_duration_s=86400", "load.max_step_duration_s=86400"],
            "8 levels x 86400 s is 691,200 s: expected the steps at their shortest to take <= 604,800 s",
        ),
        (["load.step_duration_s=100000"], "load.step_duration_s: Input should be less than or equal to 86400"),
        (["load.payload_count=20000"], "load.payload_count: Input should be less than or equal to 10000"),
        (
            ["load.payload_count=1000", "load.payloads_per_request=100"],
            "payload_count x payloads_per_request inputs (1000 x 100): expected <= 65,536",
        ),
        (["load.arrival_seed=-1"], "load.arrival_seed: Input should be greater than or equal to 0"),
        (["backend.replicas=65"], "backend.replicas: Input should be less than or equal to 64"),
        (
            ["workloads=[{name: distilbert, max_body_bytes: 4096, max_body_buffer_bytes: 2048}]"],
            "max_body_buffer_bytes: expected at least max_body_bytes (4096: one body must fit), got 2048",
        ),
    ],
)
def test_bounds_refuse_what_a_run_cannot_do_and_name_the_bound(tmp_path, overrides, expected):
    path = write(tmp_path, "name: bounds\n")
    with pytest.raises(ConfigError) as err:
        load_params(path, overrides)
    assert expected in str(err.value)


def test_the_studies_largest_settings_stay_within_the_bounds(tmp_path):
    load_params(write(tmp_path, "name: big\n"), ["load.levels=[10000]", "load.payload_count=64"])
    load_params(write(tmp_path, "name: big\n"), ["load.scenario=poisson", "load.levels=[100000]"])


def test_a_trace_that_replays_too_long_or_too_fast_is_refused_before_the_run(tmp_path, monkeypatch):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s\n" + "".join(f"{i * 0.5}\n" for i in range(7)))  # 3 s, 2 req/s
    base = ["load.scenario=trace", f"load.trace_path={trace}", "prometheus.enabled=false", "load.warmup_s=0"]
    slow, _ = load_params(write(tmp_path, "name: trace\n"), [*base, "load.trace_time_scale=100000"])
    with pytest.raises(
        ConfigError, match=r"load.trace_time_scale: the trace replays over 300,000 s: expected <= 86,400"
    ):
        preflight(slow)
    fast, _ = load_params(write(tmp_path, "name: trace\n"), [*base, "load.trace_time_scale=0.00001"])
    with pytest.raises(ConfigError, match=r"load.trace_time_scale: the trace replays at 200,000 req/s on average"):
        preflight(fast)
    monkeypatch.setattr(config, "MAX_TRACE_ROWS", 5)
    ok, _ = load_params(write(tmp_path, "name: trace\n"), base)
    with pytest.raises(ConfigError, match=r"load.trace_path: trace.csv: expected a trace of at most 5 arrivals"):
        preflight(ok)


def test_a_suite_grid_too_large_to_run_is_refused_before_it_is_expanded(tmp_path):
    values = list(range(1, 101))
    spec = suite.SuiteConfig(
        suite="huge",
        runs=[{"params": "params/quick.yaml", "grid": {"load.arrival_seed": values, "load.payload_seed": values}}],
    )
    with pytest.raises(ConfigError, match=r"suite huge: 20,000 runs: expected at most 10,000"):
        suite.expand(spec.model_copy(update={"runs": [*spec.runs, spec.runs[0]]}))  # 20,000
    assert len(suite.expand(spec)) == 10_000


@pytest.fixture
def silent_server():
    """A server that accepts connections and never answers: every request stays in flight."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def _offline_load(tmp_path: Path, url: str, level: int, seconds: float) -> tuple[int, dict]:
    """Peak RSS [MiB] of a load process queueing ``level`` requests at once for ``seconds``, then its result after
    SIGTERM."""
    work = tmp_path / f"offline-{level}"
    work.mkdir()
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["payload"]}]}
    (work / "bodies.jsonl").write_text(json.dumps(body) + "\n")
    load = {"scenario": "offline", "levels": [level], "step_duration_s": 60, "max_step_duration_s": 60, "warmup_s": 0}
    spec = {
        "workload": "null",
        "model": "null",
        "targets": [url],
        "bodies_path": str(work / "bodies.jsonl"),
        "out_dir": str(work / "requests.parquet"),
        "load": load,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gawm_lib.loadgen", str(work / "spec.json"), "--result", str(work / "result.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak, started = 0, time.monotonic()
    try:
        while time.monotonic() - started < seconds and proc.poll() is None:
            peak = max(peak, psutil.Process(proc.pid).memory_info().rss >> 20)
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    return peak, json.loads((work / "result.json").read_text())


@pytest.mark.integration
def test_an_offline_queue_costs_the_memory_of_its_connections_not_of_its_length(tmp_path, silent_server):
    from gawm_lib import summary

    baseline, _ = _offline_load(tmp_path, silent_server, 1, 4)
    peak, result = _offline_load(tmp_path, silent_server, 100_000, 4)
    # Every request of a burst was a coroutine at once: 100,000 of them grew the process by > 110 MiB in 4 s (and
    # still growing, and deaf to SIGTERM); now max_connections workers send them, a few MiB over the baseline.
    assert peak - baseline < 40, (baseline, peak)
    rows = summary.read_requests(tmp_path / "offline-100000" / "requests.parquet")
    assert result["interrupted"] and result["requests"] == len(rows) == 100_000  # every queued request is a row
    assert set(rows["error"]) == {"cancelled"}


# -- 10: no traceback, no silence --------------------------------------------------------------------------------------
@pytest.fixture
def nothing_runs(tmp_path, monkeypatch):
    """`gawm run` in this process, where starting a run or a notebook fails the test."""
    monkeypatch.setenv("GAWM_RAW_DIR", str(tmp_path / "raw"))
    monkeypatch.setenv("GAWM_FIGURES_DIR", str(tmp_path / "figures"))

    def started(*args, **kwargs):
        raise AssertionError("a run started")

    monkeypatch.setattr(runs, "create_run", started)
    monkeypatch.setattr(cli, "_execute", started)


def gawm_run(capsys, path: Path, *overrides: str) -> str:
    """stderr of `gawm run`, which must exit 2 (settings) without a traceback."""
    args = ["run", str(path), *(a for o in overrides for a in ("-p", o))]
    assert cli.main(args) == cli.EXIT_CONFIG  # an exception here is the traceback a user saw
    err = capsys.readouterr().err
    assert err.startswith("gawm: ") and "Traceback" not in err
    return err


def test_a_params_file_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys, nothing_runs):
    path = write(tmp_path, b"name: latin\ndescription: caf\xe9 au lait\n")
    err = gawm_run(capsys, path)
    assert err == f"gawm: {path}: line 2: not UTF-8 text (byte 0xe9); save it as UTF-8\n"


def test_an_override_that_is_not_yaml_names_the_override_and_key(tmp_path, capsys, nothing_runs):
    err = gawm_run(capsys, write(tmp_path, "name: x\n" + OFFLINE), "load.levels=[1,")
    assert err.startswith("gawm: -p load.levels=[1,: load.levels: not a valid YAML value: line 1, column 4:")
    assert err.count("\n") == 1


def test_a_key_given_twice_is_refused_not_silently_replaced(tmp_path, capsys, nothing_runs):
    path = write(tmp_path, "name: twice\nload:\n  levels: [8, 16]\n" + OFFLINE + "load:\n  warmup_s: 0\n")
    err = gawm_run(capsys, path)
    assert err.startswith(f"gawm: {path}: not valid YAML: line 6: key 'load' again (first on line 2)")
    assert err.count("\n") == 1
    nested = write(tmp_path, "name: twice\nload:\n  levels: [1]\n  levels: [2]\n")
    with pytest.raises(ConfigError, match=r"line 4: key 'levels' again \(first on line 3\)"):
        load_params(nested)


def test_an_empty_params_file_is_refused_not_run_with_the_defaults(tmp_path, capsys, nothing_runs):
    for text in ("", "# only a comment\n", "---\n"):
        path = write(tmp_path, text)
        err = gawm_run(capsys, path)
        assert (
            err == f"gawm: {path}: the params file is empty: expected a mapping of settings (at least "
            f"`name: <experiment>`)\n"
        )


def test_a_notebook_that_is_no_notebook_is_named_by_its_key(tmp_path, capsys, nothing_runs):
    path = write(tmp_path, "name: nb\nnotebook: README.md\n" + OFFLINE)
    assert f"{path}: notebook: Value error, expected a notebook (.ipynb) path from the project root" in gawm_run(
        capsys, path
    )
    for value in ("/tmp/x.ipynb", "../x.ipynb"):
        with pytest.raises(ConfigError, match="expected a notebook"):
            load_params(path, [f"notebook={value}"])
    missing = write(tmp_path, "name: nb\nfigures_notebook: notebooks/nope.ipynb\n" + OFFLINE)
    err = gawm_run(capsys, missing)
    assert f"{missing}: figures_notebook: expected a notebook of this project, got 'notebooks/nope.ipynb'" in err


def test_a_problem_an_override_brings_is_blamed_on_the_override(tmp_path, capsys, nothing_runs):
    path = write(tmp_path, "name: blame\n" + OFFLINE)
    err = gawm_run(capsys, path, "lod.levels=[1]")
    assert "  -p lod.levels=[1]: lod: unknown key 'lod' (did you mean 'load'?)" in err and f"{path}: lod" not in err
    err = gawm_run(capsys, path, "load.scenario=trace")
    assert "  -p load.scenario=trace: load.trace_path: Value error, scenario trace needs trace_path" in err
    # a problem of the file alone stays the file's; one of both is both's
    both = write(tmp_path, "name: blame\nload:\n  think_time_s: 1\n  levels: [1.5]\n" + OFFLINE)
    err = gawm_run(capsys, both, "load.scenario=poisson", "load.warmup_s=0")
    assert f"  {both} with -p load.scenario=poisson, -p load.warmup_s=0: load.think_time_s: Value error, think " in err
    err = gawm_run(capsys, both, "load.warmup_s=0")
    assert f"  {both}: load.levels: Value error, closed_loop levels are numbers of concurrent users" in err


def test_gawm_run_of_an_undecodable_suite_file_exits_2_without_a_traceback(tmp_path):
    path = write(tmp_path, b"suite: s\nruns:\n  - params: params/quick.yaml\n\xff\n")
    env = {**os.environ, "GAWM_RAW_DIR": str(tmp_path / "raw"), "GAWM_FIGURES_DIR": str(tmp_path / "figures")}
    out = subprocess.run(
        [sys.executable, "-m", "gawm_lib.cli", "run", str(path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr == f"gawm: {path}: line 4: not UTF-8 text (byte 0xff); save it as UTF-8\n"
    assert not (tmp_path / "raw").exists()


# -- 11: aliases and long values ---------------------------------------------------------------------------------------
def _alias_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once_with_a_short_message(tmp_path, capsys, nothing_runs):
    path = write(tmp_path, _alias_bomb(5))  # 9^5 strings once expanded; 9 levels, 471 bytes, were 2.2 GB
    err = gawm_run(capsys, path)
    assert err == (
        f"gawm: {path}: not valid YAML: line 2: aliases (*name) are not accepted in params files: write the value out\n"
    )
    started = time.monotonic()
    with pytest.raises(ConfigError, match="aliases"):
        load_params(write(tmp_path, _alias_bomb(9)))
    assert time.monotonic() - started < 1
    with pytest.raises(ConfigError, match="aliases"):
        load_params(write(tmp_path, "name: x\n" + OFFLINE), ["load.levels=*a"])
    suite_file = write(tmp_path, "suite: s\nruns: &r\n  - params: params/quick.yaml\nreport: *r\n", "suite.yaml")
    with pytest.raises(ConfigError, match=r"suite.yaml: not valid YAML: line 4: aliases"):
        suite.load_suite(suite_file)


def test_long_values_are_cut_in_every_message(tmp_path):
    path = write(tmp_path, f"name: {'X' * 100_000}\nbackend:\n  host: {'h' * 5000}\nload:\n  levels: {[-1] * 900}\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert len(message) < 6000, len(message)
    assert "… (100,002 characters)" in message  # the name, quoted, cut
    assert "backend.host: Value error, expected a loopback address" in message
    assert all(len(line) < 1200 for line in message.splitlines())
    assert f"{path}: load.levels" in message and message.endswith("  ... and 882 more")  # 902 problems: 20 listed
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, "name: ok\n"), [f"name={'y' * 10_000}"])
    assert len(str(err.value)) < 1000
    with pytest.raises(ConfigError, match=r"\(got \[1, 1, 1.*… \(50,000 items\)\)"):
        load_params(write(tmp_path, "name: ok\n"), [f"load.levels={[1] * 50_000}"])


def test_a_params_file_larger_than_a_params_file_is_refused_unread(tmp_path):
    path = write(tmp_path, "name: big\ndescription: " + "x" * (config.MAX_PARAMS_BYTES + 1) + "\n")
    with pytest.raises(ConfigError, match=r"exp.yaml: expected a params file of at most 1,048,576 bytes"):
        load_params(path)


# -- 12: a report's name is a name -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "/tmp/x", ".hidden", "a\\b", "x" * 101])
def test_a_report_name_that_is_a_path_is_refused(tmp_path, monkeypatch, capsys, name):
    monkeypatch.setenv("GAWM_RAW_DIR", str(tmp_path / "raw"))
    monkeypatch.setenv("GAWM_FIGURES_DIR", str(tmp_path / "data" / "figures"))
    monkeypatch.setattr(cli, "_execute", lambda *a, **k: pytest.fail("a notebook ran"))
    for option in ("--name", "--prefix"):
        assert cli.main(["report", "20250101T000000Z-x-abc1234", option, name]) == cli.EXIT_CONFIG
        err = capsys.readouterr().err
        assert err.startswith("gawm: --name '") and "not a path" in err and "Traceback" not in err
    assert not (tmp_path / "data").exists()


def test_a_report_name_of_letters_digits_dots_and_dashes_is_a_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GAWM_RAW_DIR", str(tmp_path / "raw"))
    assert cli.main(["report", "no-such-run", "--name", "thesis.ch4_fig-2"]) == cli.EXIT_CONFIG
    assert "not a gawm run directory" in capsys.readouterr().err  # past the name, to the run id
