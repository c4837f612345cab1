"""``backend.kind: external``: servers gawm did not start, measured as they are.

Unit tests of the settings, the request forms chosen from a model's metadata, the headers and the readiness check;
then real peers (KServe 0.21.0 and MLServer 1.7.1 serving ResNet50 with random weights and one torch thread, on
127.0.0.1, from ``k8s/testenv/install-peers.sh``, which ``make test-prereqs`` runs): ``gawm run`` of an external params
file against each completes with a run directory, a summary and figures, and a peer that answers what gawm does not
expect (an extra output, other datatypes, HTTP 400 for some requests) is recorded, not a crash.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gawm_lib.backends import BackendError
from gawm_lib.backends.external import ExternalBackend, choose_input, encode
from gawm_lib.config import ConfigError, preflight, validate_params
from gawm_lib.loadgen.http1 import build_request
from gawm_lib.loadgen.spec import expand_headers
from gawm_lib.workloads import build_workload, samples

ROOT = Path(__file__).resolve().parent.parent


def external(endpoints, **rest):
    return {"workloads": ["resnet50"], "backend": {"kind": "external", "endpoints": endpoints}, **rest}


# -- settings ----------------------------------------------------------------------------------------------------------
def test_settings_external_endpoints_and_their_mistakes():
    cfg = validate_params(external([{"url": "http://127.0.0.1:8080/prefix", "headers": {"Host": "m.example.com"}}]))
    assert cfg.backend.endpoints[0].url == "http://127.0.0.1:8080/prefix"
    cases = {
        "needs endpoints": {"backend": {"kind": "external"}},
        "are for backend.kind external": {"backend": {"endpoints": [{"url": "http://127.0.0.1:1"}]}},
        "http:// or https:// URL": external([{"url": "127.0.0.1:8080"}]),
        "${ENV_VAR}": external([{"url": "http://h:1", "headers": {"Authorization": "Bearer abc"}}]),
        "replicas are the endpoints": {
            "backend": {"kind": "external", "replicas": 2, "endpoints": [{"url": "http://h:1"}]}
        },
        "no endpoint for workload": {
            "workloads": ["resnet50", "distilbert"],
            "backend": {"kind": "external", "endpoints": [{"url": "http://h:1", "workload": "resnet50"}]},
        },
        "several workloads": {
            "workloads": ["resnet50", "distilbert"],
            "backend": {"kind": "external", "endpoints": [{"url": "http://h:1"}]},
        },
    }
    for expected, tree in cases.items():
        with pytest.raises(ConfigError) as caught:
            validate_params(tree)
        assert expected in str(caught.value), (expected, str(caught.value))


def test_a_refused_secret_header_is_not_echoed_in_the_error():
    for headers in ({"Authorization": "Bearer s3cret-token"}, {"X-Api-Key": "s3cret-token", "Bad Name": "x"}):
        with pytest.raises(ConfigError) as caught:
            validate_params(external([{"url": "http://127.0.0.1:1", "headers": headers}]))
        assert "headers" in str(caught.value)
        assert "s3cret" not in str(caught.value)


def test_preflight_names_a_missing_token_variable(monkeypatch):
    monkeypatch.delenv("GAWM_TEST_NO_SUCH_TOKEN", raising=False)
    cfg = validate_params(
        external(
            [{"url": "http://h:1", "headers": {"Authorization": "Bearer ${GAWM_TEST_NO_SUCH_TOKEN}"}}],
            prometheus={"enabled": False},
        )
    )
    with pytest.raises(ConfigError, match=r"backend.endpoints.0.headers.Authorization: .*GAWM_TEST_NO_SUCH_TOKEN"):
        preflight(cfg)
    monkeypatch.setenv("GAWM_TEST_NO_SUCH_TOKEN", "x")
    preflight(cfg)


def test_headers_are_expanded_and_sent():
    assert expand_headers({"Authorization": "Bearer ${T}", "Host": "h"}, {"T": "s3"}) == {
        "Authorization": "Bearer s3",
        "Host": "h",
    }
    with pytest.raises(ValueError, match="T2 is not set"):
        expand_headers({"X": "${T2}"}, {})
    raw = build_request("http://10.0.0.1:80", "/v2/models/m/infer", b"{}", headers={"host": "m.example", "X-A": "1"})
    head = raw.split(b"\r\n\r\n")[0].decode()
    assert "Host: m.example" in head and "10.0.0.1" not in head and "X-A: 1" in head


# -- request forms from metadata ---------------------------------------------------------------------------------------
def test_inputs_chosen_from_metadata_and_encoded():
    workload = build_workload(validate_params({}).workloads[0])
    item = workload.sample_items(1, 2)[0]
    both = {
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixel_values", "datatype": "UINT8", "shape": [-1, 3, 224, 224]},
        ]
    }
    spec = choose_input("resnet50", both, None, "e")
    body = encode(workload, item, spec)
    assert body["inputs"][0]["datatype"] == "BYTES" and base64.b64decode(body["inputs"][0]["data"][0]) == item
    spec = choose_input("resnet50", both, "pixel_values", "e")
    body = encode(workload, item, spec)["inputs"][0]
    assert body["shape"] == [1, 3, 224, 224] and len(body["data"]) == 3 * 224 * 224 and max(body["data"]) <= 255
    nhwc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 224, 224, 3]}]}
    body = encode(workload, item, choose_input("resnet50", nhwc, None, "e"))["inputs"][0]
    values = np.array(body["data"])
    assert body["shape"] == [1, 224, 224, 3] and values.min() < 0 < values.max() and np.abs(values).max() < 3
    assert choose_input("resnet50", {"inputs": []}, None, "e")["name"] == "image"  # no metadata: gawm's own form
    wav = samples._wav((np.sin(np.arange(8000) / 5) * 10_000).astype("<i2"))
    pcm = {"inputs": [{"name": "pcm", "datatype": "FP32", "shape": [-1, 16000]}]}
    body = encode(
        build_workload(validate_params({"workloads": ["whisper"]}).workloads[0]),
        wav,
        choose_input("whisper", pcm, None, "e"),
    )
    values = np.array(body["inputs"][0]["data"])
    assert body["inputs"][0]["shape"] == [1, 16000] and values[8000:].max() == 0 and 0.2 < values.max() <= 1
    with pytest.raises(BackendError, match="gawm cannot make any input"):
        choose_input("distilbert", {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, 128]}]}, None, "e")
    with pytest.raises(BackendError, match=r"expected one of \['image', 'pixel_values'\]"):
        choose_input("resnet50", both, "pixels", "e")


# -- readiness ---------------------------------------------------------------------------------------------------------
class _NotReady(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(503)
        self.end_headers()
        self.wfile.write(b'{"ready": false}')

    def log_message(self, *args):
        pass


def test_a_server_that_is_not_ready_is_named(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotReady)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        cfg = validate_params(external([{"url": url}]))
        with pytest.raises(BackendError, match=rf"{url}/v2/health/ready is not ready: HTTP 503"):
            ExternalBackend(cfg.workloads[0], cfg.backend, tmp_path).start()
    finally:
        server.shutdown()
        server.server_close()
    cfg = validate_params(external([{"url": url}]))  # now closed
    with pytest.raises(BackendError, match=rf"{url}/v2/health/ready is not reachable"):
        ExternalBackend(cfg.workloads[0], cfg.backend, tmp_path).start()


# -- real peers --------------------------------------------------------------------------------------------------------
def _peers():
    from gawm_lib.bench import peers

    try:
        peers.peer_python("kserve"), peers.peer_python("mlserver")
    except peers.PeerNotInstalled as exc:
        pytest.fail(f"{exc} (make test-prereqs does, before pytest)")
    return peers


def _gawm_run(params: dict | Path, tmp_path: Path, env_extra: dict | None = None, overrides=()) -> Path:
    if isinstance(params, dict):
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(params))
    else:
        path = params
    env = {
        **os.environ,
        "GAWM_RAW_DIR": str(tmp_path / "raw"),
        "GAWM_FIGURES_DIR": str(tmp_path / "figures"),
        **(env_extra or {}),
    }
    out = subprocess.run(
        [sys.executable, "-m", "gawm_lib.cli", "run", str(path), *(a for o in overrides for a in ("-p", o))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = (tmp_path / "raw").iterdir()
    return run_dir


LOAD = {"levels": [1, 2], "step_duration_s": 2, "warmup_s": 0.5}


def _check_run(run_dir: Path, tmp_path: Path, replica: str) -> dict:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "COMPLETED"
    table = pd.read_csv(run_dir / "summary.csv")
    assert len(table) == 2 and (table["ok"] > 0).all() and (table["errors"] == 0).all()
    assert table["p50_ms"].notna().all()
    requests = pd.read_parquet(run_dir / "requests.parquet")
    assert set(requests["replica"]) == {replica}
    assert (requests["batch_size"] == -1).all() and (requests["server_compute_ns"] == -1).all()  # unknown, not 0
    figures = list((tmp_path / "figures").glob("*.png"))
    assert figures, "no figures"
    record = manifest["workloads"]["resnet50"]
    assert record["external"] and record["probe"][0]["status"] == 200
    assert record["server_timings"].startswith("unknown")
    return manifest


@pytest.mark.integration
@pytest.mark.slow
def test_gawm_run_against_kserve_with_the_kubernetes_example(tmp_path):
    """params/external_kserve_k8s.yaml (Host header, as through an ingress) against a local KServe, with a token from
    the environment and Prometheus scraping KServe's /metrics."""
    peers = _peers()
    token = "s3cret-token-never-written"
    with peers.start_kserve(tmp_path / "kserve.log").wait_ready() as peer:
        overrides = [
            f"backend.endpoints.0.url={peer.url}",
            f"backend.endpoints.0.metrics_url={peer.metrics_url}",
            "backend.endpoints.0.headers.Authorization=Bearer ${GAWM_TEST_PEER_TOKEN}",
            "load.levels=[1, 2]",
            "load.step_duration_s=2",
            "load.warmup_s=0.5",
            "prometheus.enabled=true",
            "prometheus.scrape_interval_s=0.5",
        ]
        run_dir = _gawm_run(
            ROOT / "params" / "external_kserve_k8s.yaml", tmp_path, {"GAWM_TEST_PEER_TOKEN": token}, overrides
        )
    manifest = _check_run(run_dir, tmp_path, "resnet50-isvc")
    record = manifest["workloads"]["resnet50"]
    assert record["input"]["name"] == "image" and record["endpoints"][0]["server"]["name"] == "kserve"
    assert record["endpoints"][0]["header_names"] == ["Authorization", "Host"]
    assert record["scrape"]["targets"] and not record["scrape"]["notes"]
    # Prometheus scraped KServe's /metrics (target up): gawm_* queries are empty here and named; the process's CPU and
    # memory (prometheus_client's process_* series, which KServe exports too) are saved, labelled by the scrape target
    assert "error" not in manifest["metrics"] and "throughput" in manifest["metrics"]["empty_queries"]
    metrics = pd.read_parquet(run_dir / "metrics" / "metrics.parquet")
    for name, unit in (("process_cpu", "cores"), ("process_resident_memory", "bytes")):
        rows = metrics[(metrics["query"] == name) & (metrics["step"] >= 0)].dropna(subset=["value"])
        assert len(rows) and set(rows["unit"]) == {unit} and rows["value"].max() > 0, name
        assert {(lab["workload"], lab["replica"]) for lab in map(json.loads, rows["labels"])} == {("resnet50", "0")}
    for path in [*run_dir.rglob("*"), *(tmp_path / "figures").rglob("*")]:
        if path.is_file():
            assert token.encode() not in path.read_bytes(), f"the token was written to {path}"


@pytest.mark.integration
def test_gawm_run_against_mlserver_with_adaptive_batching_and_tensors(tmp_path):
    peers = _peers()
    peer = peers.start_mlserver(
        tmp_path / "mlserver", tmp_path / "mlserver.log", max_batch_size=4, max_batch_time_s=0.005
    )
    with peer.wait_ready():
        params = {
            "name": "external-mlserver",
            "workloads": ["resnet50"],
            "backend": {"kind": "external", "endpoints": [{"url": peer.url, "input": "pixel_values"}]},
            "load": {**LOAD, "payload_count": 4},
            "prometheus": {"enabled": False},
        }
        run_dir = _gawm_run(params, tmp_path)
    manifest = _check_run(run_dir, tmp_path, peer.url.split("//")[1])
    record = manifest["workloads"]["resnet50"]
    assert record["input"] == {
        "name": "pixel_values",
        "datatype": "UINT8",
        "shape": [-1, 3, 224, 224],
        "layout": "NCHW",
        "from_metadata": True,
    }
    assert record["endpoints"][0]["server"] == {"name": "mlserver", "version": "1.7.1", "extensions": []}


@pytest.mark.integration
def test_a_peer_answering_what_gawm_does_not_expect_is_recorded(tmp_path, monkeypatch):
    """Extra outputs, FP64 scores and HTTP 400 for half the requests: the run completes and says so."""
    from gawm_lib.experiment import run_experiment

    peers = _peers()
    monkeypatch.setenv("GAWM_RAW_DIR", str(tmp_path / "raw"))
    with peers.start_kserve(tmp_path / "kserve.log", quirk=True).wait_ready() as peer:
        cfg = validate_params(
            {
                **external([{"url": peer.url}]),
                "load": {"levels": [2], "step_duration_s": 2, "warmup_s": 0.5, "payload_count": 8},
                "prometheus": {"enabled": False},
            }
        )
        run, table = run_experiment(cfg, progress=False)
    record = run.manifest["workloads"]["resnet50"]
    outputs = {o["name"]: o["datatype"] for o in record["probe"][0]["outputs"]}
    assert outputs == {"label": "INT32", "score": "FP64", "logits_sum": "FP64"}
    assert int(table["errors_http_4xx"].sum()) > 0 and int(table["ok"].sum()) > 0
    requests = pd.read_parquet(run.requests_path)
    assert set(requests.loc[requests["error"] != "", "status"]) == {400}


# -- the peers' set-up script ----------------------------------------------------------------------------------------
INSTALL = ROOT / "k8s" / "testenv" / "install-peers.sh"


def test_install_peers_script_dry_run_changes_nothing_and_make_runs_it_before_pytest(tmp_path):
    import shutil

    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        checked = subprocess.run([shellcheck, "-S", "style", str(INSTALL)], capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout
    cache = tmp_path / "cache"
    result = subprocess.run(
        ["bash", str(INSTALL), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GAWM_CACHE_DIR": str(cache)},
    )
    assert result.returncode == 0, result.stderr
    assert not cache.exists()
    assert "kserve==0.21.0" in result.stderr and "mlserver==1.7.1" in result.stderr and "torch==" in result.stderr
    plan = subprocess.run(
        ["make", "-n", "test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MAKEFLAGS": ""},
    ).stdout
    assert -1 < plan.find("install-peers.sh") < plan.find("-m pytest"), plan
