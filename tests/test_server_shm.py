"""System shared memory (Triton's extension) in the server and the request parser: registration, status, bad keys and
parameters, refusal where it is not allowed; a real POSIX shared-memory object, no model needed for the parser."""

from __future__ import annotations

import json
from multiprocessing import shared_memory

import numpy as np
import pytest

from gawm_lib.workloads.oip import InferenceError, parse_request
from gawm_lib.workloads.shm import SharedMemoryRegistry


@pytest.fixture()
def region():
    mem = shared_memory.SharedMemory(create=True, size=4096)
    try:
        yield mem
    finally:
        mem.close()
        mem.unlink()


def request(params: dict, datatype: str = "INT32", shape=(4,), **extra) -> bytes:
    spec = {"name": "x", "datatype": datatype, "shape": list(shape), "parameters": params, **extra}
    return json.dumps({"inputs": [spec]}).encode()


def test_inputs_are_read_from_the_registered_region_at_its_offset(region):
    np.frombuffer(region.buf, np.int32)[:16] = np.arange(16)
    registry = SharedMemoryRegistry()
    registry.register("r", {"key": "/" + region.name, "offset": 16, "byte_size": 48})
    assert registry.status() == [{"name": "r", "key": "/" + region.name, "offset": 16, "byte_size": 48}]
    body = request({"shared_memory_region": "r", "shared_memory_byte_size": 16, "shared_memory_offset": 8})
    parsed = parse_request(body, None, ("y",), registry)
    assert parsed.inputs[0].data.tolist() == [6, 7, 8, 9]  # region starts at int 4, then 8 bytes on
    np.frombuffer(region.buf, np.int32)[6] = 60  # no copy at parse time: the client's bytes as they are
    assert parse_request(body, None, ("y",), registry).inputs[0].data.tolist() == [60, 7, 8, 9]
    texts = b"".join(len(t).to_bytes(4, "little") + t for t in (b"ab", b"cde"))
    region.buf[2000 : 2000 + len(texts)] = texts
    registry.register("t", {"key": region.name, "offset": 2000, "byte_size": len(texts)})
    parsed = parse_request(
        request({"shared_memory_region": "t", "shared_memory_byte_size": len(texts)}, "BYTES", (2,)),
        None,
        ("y",),
        registry,
    )
    assert parsed.inputs[0].data == [b"ab", b"cde"]
    registry.unregister("r")
    assert [r["name"] for r in registry.status()] == ["t"]
    registry.unregister()
    assert registry.status() == []


@pytest.mark.parametrize(
    "doc, field",
    [
        ({"key": "../etc/passwd", "byte_size": 8}, "key"),
        ({"key": "/a/b", "byte_size": 8}, "key"),
        ({"key": "/gawm-no-such-object", "byte_size": 8}, "key"),
        ({"key": None, "byte_size": 8}, "key"),
        ("KEY", "body"),
    ],
)
def test_registering_a_bad_key_names_it(doc, field):
    with pytest.raises(InferenceError) as err:
        SharedMemoryRegistry().register("r", doc)
    assert err.value.field == field and err.value.status == 400


def test_registering_bad_sizes_and_names_is_refused(region):
    registry = SharedMemoryRegistry()
    for doc, field in (
        ({"key": region.name, "byte_size": 5000}, "byte_size"),
        ({"key": region.name, "byte_size": 0}, "byte_size"),
        ({"key": region.name, "byte_size": -1}, "byte_size"),
        ({"key": region.name, "byte_size": 8, "offset": "0"}, "offset"),
    ):
        with pytest.raises(InferenceError) as err:
            registry.register("r", doc)
        assert err.value.field == field, doc
    with pytest.raises(InferenceError, match="region name"):
        registry.register("a/b", {"key": region.name, "byte_size": 8})
    registry.register("r", {"key": region.name, "byte_size": 8})
    with pytest.raises(InferenceError, match="not registered yet"):
        registry.register("r", {"key": region.name, "byte_size": 8})
    with pytest.raises(InferenceError) as err:
        registry.status("nope")
    assert err.value.status == 404


@pytest.mark.parametrize(
    "params, extra, field",
    [
        (
            {"shared_memory_region": "nope", "shared_memory_byte_size": 16},
            {},
            "inputs[0].parameters.shared_memory_region",
        ),
        ({"shared_memory_region": "r"}, {}, "inputs[0].parameters.shared_memory_byte_size"),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 16, "shared_memory_offset": 60},
            {},
            "inputs[0].parameters.shared_memory_byte_size",
        ),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 12},
            {},
            "inputs[0].parameters.shared_memory_byte_size",
        ),  # 3 INT32 for a shape of 4
        ({"shared_memory_region": "r", "shared_memory_byte_size": 16}, {"data": [1, 2, 3, 4]}, "inputs[0].parameters"),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 16, "shared_memory_offset": -4},
            {},
            "inputs[0].parameters.shared_memory_offset",
        ),
    ],
)
def test_bad_shared_memory_parameters_name_the_field(region, params, extra, field):
    registry = SharedMemoryRegistry()
    registry.register("r", {"key": region.name, "byte_size": 64})
    with pytest.raises(InferenceError) as err:
        parse_request(request(params, **extra), None, ("y",), registry)
    assert err.value.field == field and err.value.status == 400


def test_without_a_registry_shared_memory_is_refused_and_outputs_never_go_there(region):
    with pytest.raises(InferenceError, match="allow_client_shm"):
        parse_request(request({"shared_memory_region": "r", "shared_memory_byte_size": 16}), None, ("y",))
    body = json.loads(request({}, data=[1, 2, 3, 4]))
    body["outputs"] = [{"name": "y", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}}]
    with pytest.raises(InferenceError) as err:
        parse_request(json.dumps(body).encode(), None, ("y",), SharedMemoryRegistry())
    assert err.value.field == "outputs[0].parameters.shared_memory_region"


@pytest.mark.integration
def test_the_server_routes_register_status_and_refuse_without_the_setting(region):
    from fastapi.testclient import TestClient

    from gawm_lib.config import WorkloadConfig
    from gawm_lib.server import create_app

    cfg = WorkloadConfig(name="distilbert", warmup_batches=1, max_batch_size=2)
    with TestClient(create_app(cfg)) as refusing:
        answer = refusing.post("/v2/systemsharedmemory/region/r/register", json={"key": region.name, "byte_size": 8})
        assert answer.status_code == 403 and answer.json()["field"] == "allow_client_shm"
        assert "system_shared_memory" not in refusing.get("/v2").json()["extensions"]
    with TestClient(create_app(cfg.model_copy(update={"allow_client_shm": True}))) as client:
        assert "system_shared_memory" in client.get("/v2").json()["extensions"]
        assert (
            client.post(
                "/v2/systemsharedmemory/region/r/register", json={"key": region.name, "byte_size": 8}
            ).status_code
            == 200
        )
        bad = client.post("/v2/systemsharedmemory/region/s/register", content=b"{nope")
        assert bad.status_code == 400 and bad.json()["field"] == "body"
        assert client.get("/v2/systemsharedmemory/region/r/status").json()[0]["byte_size"] == 8
        assert client.get("/v2/systemsharedmemory/region/s/status").status_code == 404
        assert client.post("/v2/systemsharedmemory/region/r/unregister").status_code == 200
        assert client.get("/v2/systemsharedmemory/status").json() == []
