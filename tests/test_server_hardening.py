"""Issue 31 (hardening) and issue 30 (SIGTERM): what a hostile or careless client could do to a real server process on
127.0.0.1, each made impossible. Every test waits on a condition with a deadline, never on a fixed sleep."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing import shared_memory
from pathlib import Path

import pytest

from gawm_lib.config import WorkloadConfig
from gawm_lib.workloads.oip import InferenceError, parse_request
from gawm_lib.workloads.shm import SharedMemoryRegistry

pytestmark = pytest.mark.integration

MODEL = "distilbert"
INFER = f"/v2/models/{MODEL}/infer"
QUEUE = 8
BODY_TIMEOUT_S = 3.0
KEEPALIVE_S = 1.0
SETTINGS = {
    "max_batch_size": 4,
    "max_queue_delay_ms": 1,
    "max_queue_size": QUEUE,
    "warmup_batches": 1,
    "max_seq_len": 16,
    "decode_workers": 1,
    "max_body_bytes": 16 << 20,
    "max_body_buffer_bytes": 32 << 20,  # two bodies of max_body_bytes at once
    "body_timeout_s": BODY_TIMEOUT_S,
    "keepalive_timeout_s": KEEPALIVE_S,
    "allow_client_shm": True,
}


@contextlib.contextmanager
def server_process(directory: Path, settings: dict):
    """A real server process on 127.0.0.1 (a free port), ready; yields (process, port)."""
    port_file = directory / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gawm_lib.server",
            "--workload",
            MODEL,
            "--settings",
            json.dumps(settings),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--exit-with-parent",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            if port_file.is_file():
                port = int(port_file.read_text())
                with contextlib.suppress(OSError):
                    if get(port, "/v2/health/ready")[0] == 200:
                        break
            time.sleep(0.1)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def post(port: int, path: str, body: bytes, headers: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"content-type": "application/json", **(headers or {})})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def valid(text: str = "a valid request") -> bytes:
    return json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}).encode()


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``timeout_s``)."""
    sock.settimeout(timeout_s)
    reply = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def metric(port: int, series: str) -> float:
    text = get(port, "/metrics")[1].decode()
    line = next((ln for ln in text.splitlines() if ln.startswith(series + " ")), None)
    return float(line.split()[-1]) if line else 0.0


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with server_process(tmp_path_factory.mktemp("hardening"), SETTINGS) as (_, port):
        yield port


# -- 1. incomplete bodies, idle connections, readiness --------------------------------------------------------------
def test_incomplete_bodies_hold_no_queue_slot_and_are_answered_408(server):
    """Before: a request took a queue slot before its body was read, with no deadline on the body, so QUEUE clients
    that sent a few bytes of their body made every valid request a 503 'queue full', forever."""
    inflight = f'gawm_inflight_requests{{model="{MODEL}",replica="0"}}'
    stalled = []
    try:
        for _ in range(QUEUE + 4):
            sock = socket.create_connection(("127.0.0.1", server), timeout=10)
            sock.sendall(
                f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                '{"inputs": '.encode()
            )
            stalled.append(sock)
        wait_for(lambda: metric(server, inflight) >= QUEUE, 10, "the stalled requests to reach the app")
        started = time.monotonic()
        status, reply = post(server, INFER, valid())
        assert status == 200, reply
        assert time.monotonic() - started < BODY_TIMEOUT_S  # served while the stalled bodies are still pending
        assert get(server, "/v2/health/ready")[0] == 200
        for sock in stalled:
            reply = read_until_closed(sock, BODY_TIMEOUT_S + 10)
            assert reply.startswith(b"HTTP/1.1 408") and b'"field":"body"' in reply and b"body_timeout_s" in reply
    finally:
        for sock in stalled:
            sock.close()
    wait_for(lambda: metric(server, inflight) == 0, 10, "the stalled requests to be gone")


def test_the_bodies_being_read_at_once_are_bounded_and_given_back(server):
    """Before: clients that each sent a body of up to max_body_bytes, slowly, held that much memory each, with no bound
    over all of them."""
    inflight = f'gawm_inflight_requests{{model="{MODEL}",replica="0"}}'
    stalled = []
    try:
        for _ in range(2):  # two bodies of max_body_bytes declared, a few bytes sent: max_body_buffer_bytes reserved
            sock = socket.create_connection(("127.0.0.1", server), timeout=10)
            sock.sendall(
                f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {SETTINGS['max_body_bytes']}\r\n\r\n".encode()
                + b'{"inputs": '
            )
            stalled.append(sock)
        wait_for(lambda: metric(server, inflight) >= 2, 10, "the stalled requests to reach the app")
        conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
        try:
            conn.request("POST", INFER, body=valid(), headers={"content-type": "application/json"})
            answer = conn.getresponse()
            reply = json.loads(answer.read())
            assert answer.status == 503, reply
            assert answer.getheader("retry-after") == "1" and answer.getheader("connection") == "close"
        finally:
            conn.close()
        assert reply["field"] == "body" and "max_body_buffer_bytes" in reply["expected"], reply
        assert get(server, "/v2/health/live")[0] == 200
    finally:
        for sock in stalled:
            sock.close()
    # the closed connections give their reservations back: a request fits again
    wait_for(lambda: metric(server, inflight) == 0, 10, "the stalled requests to be gone")
    status, reply = post(server, INFER, valid())
    assert status == 200, reply


def test_idle_connections_and_headers_sent_a_byte_at_a_time_are_closed(server):
    """Before: a connection that never sent a request, or sent its headers a byte at a time, stayed open forever."""
    with socket.create_connection(("127.0.0.1", server), timeout=10) as idle:
        started = time.monotonic()
        assert read_until_closed(idle, KEEPALIVE_S + 10) == b""
        assert time.monotonic() - started < KEEPALIVE_S + 5
    with socket.create_connection(("127.0.0.1", server), timeout=10) as slow:
        slow.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode())
        slow.settimeout(0.2)
        deadline, reply = time.monotonic() + BODY_TIMEOUT_S + 10, b""
        while time.monotonic() < deadline:
            try:
                chunk = slow.recv(65536)
            except TimeoutError:
                slow.sendall(b"a")  # one more byte: each one used to restart uvicorn's only timer
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408") and b"body_timeout_s" in reply, reply


def test_ready_is_503_while_the_queue_is_full_and_200_again_after():
    """Before: /v2/health/ready said 200 while every request got 503 'queue full'."""
    from fastapi.testclient import TestClient

    from gawm_lib.server import create_app

    cfg = WorkloadConfig(name=MODEL, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=1, warmup_batches=0)
    app = create_app(cfg)
    with TestClient(app) as client:
        wait_for(lambda: client.get("/v2/health/ready").status_code == 200, 120, "the model")
        workload = app.state.workload
        fast, entered, release = workload.forward, threading.Event(), threading.Event()

        def held(batch, count):
            entered.set()
            release.wait(30)
            return fast(batch, count)

        workload.forward = held
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = [pool.submit(client.post, INFER, content=valid("first"))]
            wait_for(entered.is_set, 10, "the first request's forward pass")
            answers.append(pool.submit(client.post, INFER, content=valid("second")))
            # one request in the forward pass, one waiting: the queue is full
            wait_for(lambda: client.get("/v2/health/ready").status_code == 503, 10, "ready to say 503")
            ready = client.get("/v2/health/ready").json()
            assert ready["ready"] is False and "queue full" in ready["reason"]
            assert client.get("/v2/health/live").status_code == 200
            release.set()
            assert [a.result(30).status_code for a in answers] == [200, 200]
        assert client.get("/v2/health/ready").status_code == 200
        app.state.draining = True  # what SIGTERM sets (see test_sigterm_...)
        assert client.get("/v2/health/ready").json()["reason"].startswith("shutting down")


# -- 2. shared memory -------------------------------------------------------------------------------------------------
@pytest.fixture()
def shm_entries():
    """Names in /dev/shm that the test creates (a link, a FIFO, a directory), removed afterwards."""
    made: list[Path] = []
    yield lambda suffix: made.append(Path(f"/dev/shm/gawm_test_{os.getpid()}_{suffix}")) or made[-1]
    for path in made:
        if path.is_symlink() or path.is_fifo() or path.is_file():
            path.unlink()
        elif path.is_dir():
            path.rmdir()


def test_links_fifos_and_directories_in_dev_shm_cannot_be_registered(server, shm_entries):
    """Before: a symbolic link was followed (/etc/passwd could be registered and read), a FIFO blocked the event loop
    until a writer came (health probes timed out), a directory gave a plain-text 500."""
    link, fifo, folder = shm_entries("link"), shm_entries("fifo"), shm_entries("dir")
    link.symlink_to("/etc/passwd")
    os.mkfifo(fifo)
    folder.mkdir()
    for path in (link, fifo, folder):
        doc = json.dumps({"key": "/" + path.name, "byte_size": 4}).encode()
        status, reply = post(server, f"/v2/systemsharedmemory/region/r_{path.name}/register", doc, timeout=5)
        assert status == 400 and json.loads(reply)["field"] == "key", (path, reply)
        assert get(server, "/v2/health/live", timeout=2)[0] == 200
    assert json.loads(get(server, "/v2/systemsharedmemory/status")[1]) == []


def test_no_length_or_byte_read_from_tensor_data_comes_back_in_an_error():
    """Before: a BYTES element's 4-byte length prefix came back as 'an element of N bytes': a registered object could
    be read out 4 bytes at a time."""
    secret = b"root"  # 0x746f6f72: 1953460082 as a little-endian length
    number = str(int.from_bytes(secret, "little"))
    mem = shared_memory.SharedMemory(create=True, size=64)
    try:
        mem.buf[:8] = secret + b":x:0"
        registry = SharedMemoryRegistry()
        registry.register("r", {"key": mem.name, "byte_size": 8})
        spec = {"shared_memory_region": "r", "shared_memory_byte_size": 8}
        body = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "parameters": spec}]})
        with pytest.raises(InferenceError) as err:
            parse_request(body.encode(), None, ("y",), registry)
        assert number not in str(err.value) and "root" not in str(err.value)
        registry.unregister()
    finally:
        mem.close()
        mem.unlink()
    header = json.dumps(
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 10}}]}
    ).encode()
    for blob in (b"\x02\x00\x00\x00ab" + secret, b"\x01\x00\x00\x00a" + b"\x07\x00\x00\x00b", b"\x00" * 10):
        with pytest.raises(InferenceError) as err:
            parse_request(header + blob, str(len(header)), ("y",))
        assert all(n not in str(err.value) for n in (number, "7 bytes", "1 BYTES", "3 BYTES")), str(err.value)


# -- 3. cheap checks first, bounded headers ---------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False])
def test_a_request_over_max_batch_size_is_refused_before_its_data_is_decoded(server, binary):
    """Before: 2.6 million empty BYTES elements (10 MB) kept a decode thread busy ~7 s before the check of
    max_batch_size refused them."""
    count = 2_600_000
    if binary:
        doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [count], "parameters": {}}]}
        doc["inputs"][0]["parameters"]["binary_data_size"] = 4 * count
        header = json.dumps(doc).encode()
        body, headers = header + bytes(4 * count), {"inference-header-content-length": str(len(header))}
        field = "inputs[0].shape[0]"
    else:  # declared as one element; the data holds millions: bounded by the shape, not by the data
        body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [""] * count}]})
        body, headers, field = body.encode(), {}, "inputs[0].data"
    started = time.monotonic()
    status, reply = post(server, INFER, body, headers)
    elapsed = time.monotonic() - started
    assert status == 400 and json.loads(reply)["field"] == field, reply[:300]
    assert elapsed < 2.0, f"{elapsed:.2f} s to refuse it"


def test_headers_over_max_header_bytes_get_431(server):
    """Before: any header size was taken (one 50 MB header stalled the event loop for 8 s)."""
    for extra in (b"X-Pad: " + b"a" * 100_000 + b"\r\n", b"".join(b"X-%d: 0123456789\r\n" % i for i in range(5000))):
        with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
            body = valid()
            request = b"POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (
                INFER.encode(),
                extra,
                len(body),
                body,
            )
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)
            reply = read_until_closed(sock, 10)
        assert not reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert reply.startswith(b"HTTP/1.1 431") and b'"field": "max_header_bytes"' in reply, reply[:200]
    assert post(server, INFER, valid(), {"X-Ok": "a" * 1000})[0] == 200


# -- 4. no API docs ---------------------------------------------------------------------------------------------------
def test_api_docs_are_off_unless_asked_for(server):
    for path in ("/docs", "/redoc", "/openapi.json"):
        status, reply = get(server, path)
        assert status == 404 and json.loads(reply)["field"] == "path", path
    from fastapi.testclient import TestClient

    from gawm_lib.server import create_app

    client = TestClient(create_app(WorkloadConfig(name=MODEL, api_docs=True)))  # no lifespan: no model loaded
    assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200


# -- issue 30: SIGTERM ------------------------------------------------------------------------------------------------
def test_sigterm_answers_the_requests_in_flight_refuses_new_connections_and_exits_0(tmp_path):
    """Before: uvicorn drained for 5 s, then raised SIGTERM again with the default handler: exit code -15 (143)."""
    delay_ms, requests = 1500, 4
    settings = {**SETTINGS, "max_batch_size": 8, "max_queue_delay_ms": delay_ms, "shutdown_grace_s": 10}
    with server_process(tmp_path, settings) as (proc, port):
        depth = f'gawm_queue_depth{{model="{MODEL}",replica="0"}}'
        with concurrent.futures.ThreadPoolExecutor(requests) as pool:
            answers = [pool.submit(post, port, INFER, valid(f"in flight {i}")) for i in range(requests)]
            wait_for(lambda: metric(port, depth) == requests, 10, "the requests to wait in the queue")
            proc.send_signal(signal.SIGTERM)
            terminated = time.monotonic()

            def refused() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except ConnectionRefusedError:
                    return True
                return False

            wait_for(refused, 5, "new connections to be refused")
            assert not any(a.done() for a in answers)  # refused while the batch was still waiting
            assert [a.result(30)[0] for a in answers] == [200] * requests
        assert proc.wait(15) == 0
        assert time.monotonic() - terminated < delay_ms / 1000 + 5
