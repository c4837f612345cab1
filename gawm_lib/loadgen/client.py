"""The HTTP side of the load process: error kinds, server timings, request bodies, and the aiohttp session of the
``aiohttp`` transport (the default transport is :mod:`gawm_lib.loadgen.http1`).

Why not httpx: on one core against the null server, 16 requests in flight, httpx completed 460-650 req/s
(``client.post``) or 580 (``client.stream``, which a first-byte time needs) where aiohttp completed 8,400-12,100 on
the 2-core build machine; gawm's own ``http1`` is faster again. ``gawm_lib/bench/loadgen_bench.py`` records all of
them. With aiohttp the first byte is when the status line and headers have been read.
"""

from __future__ import annotations

import asyncio
import errno
import json
import sys
from typing import Any

HEADERS = {"content-type": "application/json"}
_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}


def session(max_connections: int, timeout_s: float):
    """An aiohttp session with at most ``max_connections`` connections and a per-request ``timeout_s``."""
    import aiohttp

    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=0, ttl_dns_cache=None, keepalive_timeout=30, enable_cleanup_closed=False
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def error_kind(exc: BaseException) -> str:
    """The recorded kind of a failed request: timeout, connect (refused or unreachable), reset (the connection broke
    after it was made), cancelled (stopped while in flight) or other (e.g. an answer that is not HTTP)."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError and ConnectionTimeoutError are TimeoutErrors
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect"
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        if isinstance(exc, aiohttp.ClientConnectorError):
            return "connect"
        if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
            return "reset"
        if isinstance(exc, aiohttp.ClientOSError) and not isinstance(exc, ConnectionError):
            return "reset" if exc.errno in _RESET_ERRNOS else "connect"
        if isinstance(exc, aiohttp.ServerConnectionError):
            return "reset"
    if isinstance(exc, ConnectionError):  # reset, aborted, broken pipe
        return "reset"
    if isinstance(exc, OSError):  # unreachable, no address, ...: raised while connecting
        return "connect"
    return "other"


def status_kind(status: int) -> str:
    """'' for 2xx, else ``http_1xx``, ``http_3xx``, ``http_4xx``, ``http_5xx`` or ``other``."""
    if 200 <= status < 300:
        return ""
    return f"http_{status // 100}xx" if status // 100 in (1, 3, 4, 5) else "other"


SERVER_PARAMETERS = ("batch_size", "queue_ns", "compute_ns", "decode_ns", "truncated")
UNKNOWN = (-1,) * len(SERVER_PARAMETERS)


def server_timing(payload: bytes) -> tuple[int, ...]:
    """``(batch_size, queue_ns, compute_ns, decode_ns, truncated)`` from an OIP v2 answer's ``parameters`` (-1 where
    not reported; ``truncated``: items cut at a limit, Whisper's decode_tokens)."""
    if len(payload) > 1 << 20 or b'"parameters"' not in payload:
        return UNKNOWN
    try:
        params = json.loads(payload).get("parameters") or {}
        return tuple(int(params.get(key, -1)) for key in SERVER_PARAMETERS)
    except (ValueError, TypeError, AttributeError):
        return UNKNOWN


def join_bodies(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """One OIP v2 request of all ``bodies``' inputs, joined along the first dimension (a batch). The inputs must match
    in number, name and datatype; other fields come from the first body."""
    first = bodies[0]
    inputs = []
    for j, tensor in enumerate(first["inputs"]):
        data: list[Any] = []
        rows = 0
        for body in bodies:
            other = body["inputs"][j]
            if other.get("name") != tensor.get("name") or other.get("datatype") != tensor.get("datatype"):
                raise ValueError(
                    f"cannot join requests: input {j} is {tensor.get('name')!r}/"
                    f"{tensor.get('datatype')!r} in one and {other.get('name')!r}/"
                    f"{other.get('datatype')!r} in another"
                )
            data.extend(other["data"])
            rows += int(other["shape"][0]) if other.get("shape") else 1
        inputs.append({**tensor, "shape": [rows, *list(tensor.get("shape", [1]))[1:]], "data": data})
    return {**first, "inputs": inputs}


def request_items(body: dict[str, Any]) -> int:
    """Inputs in a request: the first dimension of its first input (1 when it has no shape)."""
    try:
        return int(body["inputs"][0]["shape"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return 1
