"""gawm's HTTP/1.1 client against a scripted server: the answers a real server may give (Content-Length, chunked,
until-close, interim 100, Connection: close), and the failures it must tell apart (refused, reset, timeout, not
HTTP)."""

from __future__ import annotations

import asyncio

import pytest

from gawm_lib.loadgen import client, http1

BODY = b'{"inputs": []}'


async def scripted(answers: list[bytes | None], delay_s: float = 0.0):
    """A server answering each request (one per connection read) with the next of ``answers``; ``None`` aborts."""
    queue = list(answers)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while queue:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            )
            await reader.readexactly(length)
            answer = queue.pop(0)
            await asyncio.sleep(delay_s)
            if answer is None:
                writer.transport.abort()
                return
            for piece in (answer[:7], answer[7:]):  # in two pieces, as a network may deliver it
                writer.write(piece)
                await writer.drain()
            if b"connection: close" in answer.lower() or b"HTTP/1.0" in answer[:9]:
                writer.close()
                return
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def exchange(answers, count, timeout_s=2.0, delay_s=0.0):
    async def main():
        server, url = await scripted(answers, delay_s)
        pool = http1.Pool(url, 2.0)
        data = http1.build_request(url, "/v2/models/m/infer", BODY)
        results = []
        async with server:
            for _ in range(count):
                try:
                    results.append(await pool.exchange(data, timeout_s))
                except Exception as exc:  # noqa: BLE001 - the kind is what is tested
                    results.append(client.error_kind(exc))
            pool.close()
        return results, pool.opened

    return asyncio.run(main())


def test_content_length_answers_reuse_one_connection():
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    results, opened = exchange([ok, ok, ok], 3)
    assert [r[:2] for r in results] == [(200, b"{}")] * 3 and opened == 1
    assert all(r[2] > 0 for r in results)  # the first byte's time


def test_chunked_interim_and_close_delimited_answers():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=1\r\nnull\r\n2\r\n{}\r\n0\r\n\r\n"
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 1\r\n\r\nx"
    results, _ = exchange([chunked, interim], 2)
    assert results == [(200, b"null{}", results[0][2]), (503, b"x", results[1][2])]
    close_delimited = b"HTTP/1.0 200 OK\r\n\r\nuntil the end"
    results, _ = exchange([close_delimited], 1)
    assert results[0][:2] == (200, b"until the end")


def test_connection_close_opens_a_new_connection():
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ok = b"HTTP/1.1 204 No Content\r\n\r\n"
    results, opened = exchange([closing], 1)
    assert results[0][:2] == (200, b"") and opened == 1

    async def two_servers():
        server, url = await scripted([closing])
        pool = http1.Pool(url, 2.0)
        data = http1.build_request(url, "/", BODY)
        async with server:
            first = await pool.exchange(data, 2.0)
        assert not pool.idle  # a closed connection never goes back to the pool
        return first

    assert asyncio.run(two_servers())[0] == 200
    assert exchange([ok, ok], 2)[0][1][:2] == (204, b"")


@pytest.mark.parametrize(
    ("answers", "kind"),
    [
        ([None], "reset"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort"], "reset"),
        ([b"SSH-2.0-OpenSSH\r\n\r\n"], "other"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n"], "other"),
    ],
)
def test_broken_answers_are_told_apart(answers, kind):
    results, _ = exchange(answers, 1)
    assert results == [kind]


def test_timeout_and_refused():
    late = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    results, _ = exchange([late], 1, timeout_s=0.1, delay_s=0.5)
    assert results == ["timeout"]

    async def refused():
        pool = http1.Pool("http://127.0.0.1:9", 1.0)
        try:
            await pool.exchange(http1.build_request("http://127.0.0.1:9", "/", BODY), 1.0)
        except Exception as exc:  # noqa: BLE001
            return client.error_kind(exc)

    assert asyncio.run(refused()) == "connect"


def test_requests_are_built_once_as_bytes():
    data = http1.build_request("http://127.0.0.1:8000", "/v2/models/m/infer", BODY)
    assert data.startswith(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
    assert data.endswith(b"Content-Length: 14\r\n\r\n" + BODY)
    with pytest.raises(ValueError, match="expected a base URL"):
        http1.Pool("127.0.0.1:8000", 1.0)
