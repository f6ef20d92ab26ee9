"""The benchmark's lean search client (service/bench/http.py) against a real HTTP server on
127.0.0.1: keep-alive requests on one connection, a 429 waited out as its Retry-After says and
explained once, other statuses handed back."""

from __future__ import annotations

import asyncio
import json

import pytest

from service.bench import http
from service.bench.http import HttpConnection


async def test_requests_share_a_connection_and_a_429_is_waited_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    received: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            first, *lines = head.rstrip(b"\r\n").split(b"\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines)}
            body = await reader.readexactly(int(headers[b"content-length"]))
            received.append((first, headers, body))
            if len(received) == 1:
                answer = json.dumps({"detail": "Too many requests: 1000 a minute."}).encode()
                status = b"429 Too Many Requests\r\nretry-after: 0.05"
            else:
                answer = json.dumps({"n": len(received)}).encode()
                status = b"200 OK"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(answer)).encode()
                + b"\r\n\r\n"
                + answer
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    http._told_about_429 = False
    try:
        async with HttpConnection(f"http://127.0.0.1:{port}/prefix", {"authorization": "Bearer k"}) as conn:
            first = await conn.post("/search", b'{"vector": [1, 2]}')
            second = await conn.post("/search", b"{}")
    finally:
        server.close()
        await server.wait_closed()
    assert first == (200, b'{"n": 2}') and second == (200, b'{"n": 3}')
    assert connections == 1
    assert [r[0] for r in received] == [b"POST /prefix/search HTTP/1.1"] * 3
    assert received[0][1][b"authorization"] == b"Bearer k"
    assert received[0][1][b"content-type"] == b"application/json"
    assert received[0][2] == received[1][2] == b'{"vector": [1, 2]}'  # the same request again
    explained = capsys.readouterr().err
    assert "rate-limits this key (Too many requests: 1000 a minute.)" in explained
    assert "waiting 0.05 s" in explained


async def test_a_closed_connection_is_an_error_not_a_hang() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HttpConnection(f"http://127.0.0.1:{port}", {}) as conn:
            with pytest.raises(ConnectionError, match="closed the connection"):
                await conn.post("/search", b"{}")
    finally:
        server.close()
        await server.wait_closed()
