"""Client of an S5 portal: files by path (GET {portal}/s5/fs/{path}) and blobs by CID
(GET {portal}/s5/blob/{cid}). The portal's address comes from configuration, never from a request.

Every download has a per-request timeout and bounded retries with exponential backoff and
jitter, on timeouts, broken connections, truncated bodies and 5xx answers; never on 4xx.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

from service.imports.formats import ChunkInfo, ImportFailure
from service.metrics import S5_DOWNLOAD_ERRORS

# The largest file an import reads: a chunk of 10,000 vectors of 4,000 dimensions written as
# JSON text is about 800 MB; anything larger is not a chunk of this format.
MAX_FILE_BYTES = 1 << 30


def checked_path(path: str) -> str:
    parts = path.strip("/").split("/")
    if not path.strip("/") or any(part in ("", ".", "..") for part in parts):
        raise ImportFailure("invalid_manifest", f"'{path}' is not a plain relative path")
    return "/".join(quote(part, safe="") for part in parts)


# A download is written to its file in pieces of about this size (see S5Portal._spool).
SPOOL_WRITE_BYTES = 1 << 20


def _write_and_flush(file: BinaryIO, data: bytearray) -> None:
    file.write(data)
    file.flush()


def _free_bytes(file: BinaryIO) -> float:
    """Free space where `file` is (for an unprivileged process), or infinity for a file that is
    not on a disk."""
    try:
        stats = os.fstatvfs(file.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return math.inf
    return stats.f_bavail * stats.f_frsize


class S5Portal:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_file_bytes: int = MAX_FILE_BYTES,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.max_file_bytes = max_file_bytes
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._owns_client = client is None
        self.attempts = 0  # requests sent, retries included (for metrics and tests)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def fetch_path(self, path: str, *, missing: str = "download_failed") -> bytes:
        """A file by path; `missing` is the error code when the portal has no such file."""
        return await self._get(self._fs_url(path), what=path, missing=missing)

    async def fetch_blob(self, cid: str, *, into: BinaryIO | None = None) -> bytes:
        if not cid or "/" in cid or not cid.isascii():
            raise ImportFailure("invalid_manifest", f"'{cid}' is not a CID")
        return await self._get(
            f"{self.base_url}/s5/blob/{quote(cid, safe='')}", what=f"blob {cid}", into=into
        )

    async def fetch_chunk(self, folder: str, info: ChunkInfo, into: BinaryIO) -> None:
        """chunk-{id}.json beside the manifest, written to `into` (a file the import spools chunks
        to); failing that, its cid (a path, or a CID for /s5/blob)."""
        try:
            path = f"{folder}/chunk-{info.chunk_id}.json"
            await self._get(self._fs_url(path), what=path, into=into)
            return
        except ImportFailure as failure:
            if failure.code != "download_failed" or "404" not in failure.message or not info.cid:
                raise
        if "/" in info.cid:
            await self._get(self._fs_url(info.cid), what=info.cid, into=into)
        else:
            await self.fetch_blob(info.cid, into=into)

    def _fs_url(self, path: str) -> str:
        return f"{self.base_url}/s5/fs/{checked_path(path)}"

    def _too_large(self, what: str) -> ImportFailure:
        S5_DOWNLOAD_ERRORS.labels("too_large").inc()
        return ImportFailure(
            "invalid_manifest", f"{what} is larger than {self.max_file_bytes:,} bytes; refused"
        )

    async def _body(self, response: httpx.Response, what: str) -> bytes:
        """The body in one growing buffer: large files then live in memory the allocator maps and
        unmaps whole, rather than as many small pieces that fragment the heap and keep the
        process's memory high after every import. Bounded by max_file_bytes."""
        body = bytearray()
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) > self.max_file_bytes:
                raise self._too_large(what)
        return bytes(body)  # one copy, made and freed whole

    async def _spool(self, response: httpx.Response, what: str, into: BinaryIO) -> None:
        """The body written to a file as it arrives, from its start (a retry overwrites a broken
        attempt). Written a megabyte at a time from a thread: a write can wait for the disk when
        the kernel holds back writers of too many unwritten pages, and the event loop must not."""
        length = response.headers.get("content-length", "")
        announced = int(length) if length.isdigit() else 0
        if announced > self.max_file_bytes:
            raise self._too_large(what)
        free = _free_bytes(into)
        if announced > free:
            raise ImportFailure(
                "download_failed",
                f"{what}: {announced:,} bytes do not fit on the server's disk for downloads "
                f"({free:,} bytes free)",
            )
        written = 0
        try:
            if into.seek(0, os.SEEK_END):  # a broken attempt before this one
                into.seek(0)
                into.truncate()
            pending = bytearray()
            writing: asyncio.Future[Any] | None = None  # one write at a time, while the next piece arrives
            try:
                async for piece in response.aiter_bytes():
                    written += len(piece)
                    if written > self.max_file_bytes:
                        raise self._too_large(what)
                    pending += piece
                    if len(pending) >= SPOOL_WRITE_BYTES:
                        if writing is not None:
                            await writing
                        writing = asyncio.ensure_future(asyncio.to_thread(into.write, pending))
                        pending = bytearray()
            finally:
                if writing is not None:
                    await asyncio.gather(writing, return_exceptions=True)  # before the file closes
            if writing is not None:
                writing.result()  # its OSError, if any
            await asyncio.to_thread(_write_and_flush, into, pending)
        except OSError as exc:  # the server's own disk (full, gone): not the portal's fault
            raise ImportFailure(
                "download_failed", f"{what}: the server could not keep the download ({exc.strerror or exc})"
            ) from None

    async def _get(
        self, url: str, *, what: str, missing: str = "download_failed", into: BinaryIO | None = None
    ) -> bytes:
        """The body (or b"" once it is all in `into`), with the retries described above."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                # Exponential backoff with full jitter: retries from many imports do not line up.
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))  # noqa: S311
            self.attempts += 1
            try:
                async with self._client.stream("GET", url, timeout=self.timeout) as response:
                    if response.status_code == 200:
                        if into is None:
                            return await self._body(response, what)
                        await self._spool(response, what, into)
                        return b""
            except httpx.TimeoutException:
                last = "timeout"
                S5_DOWNLOAD_ERRORS.labels("timeout").inc()
                continue
            except httpx.TransportError as exc:  # refused, reset, or a body shorter than announced
                last = f"transport: {type(exc).__name__}"
                S5_DOWNLOAD_ERRORS.labels("transport").inc()
                continue
            if response.status_code == 404:
                S5_DOWNLOAD_ERRORS.labels("not_found").inc()
                raise ImportFailure(missing, f"{what}: the portal has no such file (404)")
            if 400 <= response.status_code < 500:
                S5_DOWNLOAD_ERRORS.labels("http_4xx").inc()
                raise ImportFailure("download_failed", f"{what}: the portal answered {response.status_code}")
            S5_DOWNLOAD_ERRORS.labels("http_5xx").inc()
            last = f"HTTP {response.status_code}"
        if last == "timeout":
            raise ImportFailure(
                "timeout", f"{what}: no answer within {self.timeout:g} s, {self.retries + 1} tries"
            )
        raise ImportFailure("download_failed", f"{what}: {last} after {self.retries + 1} tries")
