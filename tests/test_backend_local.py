"""The local backend starts real server processes on loopback, reports failures with the server's log, and always
leaves nothing running: after a normal exit, an exception, a start-up failure, or its own parent being killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import httpx
import psutil
import pytest

from gawm_lib.backends import BackendError, open_backend
from gawm_lib.config import BackendConfig, WorkloadConfig

pytestmark = pytest.mark.integration
DISTILBERT = WorkloadConfig(name="distilbert", warmup_batches=0)


def gone(pids, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.2)
    return False


def test_two_replicas_serve_and_are_stopped(tmp_path):
    with open_backend(DISTILBERT, BackendConfig(replicas=2), tmp_path) as backend:
        replicas = backend.replicas
        assert [r.index for r in replicas] == [0, 1]
        assert len({r.port for r in replicas}) == 2 and all(r.host == "127.0.0.1" for r in replicas)
        for r in replicas:
            body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["fine"]}]}
            assert httpx.post(f"{r.url}/v2/models/distilbert/infer", json=body, timeout=30).status_code == 200
        pids = [r.pid for r in replicas]
    assert gone(pids)
    assert all((tmp_path / f"distilbert-{i}.log").is_file() for i in range(2))


def test_exception_inside_the_block_still_stops_replicas(tmp_path):
    pids = []
    with pytest.raises(RuntimeError, match="analysis crashed"):
        with open_backend(DISTILBERT, BackendConfig(replicas=1), tmp_path) as backend:
            pids = [r.pid for r in backend.replicas]
            raise RuntimeError("analysis crashed")
    assert pids and gone(pids)


def test_model_that_fails_to_load_reports_the_server_log(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"these are not weights")
    workload = WorkloadConfig(name="resnet50", weights=str(broken), warmup_batches=0)
    with pytest.raises(BackendError) as err:
        with open_backend(workload, BackendConfig(replicas=1), tmp_path / "logs"):
            pass
    message = str(err.value)
    assert f"resnet50 replica 0: model failed to load: WeightsError: cannot load weights from {broken}" in message
    assert "(last lines) ---" in message and "WeightsError" in message.split("---", 1)[1]  # the server's own log
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]


def test_startup_timeout_names_the_setting_and_stops_the_server(tmp_path):
    with pytest.raises(BackendError, match=r"not ready after 0.3 s \(backend.startup_timeout_s\)"):
        with open_backend(DISTILBERT, BackendConfig(replicas=1, startup_timeout_s=0.3), tmp_path):
            pass
    time.sleep(0.5)
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]


def test_replicas_die_with_a_killed_parent(tmp_path):
    script = textwrap.dedent(f"""
        import json, pathlib, time
        from gawm_lib.backends import open_backend
        from gawm_lib.config import BackendConfig, WorkloadConfig
        with open_backend(WorkloadConfig(name="distilbert", warmup_batches=0), BackendConfig(replicas=1),
                          pathlib.Path({str(tmp_path)!r})) as b:
            print(json.dumps([r.pid for r in b.replicas]), flush=True)
            time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(parent.stdout.readline())
        assert pids and all(psutil.pid_exists(p) for p in pids)
        parent.kill()  # no finally runs: only the parent-death signal and the server's watchdog are left
        parent.wait(10)
        assert gone(pids), "a replica outlived its killed parent"
    finally:
        parent.kill()


def children_affinity(pid):
    """The cores every thread of a process may run on (the server's torch, decode and event-loop threads included)."""
    return {tid: sorted(os.sched_getaffinity(tid)) for tid in (t.id for t in psutil.Process(pid).threads())}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPU cores to place replicas apart")
@pytest.mark.parametrize("mode", ["exclusive", "shared"])
def test_placement_pins_each_replica_and_records_it(tmp_path, mode):
    cores = sorted(os.sched_getaffinity(0))[:2]
    backend_cfg = BackendConfig(replicas=2, placement=mode, cpus=cores)
    with open_backend(DISTILBERT, backend_cfg, tmp_path) as backend:
        expected = [[cores[0]], [cores[1]]] if mode == "exclusive" else [[cores[0]], [cores[0]]]
        for replica, placed, wanted in zip(backend.replicas, backend.placement, expected):
            threads = children_affinity(replica.pid)
            assert len(threads) > 1 and all(cores_of == wanted for cores_of in threads.values()), threads
            assert placed.to_dict() == {
                "replica": replica.index,
                "placement": mode,
                "device": "cpu",
                "cpus": wanted,
                "gpu": None,
                "pid": replica.pid,
                "cpus_actual": wanted,
            }
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["fine"]}]}
        for r in backend.replicas:
            assert httpx.post(f"{r.url}/v2/models/distilbert/infer", json=body, timeout=30).status_code == 200


def test_unpinned_replicas_keep_every_core(tmp_path):
    with open_backend(DISTILBERT, BackendConfig(replicas=1), tmp_path) as backend:
        (placed,) = backend.placement
        assert placed.placement == "none" and placed.cpus is None
        assert placed.cpus_actual == sorted(os.sched_getaffinity(0))


def test_placement_that_does_not_fit_starts_nothing(tmp_path):
    too_many = len(os.sched_getaffinity(0)) + 1
    backend_cfg = BackendConfig.model_construct(
        **{**BackendConfig().model_dump(), "replicas": too_many, "placement": "exclusive"}
    )  # past the experiment's own check
    with pytest.raises(
        BackendError,
        match=rf"distilbert: backend.placement exclusive: {too_many} replica\(s\) x 1 "
        rf"thread\(s\) need {too_many} CPU core\(s\)",
    ):
        with open_backend(DISTILBERT, backend_cfg, tmp_path):
            pass
    assert not list(tmp_path.glob("*.log"))
