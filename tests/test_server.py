"""The model server's OIP v2 routes, errors, limits, backpressure, dynamic batching and metrics, on real (random-weight)
models in-process; then a real server process called by a stock OIP v2 client (tritonclient)."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gawm_lib.config import WorkloadConfig
from gawm_lib.server import create_app
from gawm_lib.workloads import samples
from gawm_lib.workloads.oip import encode_request

pytestmark = pytest.mark.integration


def started(app):
    client = TestClient(app)
    client.__enter__()
    assert client.get("/v2/health/live").status_code == 200
    deadline = time.monotonic() + 120
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "server not ready"
        time.sleep(0.05)
    return client


@pytest.fixture(scope="module")
def client():
    cfg = WorkloadConfig(
        name="distilbert",
        max_batch_size=8,
        max_queue_delay_ms=300,
        warmup_batches=1,
        max_text_chars=1000,
        max_body_bytes=64 * 1024,
    )
    c = started(create_app(cfg, replica="4"))
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def resnet():
    c = started(create_app(WorkloadConfig(name="resnet50", max_batch_size=4, max_queue_delay_ms=1, top_k=2)))
    yield c
    c.__exit__(None, None, None)


def body(*texts, name="text"):
    return {"inputs": [{"name": name, "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}]}


def test_metadata_health_and_unknown_names(client):
    meta = client.get("/v2/models/distilbert").json()
    assert meta["name"] == "distilbert" and meta["inputs"][0]["name"] == "text"
    assert meta["inputs"][0]["datatype"] == "BYTES" and meta["inputs"][0]["shape"] == [-1]
    assert [o["name"] for o in meta["outputs"]] == ["label", "score", "tokens"]
    assert meta["parameters"]["weights"]["weights"] == "random" and meta["parameters"]["load_s"] > 0
    assert client.get("/v2/models/distilbert/versions/1").json()["name"] == "distilbert"
    assert client.get("/v2/models/distilbert/ready").json() == {"name": "distilbert", "ready": True}
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]
    missing = client.get("/v2/models/resnet50")
    assert missing.status_code == 404 and "this server serves 'distilbert'" in missing.json()["error"]
    assert missing.json()["field"] == "model_name"
    assert client.post("/v2/models/distilbert/versions/7/infer", json=body("x")).json()["field"] == "model_version"
    route = client.get("/v2/nothing/here")
    assert route.status_code == 404 and route.json()["field"] == "path"
    assert client.get("/v2/models/distilbert/infer").status_code == 405


def test_infer_answers_each_item_with_real_token_counts_and_timing(client):
    answer = client.post(
        "/v2/models/distilbert/infer", json={**body("hello world", "a much longer sentence here"), "id": "r1"}
    )
    assert answer.status_code == 200
    data = answer.json()
    assert data["id"] == "r1" and data["model_name"] == "distilbert"
    outputs = {o["name"]: o for o in data["outputs"]}
    assert outputs["label"]["shape"] == [2] and set(outputs["label"]["data"]) <= {"POSITIVE", "NEGATIVE"}
    assert outputs["tokens"]["data"] == [4, 7]  # [CLS] hello world [SEP]; [CLS] a much longer sentence here [SEP]
    assert all(0.5 <= s <= 1 for s in outputs["score"]["data"])
    params = data["parameters"]
    assert params["batch_size"] >= 2 and params["tokens"] == 11
    assert params["compute_ns"] > 0 and params["queue_ns"] >= 0 and params["decode_ns"] > 0 and params["prepare_ns"] > 0


def test_binary_tensor_extension_round_trip(client):
    content, headers = encode_request(
        [("text", "BYTES", [2], ["caf\u00e9 au lait", b"raw bytes"])],
        binary=True,
        outputs=["tokens", "label"],
        binary_outputs=True,
    )
    answer = client.post("/v2/models/distilbert/infer", content=content, headers=headers)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/octet-stream"
    length = int(answer.headers["inference-header-content-length"])
    doc = json.loads(answer.content[:length])
    assert [o["name"] for o in doc["outputs"]] == ["tokens", "label"]  # the outputs asked for, in that order
    tokens_size = doc["outputs"][0]["parameters"]["binary_data_size"]
    tail = answer.content[length:]
    assert np.frombuffer(tail[:tokens_size], "<i4").tolist() == [
        6,
        4,
    ]  # [CLS] cafe au lait [SEP]; [CLS] raw bytes [SEP]
    labels, offset = [], tokens_size
    while offset < len(tail):
        size = int.from_bytes(tail[offset : offset + 4], "little")
        labels.append(tail[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    assert len(labels) == 2 and set(labels) <= {"POSITIVE", "NEGATIVE"}


@pytest.mark.parametrize(
    "payload, status, field, message",
    [
        (b"{not json", 400, "body", "expected a JSON object"),
        (body("x", name="txt"), 400, "inputs[0].name", "expected one of ['text'], got 'txt'"),
        (
            {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]},
            400,
            "inputs[0].data",
            "expected 3 elements",
        ),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            400,
            "inputs[0].datatype",
            "expected BYTES for 'text'",
        ),
        ({"inputs": []}, 400, "inputs", "non-empty list"),
        (body("   "), 400, "inputs[0].data[0]", "non-empty string"),
        (body("long " * 300), 400, "inputs[0].data[0]", "at most 1000 characters (max_text_chars)"),
        (body(*["x"] * 9), 400, "inputs[0].shape[0]", "1 to 8 items"),
        (body("x" * 70_000), 413, "Content-Length", "at most 65536 bytes (max_body_bytes)"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_field(client, payload, status, field, message):
    if isinstance(payload, bytes):
        answer = client.post("/v2/models/distilbert/infer", content=payload)
    else:
        answer = client.post("/v2/models/distilbert/infer", json=payload)
    assert answer.status_code == status
    assert answer.json()["field"] == field and message in answer.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200


def test_concurrent_requests_are_batched_and_counted_in_metrics(client):
    before = client.get("/metrics").text

    def one(i):
        return client.post("/v2/models/distilbert/infer", json=body(f"sentence number {i}")).json()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(one, range(6)))
    sizes = [a["parameters"]["batch_size"] for a in answers]
    assert max(sizes) > 1, f"no batching happened: {sizes}"
    after = client.get("/metrics").text

    def count(text, series):
        line = next((ln for ln in text.splitlines() if ln.startswith(series + " ")), None)
        return float(line.split()[-1]) if line else 0.0

    labels = 'model="distilbert",replica="4"'
    ok = f'gawm_requests_total{{{labels},status="ok"}}'
    assert count(after, ok) - count(before, ok) == 6
    assert count(after, f"gawm_items_total{{{labels}}}") - count(before, f"gawm_items_total{{{labels}}}") == 6
    assert f'gawm_batch_size_bucket{{le="8.0",{labels}}}' in after
    assert f"gawm_inflight_requests{{{labels}}} 0.0" in after and f"gawm_queue_depth{{{labels}}} 0.0" in after
    for name in (
        "gawm_request_duration_seconds_bucket",
        "gawm_queue_duration_seconds_bucket",
        "gawm_compute_duration_seconds_bucket",
        "gawm_decode_duration_seconds_bucket",
        "gawm_tokens_total",
        "gawm_responses_total",
        "gawm_model_load_seconds",
        "gawm_model_ready",
        "gawm_queue_limit",
        "gawm_server_info",
    ):
        assert f"\n{name}{{" in after, name
    assert 'gawm_request_duration_seconds_bucket{le="0.0015",' in after  # buckets resolve 1 ms ...
    assert 'gawm_request_duration_seconds_bucket{le="60.0",' in after  # ... to 60 s


def test_a_full_queue_answers_503_a_failed_batch_500_and_the_server_recovers():
    app = create_app(
        WorkloadConfig(name="distilbert", max_batch_size=1, max_queue_delay_ms=0, max_queue_size=1, warmup_batches=0)
    )
    c = started(app)
    try:
        workload = app.state.workload
        fast = workload.forward
        workload.forward = lambda batch, count: (time.sleep(0.4), fast(batch, count))[1]  # a slow model
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda i: c.post("/v2/models/distilbert/infer", json=body(f"text {i}")), range(5)))
        codes = sorted(a.status_code for a in answers)
        assert codes.count(503) >= 2 and codes.count(200) >= 1, codes  # one running and one waiting at most
        full = next(a for a in answers if a.status_code == 503)
        assert full.json()["field"] == "queue" and "max_queue_size" in full.json()["error"]
        assert full.headers["retry-after"] == "1"
        workload.forward = fast
        assert c.post("/v2/models/distilbert/infer", json=body("again")).status_code == 200

        def broken(batch, count):
            raise RuntimeError("CUDA out of memory")

        workload.forward = broken  # a batch that fails fails its requests with a JSON 500, not the server
        failed = c.post("/v2/models/distilbert/infer", json=body("boom"))
        assert failed.status_code == 500 and "RuntimeError: CUDA out of memory" in failed.json()["error"]
        workload.forward = fast
        assert c.post("/v2/models/distilbert/infer", json=body("again")).status_code == 200
        assert 'gawm_responses_total{code="503",model="distilbert",replica="0"}' in c.get("/metrics").text
    finally:
        c.__exit__(None, None, None)


def test_resnet_takes_jpeg_and_preprocessed_tensors(resnet):
    photos = samples.photos(2, seed=5)
    jpeg = resnet.post(
        "/v2/models/resnet50/infer",
        json={
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [2, 1],
                    "data": [base64.b64encode(p).decode() for p in photos],
                }
            ]
        },
    )
    assert jpeg.status_code == 200, jpeg.text
    pixels = resnet.app.state.workload.sample_pixels(2, seed=5)
    content, headers = encode_request([("pixel_values", "UINT8", [2, 3, 224, 224], pixels)], binary=True)
    tensor = resnet.post("/v2/models/resnet50/infer", content=content, headers=headers)
    assert tensor.status_code == 200, tensor.text
    a, b = ({o["name"]: o for o in r.json()["outputs"]} for r in (jpeg, tensor))
    assert a["top_k_indices"]["shape"] == [2, 2] and a["top_k_indices"]["data"] == b["top_k_indices"]["data"]
    bad, headers = encode_request([("pixel_values", "UINT8", [1, 3, 224, 200], np.zeros((1, 3, 224, 200), np.uint8))])
    answer = resnet.post("/v2/models/resnet50/infer", content=bad, headers=headers)
    assert answer.status_code == 400 and answer.json()["field"] == "inputs[0].shape"
    answer = resnet.post(
        "/v2/models/resnet50/infer",
        json={
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(b"GIF89a nonsense").decode()],
                }
            ]
        },
    )
    assert answer.status_code == 400 and answer.json()["field"] == "inputs[0].data[0]"


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    """A real server process started the way the local backend does, with a replica label."""
    port_file = tmp_path_factory.mktemp("server") / "port"
    settings = {
        "max_batch_size": 4,
        "max_queue_delay_ms": 1,
        "warmup_batches": 1,
        "max_body_bytes": 4 << 20,
        "gil_switch_interval_ms": 0.25,
        "allow_client_shm": True,
        "gc_thresholds": [5000, 10, 20],
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gawm_lib.server",
            "--workload",
            "resnet50",
            "--settings",
            json.dumps(settings),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--replica",
            "3",
            "--exit-with-parent",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            if port_file.is_file():
                url = f"127.0.0.1:{port_file.read_text()}"
                try:
                    if httpx.get(f"http://{url}/v2/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_stock_oip_client_can_call_it(server_process):
    http = pytest.importorskip("tritonclient.http")
    client = http.InferenceServerClient(server_process)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("resnet50")
    assert client.get_model_metadata("resnet50")["inputs"][1]["name"] == "pixel_values"
    photo = samples.photos(1, seed=2)[0]
    image = http.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([photo], dtype=np.object_))  # binary tensor data by default
    result = client.infer(
        "resnet50",
        [image],
        outputs=[http.InferRequestedOutput("top_k_indices"), http.InferRequestedOutput("label", binary_data=False)],
    )
    indices = result.as_numpy("top_k_indices")
    assert indices.shape == (1, 5) and indices.dtype == np.int32
    label = result.as_numpy("label")[0]  # a JSON output, as asked
    assert label == result.get_response()["outputs"][1]["data"][0] and isinstance(label, str)
    pixels = http.InferInput("pixel_values", [2, 3, 224, 224], "UINT8")
    from gawm_lib.config import WorkloadConfig as W
    from gawm_lib.workloads import build_workload

    array = build_workload(W(name="resnet50")).sample_pixels(1, seed=2)
    pixels.set_data_from_numpy(np.concatenate([array, array]))
    tensors = client.infer("resnet50", [pixels])  # all outputs, binary
    assert (tensors.as_numpy("top_k_indices") == indices[0]).all()
    assert tensors.get_response()["parameters"]["batch_size"] >= 2
    with pytest.raises(Exception, match="inputs\\[0\\].shape"):
        wrong = http.InferInput("pixel_values", [1, 3, 224, 223], "UINT8")
        wrong.set_data_from_numpy(np.zeros((1, 3, 224, 223), np.uint8))
        client.infer("resnet50", [wrong])
    import httpx

    metrics = httpx.get(f"http://{server_process}/metrics", timeout=10).text
    assert 'gawm_requests_total{model="resnet50",replica="3",status="ok"} 2.0' in metrics
    meta = httpx.get(f"http://{server_process}/v2/models/resnet50", timeout=10).json()
    assert meta["parameters"]["gil_switch_interval_ms"] == 0.25  # the server process's own, as set
    assert meta["parameters"]["gc_thresholds"] == [5000, 10, 20]


def test_the_gil_switch_interval_is_short_on_a_gpu_and_pythons_own_on_a_cpu():
    from gawm_lib.server import switch_interval_ms

    assert switch_interval_ms(WorkloadConfig(name="resnet50", device="cuda")) == 0.5
    assert switch_interval_ms(WorkloadConfig(name="resnet50")) == pytest.approx(sys.getswitchinterval() * 1000)
    assert switch_interval_ms(WorkloadConfig(name="whisper", gil_switch_interval_ms=2)) == 2


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(server_process):
    host, port = server_process.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/resnet50/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 999999999\r\n\r\n"
        )
        reply = b""
        while b'"}' not in reply:  # headers, then the JSON error
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413") and '"field":"Content-Length"' in reply


def test_a_stock_client_sends_tensors_through_system_shared_memory(server_process):
    """Triton's system shared-memory extension, driven by tritonclient's own helpers: the same answers as in the
    body."""
    http = pytest.importorskip("tritonclient.http")
    shm = pytest.importorskip("tritonclient.utils.shared_memory")
    from gawm_lib.config import WorkloadConfig as W
    from gawm_lib.workloads import build_workload

    client = http.InferenceServerClient(server_process)
    assert "system_shared_memory" in client.get_server_metadata()["extensions"]
    pixels = build_workload(W(name="resnet50")).sample_pixels(2, seed=4)
    handle = shm.create_shared_memory_region("gawm_test_in", "/gawm_test_in", 2 * pixels.nbytes)
    try:
        shm.set_shared_memory_region(handle, [pixels[::-1].copy()], offset=pixels.nbytes // 2)  # rows 1, 0
        client.register_system_shared_memory("images", "/gawm_test_in", 2 * pixels.nbytes)
        status = client.get_system_shared_memory_status()
        assert [(r["name"], r["key"], r["byte_size"]) for r in status] == [
            ("images", "/gawm_test_in", 2 * pixels.nbytes)
        ]
        by_body = http.InferInput("pixel_values", [2, 3, 224, 224], "UINT8")
        by_body.set_data_from_numpy(pixels)
        by_shm = http.InferInput("pixel_values", [2, 3, 224, 224], "UINT8")
        by_shm.set_shared_memory("images", pixels.nbytes, offset=pixels.nbytes // 2)
        expected = client.infer("resnet50", [by_body]).as_numpy("top_k_indices")
        got = client.infer("resnet50", [by_shm]).as_numpy("top_k_indices")
        assert (got == expected[::-1]).all()
        with pytest.raises(Exception, match="shared_memory_byte_size"):  # past the region's end
            past = http.InferInput("pixel_values", [2, 3, 224, 224], "UINT8")
            past.set_shared_memory("images", pixels.nbytes, offset=pixels.nbytes + 1)
            client.infer("resnet50", [past])
        client.unregister_system_shared_memory("images")
        assert client.get_system_shared_memory_status() == []
        with pytest.raises(Exception, match="inputs\\[0\\].parameters.shared_memory_region"):
            client.infer("resnet50", [by_shm])  # no longer registered
        assert client.is_server_ready()
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)


def test_decoding_on_the_event_loop_answers_and_batches_as_the_threads_do(client):
    cfg = WorkloadConfig(
        name="distilbert", max_batch_size=8, max_queue_delay_ms=300, warmup_batches=0, decode_workers=0
    )
    c = started(create_app(cfg))
    try:
        texts = [f"sentence number {i} for the inline decoder" for i in range(4)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda t: c.post("/v2/models/distilbert/infer", json=body(t)).json(), texts))
        threaded = [client.post("/v2/models/distilbert/infer", json=body(t)).json() for t in texts]
        assert [a["outputs"][:3:2] for a in answers] == [a["outputs"][:3:2] for a in threaded]  # label, tokens
        assert max(a["parameters"]["batch_size"] for a in answers) > 1
        assert all(a["parameters"]["decode_ns"] > 0 for a in answers)
        bad = c.post("/v2/models/distilbert/infer", json=body("x", name="nope"))
        assert bad.status_code == 400 and bad.json()["field"].startswith("inputs[0]")
    finally:
        c.__exit__(None, None, None)


def test_garbage_collections_are_timed_and_the_loaded_model_is_frozen_out_of_them(client):
    import gc

    assert client.get("/v2/models/distilbert").json()["parameters"]["gc_frozen_objects"] > 10_000
    series = 'gawm_gc_pause_seconds_count{generation="2",model="distilbert",replica="4"}'

    def full_collections() -> float:
        line = next(ln for ln in client.get("/metrics").text.splitlines() if ln.startswith(series + " "))
        return float(line.split()[-1])

    before = full_collections()
    gc.collect()
    assert full_collections() == before + 1


def test_the_server_is_served_on_httptools_and_uvloop_not_the_pure_python_fallbacks():
    """uvicorn falls back to h11 and asyncio without a word where httptools and uvloop are missing; on the H200 that
    cost DistilBERT x4 11-17 % of its capacity (studies/h200/results/tail_goal_x4_httptools)."""
    import importlib.util

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from gawm_lib.server import uvicorn_config

    config = uvicorn_config(lambda scope, receive, send: None, WorkloadConfig(name="resnet50"))  # as served
    config.load()
    assert issubclass(config.http_protocol_class, HttpToolsProtocol)  # with bounds of gawm's (http_protocol)
    assert config.loop == "auto" and importlib.util.find_spec("uvloop") is not None  # auto takes uvloop if importable
