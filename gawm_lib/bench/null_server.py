"""A null Open Inference Protocol v2 server: answers every inference at once with a fixed small body, so what is
measured against it is the client (the load generator), not a model. Optionally it injects faults, to test that a
client counts them and carries on.

It is a raw asyncio HTTP/1.1 responder (keep-alive, ``Content-Length`` bodies, one request at a time per connection),
the cheapest server Python can run on one core. Routes: ``POST /v2/models/<name>/infer`` (the answer carries
``parameters.batch_size``, ``queue_ns``, ``compute_ns`` like gawm's server), ``GET /v2/health/live``,
``/v2/health/ready``, ``/v2/models/<name>``; anything else is 404. Only the model named by ``--model`` is served.

Faults it simulates, each drawn per inference request with ``--seed``:

- ``--error-fraction F``: a server error (HTTP 500) for a fraction F of requests, as an overloaded or crashing backend;
- ``--slow-fraction F --slow-s S``: the answer for a fraction F comes after S seconds, as a stalled replica (use S above
  the client's timeout to test timeouts);
- ``--reset-fraction F``: the connection is aborted (TCP reset) instead of answered, as a replica that dies mid-request.

Killing the process (SIGKILL) and starting it again on the same port simulates a replica crash and restart.

``python -m gawm_lib.bench.null_server --port 0 --port-file PORT [--cpu 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from gawm_lib import processes

_REASONS = {200: b"OK", 404: b"Not Found", 411: b"Length Required", 500: b"Internal Server Error"}


def _response(status: int, body: bytes, close: bool = False) -> bytes:
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        _REASONS.get(status, b"Status"),
        len(body),
    )
    return head + (b"connection: close\r\n\r\n" if close else b"\r\n") + body


class _Faults:
    def __init__(self, error_fraction: float, slow_fraction: float, slow_s: float, reset_fraction: float, seed: int):
        self.error, self.slow, self.slow_s, self.reset = error_fraction, slow_fraction, slow_s, reset_fraction
        self.any = error_fraction > 0 or slow_fraction > 0 or reset_fraction > 0
        self.rng = random.Random(seed)

    def draw(self) -> str:
        """'' (answer normally), 'error', 'slow' or 'reset'."""
        if not self.any:
            return ""
        x = self.rng.random()
        for kind, fraction in (("reset", self.reset), ("error", self.error), ("slow", self.slow)):
            if x < fraction:
                return kind
            x -= fraction
        return ""


class _Connection(asyncio.Protocol):
    def __init__(self, answers: dict[str, bytes], model: str, faults: _Faults):
        self.answers, self.model, self.faults = answers, model, faults
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a delayed answer is pending: later requests on this connection wait for it

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._serve()

    def _serve(self) -> None:
        while not self.busy and self.transport is not None and not self.transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length, close, chunked = 0, False, False
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    close = value.strip().lower() == "close"
                elif name == "transfer-encoding":
                    chunked = True
            if chunked:
                self.transport.write(_response(411, b'{"error":"send a content-length"}', close=True))
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            method, _, rest = head[0].partition(" ")
            path = rest.partition(" ")[0]
            self._answer(method, path, close)

    def _answer(self, method: str, path: str, close: bool) -> None:
        assert self.transport is not None
        answer = self.answers.get(f"{method} {path}", self.answers["404"])
        if method == "POST" and answer is not self.answers["404"]:
            fault = self.faults.draw()
            if fault == "reset":
                self.transport.abort()
                return
            if fault == "error":
                answer = self.answers["500"]
            elif fault == "slow":
                self.busy = True
                asyncio.get_running_loop().call_later(self.faults.slow_s, self._late, answer, close)
                return
        self.transport.write(answer)
        if close:
            self.transport.close()

    def _late(self, answer: bytes, close: bool) -> None:
        self.busy = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)
            if close:
                self.transport.close()
            else:
                self._serve()

    def connection_lost(self, exc) -> None:
        self.transport = None


def answers_for(model: str) -> dict[str, bytes]:
    """The prebuilt responses, by ``"METHOD path"`` (plus ``"404"`` and ``"500"``)."""
    infer = json.dumps(
        {
            "model_name": model,
            "model_version": "1",
            "outputs": [{"name": "output", "shape": [1], "datatype": "BYTES", "data": ["null"]}],
            "parameters": {"batch_size": 1, "queue_ns": 0, "compute_ns": 0},
        },
        separators=(",", ":"),
    )
    meta = json.dumps(
        {
            "name": model,
            "versions": ["1"],
            "platform": "null",
            "inputs": [{"name": "input", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "output", "datatype": "BYTES", "shape": [-1]}],
        }
    )
    return {
        f"POST /v2/models/{model}/infer": _response(200, infer.encode()),
        f"POST /v2/models/{model}/versions/1/infer": _response(200, infer.encode()),
        "GET /v2/health/live": _response(200, b"{}"),
        "GET /v2/health/ready": _response(200, b"{}"),
        f"GET /v2/models/{model}": _response(200, meta.encode()),
        f"GET /v2/models/{model}/ready": _response(200, b'{"ready":true}'),
        "404": _response(404, b'{"error":"not found"}'),
        "500": _response(500, b'{"error":"injected server error"}'),
    }


async def serve(
    host: str, port: int, model: str, faults: _Faults, port_file: Path | None, reuse_port: bool = False
) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # several server processes on one port: the kernel spreads the connections
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    answers = answers_for(model)
    server = await loop.create_server(lambda: _Connection(answers, model, faults), sock=sock, backlog=4096)
    if port_file:
        tmp = port_file.with_name(f".{port_file.name}.tmp")
        tmp.write_text(str(sock.getsockname()[1]))
        os.replace(tmp, port_file)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


@contextlib.contextmanager
def running(
    port: int = 0, model: str = "null", cpus: list[int] | None = None, log_path: Path | None = None, **faults: float
) -> Iterator[tuple[subprocess.Popen, str]]:
    """Start a null server process on 127.0.0.1 (``faults``: ``error_fraction``, ``slow_fraction``, ``slow_s``,
    ``reset_fraction``, ``seed``); yield it and its base URL; stop it at the end."""
    with tempfile.TemporaryDirectory(prefix="gawm-null-") as tmp:
        port_file = Path(tmp) / "port"
        proc = start(port, model, cpus, port_file, log_path or Path(tmp) / "server.log", **faults)
        try:
            yield proc, f"http://127.0.0.1:{wait_for_port(proc, port_file)}"
        finally:
            processes.stop(proc)


def start(
    port: int,
    model: str,
    cpus: list[int] | None,
    port_file: Path,
    log_path: Path,
    reuse_port: bool = False,
    **faults: float,
) -> subprocess.Popen:
    """Start a null server process (see :func:`running`); its port is written to ``port_file`` once it listens."""
    port_file.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "gawm_lib.bench.null_server",
        "--port",
        str(port),
        "--port-file",
        str(port_file),
        "--model",
        model,
    ] + (["--reuse-port"] if reuse_port else [])
    for cpu in cpus or []:
        cmd += ["--cpu", str(cpu)]
    for name, value in faults.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    return processes.spawn(cmd, log_path)


def wait_for_port(proc: subprocess.Popen, port_file: Path, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while not port_file.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"null server did not start (exit {proc.poll()})")
        time.sleep(0.02)
    return int(port_file.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (see --port-file)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--model", default="null")
    parser.add_argument("--error-fraction", type=float, default=0.0, help="answer HTTP 500 to this fraction")
    parser.add_argument("--slow-fraction", type=float, default=0.0, help="answer this fraction after --slow-s")
    parser.add_argument("--slow-s", type=float, default=5.0, help="delay of slow answers [s]")
    parser.add_argument("--reset-fraction", type=float, default=0.0, help="abort the connection for this fraction")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    parser.add_argument("--cpu", type=int, action="append", help="pin to this CPU core (repeatable)")
    parser.add_argument("--reuse-port", action="store_true", help="share the port with other null servers")
    args = parser.parse_args(argv)
    if args.error_fraction + args.slow_fraction + args.reset_fraction > 1:
        parser.error("the fault fractions add up to more than 1")
    if args.cpu:
        os.sched_setaffinity(0, set(args.cpu))
    faults = _Faults(args.error_fraction, args.slow_fraction, args.slow_s, args.reset_fraction, args.seed)
    asyncio.run(serve(args.host, args.port, args.model, faults, args.port_file, args.reuse_port))


if __name__ == "__main__":
    main()
