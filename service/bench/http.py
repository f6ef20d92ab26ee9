"""A lean HTTP/1.1 client for the benchmark's timed search loops.

The yardstick of the API's searches is raw SQL sent by asyncpg with a ready binary vector, which
costs its client about 0.1 ms of CPU. httpx, with the query's JSON made on the fly, cost the
benchmark's own process about 1.7 ms of CPU per search here (docs/benchmarks.md), more than the
server itself: on a machine where client, server and PostgreSQL share the cores, that measured
the client. The searches' bodies are therefore encoded before the timed loops (as the raw side's
vectors are), and sent over keep-alive connections of asyncio streams, one per concurrent client
(as the raw side's connections), with httptools (the server's own parser) reading the responses.
Uploads and set-up keep using httpx.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools


@dataclass
class _Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


_told_about_429 = False


def tell_about_429(detail: str, wait: float) -> None:
    """Once per run: the server rate-limits the benchmark's key, and the benchmark waits."""
    global _told_about_429
    if not _told_about_429:
        print(
            f"the server rate-limits this key ({detail or 'no detail'}); waiting {wait:g} s as "
            "Retry-After says. Raise the tenant's limits (PUT /api/v1/admin/tenants/{id}/quotas) for "
            "undisturbed figures.",
            file=sys.stderr,
            flush=True,
        )
        _told_about_429 = True


def _detail(body: bytes) -> str:
    try:
        return str(json.loads(body).get("detail", ""))
    except (ValueError, AttributeError):
        return ""


class HttpConnection:
    """One keep-alive connection to the server; requests one at a time."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise SystemExit(f"the benchmark's search client speaks plain http, not {parts.scheme}://")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        fixed = {"host": parts.netloc, "content-type": "application/json", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> HttpConnection:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._writer is not None:
            self._writer.close()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body); a 429 is waited out as its Retry-After says, up to ten times."""
        for _ in range(10):
            response = await self._exchange(path, body)
            if response.status != 429:
                return response.status, bytes(response.body)
            wait = float(response.headers.get("retry-after", "1"))
            tell_about_429(_detail(bytes(response.body)), wait)
            await asyncio.sleep(wait)
        return response.status, bytes(response.body)

    async def _exchange(self, path: str, body: bytes) -> _Response:
        assert self._reader is not None and self._writer is not None, "use the connection in `async with`"
        head = f"POST {self.prefix}{path} HTTP/1.1\r\ncontent-length: {len(body)}\r\n".encode("latin-1")
        self._writer.write(head + self._fixed + b"\r\n" + body)
        response = _Response()
        parser = httptools.HttpResponseParser(response)
        while not response.complete:
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionError("the server closed the connection mid-response")
            parser.feed_data(data)
        response.status = parser.get_status_code()
        return response
