"""A lean HTTP/1.1 client on asyncio protocols: keep-alive connections, one request at a time on each, requests built
once as bytes. It does only what a load generator needs (POST a body, read the status and the body, by
``Content-Length``, chunked, or until close), at a fraction of a general client's cost per request (see
``gawm_lib/bench/loadgen_bench.py``: the ``clients`` section compares it with aiohttp and httpx), and it knows when the
first byte of an answer arrived.

Errors surface as Python's own: ``ConnectionRefusedError``/``OSError`` while connecting, ``ConnectionResetError`` when
a connection breaks before the answer is complete, ``TimeoutError`` past the deadline, :class:`ProtocolError` for an
answer that is not HTTP/1.x.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 1 << 16
monotonic_ns = time.monotonic_ns
_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class ProtocolError(Exception):
    """The server's answer is not valid HTTP/1.x."""


def build_request(
    url: str, path: str, body: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None
) -> bytes:
    """The bytes of ``POST path`` with ``body`` to the server at ``url``; ``headers`` are added (a ``Host`` among them
    replaces the URL's, as for a Kubernetes ingress that routes by host name)."""
    extra = dict(headers or {})
    netloc = next((extra.pop(k) for k in list(extra) if k.lower() == "host"), urlsplit(url).netloc)
    lines = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"{lines}\r\n"
    ).encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; :meth:`start` sends a request and returns a future of
    ``(status, body, first_byte_ns)``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.usable = False
        self.future: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.usable = True

    def start(self, data: bytes, future: asyncio.Future) -> None:
        self.future = future
        self.buffer = bytearray()
        self.first_ns = 0
        self.state = _HEAD
        self.transport.write(data)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        future = self.future
        if future is None or future.done():  # nothing was asked: the connection is out of step
            self.abort()
            return
        if not self.first_ns:
            self.first_ns = monotonic_ns()
        self.buffer += data
        try:
            self._parse()
        except ProtocolError as exc:
            self.abort()
            if not future.done():
                future.set_exception(exc)

    def _parse(self) -> None:
        buf = self.buffer
        if self.state == _HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ProtocolError("answer head longer than 64 KiB")
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            self.status = int(parts[1])
            keep = parts[0] == b"HTTP/1.1"
            length, chunked = -1, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        raise ProtocolError(f"bad content-length {value[:40]!r}") from None
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    keep = value.strip().lower() == b"keep-alive" or (keep and value.strip().lower() != b"close")
            if 100 <= self.status < 200:  # an interim answer: the real one follows
                del buf[: end + 4]
                if buf:
                    self._parse()
                return
            self.keep = keep
            self.pos = end + 4
            if self.status in (204, 304):
                length, chunked = 0, False
            if chunked:
                self.state, self.body = _CHUNKED, bytearray()
            elif length >= 0:
                self.state, self.length = _LENGTH, length
            else:
                self.state, self.keep = _UNTIL_CLOSE, False
        if self.state == _LENGTH:
            end = self.pos + self.length
            if len(buf) >= end:
                self._finish(bytes(buf[self.pos : end]), extra=len(buf) > end)
        elif self.state == _CHUNKED:
            self._chunks()

    def _chunks(self) -> None:
        buf = self.buffer
        while True:
            line_end = buf.find(b"\r\n", self.pos)
            if line_end < 0:
                return
            try:
                size = int(bytes(buf[self.pos : line_end]).split(b";")[0].strip(), 16)
            except ValueError:
                raise ProtocolError("bad chunk size") from None
            if size == 0:
                rest = line_end + 2
                if buf[rest : rest + 2] == b"\r\n":
                    self._finish(bytes(self.body), extra=len(buf) > rest + 2)
                elif buf.find(b"\r\n\r\n", rest) >= 0:  # trailers, then the end
                    self._finish(bytes(self.body), extra=False)
                return
            data_end = line_end + 2 + size
            if len(buf) < data_end + 2:
                return
            self.body += buf[line_end + 2 : data_end]
            self.pos = data_end + 2

    def _finish(self, body: bytes, extra: bool) -> None:
        future = self.future
        self.future = None
        if extra or not self.keep:
            self.usable = False
            self.transport.close()  # type: ignore[union-attr]
        if future is not None and not future.done():
            future.set_result((self.status, body, self.first_ns))

    def abort(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        future, self.future = self.future, None
        if future is None or future.done():
            return
        if self.state == _UNTIL_CLOSE:
            future.set_result((self.status, bytes(self.buffer[self.pos :]), self.first_ns))
        else:
            future.set_exception(ConnectionResetError(f"connection closed before the answer was complete ({exc})"))


class Pool:
    """Keep-alive connections to one server (``http://host:port`` or ``https://...``). The caller bounds how many
    requests are in flight; the pool opens a connection whenever none is idle."""

    def __init__(self, url: str, connect_timeout_s: float):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected a base URL such as http://127.0.0.1:8000, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.connect_timeout_s = connect_timeout_s
        self.idle: list[_Connection] = []
        self.opened = 0

    async def _connection(self) -> _Connection:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_Connection, self.host, self.port, ssl=self.ssl), self.connect_timeout_s
        )
        self.opened += 1
        return conn

    async def preconnect(self, count: int, timeout_s: float = 5.0) -> int:
        """Open ``count`` idle connections now (failures are ignored: requests will meet them); return how many
        opened. A load that starts with connections in hand does not open them in a burst when a hiccup leaves several
        requests due at once, which on one core can snowball into a long stall."""
        results = await asyncio.gather(
            *[asyncio.wait_for(self._connection(), timeout_s) for _ in range(count)], return_exceptions=True
        )
        opened = [conn for conn in results if isinstance(conn, _Connection)]
        self.idle.extend(opened)
        return len(opened)

    async def exchange(self, data: bytes, timeout_s: float) -> tuple[int, bytes, int]:
        """Send ``data`` (a whole request) and return ``(status, body, first_byte_ns)``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = await self._connection()
        future = loop.create_future()
        timer = loop.call_at(deadline, _expire, future, conn)
        ok = False
        try:
            conn.start(data, future)
            answer = await future
            ok = True
            return answer
        finally:
            timer.cancel()
            if ok and conn.usable:
                self.idle.append(conn)
            elif not ok:
                conn.abort()  # cancelled or failed mid-request: its state is unknown

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


def _expire(future: asyncio.Future, conn: _Connection) -> None:
    if not future.done():
        future.set_exception(TimeoutError("no complete answer within the request timeout"))
    conn.abort()
