"""The model server's OIP v2 routes, errors, dynamic batching and metrics, on a real (random-weight) DistilBERT."""

from __future__ import annotations

import concurrent.futures
import time

import pytest
from fastapi.testclient import TestClient

from gawm_lib.config import WorkloadConfig
from gawm_lib.server import create_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client():
    app = create_app(WorkloadConfig(name="distilbert", max_batch_size=8, max_queue_delay_ms=300, warmup_batches=1))
    with TestClient(app) as c:
        assert c.get("/v2/health/live").status_code == 200
        deadline = time.monotonic() + 120
        while c.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.1)
        yield c


def body(*texts, name="text"):
    return {"inputs": [{"name": name, "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}]}


def test_metadata_and_unknown_model(client):
    meta = client.get("/v2/models/distilbert").json()
    assert meta["name"] == "distilbert"
    assert meta["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1], "parameters": {"encoding": "utf-8"}}
    assert meta["parameters"]["weights"]["weights"] == "random"
    assert client.get("/v2/models/distilbert/ready").json() == {"name": "distilbert", "ready": True}
    missing = client.get("/v2/models/resnet50")
    assert missing.status_code == 404 and "this server serves 'distilbert'" in missing.json()["error"]


def test_infer_answers_each_item_with_real_token_counts(client):
    answer = client.post("/v2/models/distilbert/infer", json={**body("hello world", "a much longer sentence here"),
                                                              "id": "r1"})
    assert answer.status_code == 200
    data = answer.json()
    assert data["id"] == "r1" and data["model_name"] == "distilbert"
    outputs = {o["name"]: o for o in data["outputs"]}
    assert outputs["label"]["shape"] == [2] and set(outputs["label"]["data"]) <= {"POSITIVE", "NEGATIVE"}
    assert outputs["tokens"]["data"] == [4, 7]  # [CLS] hello world [SEP]; [CLS] a much longer sentence here [SEP]
    assert all(0.5 <= s <= 1 for s in outputs["score"]["data"])
    assert data["parameters"]["batch_size"] >= 2 and data["parameters"]["compute_ns"] > 0


@pytest.mark.parametrize("payload, status, message", [
    (b"{not json", 400, "request body is not JSON"),
    (body("x", name="txt"), 400, "expected input 'text', got 'txt'"),
    ({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}, 400, "does not match 1 items"),
    ({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 400, "expected datatype BYTES"),
    ({"inputs": []}, 400, "exactly one tensor"),
    (body("   "), 400, "non-empty string"),
])
def test_bad_requests_get_clear_errors(client, payload, status, message):
    if isinstance(payload, bytes):
        answer = client.post("/v2/models/distilbert/infer", content=payload)
    else:
        answer = client.post("/v2/models/distilbert/infer", json=payload)
    assert answer.status_code == status
    assert message in answer.json()["error"]


def test_concurrent_requests_are_batched_and_counted_in_metrics(client):
    before = client.get("/metrics").text

    def one(i):
        return client.post("/v2/models/distilbert/infer", json=body(f"sentence number {i}")).json()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(one, range(6)))
    sizes = [a["parameters"]["batch_size"] for a in answers]
    assert max(sizes) > 1, f"no batching happened: {sizes}"
    assert all(a["parameters"]["queue_ns"] >= 0 for a in answers)
    after = client.get("/metrics").text

    def count(text, series):
        line = next((ln for ln in text.splitlines() if ln.startswith(series + " ")), None)
        return float(line.split()[-1]) if line else 0.0

    ok = 'gawm_requests_total{model="distilbert",status="ok"}'
    assert count(after, ok) - count(before, ok) == 6
    assert count(after, 'gawm_items_total{model="distilbert"}') - count(before, 'gawm_items_total{model="distilbert"}') == 6
    assert 'gawm_batch_size_bucket{le="8.0",model="distilbert"}' in after
    assert 'gawm_inflight_requests{model="distilbert"} 0.0' in after
