"""Schema-driven fuzzing of a real server process (started by the local backend on 127.0.0.1): at least 10,000
requests, most of them broken in one way the OIP v2 schema allows us to name (malformed JSON, wrong types, datatypes and
shapes, broken binary tensor data, over-long text, oversized bodies, unknown models and routes), some valid.

Every answer must be a 200 with well-formed outputs or a 4xx whose JSON names the field and what was expected; never a
5xx, and the server must stay ready throughout. The generator is seeded, so a failure names a case that reproduces.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time

import pytest

from gawm_lib.backends import open_backend
from gawm_lib.config import BackendConfig, WorkloadConfig
from gawm_lib.workloads import samples
from gawm_lib.workloads.oip import DATATYPES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REQUESTS = 10_000
THREADS = 4
TIME_LIMIT_S = 150  # the loop stops by itself; the test then fails if it fell short of REQUESTS
BODY_LIMIT = 32 * 1024
TEXT_LIMIT = 2000
MODEL = "distilbert"
SENTENCES = samples.sentences(50, seed=11)


def junk(rng: random.Random, depth: int = 0):
    """A random JSON value."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 6:
        return [junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 7:
        keys = ["name", "shape", "datatype", "data", "parameters", "inputs", "q"]
        return {rng.choice(keys): junk(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if kind == 8:
        return [rng.choice(SENTENCES)]
    return [None, True, rng.randint(-(2**63), 2**64), rng.uniform(-1e30, 1e30), "", "x" * rng.randint(1, 40)][kind]


def valid(rng: random.Random) -> dict:
    texts = [rng.choice(SENTENCES) for _ in range(rng.randint(1, 3))]
    return {
        "id": f"r{rng.randrange(1000)}",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
    }


def binary(doc: dict, blobs: list[bytes], header_delta: int = 0) -> tuple[bytes, dict]:
    header = json.dumps(doc).encode()
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header) + header_delta)}


def case(rng: random.Random) -> tuple[str, str, bytes, dict, str]:
    """One request: (method, path, body, headers, what is expected: 'ok', '4xx' or 'any')."""
    path = f"/v2/models/{MODEL}/infer"
    doc = valid(rng)
    tensor = doc["inputs"][0]
    # Valid requests run the model (tens of ms on one core): a few of them, most of the budget on broken ones.
    kind = rng.choices(range(20), weights=[1, 1, *[3] * 17, 1])[0]
    if kind == 0:  # valid, JSON
        return "POST", path, json.dumps(doc).encode(), {}, "ok"
    if kind == 1:  # valid, binary tensor data extension
        items = [t.encode() for t in tensor.pop("data")]
        tensor["parameters"] = {"binary_data_size": sum(4 + len(i) for i in items)}
        body, headers = binary(doc, [len(i).to_bytes(4, "little") + i for i in items])
        return "POST", path, body, headers, "ok"
    if kind == 2:  # random bytes
        return "POST", path, rng.randbytes(rng.randint(0, 300)), {}, "4xx"
    if kind == 3:  # truncated JSON
        text = json.dumps(doc).encode()
        return "POST", path, text[: rng.randrange(len(text))], {}, "4xx"
    if kind == 4:  # one field of the tensor replaced by a random value
        tensor[rng.choice(["name", "datatype", "shape", "data", "parameters"])] = junk(rng)
        return "POST", path, json.dumps(doc).encode(), {}, "any"
    if kind == 5:  # one top-level field replaced
        doc[rng.choice(["inputs", "outputs", "id", "parameters"])] = junk(rng)
        return "POST", path, json.dumps(doc).encode(), {}, "any"
    if kind == 6:  # wrong datatype with plausible data
        tensor["datatype"] = rng.choice([d for d in DATATYPES if d != "BYTES"] + ["STRING", "fp32"])
        tensor["data"] = [rng.randint(-5, 5) for _ in tensor["data"]]
        return "POST", path, json.dumps(doc).encode(), {}, "4xx"
    if kind == 7:  # shape that does not match
        tensor["shape"] = rng.choice([[], [0], [-1], [len(tensor["data"]) + 1], [1, 2, 3], [2**40], [1.5], ["1"]])
        return "POST", path, json.dumps(doc).encode(), {}, "4xx"
    if kind == 8:  # over-long text
        tensor["data"] = ["word " * (TEXT_LIMIT // 5 + rng.randint(1, 500))]
        tensor["shape"] = [1]
        return "POST", path, json.dumps(doc).encode(), {}, "4xx"
    if kind == 9:  # body over the size limit
        tensor["data"] = ["y" * (BODY_LIMIT + rng.randint(1, 5000))]
        tensor["shape"] = [1]
        return "POST", path, json.dumps(doc).encode(), {}, "4xx"
    if kind == 10:  # binary sizes that lie
        items = [t.encode() for t in tensor.pop("data")]
        blob = b"".join(len(i).to_bytes(4, "little") + i for i in items)
        tensor["parameters"] = {"binary_data_size": len(blob) + rng.choice([-3, -1, 1, 7, 10**9])}
        body, headers = binary(doc, [blob])
        return "POST", path, body, headers, "4xx"
    if kind == 11:  # broken length prefixes or invalid UTF-8 inside binary BYTES
        items = [t.encode() for t in tensor.pop("data")]
        blob = bytearray(b"".join(len(i).to_bytes(4, "little") + i for i in items))
        if rng.random() < 0.5:
            blob[0:4] = rng.randrange(2**32).to_bytes(4, "little")
        else:
            blob[4:4] = b"\xff\xfe\xfd"
            blob[0:4] = (int.from_bytes(blob[0:4], "little") + 3).to_bytes(4, "little")
        tensor["parameters"] = {"binary_data_size": len(blob)}
        body, headers = binary(doc, [bytes(blob)])
        return "POST", path, body, headers, "4xx"
    if kind == 12:  # a header length that does not fit the body
        body, headers = binary(doc, [], header_delta=rng.choice([-5, 1, 1000]))
        headers["Inference-Header-Content-Length"] = rng.choice(
            [headers["Inference-Header-Content-Length"], "abc", "-1", "1e3", "", "\u00b9", " 7 "]
        )
        return "POST", path, body, headers, "4xx"
    if kind == 13:  # unknown model, version, route or method
        method, route = rng.choice(
            [
                ("POST", "/v2/models/resnet50/infer"),
                ("POST", f"/v2/models/{MODEL}/versions/2/infer"),
                ("GET", path),
                ("POST", "/v2/models//infer"),
                ("PUT", f"/v2/models/{MODEL}"),
                ("POST", "/v3/infer"),
                ("GET", "/v2/models/%ff%fe/ready"),
            ]
        )
        return method, route, json.dumps(doc).encode(), {}, "4xx"
    if kind == 14:  # JSON that stresses the parser
        return (
            "POST",
            path,
            rng.choice(
                [
                    b"[" * 50_000 + b"]" * 50_000,
                    b'{"inputs": ' + b"9" * 6000 + b"}",
                    b'{"inputs": NaN}',
                    b'{"inputs": [{"name": "text", "data": "\\ud800"}]}',
                    b"\xef\xbb\xbf{}",
                    b"null",
                    b'"string"',
                    b"{}" * 100,
                ]
            ),
            {},
            "4xx",
        )
    if kind == 15:  # texts that are not text
        tensor["data"] = [
            rng.choice(["", "   ", "\u0000", 5, None, ["nested"], "\ud800 lone surrogate", "ok"])
            for _ in tensor["data"]
        ]
        return "POST", path, json.dumps(doc).encode(), {}, "any"
    if kind == 16:  # more items than max_batch_size
        tensor["data"] = [rng.choice(SENTENCES) for _ in range(rng.randint(9, 40))]
        tensor["shape"] = [len(tensor["data"])]
        return "POST", path, json.dumps(doc).encode(), {}, "4xx"
    if kind == 17:  # outputs asked for that do not exist, or with bad flags
        doc["outputs"] = [
            {"name": rng.choice(["label", "nope", 3]), "parameters": {"binary_data": rng.choice([1, "y"])}}
        ]
        return "POST", path, json.dumps(doc).encode(), {}, "4xx"
    if kind == 18:  # binary (an image, say) sent to a text model: not UTF-8
        items = [b"\x89PNG\r\n\x1a\n" + rng.randbytes(40) for _ in tensor.pop("data")]
        tensor["parameters"] = {"binary_data_size": sum(4 + len(i) for i in items)}
        body, headers = binary(doc, [len(i).to_bytes(4, "little") + i for i in items])
        return "POST", path, body, headers, "4xx"
    tensor["shape"] = [len(tensor["data"]), 1]  # a column, as some clients send it: valid
    return "POST", path, json.dumps(doc).encode(), {}, "ok"


def check_answer(status: int, reply: bytes, headers: dict, expect: str, where: str) -> None:
    assert status < 500, f"{where}: {status} {reply[:300]!r}"
    if status == 200:
        assert expect != "4xx", f"{where}: accepted a request that should fail: {reply[:300]!r}"
        length = int(headers.get("inference-header-content-length", len(reply)))
        outputs = {o["name"]: o for o in json.loads(reply[:length])["outputs"]}
        assert set(outputs) <= {"label", "score", "tokens"} and all(o["shape"][0] >= 1 for o in outputs.values())
        return
    assert expect != "ok", f"{where}: refused a valid request: {status} {reply[:300]!r}"
    error = json.loads(reply)
    assert 400 <= status < 500 and error["error"] and error["field"] and error["expected"], f"{where}: {error}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = WorkloadConfig(
        name=MODEL,
        warmup_batches=1,
        max_batch_size=8,
        max_queue_delay_ms=1,
        max_queue_size=10_000,
        max_body_bytes=BODY_LIMIT,
        max_text_chars=TEXT_LIMIT,
        max_seq_len=16,
        decode_workers=2,
    )
    with open_backend(cfg, BackendConfig(replicas=1), tmp_path_factory.mktemp("fuzz-logs")) as backend:
        yield backend.replicas[0]


def test_ten_thousand_hostile_requests_never_break_the_server(server):
    counts = {"sent": 0, "ok": 0, "4xx": 0}
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + TIME_LIMIT_S

    def worker(index: int) -> None:
        rng = random.Random(1000 + index)
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
        for n in range(REQUESTS // THREADS):
            if time.monotonic() > deadline or failures:
                break
            method, path, body, headers, expect = case(rng)
            where = f"worker {index} case {n}: {method} {path}"
            try:
                conn.request(method, path, body=body, headers=headers)
                answer = conn.getresponse()
                reply = answer.read()
                check_answer(answer.status, reply, {k.lower(): v for k, v in answer.getheaders()}, expect, where)
                if answer.getheader("connection") == "close":
                    conn.close()
            except AssertionError as exc:
                failures.append(str(exc))
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                # Refusing an oversized body before reading it may close the connection under the client.
                if len(body) <= BODY_LIMIT:
                    failures.append(f"{where}: {type(exc).__name__}: {exc}")
                conn.close()
                status = 0
            else:
                status = answer.status
            with lock:
                counts["sent"] += 1
                counts["ok" if status == 200 else "4xx"] += 1
            if n % 250 == 0:
                probe = http.client.HTTPConnection(server.host, server.port, timeout=30)
                probe.request("GET", "/v2/health/ready")
                if probe.getresponse().status != 200:
                    failures.append(f"{where}: the server stopped being ready")
                probe.close()
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIME_LIMIT_S + 60)
    assert not failures, "\n".join(failures[:5])
    assert counts["sent"] >= REQUESTS, f"only {counts} within {TIME_LIMIT_S} s"
    assert counts["ok"] > 200 and counts["4xx"] > 8000, counts
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    assert 'code="5' not in metrics and f'gawm_model_ready{{model="{MODEL}",replica="0"}} 1.0' in metrics
